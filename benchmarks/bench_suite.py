"""Benchmark suite: `novomap initial-model` on our own specimens (benchmarks/specimens.py).

For each specimen: build its map (cached), simulate its particles with a fixed simulation seed
(`novomap.simulate`, cached per specimen, particle count and seed), compute the true-pose bound
(`novomap reconstruct` of the same particles at their true poses, symmetrised with the specimen's
group, soft-masked with its mask, FSC 0.5 to the truth), then run `novomap initial-model` with
seeds 1..N and score initial_model.mrc against the truth with `novomap compare --align --json`
(rotation, shift and hand). Reported per run: FSC 0.5, FSC 0.5 / bound, cc, hand, wrong fold
(ratio > 1.5, cc < 0.5 or no FSC 0.5 inside the box) and wall time.

`real_betagal` is the real RELION-tutorial beta-gal particles (1,455 particles of the good 2D
classes, D2, mask 200 Å) against betaGal.mrc; its "bound" is the reconstruction of the 582
particles with RELION-refined poses (a reference point, not a bound on the 1,455).

Writes benchmarks/results/DATE-suite[-TAG].md (a table and per-specimen summaries) and a .json of
the raw figures; a file already there is never overwritten (-2, -3, ... is appended).

    python benchmarks/bench_suite.py --quick                              # smoke test, every specimen
    python benchmarks/bench_suite.py --specimens adk_c7 hb_i --seeds 2    # 2 seeds on two specimens
    python benchmarks/bench_suite.py --specimens real_betagal --seeds 10
    python benchmarks/bench_suite.py --specimens adk_o --extra-args "--sym auto" --tag symauto
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from specimens import HELD_OUT, SPECIMENS, BuiltSpecimen, build_specimen, describe, specimen_named  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
REAL_PARTICLES = DATA / "betagal_relion5_tutorial_particles"
REAL_STAR = "particles_ctf_from_relion31_tutorial_goodclasses.star"
REAL_POSES_STAR = REAL_PARTICLES / "particles_with_relion_refined_poses.star"
REAL_TRUTH = DATA / "betagal_relion_tutorial_map" / "betaGal.mrc"
REAL_NAME = "real_betagal"

WRONG_RATIO = 1.5  # FSC 0.5 more than this times the bound ...
WRONG_ABOVE_A = 20.0  # ... and worse than this: the fold is wrong (an 11 Å map against a 7 Å bound is not)
WRONG_CC = 0.5
QUICK_PARTICLES = 300
QUICK_ITER = 15


def novomap(*arguments: str, cwd: Path | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "novomap", *arguments]
    return subprocess.run(command, cwd=cwd, check=False, text=True, capture_output=capture)


def compare(truth: Path, model: Path) -> dict:
    """`novomap compare truth model --align --json` -> its JSON (or an error)."""
    result = novomap("compare", str(truth), str(model), "--align", "--json", capture=True)
    if result.returncode != 0:
        return {"error": (result.stderr or result.stdout).strip()[-300:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def fsc05_to(truth: torch.Tensor, volume: torch.Tensor, pixel_size_a: float) -> float:
    from novomap.maps.fsc import fsc, resolution_at

    return float(resolution_at(fsc(truth, volume.to(truth.dtype)), 0.5, truth.shape[-1], pixel_size_a))


# --------------------------------------------------------------------------------------------
# Data sets


SIMULATION_RECORD = "simulation.json"


def check_simulation(folder: Path, settings: dict) -> None:
    """Refuse a cached data set simulated with other settings than `settings` (SimulationOptions as a dict).

    The folder's name holds the map's key, the particle count and the simulation seed, not the SNR,
    defocus or mask: a specimen edited in those would otherwise reuse its old particles without a word.
    Folders written before the record existed (no SIMULATION_RECORD) cannot be checked and are used."""
    record = folder / SIMULATION_RECORD
    if not record.is_file():
        return
    stored = json.loads(record.read_text())
    changed = sorted(key for key in set(stored) | set(settings) if stored.get(key) != settings.get(key))
    if changed:
        raise SystemExit(
            f"{folder} holds particles simulated with other settings ({', '.join(f'{k}: {stored.get(k)} there, {settings.get(k)} now' for k in changed)}); "
            "delete the folder to simulate them again"
        )


def simulate_specimen(built: BuiltSpecimen, n: int, sim_seed: int, root: Path) -> Path:
    """Simulated particles of a specimen (cached, check_simulation): the folder holding particles.star and truth.mrc."""
    from novomap.simulate import SimulationOptions, simulate

    s = built.specimen
    folder = root / "data" / f"{s.name}-{s.key()}-n{n}-sim{sim_seed}"
    options = SimulationOptions(
        n=n,
        snr=s.snr,
        box=s.box,
        pixel_size_a=built.pixel_size_a,
        seed=sim_seed,
        defocus_min_a=s.defocus_um[0] * 1e4,
        defocus_max_a=s.defocus_um[1] * 1e4,
        voltage_kv=s.voltage_kv,
        cs_mm=2.7 if s.voltage_kv >= 300 else 1.4,
        amplitude_contrast=0.1,
        particle_diameter_a=built.mask_diameter_a,
    )
    settings = json.loads(json.dumps(dataclasses.asdict(options), default=str))  # as the record reads back
    if (folder / "particles.star").is_file() and (folder / "truth.mrc").is_file():
        check_simulation(folder, settings)
        return folder
    started = time.perf_counter()
    simulate(built.volume, folder, options)
    (folder / SIMULATION_RECORD).write_text(json.dumps(settings, indent=1, sort_keys=True))
    print(f"  simulated {n} particles in {time.perf_counter() - started:.0f} s -> {folder}", flush=True)
    return folder


def true_pose_bound(folder: Path, symmetry: str, mask_diameter_a: float, threads: int) -> dict:
    """Reconstruction at the true poses, symmetrised and soft-masked; FSC 0.5 to truth.mrc."""
    from novomap.io.mrc import read_map, write_map
    from novomap.physics.masks import soft_edge_mask
    from novomap.symmetry.groups import point_group
    from novomap.symmetry.symmetrise import symmetrise

    bound_path = folder / f"bound_{symmetry}.mrc"
    started = time.perf_counter()
    if not bound_path.is_file():
        raw = folder / "true_poses_c1.mrc"
        result = novomap("reconstruct", "--i", "particles.star", "--o", raw.name, "--j", str(threads), cwd=folder, capture=True)
        if result.returncode != 0:
            return {"error": (result.stderr or result.stdout).strip()[-300:]}
        volume, pixel = read_map(raw)
        volume = symmetrise(torch.from_numpy(volume.copy()).double(), point_group(symmetry))
        mask = soft_edge_mask(tuple(volume.shape), mask_diameter_a / pixel / 2, 5.0)
        write_map(bound_path, volume * mask, pixel)
    bound, pixel = read_map(bound_path)
    truth, _ = read_map(folder / "truth.mrc")
    value = fsc05_to(torch.from_numpy(truth.copy()).double(), torch.from_numpy(bound.copy()).double(), pixel)
    return {"bound_fsc05_a": round(value, 2), "bound_s": round(time.perf_counter() - started, 1)}


def real_betagal_bound(root: Path, threads: int) -> dict:
    """The real data's reference point: the 582 particles at RELION's refined poses, D2, vs betaGal.mrc."""
    from novomap.io.mrc import read_map, write_map
    from novomap.physics.masks import soft_edge_mask
    from novomap.symmetry.groups import point_group
    from novomap.symmetry.symmetrise import symmetrise

    folder = root / "data" / REAL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    bound_path = folder / "relion_poses_D2.mrc"
    if not bound_path.is_file():
        raw = folder / "relion_poses_c1.mrc"
        result = novomap("reconstruct", "--i", REAL_POSES_STAR.name, "--o", str(raw), "--j", str(threads), cwd=REAL_PARTICLES, capture=True)
        if result.returncode != 0:
            return {"error": (result.stderr or result.stdout).strip()[-300:]}
        volume, pixel = read_map(raw)
        volume = symmetrise(torch.from_numpy(volume.copy()).double(), point_group("D2"))
        write_map(bound_path, volume * soft_edge_mask(tuple(volume.shape), 200 / pixel / 2, 5.0), pixel)
    figures = compare(REAL_TRUTH, bound_path)
    return {"bound_fsc05_a": figures.get("fsc05_a"), "bound_cc": figures.get("cc"), "bound_note": "582 particles at RELION-refined poses"}


# --------------------------------------------------------------------------------------------
# Runs


def finished(job: Path) -> bool:
    return (job / "initial_model.mrc").is_file() and (job / "RELION_JOB_EXIT_SUCCESS").is_file()


def recorded_wall_s(job: Path) -> float | None:
    """Wall time of a finished job: wall_s.txt (written here), else the job's own 'in XmYs' summary."""
    if (job / "wall_s.txt").is_file():
        return float((job / "wall_s.txt").read_text())
    lines = (job / "run.out").read_text().splitlines() if (job / "run.out").is_file() else []
    for line in reversed(lines):
        match = re.search(r"initial model: .* in (?:(\d+)h)?(?:(\d+)m)?(\d+)s", line)
        if match:
            h, m, sec = (int(x) if x else 0 for x in match.groups())
            return float(3600 * h + 60 * m + sec)
    return None


def evidence_figures(job: Path) -> dict:
    """What the job said about its own map (DIR/evidence.json): ring misfit and its multiple of the noise
    floor, how many attempts ran (a flagged map is run again: a false flag costs a whole run), whether
    the evidence was called weak and why (weak_reasons), and the race's choice between its finalists.
    Empty when the job wrote none."""
    try:
        evidence = json.loads((job / "evidence.json").read_text())
    except (OSError, ValueError):
        return {}
    from novomap.analysis.confidence import chosen_agreement

    ring = evidence.get("ring") or {}
    return {
        "ring_misfit": ring.get("misfit"),
        "ring_ratio": ring.get("ratio"),
        "attempts": len(evidence.get("attempts") or []) or 1,
        "weak": bool(evidence.get("weak")),
        "weak_reasons": weak_reasons(evidence.get("warnings") or []),
        "race_agreement": chosen_agreement(evidence.get("finalists")),  # as initial_model.race_agreement
        "group": applied_group(job),
    }


# a key phrase of each warning of analysis.confidence.warnings_for, and its short name for the tables
WEAK_REASON_NAMES = (
    ("the half-sets agree only", "half-sets"),
    ("differs from the last VDAM map", "vs VDAM"),
    ("featureless ball", "ball"),
    ("a roundish map", "roundish"),
    ("ring misfit", "ring"),
    ("two random starts ended in different maps", "finalists"),
    ("still changing at the last iteration", "unsettled"),
)


def weak_reasons(warnings: list[str]) -> list[str]:
    """Short names of a job's warnings (WEAK_REASON_NAMES; 'other' for a phrase not listed)."""
    return [next((name for phrase, name in WEAK_REASON_NAMES if phrase in warning), "other") for warning in warnings]


def applied_group(job: Path) -> str | None:
    """The point group the job applied (DIR/symmetry.txt's first line): with --sym auto, the one it chose."""
    try:
        first = (job / "symmetry.txt").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return first.split(":", 1)[1].strip() if first.lower().startswith("point group:") else None


def score_existing(job: Path, truth: Path, seed: int) -> dict:
    row = {"seed": seed, "wall_s": recorded_wall_s(job), "job": str(job), "reused": True}
    figures = compare(truth, job / "initial_model.mrc")
    row.update({k: figures.get(k) for k in ("fsc05_a", "fsc0143_a", "cc", "hand_flipped")})
    row.update(evidence_figures(job))
    if "error" in figures:
        row["error"] = figures["error"]
    return row


def run_seed(star: Path, cwd: Path, job: Path, truth: Path, symmetry: str, mask_a: float, seed: int, args) -> dict:
    if (args.reuse or args.score_only) and finished(job):
        return score_existing(job, truth, seed)
    if args.score_only:
        return {"seed": seed, "wall_s": None, "job": str(job), "not_run": True}
    command = [
        "initial-model", "--i", str(star), "--o", str(job), "--iter", str(args.iter),
        "--particle-diameter", f"{mask_a:g}", "--sym", symmetry, "--preread", "--j", str(args.threads),
        "--seed", str(seed), "--quiet", "--no-report", *shlex.split(args.extra_args),
    ]
    started = time.perf_counter()
    result = novomap(*command, cwd=cwd, capture=True)
    wall = time.perf_counter() - started
    row = {"seed": seed, "wall_s": round(wall, 1), "job": str(job)}
    if job.is_dir():
        (job / "wall_s.txt").write_text(f"{wall:.1f}\n")
    if result.returncode != 0 or not (job / "initial_model.mrc").is_file():
        row["error"] = (result.stderr or result.stdout).strip()[-400:]
        row["wrong_fold"] = True
        return row
    figures = compare(truth, job / "initial_model.mrc")
    row.update({k: figures.get(k) for k in ("fsc05_a", "fsc0143_a", "cc", "hand_flipped")})
    row.update(evidence_figures(job))
    if "error" in figures:
        row["error"] = figures["error"]
    return row


def score(row: dict, bound: float | None) -> None:
    for key, digits in (("fsc05_a", 2), ("fsc0143_a", 2), ("cc", 3)):
        if row.get(key) is not None:
            row[key] = round(row[key], digits)
    value = row.get("fsc05_a")
    row["ratio"] = round(value / bound, 2) if value is not None and bound else None
    cc = row.get("cc")
    too_far = row["ratio"] is not None and row["ratio"] > WRONG_RATIO and value > WRONG_ABOVE_A
    row["wrong_fold"] = bool("error" in row or value is None or cc is None or cc < WRONG_CC or too_far)


def run_specimen(name: str, args, root: Path) -> dict:
    print(f"== {name}", flush=True)
    jobs = root / "jobs" / args.label
    if name == REAL_NAME:
        entry = {
            "name": REAL_NAME, "symmetry": "D2", "mass_kda": 465, "box": 64, "pixel_size_a": 3.54,
            "diameter_a": 182, "particle_fraction": 0.8, "mask_diameter_a": 200.0, "mask_fraction": 0.88,
            "snr": None, "n_particles": 1455, "defocus_um": [0.83, 1.17], "description": "real RELION-tutorial particles",
        }
        entry.update(real_betagal_bound(root, args.threads))
        star, cwd, truth, symmetry, mask_a = REAL_PARTICLES / REAL_STAR, REAL_PARTICLES, REAL_TRUTH, "D2", 200.0
    else:
        built = build_specimen(specimen_named(name))
        n = args.particles or built.specimen.n_particles
        entry = describe(built)
        entry["n_particles"] = n
        folder = simulate_specimen(built, n, args.sim_seed, root)
        entry.update(true_pose_bound(folder, built.specimen.symmetry, built.mask_diameter_a, args.threads))
        star, cwd, truth = folder / "particles.star", folder, folder / "truth.mrc"
        symmetry, mask_a = built.specimen.symmetry, built.mask_diameter_a
    print(f"  bound FSC 0.5 {entry.get('bound_fsc05_a')} Å", flush=True)
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        row = run_seed(star, cwd, jobs / f"{name}_seed{seed}", truth, symmetry, mask_a, seed, args)
        if row.get("not_run"):
            print(f"  seed {seed}: no finished job, not run (--score-only)", flush=True)
            continue
        score(row, entry.get("bound_fsc05_a"))
        print(f"  seed {seed}: FSC 0.5 {row.get('fsc05_a')} Å, ratio {row.get('ratio')}, cc {row.get('cc')}, "
              f"wrong {row['wrong_fold']}, {row['wall_s']} s" + (f"  ERROR {row['error'][-200:]}" if "error" in row else ""), flush=True)
        runs.append(row)
    entry["runs"] = runs
    values = [r["fsc05_a"] for r in runs if r.get("fsc05_a") is not None]
    entry["median_fsc05_a"] = round(statistics.median(values), 2) if values else None
    entry["worst_fsc05_a"] = round(max(values), 2) if len(values) == len(runs) and values else None
    entry["wrong_folds"] = sum(r["wrong_fold"] for r in runs)
    return entry


# --------------------------------------------------------------------------------------------
# Report


def git_state() -> dict:
    def git(*a: str) -> str:
        result = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False)
        return result.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "working_tree_modified": bool(git("status", "--porcelain"))}


def _f(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    lines = [
        f"# {report['date']}: specimen suite ({report['label']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Code: commit {report['git']['commit']}" + (", working tree modified" if report["git"]["working_tree_modified"] else ""),
        f"  \nMachine: {report['host_cpus']} CPU cores (shared unless said otherwise), threads per run {report['threads']}; "
        f"iterations {report['iter']}; seeds {report.get('first_seed', 1)}-{report.get('first_seed', 1) + report['seeds'] - 1}; simulation seed {report['sim_seed']}; "
        f"extra initial-model arguments: `{report['extra_args'] or 'none'}`. Total wall time {report['total_s'] / 60:.1f} min.",
        *([f"  \n**Incomplete**: {len(report['specimens'])} specimen(s) done so far."] if not report.get("complete", True) else []),
        *(["  \nRows marked 'earlier run' were scored from jobs already finished in the work folder (--reuse / --score-only)."]
          if any(r.get("reused") for e in report["specimens"] for r in e["runs"]) else []),
        "",
        "Bound = FSC 0.5 to the truth of the same particles reconstructed at their true poses (symmetrised, masked). "
        f"Ratio = FSC 0.5 / bound. Wrong fold: cc < {WRONG_CC}, ratio > {WRONG_RATIO} with FSC 0.5 worse than {WRONG_ABOVE_A:g} Å, "
        "or no FSC 0.5 inside the box.",
        "",
        "## Specimens",
        "",
        "| specimen | sym | mass (kDa, no H) | box | Å/px | particle / box | mask Å (/ box) | SNR | particles | defocus µm | bound FSC 0.5 Å |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["specimens"]:
        lines.append(
            f"| {e['name']} | {e['symmetry']} | {_f(e.get('mass_kda'), 0)} | {e['box']} | {_f(e['pixel_size_a'], 2)} | "
            f"{_f(e['particle_fraction'], 2)} | {_f(e['mask_diameter_a'], 0)} ({_f(e['mask_fraction'], 2)}) | {_f(e.get('snr'), 2)} | "
            f"{e['n_particles']} | {e['defocus_um'][0]}-{e['defocus_um'][1]} | {_f(e.get('bound_fsc05_a'))} |"
        )
    lines += [
        "", "## Runs", "",
        "| specimen | seed | group applied | FSC 0.5 Å | ratio | cc | hand | wrong fold | ring misfit (x floor) | attempts | evidence | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["specimens"]:
        for r in e["runs"]:
            hand = "-" if r.get("hand_flipped") is None else ("mirror" if r["hand_flipped"] else "same")
            wrong = "**yes**" if r["wrong_fold"] else "no"
            if "error" in r:
                wrong += " (error: " + r["error"].splitlines()[-1][:120].replace("|", "/") + ")"
            wall = _f(r["wall_s"], 0) + (" (earlier run)" if r.get("reused") else "")
            ring = "-" if r.get("ring_misfit") is None else f"{r['ring_misfit']:.4f} ({_f(r.get('ring_ratio'), 1)})"
            verdict = "-" if "weak" not in r else ("WEAK" if r["weak"] else "consistent")
            if r.get("weak_reasons"):
                verdict += " (" + ", ".join(r["weak_reasons"]) + ")"
            lines.append(
                f"| {e['name']} | {r['seed']} | {r.get('group') or '-'} | {_f(r.get('fsc05_a'))} | {_f(r.get('ratio'), 2)} | {_f(r.get('cc'), 3)} | {hand} | {wrong} | "
                f"{ring} | {r.get('attempts', '-')} | {verdict} | {wall} |"
            )
    lines += ["", "## Summary", "", "| specimen | bound Å | median FSC 0.5 Å | worst Å | wrong folds | median wall s |", "|---|---|---|---|---|---|"]
    for e in report["specimens"]:
        walls = [r["wall_s"] for r in e["runs"] if r["wall_s"] is not None]
        lines.append(
            f"| {e['name']} | {_f(e.get('bound_fsc05_a'))} | {_f(e['median_fsc05_a'])} | {_f(e['worst_fsc05_a'])} | "
            f"{e['wrong_folds']}/{len(e['runs'])} | {_f(statistics.median(walls), 0) if walls else '-'} |"
        )
    if report.get("notes"):
        lines += ["", "## Notes", "", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


def command_line() -> str:
    """This script's command line, without the --note texts (they are printed as notes)."""
    words, skip = [], False
    for word in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if word == "--note":
            skip = True
            continue
        words.append(word if not word.startswith("--note=") else "--note=...")
    return " ".join(["python", "benchmarks/bench_suite.py", *map(shlex.quote, words)])


def free_path(stem: str) -> Path:
    path = RESULTS / f"{stem}.md"
    number = 2
    while path.exists() or path.with_suffix(".json").exists():
        path = RESULTS / f"{stem}-{number}.md"
        number += 1
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = list(SPECIMENS) + [REAL_NAME] + list(HELD_OUT)
    parser.add_argument("--specimens", nargs="+", default=list(SPECIMENS), choices=names + ["all"], metavar="NAME",
                        help=f"specimens to run (default: every simulated one; 'all' adds {REAL_NAME}): {', '.join(names)}")
    parser.add_argument("--seeds", type=int, default=10, help="initial-model seeds 1..N per specimen (default: 10)")
    parser.add_argument("--first-seed", type=int, default=1,
                        help="seeds run are FIRST..FIRST+N-1 (default: 1), to split a suite over machines or sessions")
    parser.add_argument("--particles", type=int, default=None, help="particles per specimen (default: the specimen's own)")
    parser.add_argument("--iter", type=int, default=100, help="initial-model iterations (default: 100)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per job (default: 1)")
    parser.add_argument("--extra-args", default="", help='passed on to initial-model, e.g. "--sym auto" (later options win)')
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_PARTICLES} particles, {QUICK_ITER} iterations, 1 seed unless --seeds is given")
    parser.add_argument("--sim-seed", type=int, default=7, help="simulation seed (default: 7)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_suite"), help="work folder (data sets, jobs)")
    parser.add_argument("--tag", default=None, help="results file name suffix (default: 'quick' with --quick)")
    parser.add_argument("--no-write", action="store_true", help="print only; write nothing to benchmarks/results")
    parser.add_argument("--note", action="append", default=[], help="a line added to the results file's notes")
    parser.add_argument("--reuse", action="store_true", help="score jobs already finished in --out instead of rerunning them")
    parser.add_argument("--score-only", action="store_true", help="only score finished jobs in --out; run nothing new")
    args = parser.parse_args()
    if "all" in args.specimens:
        args.specimens = names
    if args.quick:
        args.particles = args.particles or QUICK_PARTICLES
        args.iter = QUICK_ITER if args.iter == 100 else args.iter
        if "--seeds" not in " ".join(sys.argv):
            args.seeds = 1
        if REAL_NAME in args.specimens:
            print(f"note: --quick does not reduce the particles of {REAL_NAME} (1,455)", flush=True)
    if args.tag is None and args.quick:
        args.tag = "quick"
    args.label = f"{args.tag or 'full'}-it{args.iter}"
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    started = time.perf_counter()
    today = str(date.today())
    report = {
        "date": today, "label": args.tag or "full", "command": command_line(),
        "git": git_state(), "host_cpus": os.cpu_count(), "threads": args.threads, "iter": args.iter, "seeds": args.seeds, "first_seed": args.first_seed,
        "sim_seed": args.sim_seed, "extra_args": args.extra_args, "total_s": 0.0, "specimens": [], "notes": args.note,
    }
    path = None if args.no_write else free_path(f"{today}-suite" + (f"-{args.tag}" if args.tag else ""))
    for name in args.specimens:
        report["specimens"].append(run_specimen(name, args, args.out))
        report["total_s"] = round(time.perf_counter() - started, 1)
        report["complete"] = len(report["specimens"]) == len(args.specimens)
        # when its runs ended: suite_summary orders a day's batches by it (a file's name does not say)
        report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if path is not None:  # after each specimen, so that a stopped run leaves what it measured
            path.write_text(markdown(report))
            path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    if path is not None:
        print(f"wrote {path} and {path.with_suffix('.json').name}")


if __name__ == "__main__":
    main()
