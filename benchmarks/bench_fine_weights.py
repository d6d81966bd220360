"""The fine pass's weights on the CPU: tensor operations (search._fine_weights) against the compiled
loop per particle (estep.fine_cpu.fine_weights), on chunks shaped like the real tutorial job's.

Prints, per chunk shape, the best of 5 timings of each and how far their results differ.

    python benchmarks/bench_fine_weights.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from novomap.estep import fine_cpu, search

# (particles, hits per particle, sub-translations J, coarse translations, spread of the log weights):
# the early global iterations (broad and sharper posteriors), a late narrowed chunk, a run without
# translational oversampling
SHAPES = [(200, 100, 4, 9, 20.0), (200, 100, 4, 9, 300.0), (89, 9, 4, 25, 100.0), (50, 30, 1, 5, 50.0)]


def best_of(function, repeats: int = 5) -> tuple[float, tuple]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    torch.set_num_threads(parser.parse_args().threads)  # numba's loops take torch's thread count (physics.trilinear_cpu.numba_threads)
    generator = torch.Generator().manual_seed(0)
    for n_batch, hits, n_sub, n_trans, spread in SHAPES:
        n_rows = n_batch * hits * 8
        row_particle = torch.arange(n_batch).repeat_interleave(hits * 8)
        row_translation = torch.randint(0, n_trans, (n_rows,), generator=generator)
        norms = (torch.rand(n_rows, generator=generator) * spread).float()
        cross = (torch.randn(n_rows, n_sub, generator=generator) * spread * 0.2).float()
        row_prior = torch.randn(n_rows, generator=generator, dtype=torch.float64)
        offset_prior = -torch.rand(n_batch, n_trans, n_sub, generator=generator, dtype=torch.float64) * 3
        args = (norms, cross, row_prior, offset_prior, row_particle, row_translation)
        tensor_s, expected = best_of(lambda: search._fine_weights(*args, n_batch, 0.999))
        compiled_s, got = best_of(lambda: fine_cpu.fine_weights(*args, 0.999))
        same_cut = bool(torch.equal(expected[0] > 0, got[0] > 0))
        print(
            f"{n_batch} particles x {hits} hits x 8 x {n_sub}: tensors {1e3 * tensor_s:.1f} ms, compiled {1e3 * compiled_s:.1f} ms "
            f"({tensor_s / compiled_s:.1f}x); max |weight difference| {float((expected[0] - got[0]).abs().max()):.1e}, "
            f"same cut {same_cut}, same best {bool(torch.equal(expected[3], got[3]))}"
        )


if __name__ == "__main__":
    main()
