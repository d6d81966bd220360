"""Benchmark: what K classes cost (issue "Speed", part 2): a K=3 job against a K=1 job on the same particles.

Simulates 1,000 particles from the built-in beta-gal map once (64 px, SNR 0.1), then runs
`novomap initial-model --iter 20 --K K --sym C1` for K = 1 and K = 3, interleaved (K=1, K=3, K=1,
K=3, ... so that a busy machine slows both alike), and prints for each run the wall time, the
CPU time of the child process and the seconds per E-step/M-step phase summed over the
iterations (history.json), then the K=3/K=1 ratios (median over the repeats). The target is a
ratio <= 1.5.

    python benchmarks/bench_classes.py [--n 1000] [--iter 20] [--j 2] [--repeat 2] [--write]

--write appends the table to benchmarks/results/<today>-classes.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def simulate(data: Path, n: int) -> None:
    if (data / "particles.star").exists():
        return
    subprocess.run([sys.executable, "-m", "novomap", "simulate", "--demo", "--o", str(data), "--n", str(n), "--snr", "0.1", "--seed", "7"],
                   check=True, stdout=subprocess.DEVNULL)


def run_job(data: Path, job: Path, k: int, iterations: int, threads: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "novomap", "initial-model", "--i", str(data / "particles.star"), "--o", str(job), "--iter", str(iterations),
                    "--K", str(k), "--sym", "C1", "--j", str(threads), "--particle-diameter", "200", "--seed", "1", "--quiet", "--no-report"],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    phases: dict[str, float] = {}
    iterations_s = 0.0
    for figures in json.loads((job / "history.json").read_text()):
        iterations_s += figures["seconds"]
        for name, seconds in figures.get("timings", {}).items():
            if isinstance(seconds, float):
                phases[name] = phases.get(name, 0.0) + seconds
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"k": k, "wall": wall, "cpu": cpu, "iterations": iterations_s, "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--iter", type=int, default=20)
    parser.add_argument("--j", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_classes"))
    parser.add_argument("--label", default="")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    data = args.out / f"data_n{args.n}"
    simulate(data, args.n)
    runs = []
    for r in range(args.repeat):
        for k in (1, 3):
            runs.append(run_job(data, args.out / f"job_k{k}_{r}", k, args.iter, args.j))
            print(json.dumps({key: (round(v, 2) if isinstance(v, float) else v) for key, v in runs[-1].items() if key != "phases"}), flush=True)
    names = sorted({name for run in runs for name in run["phases"]})
    lines = [f"## {args.label or 'run'} ({date.today()}, {args.n} particles, {args.iter} iterations, --j {args.j}, {os.cpu_count()} CPUs, K=1 and K=3 interleaved)", ""]
    lines.append("| run | K | wall (s) | CPU (s) | iterations (s) | " + " | ".join(names) + " |")
    lines.append("|---|---|---|---|---|" + "---|" * len(names))
    for i, run in enumerate(runs):
        lines.append(f"| {i // 2 + 1} | {run['k']} | {run['wall']:.1f} | {run['cpu']:.1f} | {run['iterations']:.1f} | "
                     + " | ".join(f"{run['phases'].get(name, 0.0):.2f}" for name in names) + " |")

    def ratio(key: str) -> float:
        pairs = [(runs[i][key], runs[i + 1][key]) for i in range(0, len(runs) - 1, 2)]
        return statistics.median(b / a for a, b in pairs)

    lines.append("")
    lines.append(f"K=3 / K=1 (median over {len(runs) // 2} pairs): wall **{ratio('wall'):.2f}**, CPU {ratio('cpu'):.2f}, iterations {ratio('iterations'):.2f}")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.write:
        with (REPO / "benchmarks" / "results" / f"{date.today()}-classes.md").open("a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
