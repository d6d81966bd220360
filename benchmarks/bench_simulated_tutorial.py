"""Benchmark: the simulated tutorial data set (issue 3 acceptance 2 and 4, issue 6 (a)).

Simulates 5,800 particles from the built-in 5A1A beta-gal map at SNR 0.1 with the tutorial's
defocus values (64 px, 3.54 Å), runs `novomap initial-model` on them (100 iterations, D2) and
reports wall time, time per phase, peak memory and the FSC of initial_model.mrc to the truth.

    python benchmarks/bench_simulated_tutorial.py [--n 5800] [--iter 100] [--j 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TUTORIAL_CTF = REPO.parent / "shared" / "data" / "betagal_relion31_tutorial_metadata" / "Extract" / "job018" / "particles.star"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5800)
    parser.add_argument("--iter", type=int, default=100)
    parser.add_argument("--j", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gpu", default=None)
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_sim"))
    args = parser.parse_args()
    torch.set_num_threads(args.j)
    data = args.out / f"data_n{args.n}"
    if not (data / "particles.star").exists():
        ctf = ["--ctf-from", str(TUTORIAL_CTF)] if TUTORIAL_CTF.exists() else []
        subprocess.run([sys.executable, "-m", "novomap", "simulate", "--demo", "--o", str(data), "--n", str(args.n), "--snr", "0.1", "--seed", "7", *ctf], check=True)
    job = args.out / f"job_n{args.n}_it{args.iter}_seed{args.seed}_j{args.j}{'_gpu' if args.gpu is not None else ''}"
    command = [
        sys.executable, "-m", "novomap", "initial-model", "--i", str(data / "particles.star"), "--o", str(job),
        "--iter", str(args.iter), "--particle-diameter", "200", "--sym", "D2", "--preread", "--j", str(args.j),
        "--seed", str(args.seed), "--quiet",
    ] + (["--gpu", args.gpu] if args.gpu is not None else [])
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    from novomap.io.mrc import read_map
    from novomap.maps.align import align_maps
    from novomap.maps.fsc import fsc, resolution_at

    truth, pixel = read_map(data / "truth.mrc")
    model, _ = read_map(job / "initial_model.mrc")
    alignment = align_maps(torch.tensor(truth), torch.tensor(model), pixel)
    curve = fsc(torch.tensor(truth), alignment.volume)
    history = json.loads((job / "history.json").read_text()) if (job / "history.json").exists() else []
    phases: dict[str, float] = {}
    for figures in history:
        for name, seconds in figures.get("timings", {}).items():
            phases[name] = phases.get(name, 0.0) + seconds
    print(json.dumps({
        "benchmark": f"simulated tutorial ({args.n} particles, SNR 0.1, 64 px, 3.54 Å)",
        "iterations": args.iter, "threads": args.j, "gpu": args.gpu, "seed": args.seed, "date": str(date.today()),
        "wall_s": round(wall, 1), "peak_memory_mb": round(peak_mb),
        "phase_seconds": {k: round(v, 1) for k, v in sorted(phases.items())},
        "cc": round(float(alignment.cc), 3), "hand_flipped": bool(alignment.hand_flipped),
        "fsc05_a": round(float(resolution_at(curve, 0.5, truth.shape[0], pixel)), 1),
        "fsc0143_a": round(float(resolution_at(curve, 0.143, truth.shape[0], pixel)), 1),
        "host_cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
