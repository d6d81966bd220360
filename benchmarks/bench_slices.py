"""Benchmark: central slices and back-projection on the CPU, grid_sample against the compiled loops.

The two paths of `physics.projection` timed in the same process on the E-step's typical sizes
(64 px box, pad 1): the slices of one late iteration (20,000 fine orientations at a 64-px window)
and of an early one (4,608 orientations at a 30-px window). Prints seconds per call (best of
--repeats) and the largest difference between the paths.

    python benchmarks/bench_slices.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from novomap.physics import trilinear_cpu
from novomap.physics.projection import _grid_sample_adjoint, _grid_sample_slices
from novomap.physics.window import fourier_window
from novomap.sampling.grid import build_search_grid

CASES = (("late iteration", 2, 64, 20_000), ("early iteration", 1, 30, 4_608))


def best_of(repeats: int, call) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    generator = torch.Generator().manual_seed(0)
    volume = torch.randn(64, 64, 64, dtype=torch.complex64, generator=generator)
    print(f"threads {args.threads}, best of {args.repeats}")
    print("| case | slices x pixels | operation | grid_sample (s) | compiled (s) | speed-up | max difference |")
    print("|---|---|---|---|---|---|---|")
    for name, order, size, n_slices in CASES:
        rotations = build_search_grid(order, 6, 2, 0.1).fine_rotations.reshape(-1, 3, 3).float()[:n_slices]
        window = fourier_window(64, size, "cpu")
        shape = f"{rotations.shape[0]} x {window.n_pixels}"
        out = torch.empty((rotations.shape[0], window.n_pixels), dtype=torch.complex64)
        trilinear_cpu.gather_slices(volume, rotations, window.kx, window.ky, 1, out)  # compile or load
        t_ref, ref = best_of(args.repeats, lambda: _grid_sample_slices(volume, rotations, window.kx, window.ky, 1, out.clone()))
        t_new, new = best_of(args.repeats, lambda: (trilinear_cpu.gather_slices(volume, rotations, window.kx, window.ky, 1, out), out)[1])
        print(f"| {name} | {shape} | slices | {t_ref:.3f} | {t_new:.3f} | {t_ref / t_new:.1f}x | {float((ref - new).abs().max()):.1e} |")
        channels = [torch.randn(rotations.shape[0], window.n_pixels, generator=generator) for _ in range(3)]
        trilinear_cpu.scatter_slices(channels, rotations, window.kx, window.ky, 1, 64)
        t_ref, ref = best_of(args.repeats, lambda: _grid_sample_adjoint(channels, rotations, window.kx, window.ky, 1, 64, torch.float32, torch.device("cpu")))
        t_new, new = best_of(args.repeats, lambda: trilinear_cpu.scatter_slices(channels, rotations, window.kx, window.ky, 1, 64))
        relative = float((ref.double() - new).abs().max() / new.abs().max())
        print(f"| {name} | {shape} | back-projection (3 channels) | {t_ref:.3f} | {t_new:.3f} | {t_ref / t_new:.1f}x | {relative:.1e} (relative) |")


if __name__ == "__main__":
    main()
