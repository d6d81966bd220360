"""Benchmark: how one mini-batch iteration's cost grows with box size and angular sampling (issue 6 (c)).

For each box (64 px at 3.54 Å, 128 px at 1.77 Å: the same field of view) it simulates particles
from the built-in 5A1A map (SNR 0.1, tutorial defocus values), starts from the true map (so the
posteriors are as sharp as late in a real run) and times one final-phase iteration of
`--iter 100`'s schedule (mini-batch of --n particles) at coarse HEALPix orders 1, 2, 3
(fine sampling 15, 7.5, 3.75 deg) and at two resolutions: 10 Å and the full box. It prints one
JSON line per configuration: the phases' seconds, ms per particle, and the coarse pass's matrix
product as GFLOP/s and as a fraction of this machine's float32 matrix-product throughput,
measured here on a product of the same shape.

    python benchmarks/bench_scaling.py [--n 1000] [--j 2] [--boxes 64 128] [--orders 1 2 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TUTORIAL_CTF = REPO.parent / "shared" / "data" / "betagal_relion31_tutorial_metadata" / "Extract" / "job018" / "particles.star"
FIELD_OF_VIEW_A = 64 * 3.54


def simulated_set(out: Path, n: int, box: int) -> Path:
    data = out / f"data_n{n}_box{box}"
    if not (data / "particles.star").exists():
        ctf = ["--ctf-from", str(TUTORIAL_CTF)] if TUTORIAL_CTF.exists() else []
        command = [sys.executable, "-m", "novomap", "simulate", "--demo", "--o", str(data), "--n", str(n), "--snr", "0.1",
                   "--box", str(box), "--pixel-size", f"{FIELD_OF_VIEW_A / box:.4f}", "--seed", "7", *ctf]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return data / "particles.star"


def gemm_gflops(rows: int, inner: int, columns: int, repeats: int = 3) -> float:
    """Measured float32 matrix-product throughput of this machine at the given shape."""
    a, b = torch.randn(rows, inner), torch.randn(inner, columns)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2.0 * rows * inner * columns * repeats / (time.perf_counter() - started) / 1e9


def time_iteration(state, particles, half, config, repeats: int) -> dict:
    from novomap.vdam.iterate import run_iteration

    best: dict = {}
    for _ in range(repeats):
        trial = copy.deepcopy(state)
        started = time.perf_counter()
        figures = run_iteration(trial, particles, half, config, torch.device("cpu"))
        timings = dict(figures["timings"], total=time.perf_counter() - started)
        best = timings if not best else {k: min(v, best.get(k, v)) for k, v in timings.items()}
    return {"figures": figures, "seconds": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--j", type=int, default=2)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_scaling"))
    args = parser.parse_args()
    torch.set_num_threads(args.j)

    from novomap.estep.driver import chunk_size
    from novomap.io.mrc import read_map
    from novomap.io.particles import ParticleSet
    from novomap.model.params import image_sizes
    from novomap.physics.window import fourier_window
    from novomap.runtime import tune_allocator
    from novomap.sampling.grid import build_search_grid
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.iterate import pseudo_halves
    from novomap.vdam.start import initial_state

    tune_allocator()
    for box in args.boxes:
        star = simulated_set(args.out, args.n, box)
        particles = ParticleSet.from_star(star, preread=True)
        truth, _ = read_map(star.parent / "truth.mrc")
        half = pseudo_halves(particles)
        for resolution_a in (10.0, None):
            shell = box // 2 if resolution_a is None else int(round(box * particles.pixel_size_a / resolution_a))
            for order in args.orders:
                config = VdamConfig(n_iter=100, seed=1, initial_subset=args.n, final_subset=args.n, max_healpix_order=order, healpix_order=order)
                state = initial_state(particles, config)
                state.maps = torch.tensor(truth, dtype=torch.float64)[None]
                state.resolution_shell = shell
                state.iteration = 80  # final phase: full step, no accuracy estimate, no sampling change
                result = time_iteration(state, particles, half, config, args.repeats)
                figures, seconds = result["figures"], result["seconds"]
                grid = build_search_grid(order, config.offset_range_px, config.offset_step_px)
                current, coarse = image_sizes(shell, box, grid.coarse_step_deg, config.particle_diameter_a, particles.pixel_size_a)
                coarse_pixels = int((fourier_window(box, current).shell < coarse // 2).sum())
                rows = grid.n_coarse_translations * args.n
                flop = 2.0 * rows * 2 * coarse_pixels * grid.n_coarse_orientations
                chunk_rows = grid.n_coarse_translations * chunk_size(grid, 1)
                peak = gemm_gflops(chunk_rows, 2 * coarse_pixels, grid.n_coarse_orientations)
                print(json.dumps({
                    "benchmark": "one final-phase iteration", "date": str(date.today()), "threads": args.j, "host_cpus": os.cpu_count(),
                    "box": box, "pixel_size_a": round(particles.pixel_size_a, 3), "resolution_a": round(box * particles.pixel_size_a / shell, 1),
                    "fine_sampling_deg": grid.fine_step_deg, "particles": figures["batch_size"],
                    "current_size": current, "coarse_size": coarse, "coarse_orientations": grid.n_coarse_orientations,
                    "coarse_translations": grid.n_coarse_translations, "average_pmax": round(figures["average_pmax"], 2),
                    "seconds": {k: round(v, 2) for k, v in sorted(seconds.items())},
                    "ms_per_particle": round(1000 * seconds["total"] / figures["batch_size"], 2),
                    "coarse_gemm_gflop": round(flop / 1e9, 1),
                    "coarse_gemm_gflops_achieved": round(flop / 1e9 / seconds["coarse"], 1),
                    "machine_gemm_gflops": round(peak, 1),
                    "coarse_fraction_of_gemm_peak": round(flop / 1e9 / seconds["coarse"] / peak, 2),
                    "iteration_fraction_of_gemm_peak": round(flop / 1e9 / seconds["total"] / peak, 2),
                }), flush=True)


if __name__ == "__main__":
    main()
