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

    @njit(cache=True)
    def _group_by_row(rows, row_start, order):  # pragma: no cover - compiled
        """A stable counting sort: order lists the entries of row 0, then row 1, ... in their given
        order (row_start: each row's first position, from a cumulative count)."""
        next_free = row_start[:-1].copy()
        for e in range(rows.shape[0]):
            r = rows[e]
            order[next_free[r]] = e
            next_free[r] += 1

    @njit(parallel=True, fastmath=True, cache=True)
    def _row_sums(row_start, columns, values, dense, out):  # pragma: no cover - compiled
        n_values = dense.shape[1]
        for r in prange(out.shape[0]):
            # zeroed here, by the thread that adds into the row (no separate pass over out)
            for q in range(n_values):
                out[r, q] = 0.0
            for e in range(row_start[r], row_start[r + 1]):
                c = columns[e]
                v = values[e]
                for q in range(n_values):
                    out[r, q] += v * dense[c, q]


    @njit(parallel=True, cache=True)
    def _buffer_slices(rows, fresh, data, reference, reference_rows, weight, channels):  # pragma: no cover - compiled
        """channels[:, rows[s]] = (or += where not fresh[s]) the re/im parts of data[s] - reference[reference_rows[s]] * weight[s],
        and weight[s]; data, reference interleaved (re, im). Rows are distinct, so slices write apart. No
        fastmath: the same float32 operations, in the same order, as the tensor expression it replaces."""
        n_pixels = weight.shape[1]
        for s in prange(rows.shape[0]):
            r = rows[s]
            j = reference_rows[s]
            if fresh[s]:
                for q in range(n_pixels):
                    w = weight[s, q]
                    channels[0, r, q] = data[s, 2 * q] - reference[j, 2 * q] * w
                    channels[1, r, q] = data[s, 2 * q + 1] - reference[j, 2 * q + 1] * w
                    channels[2, r, q] = w
            else:
                for q in range(n_pixels):
                    w = weight[s, q]
                    channels[0, r, q] += data[s, 2 * q] - reference[j, 2 * q] * w
                    channels[1, r, q] += data[s, 2 * q + 1] - reference[j, 2 * q + 1] * w
                    channels[2, r, q] += w


def grouped_order(rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order (E,), row_start (n_rows + 1,)): the entries of rows (E,) int64 grouped by row, each
    group in the entries' given order, and where each group starts. A counting sort rather than
    argsort: the two products of a global-search chunk (~600,000 entries each) spent 2 x 84 ms in a
    stable argsort, twice their sums. Needs numba (`available()`)."""
    row_start = torch.zeros(n_rows + 1, dtype=torch.long)
    row_start[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    order = torch.empty_like(rows)
    _group_by_row(rows.contiguous().numpy(), row_start.numpy(), order.numpy())
    return order, row_start


def row_sums(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, n_rows: int, dense: torch.Tensor) -> torch.Tensor:
    """M @ dense for the sparse M with `values` summed at (rows, columns).

    rows, columns (E,) int64; values (E,) real; dense (C, P) complex64 -> (n_rows, P) complex64.
    Entries of one output row are added in their given order (a stable grouping), so the result does
    not depend on the number of threads. Needs numba (`available()`).
    """
    order, row_start = grouped_order(rows, n_rows)
    real = torch.view_as_real(dense.resolve_conj().contiguous()).reshape(dense.shape[0], -1)  # (C, 2P), re/im interleaved
    out = torch.empty((n_rows, real.shape[1]), dtype=torch.float32)  # zeroed by _row_sums
    with trilinear_cpu.numba_threads():
        _row_sums(
            row_start.numpy(),
            columns[order].contiguous().numpy(),
            values[order].to(torch.float32).contiguous().numpy(),
            real.to(torch.float32).numpy(),
            out.numpy(),
        )
    return torch.view_as_complex(out.reshape(n_rows, -1, 2))


def buffer_slices(
    channels: torch.Tensor, rows: torch.Tensor, fresh: torch.Tensor, data: torch.Tensor, reference: torch.Tensor, reference_rows: torch.Tensor, weight: torch.Tensor
) -> None:
    """estep.cache.SliceBuffer's slices data - reference[reference_rows] * weight and their weights into
    its channels (3, N, P) float32 at rows (S,) distinct, written where fresh (S,) bool, added to elsewhere.

    One pass instead of forming the difference (three (S, P) complex temporaries) and adding its real
    and imaginary parts and the weights as three strided index_add_: those two steps were 40 % of the
    accumulation in the real tutorial's early iterations. data (S, P), reference (R, P) complex64;
    weight (S, P) float32. Needs numba (`available()`)."""
    with trilinear_cpu.numba_threads():
        _buffer_slices(
            rows.contiguous().numpy(),
            fresh.contiguous().numpy(),
            torch.view_as_real(data.resolve_conj().to(torch.complex64).contiguous()).reshape(data.shape[0], -1).numpy(),
            torch.view_as_real(reference.resolve_conj().to(torch.complex64).contiguous()).reshape(reference.shape[0], -1).numpy(),
            reference_rows.contiguous().numpy(),
            weight.to(torch.float32).contiguous().numpy(),
            channels.numpy(),
        )
