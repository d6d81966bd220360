"""Benchmark: the fixed cost of a short job (issue "Speed", part 1).

Simulates 1,000 particles from the built-in 5A1A beta-gal map once (64 px, 3.54 Å, SNR 0.1, the
tutorial's CTFs when at hand), runs

    novomap initial-model --i particles.star --o JOB --iter 12 --sym D2 --j 2 --particle-diameter 200 --seed 1

in a child process with timers wrapped around the job's phases, and prints the time of each:
start-up (interpreter, imports, argument parsing, reading the STAR file for the settings), loading
the particles, initialisation, the iterations, the final pass over all particles, the final
reconstruction, the symmetry alignment, writing the outputs, and what is left until the RELION
exit marker (the report, when it is drawn in the foreground) and until the process ends. Fixed
cost = the time to the exit marker minus the iterations. It also prints the slowest imports
(`python -X importtime`) and the FSC of initial_model.mrc to the truth (`novomap compare --align`).

    python benchmarks/bench_fixed_cost.py [--n 1000] [--iter 12] [--j 2] [--repeat 1] [--write]
    python benchmarks/bench_fixed_cost.py --star ../shared/data/betagal_relion5_tutorial_particles/particles_ctf_from_relion31_tutorial_goodclasses.star --iter 100 -- --preread

--write appends the figures to benchmarks/results/<today>-fixed-cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUTORIAL_CTF = REPO.parent / "shared" / "data" / "betagal_relion31_tutorial_metadata" / "Extract" / "job018" / "particles.star"

#: Run in the child: wraps the job's phases in timers (module attributes are looked up at call
#: time, so replacing them is enough), then runs the command as `novomap` would.
CHILD = r"""
import json, sys, time
T_SPAWN = float(sys.argv[1]); EVENTS = sys.argv[2]; argv = sys.argv[3:]
events = []
def timed(name, module, attr):
    inner = getattr(module, attr)
    def wrapper(*a, **k):
        t0 = time.time()
        try:
            return inner(*a, **k)
        finally:
            events.append((name, t0, time.time()))
    setattr(module, attr, wrapper)
from novomap.commands import main as novomap_main
import novomap.commands.initial_model as command
import novomap.initial_model as job
try:
    import novomap.final_map as final_map  # since session 63; older code kept it in initial_model
except ImportError:
    final_map = None
for name, module, attr in [
    *([("final reconstruction", final_map, "final_reconstruction")] if final_map else []),  # the finer grid's, in fine_final_map
    ("job", job, "run_initial_model"), ("init", job, "initial_state"),
    ("iterations", job, "run_iteration"), ("final pass", job, "assign_all"),
    ("final reconstruction", job, "final_reconstruction"), ("symmetry alignment", job, "apply_point_group"),
    ("imposing the group", job, "impose_group"), ("evidence", job, "assess_run"), ("final map", job, "final_map"), ("fine final map", job, "fine_final_map"),
    ("outputs", command, "_finish_outputs"),
]:
    if hasattr(module, attr):
        timed(name, module, attr)
bound_from_star = job.ParticleSet.from_star  # a classmethod, bound to the class
def from_star(cls, *a, **k):
    t0 = time.time()
    try:
        return bound_from_star(*a, **k)
    finally:
        events.append(("load particles", t0, time.time()))
job.ParticleSet.from_star = classmethod(from_star)
inner_write = job.write_iteration
def write_iteration(*a, **k):
    t0 = time.time()
    try:
        return inner_write(*a, **k)
    finally:
        events.append(("write run_it", t0, time.time()))
job.write_iteration = write_iteration
status = 1
try:
    status = novomap_main.main(argv)
finally:
    events.append(("main returned", time.time(), time.time()))
    with open(EVENTS, "w") as f:
        json.dump({"spawn": T_SPAWN, "events": events}, f)
sys.exit(status)
"""


def simulate(data: Path, n: int) -> None:
    if (data / "particles.star").exists():
        return
    ctf = ["--ctf-from", str(TUTORIAL_CTF)] if TUTORIAL_CTF.exists() else []
    subprocess.run([sys.executable, "-m", "novomap", "simulate", "--demo", "--o", str(data), "--n", str(n), "--snr", "0.1", "--seed", "7", *ctf],
                   check=True, stdout=subprocess.DEVNULL)


def run_job(star: Path, job: Path, iterations: int, threads: int, extra: list[str]) -> dict:
    """One job in a child process -> seconds per phase."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        events_path = handle.name
    argv = ["initial-model", "--i", str(star), "--o", str(job), "--iter", str(iterations), "--sym", "D2",
            "--j", str(threads), "--particle-diameter", "200", "--seed", "1", "--quiet", *extra]
    spawn = time.time()
    # from the STAR file's folder: RELION's image paths are relative to the project folder
    subprocess.run([sys.executable, "-c", CHILD, str(spawn), events_path, *argv], check=True, stdout=subprocess.DEVNULL, cwd=star.parent)
    ended = time.time()
    record = json.loads(Path(events_path).read_text())
    os.unlink(events_path)
    marker = job / "RELION_JOB_EXIT_SUCCESS"
    exit_marker = marker.stat().st_mtime if marker.exists() else ended
    spans: dict[str, float] = {}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for name, t0, t1 in record["events"]:
        spans[name] = spans.get(name, 0.0) + (t1 - t0)
        first.setdefault(name, t0)
        last[name] = t1
    job_start = first["job"]
    iteration_end = last.get("iterations", job_start)
    # writes during the iterations belong to them; the ones after them are outputs
    writes_after = sum(t1 - t0 for name, t0, t1 in record["events"] if name == "write run_it" and t0 >= iteration_end)
    writes_before = sum(t1 - t0 for name, t0, t1 in record["events"] if name == "write run_it" and t0 < first.get("iterations", job_start) + 1e-9)
    writes_during = spans.get("write run_it", 0.0) - writes_after - writes_before
    phases = {
        "start-up (interpreter, imports, options)": job_start - spawn,
        "load particles": spans.get("load particles", 0.0),
        "init (initial maps, it000 files)": spans.get("init", 0.0) + writes_before,
        # the group imposed on the class maps between iterations (vdam.imposition.imposing_due) belongs to them
        "iterations": spans.get("iterations", 0.0) + writes_during + spans.get("imposing the group", 0.0),
        "final pass": spans.get("final pass", 0.0),
        "final reconstruction": spans.get("final reconstruction", 0.0),
        "symmetry alignment": spans.get("symmetry alignment", 0.0),
        "evidence (half-set maps)": spans.get("evidence", 0.0),
        "final map (with the VDAM maps)": spans.get("final map", 0.0) + spans.get("fine final map", 0.0),
        "outputs (run_it files, initial_model.mrc, nodes, view.cxc)": writes_after + spans.get("outputs", 0.0),
    }
    accounted_in_job = sum(v for k, v in phases.items() if not k.startswith(("start-up", "outputs"))) + writes_after
    phases["other in the job (symmetrise, mask, write map)"] = max(0.0, spans["job"] - accounted_in_job)
    phases["report (foreground, to the exit marker)"] = max(0.0, exit_marker - last.get("outputs", last["job"]))
    phases["after the exit marker"] = max(0.0, ended - exit_marker)
    to_marker = exit_marker - spawn
    return {"phases": phases, "to_exit_marker": to_marker, "process": ended - spawn, "fixed_cost": to_marker - phases["iterations"]}


def slowest_imports(top: int = 8) -> tuple[float, list[tuple[str, float]]]:
    """Seconds to import what `novomap initial-model --help` imports, and the largest top-level packages."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "novomap", "initial-model", "--help"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    packages: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if name.strip() == "package" or not cumulative.strip().isdigit():
            continue
        if name.startswith(" ") and not name.startswith("  "):  # imported at top level (one space of indent)
            top_name = name.strip().split(".")[0]
            packages[top_name] = packages.get(top_name, 0.0) + int(cumulative) / 1e6
    return wall, sorted(packages.items(), key=lambda item: -item[1])[:top]


def quality(data: Path, job: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "novomap", "compare", str(data / "truth.mrc"), str(job / "initial_model.mrc"), "--align", "--json"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--iter", type=int, default=12)
    parser.add_argument("--j", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_fixed"))
    parser.add_argument("--label", default="", help="a name for this code version in the results")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/results/<today>-fixed-cost.md")
    parser.add_argument("--star", type=Path, default=None, help="time a job on these particles instead of simulated ones (no FSC to a truth)")
    parser.add_argument("extra", nargs="*", help="more initial-model options, after --")
    args = parser.parse_args()
    data = args.out / f"data_n{args.n}"
    if args.star is None:
        simulate(data, args.n)
    star = (data / "particles.star") if args.star is None else args.star.resolve()
    import_wall, packages = slowest_imports()
    runs = []
    for r in range(args.repeat):
        job = args.out / f"job_{r}"
        runs.append((run_job(star, job.resolve(), args.iter, args.j, args.extra), quality(data, job) if args.star is None else None))
    what = f"{args.n} particles" if args.star is None else args.star.name
    lines = [f"## {args.label or 'run'} ({date.today()}, {what}, {args.iter} iterations, --j {args.j}, {os.cpu_count()} CPUs)", ""]
    lines.append("| phase | " + " | ".join(f"run {r + 1} (s)" for r in range(len(runs))) + " |")
    lines.append("|---|" + "---|" * len(runs))
    for name in runs[0][0]["phases"]:
        lines.append(f"| {name} | " + " | ".join(f"{run['phases'][name]:.2f}" for run, _ in runs) + " |")
    for key, title in (("to_exit_marker", "**wall to the exit marker**"), ("process", "wall to the end of the process"), ("fixed_cost", "**fixed cost** (exit marker - iterations)")):
        lines.append(f"| {title} | " + " | ".join(f"{run[key]:.2f}" for run, _ in runs) + " |")
    if args.star is None:
        lines.append("| FSC 0.5 / 0.143 to the truth (Å), cc | " + " | ".join(
            f"{q['fsc05_a']:.1f} / {q['fsc0143_a']:.1f}, {q['cc']:.3f}"
            for _, q in runs) + " |")
    lines.append("")
    lines.append(f"`novomap initial-model --help` (all imports): {import_wall:.2f} s; largest top-level imports: "
                 + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in packages))
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.star is None:
        print(json.dumps([q for _, q in runs]))
    if args.write:
        result = REPO / "benchmarks" / "results" / f"{date.today()}-fixed-cost.md"
        with result.open("a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
