"""Benchmark: particles extracted at full size against the same particles re-extracted small.

Simulates N particles of the built-in beta-gal map at 256 px and 0.885 Å/px (the tutorial's
micrograph pixel) with the tutorial's CTFs and a dose giving SNR 0.1 at 64 px, then makes the
64-px / 3.54 Å set from the same images by Fourier cropping (what RELION's extraction with
rescaling does). Runs `novomap initial-model` on both (offsets 24/8 px at 256 px, 6/2 px at 64 px),
and prints wall time, the time ratio, peak memory, the output box and the FSC to the truth.
Optionally (--two-groups) also a two-optics-group set: half the particles at 64 px / 3.54 Å, half at
80 px / 2.832 Å.

    python benchmarks/bench_working_grid.py [--n 2000] [--iter 100] [--j 2] [--seed 1] [--two-groups]
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

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
TUTORIAL_CTF = REPO.parent / "shared" / "data" / "betagal_relion31_tutorial_metadata" / "Extract" / "job018" / "particles.star"


def simulate_full_size(folder: Path, n: int) -> None:
    ctf = ["--ctf-from", str(TUTORIAL_CTF)] if TUTORIAL_CTF.exists() else []
    # 16 full-size pixels make one 64-px pixel: white noise averages down 16x, so SNR 0.1/16 here
    subprocess.run(
        [sys.executable, "-m", "novomap", "simulate", "--demo", "--o", str(folder), "--n", str(n), "--snr", "0.00625",
         "--box", "256", "--pixel-size", "0.885", "--max-shift", "12", "--seed", "7", "--float16", *ctf],
        check=True,
    )


def write_resized(source: Path, target: Path, box: int, rows: np.ndarray | None = None) -> None:
    """The particles of source/particles.star Fourier-cropped to `box` px (same field of view)."""
    import starfile

    from novomap.io.mrc import write_stack
    from novomap.io.particles import ParticleSet
    from novomap.io.working_grid import fourier_resize_images

    target.mkdir(parents=True, exist_ok=True)
    particles = ParticleSet.from_star(source / "particles.star")
    blocks = starfile.read(source / "particles.star", always_dict=True)
    optics, table = blocks["optics"].copy(), blocks["particles"].copy()
    rows = np.arange(particles.n) if rows is None else rows
    images = torch.cat([fourier_resize_images(particles.images(part), box) for part in np.array_split(rows, max(1, len(rows) // 250))])
    write_stack(target / "particles.mrcs", images.numpy(), particles.pixel_size_a * particles.box_size / box)
    optics["rlnImageSize"] = box
    optics["rlnImagePixelSize"] = particles.pixel_size_a * particles.box_size / box
    table = table.iloc[rows].reset_index(drop=True)
    table["rlnImageName"] = [f"{i + 1:06d}@particles.mrcs" for i in range(len(rows))]
    starfile.write({"optics": optics, "particles": table}, target / "particles.star")


def write_two_groups(small: Path, source: Path, target: Path) -> None:
    """Half the particles from the 64-px set (group 1), the other half at 80 px / 2.832 Å (group 2)."""
    import starfile

    half_80 = target / "g2"
    n = len(starfile.read(source / "particles.star", always_dict=True)["particles"])
    odd = np.arange(1, n, 2)
    write_resized(source, half_80, 80, odd)
    g1 = starfile.read(small / "particles.star", always_dict=True)
    g2 = starfile.read(half_80 / "particles.star", always_dict=True)
    optics = pd.concat([g1["optics"], g2["optics"]], ignore_index=True)
    optics["rlnOpticsGroup"] = [1, 2]
    optics["rlnOpticsGroupName"] = ["opticsGroup1", "opticsGroup2"]
    p1 = g1["particles"].iloc[np.arange(0, n, 2)].copy()
    to_small = os.path.relpath(small, target)
    p1["rlnImageName"] = [name.replace("@", f"@{to_small}/") for name in p1["rlnImageName"]]
    p2 = g2["particles"].copy()
    p2["rlnImageName"] = [name.replace("@", "@g2/") for name in p2["rlnImageName"]]
    p2["rlnOpticsGroup"] = 2
    starfile.write({"optics": optics, "particles": pd.concat([p1, p2], ignore_index=True)}, target / "particles.star")


def run_job(star: Path, job: Path, args, offsets: tuple[float, float]) -> dict:
    command = [
        sys.executable, "-m", "novomap", "initial-model", "--i", str(star), "--o", str(job), "--iter", str(args.iter),
        "--particle-diameter", "200", "--sym", "D2", "--preread", "--j", str(args.j), "--seed", str(args.seed), "--quiet",
        "--no-report", "--offset-range", str(offsets[0]), "--offset-step", str(offsets[1]),
    ]
    started = time.perf_counter()
    # each job in its own process: its peak memory is that child's own rusage
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"job failed: {' '.join(command)}")
    return {"wall_s": round(time.perf_counter() - started, 1), "peak_memory_mb": round(usage.ru_maxrss / 1024)}


def fsc_to_truth(map_path: Path, truth_path: Path) -> dict:
    from novomap.io.mrc import read_map
    from novomap.maps.align import align_maps
    from novomap.maps.fsc import fsc, resolution_at
    from novomap.maps.transform import fourier_resize

    truth, truth_pixel = read_map(truth_path)
    model, pixel = read_map(map_path)
    truth_t, model_t = torch.tensor(truth), torch.tensor(model)
    # compared on the 64-px grid: nothing beyond 7 Å is asked of an initial model
    size = 64
    truth_t = fourier_resize(truth_t, round(truth_t.shape[0] * truth_pixel / 3.54)) if abs(truth_pixel - 3.54) > 1e-3 else truth_t
    model_t = fourier_resize(model_t, round(model_t.shape[0] * pixel / 3.54)) if abs(pixel - 3.54) > 1e-3 else model_t
    alignment = align_maps(truth_t.float(), model_t.float(), 3.54)
    curve = fsc(truth_t, alignment.volume)
    return {
        "output_box": int(model.shape[0]),
        "output_pixel_a": round(float(pixel), 4),
        "cc": round(float(alignment.cc), 3),
        "fsc05_a": round(float(resolution_at(curve, 0.5, size, 3.54)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--iter", type=int, default=100)
    parser.add_argument("--j", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--two-groups", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_grid"))
    args = parser.parse_args()
    full, small = args.out / f"full_n{args.n}", args.out / f"small_n{args.n}"
    if not (full / "particles.star").exists():
        simulate_full_size(full, args.n)
    if not (small / "particles.star").exists():
        write_resized(full, small, 64)
    results = {"benchmark": f"{args.n} particles, 256 px at 0.885 Å vs 64 px at 3.54 Å", "date": str(date.today()), "iterations": args.iter, "threads": args.j, "seed": args.seed}
    jobs = [("64px", small / "particles.star", (6.0, 2.0)), ("256px", full / "particles.star", (24.0, 8.0))]
    if args.two_groups:
        both = args.out / f"two_groups_n{args.n}"
        if not (both / "particles.star").exists():
            write_two_groups(small, full, both)
        jobs.append(("two_groups", both / "particles.star", (6.0, 2.0)))
    for name, star, offsets in jobs:
        job = args.out / f"job_{name}_n{args.n}_it{args.iter}_seed{args.seed}"
        figures = run_job(star, job, args, offsets)
        figures.update(fsc_to_truth(job / "initial_model.mrc", full / "truth.mrc"))
        results[name] = figures
        print(name, figures, flush=True)
    results["time_ratio_256_over_64"] = round(results["256px"]["wall_s"] / results["64px"]["wall_s"], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
