"""The accumulation's sparse x dense products on the CPU, compiled with numba.

estep.accumulate sums rows of a dense complex array into output rows, weighted by the retained
hypotheses' weights: out[r] = sum over entries (r, c, v) of v * dense[c], a sparse (a few thousand
entries) times dense (rows of P pixels) product. torch.sparse.mm first builds and coalesces a COO
matrix; on the real tutorial's late iterations its two products per chunk took ~2 and ~11 ms (the
second has many output rows of one or two entries each). One pass over the entries grouped by
output row, in parallel over rows, takes ~1 ms for each (2 threads, measured on dumped chunks).
Imported on first use on the CPU, like estep.fine_cpu; on other devices torch.sparse.mm stays.
"""

from __future__ import annotations

import torch

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; without it accumulate uses torch.sparse.mm
    njit = None

from novomap.physics import trilinear_cpu


def available() -> bool:
    return njit is not None


if njit is not None:

    @njit(parallel=True, fastmath=True, cache=True)
    def _row_sums(row_start, columns, values, dense, out):  # pragma: no cover - compiled
        n_values = dense.shape[1]
        for r in prange(out.shape[0]):
            for e in range(row_start[r], row_start[r + 1]):
                c = columns[e]
                v = values[e]
                for q in range(n_values):
                    out[r, q] += v * dense[c, q]


def row_sums(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, n_rows: int, dense: torch.Tensor) -> torch.Tensor:
    """M @ dense for the sparse M with `values` summed at (rows, columns).

    rows, columns (E,) int64; values (E,) real; dense (C, P) complex64 -> (n_rows, P) complex64.
    Entries of one output row are added in their given order (a stable sort), so the result does
    not depend on the number of threads. Needs numba (`available()`).
    """
    order = torch.argsort(rows, stable=True)
    row_start = torch.zeros(n_rows + 1, dtype=torch.long)
    row_start[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    real = torch.view_as_real(dense.resolve_conj().contiguous()).reshape(dense.shape[0], -1)  # (C, 2P), re/im interleaved
    out = torch.zeros((n_rows, real.shape[1]), dtype=torch.float32)
    with trilinear_cpu.numba_threads():
        _row_sums(
            row_start.numpy(),
            columns[order].contiguous().numpy(),
            values[order].to(torch.float32).contiguous().numpy(),
            real.to(torch.float32).numpy(),
            out.numpy(),
        )
    return torch.view_as_complex(out.reshape(n_rows, -1, 2))
