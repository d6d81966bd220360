"""Benchmark: memory at scale (issue 6, "data at scale").

Simulates a large data set (default 200,000 particles of 128 px, float16 stacks on disk) and runs
`novomap initial-model` on it without --preread, so that images stream from the memory-mapped
stacks: noise estimation reads 1,000 of them, each mini-batch reads its own, and the final pass
assigns every particle chunk by chunk. It reports the data size, the job's peak resident memory
and wall time, and checks that the final data.star holds every particle.

The point is memory, not speed: `--iter 1` keeps the run short on a CPU (one mini-batch, then the
final pass over all particles at the first iteration's resolution).

    python benchmarks/bench_scale.py [--n 200000] [--box 128] [--iter 1] [--j 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIELD_OF_VIEW_A = 64 * 3.54


def run_measured(command: list[str], **kwargs) -> tuple[float, float]:
    """Run a child process -> (wall seconds, its own peak resident memory in MB)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, **kwargs)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--iter", type=int, default=1)
    parser.add_argument("--j", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_scale"))
    args = parser.parse_args()

    data = args.out / f"data_n{args.n}_box{args.box}"
    figures: dict = {"benchmark": "memory at scale", "date": str(date.today()), "particles": args.n, "box": args.box, "threads": args.j, "host_cpus": os.cpu_count()}
    if not (data / "particles.star").exists():
        wall, peak = run_measured([
            sys.executable, "-m", "novomap", "simulate", "--demo", "--o", str(data), "--n", str(args.n), "--snr", "0.1",
            "--box", str(args.box), "--pixel-size", f"{FIELD_OF_VIEW_A / args.box:.4f}", "--float16", "--seed", "11",
        ], stdout=subprocess.DEVNULL)
        figures.update(simulate_wall_s=round(wall, 1), simulate_peak_memory_mb=round(peak))
    stacks = list((data / "Particles").glob("*.mrcs"))
    figures["data_on_disk_mb"] = round(sum(path.stat().st_size for path in stacks) / 2**20)
    figures["data_as_float32_mb"] = round(args.n * args.box * args.box * 4 / 2**20)

    job = args.out / f"job_n{args.n}_box{args.box}_it{args.iter}"
    wall, peak = run_measured([
        sys.executable, "-m", "novomap", "initial-model", "--i", str(data / "particles.star"), "--o", str(job),
        "--iter", str(args.iter), "--particle-diameter", "200", "--sym", "D2", "--j", str(args.j), "--quiet", "--no-report",
    ])
    figures.update(job_wall_s=round(wall, 1), job_peak_memory_mb=round(peak))

    import starfile

    final = sorted(job.glob("run_it*_data.star"))[-1]
    assigned = starfile.read(final)["particles"]
    figures["final_data_star_rows"] = len(assigned)
    figures["all_particles_assigned"] = bool(len(assigned) == args.n and assigned["rlnMaxValueProbDistribution"].notna().all())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
