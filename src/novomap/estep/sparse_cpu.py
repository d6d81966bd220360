"""The accumulation's sparse sums on the CPU, compiled with numba.

estep.accumulate sums rows of a dense complex array into output rows, weighted by the retained
hypotheses' weights of their J = 4 (or 1) child translations: out[r] = sum over entries (r, c, w) of
dense[c] * (sum_j w_j e_delta_j), a sparse (up to ~10^5 entries per chunk) times dense (rows of P
pixels) product. torch.sparse.mm builds and coalesces a COO matrix first, with one entry per child;
on the real tutorial's late iterations its two products per chunk took ~2 and ~11 ms. One pass over
the entries grouped by output row, in parallel over rows, mixing each entry's children once, takes
~1 ms for each late and ~13 ms early (2 threads, measured on dumped chunks).
Imported on first use on the CPU, like estep.fine_cpu; on other devices torch.sparse.mm stays.
"""

from __future__ import annotations

import numpy as np
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

    @njit(inline="always")
    def _row_blocks(n_rows):  # pragma: no cover - compiled
        """(blocks, rows per block) that the row sums split their output rows into: more blocks than
        threads, as the entries per row vary widely. Inlined into each kernel, so it has no cache of its
        own (a cached helper that only kernels call is never compiled when they load from their caches)."""
        n_blocks = min(n_rows, 256)
        return n_blocks, (n_rows + n_blocks - 1) // max(1, n_blocks)

    @njit(parallel=True, fastmath=True, cache=True)
    def _child_row_sums(row_start, entries, columns, weights, children, dense, imag_sign, out):  # pragma: no cover - compiled
        # out[r] = sum over the entries e of row r of dense[columns[e]] * (sum_j weights[e, j] children[j]),
        # for 4 children, spelled out: with a loop over them inside the pixel loop it did not vectorise
        # (7x slower); the inputs as planes (re, im) of their own, for the same reason (dense rows as (2, P)
        # planes, the imaginary one times imag_sign: the projection store read in place, conjugated). Each row is summed
        # in planes of its own (L1-resident) and written out once as interleaved (re, im) pairs, which a
        # complex tensor views without a copy. Rows in blocks (_row_blocks)
        n_values = dense.shape[2]
        n_rows = out.shape[0]
        n_blocks, per_block = _row_blocks(n_rows)
        for block in prange(n_blocks):
            row_re = np.empty(n_values, dtype=np.float32)
            row_im = np.empty(n_values, dtype=np.float32)
            for r in range(block * per_block, min(n_rows, (block + 1) * per_block)):
                for q in range(n_values):
                    row_re[q] = 0.0
                    row_im[q] = 0.0
                for i in range(row_start[r], row_start[r + 1]):
                    e = entries[i]
                    c = columns[e]
                    w0, w1, w2, w3 = weights[e, 0], weights[e, 1], weights[e, 2], weights[e, 3]
                    for q in range(n_values):
                        mixed_re = w0 * children[0, 0, q] + w1 * children[1, 0, q] + w2 * children[2, 0, q] + w3 * children[3, 0, q]
                        mixed_im = w0 * children[0, 1, q] + w1 * children[1, 1, q] + w2 * children[2, 1, q] + w3 * children[3, 1, q]
                        dense_re, dense_im = dense[c, 0, q], imag_sign * dense[c, 1, q]
                        row_re[q] += mixed_re * dense_re - mixed_im * dense_im
                        row_im[q] += mixed_re * dense_im + mixed_im * dense_re
                for q in range(n_values):
                    out[r, 2 * q] = row_re[q]
                    out[r, 2 * q + 1] = row_im[q]

    @njit(parallel=True, fastmath=True, cache=True)
    def _single_child_row_sums(row_start, entries, columns, weights, children, dense, imag_sign, out):  # pragma: no cover - compiled
        # _child_row_sums for one child (no translational oversampling), as a loop of its own: the
        # same order of entries and pixels, a third of the multiply-adds
        n_values = dense.shape[2]
        n_rows = out.shape[0]
        n_blocks, per_block = _row_blocks(n_rows)
        for block in prange(n_blocks):
            row_re = np.empty(n_values, dtype=np.float32)
            row_im = np.empty(n_values, dtype=np.float32)
            for r in range(block * per_block, min(n_rows, (block + 1) * per_block)):
                for q in range(n_values):
                    row_re[q] = 0.0
                    row_im[q] = 0.0
                for i in range(row_start[r], row_start[r + 1]):
                    e = entries[i]
                    c = columns[e]
                    w0 = weights[e, 0]
                    for q in range(n_values):
                        mixed_re = w0 * children[0, 0, q]
                        mixed_im = w0 * children[0, 1, q]
                        dense_re, dense_im = dense[c, 0, q], imag_sign * dense[c, 1, q]
                        row_re[q] += mixed_re * dense_re - mixed_im * dense_im
                        row_im[q] += mixed_re * dense_im + mixed_im * dense_re
                for q in range(n_values):
                    out[r, 2 * q] = row_re[q]
                    out[r, 2 * q + 1] = row_im[q]

    @njit(parallel=True, fastmath=True, cache=True)
    def _real_row_sums(row_start, entries, columns, weights, dense, out):  # pragma: no cover - compiled
        # out[r] = sum over the entries e of row r of weights[e] * dense[columns[e]], rows in blocks (_row_blocks)
        n_values = dense.shape[1]
        n_rows = out.shape[0]
        n_blocks, per_block = _row_blocks(n_rows)
        for block in prange(n_blocks):
            for r in range(block * per_block, min(n_rows, (block + 1) * per_block)):
                for q in range(n_values):
                    out[r, q] = 0.0
                for i in range(row_start[r], row_start[r + 1]):
                    e = entries[i]
                    c = columns[e]
                    w = weights[e]
                    for q in range(n_values):
                        out[r, q] += w * dense[c, q]

    @njit(parallel=True, fastmath=True, cache=True)
    def _power_row_sums(row_start, entries, columns, weights, planes, out):  # pragma: no cover - compiled
        # out[r] = sum over the entries e of row r of weights[e] * |planes[columns[e]]|^2, planes (C, 2, P)
        n_values = planes.shape[2]
        n_rows = out.shape[0]
        n_blocks, per_block = _row_blocks(n_rows)
        for block in prange(n_blocks):
            for r in range(block * per_block, min(n_rows, (block + 1) * per_block)):
                for q in range(n_values):
                    out[r, q] = 0.0
                for i in range(row_start[r], row_start[r + 1]):
                    e = entries[i]
                    c = columns[e]
                    w = weights[e]
                    for q in range(n_values):
                        re, im = planes[c, 0, q], planes[c, 1, q]
                        out[r, q] += w * (re * re + im * im)

    @njit(parallel=True, cache=True)
    def _buffer_slices(rows, fresh, data, reference, reference_rows, weight, channels):  # pragma: no cover - compiled
        """channels[:, rows[s]] = (or += where not fresh[s]) the re/im parts of data[s] - reference[reference_rows[s]] * weight[s],
        and weight[s]; data interleaved (re, im), reference as planes (R, 2, P). Rows are distinct, so slices write apart. No
        fastmath: the same float32 operations, in the same order, as the tensor expression it replaces."""
        n_pixels = weight.shape[1]
        for s in prange(rows.shape[0]):
            r = rows[s]
            j = reference_rows[s]
            if fresh[s]:
                for q in range(n_pixels):
                    w = weight[s, q]
                    channels[0, r, q] = data[s, 2 * q] - reference[j, 0, q] * w
                    channels[1, r, q] = data[s, 2 * q + 1] - reference[j, 1, q] * w
                    channels[2, r, q] = w
            else:
                for q in range(n_pixels):
                    w = weight[s, q]
                    channels[0, r, q] += data[s, 2 * q] - reference[j, 0, q] * w
                    channels[1, r, q] += data[s, 2 * q + 1] - reference[j, 1, q] * w
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


def child_row_sums(
    rows: torch.Tensor, columns: torch.Tensor, weights: torch.Tensor, children: torch.Tensor, n_rows: int, dense: torch.Tensor, conjugate: bool = False
) -> torch.Tensor:
    """out[r] = sum over the entries e with rows[e] = r of dense[columns[e]] * (weights[e] @ children).

    rows, columns (E,) int64; weights (E, J) real; children (J, P) complex64; dense (C, P) complex64 or
    its rows as planes (C, 2, P) float32 (row_planes: the projection store, read in place);
    conjugate: use conj(dense) -> (n_rows, P) complex64, for J = 4 or 1. The sparse product of the E * J
    entries (r, J * columns[e] + j, weights[e, j]) with the products dense[c] * children[j]: the
    accumulation's sums over the J child translations of each retained row, whose phases factor as
    e_t * e_delta_j (vdam-spec 3.5), without the (C * J, P) array of the products and with one read of
    dense[c] per entry instead of J. Entries of a row are added in their given order (independent of
    the number of threads). Needs numba (`available()`)."""
    n_children = children.shape[0]
    if n_children not in (1, 4) or weights.shape[-1] != n_children:  # the compiled loops read exactly 4, or 1
        raise ValueError(f"child_row_sums takes 4 or 1 children, got weights {tuple(weights.shape)} and children {tuple(children.shape)}")
    kernel = _child_row_sums if n_children == 4 else _single_child_row_sums
    order, row_start = grouped_order(rows, n_rows)
    n_pixels = dense.shape[-1]
    out = torch.empty((n_rows, 2 * n_pixels), dtype=torch.float32)  # (re, im) pairs, all written by the kernel
    with trilinear_cpu.numba_threads():
        kernel(
            row_start.numpy(),
            order.numpy(),
            columns.contiguous().numpy(),
            weights.to(torch.float32).contiguous().numpy(),
            row_planes(children).numpy(),  # (J, 2, P)
            row_planes(dense).numpy(),
            np.float32(-1.0 if conjugate else 1.0),
            out.numpy(),
        )
    return torch.view_as_complex(out.view(n_rows, n_pixels, 2))


def real_row_sums(rows: torch.Tensor, columns: torch.Tensor, weights: torch.Tensor, n_rows: int, dense: torch.Tensor) -> torch.Tensor:
    """out[r] = sum over the entries e with rows[e] = r of weights[e] * dense[columns[e]].

    rows, columns, weights (E,); dense (C, P) real -> (n_rows, P) float32: the sparse (n_rows, C)
    matrix of the entries times dense, in one pass over the entries grouped by row. As a dense
    matrix product it cost n_rows x C x P multiply-adds for a matrix that is nearly all zeros (the
    real tutorial's early chunks: 8,600 slices x 200 particles with 47,000 entries, 40 % of the
    accumulation). Entries of a row are added in their given order. Needs numba (`available()`)."""
    return _weighted_row_sums(_real_row_sums, rows, columns, weights, n_rows, dense.to(torch.float32).contiguous())


def power_row_sums(rows: torch.Tensor, columns: torch.Tensor, weights: torch.Tensor, n_rows: int, planes: torch.Tensor) -> torch.Tensor:
    """out[r] = sum over the entries e with rows[e] = r of weights[e] * |dense[columns[e]]|^2, with dense
    given as its rows' planes (C, 2, P) float32 (the projection store, read in place: its rows were
    gathered, made complex and squared, three copies of up to ~35 MB per chunk) -> (n_rows, P) float32.
    Entries of a row are added in their given order. Needs numba (`available()`)."""
    return _weighted_row_sums(_power_row_sums, rows, columns, weights, n_rows, row_planes(planes))


def _weighted_row_sums(kernel, rows: torch.Tensor, columns: torch.Tensor, weights: torch.Tensor, n_rows: int, values: torch.Tensor) -> torch.Tensor:
    """Run a row-sum kernel of one real weight per entry (_real_row_sums, _power_row_sums) over the entries
    grouped by row: values (C, ..., P) float32 contiguous, as the kernel reads them -> (n_rows, P) float32."""
    order, row_start = grouped_order(rows, n_rows)
    out = torch.empty((n_rows, values.shape[-1]), dtype=torch.float32)
    with trilinear_cpu.numba_threads():
        kernel(row_start.numpy(), order.numpy(), columns.contiguous().numpy(), weights.to(torch.float32).contiguous().numpy(), values.numpy(), out.numpy())
    return out


def row_planes(values: torch.Tensor) -> torch.Tensor:
    """Rows as real and imaginary planes: complex (C, P) -> (C, 2, P) float32, contiguous; a real
    (C, 2, P) tensor (already planes) as it is (float32, contiguous: no copy when it is so)."""
    if values.is_complex():
        values = values.resolve_conj()
        return torch.stack([values.real, values.imag], dim=1).to(torch.float32).contiguous()
    if values.dim() != 3 or values.shape[1] != 2:
        raise ValueError(f"row planes are (C, 2, P), got {tuple(values.shape)}")
    return values.to(torch.float32).contiguous()


def buffer_slices(
    channels: torch.Tensor, rows: torch.Tensor, fresh: torch.Tensor, data: torch.Tensor, reference: torch.Tensor, reference_rows: torch.Tensor, weight: torch.Tensor
) -> None:
    """estep.cache.SliceBuffer's slices data - reference[reference_rows] * weight and their weights into
    its channels (3, N, P) float32 at rows (S,) distinct, written where fresh (S,) bool, added to elsewhere.

    One pass instead of forming the difference (three (S, P) complex temporaries) and adding its real
    and imaginary parts and the weights as three strided index_add_: those two steps were 40 % of the
    accumulation in the real tutorial's early iterations. data (S, P) complex64; reference (R, P)
    complex64 or its rows as planes (R, 2, P) float32 (row_planes: the projection store, read in
    place); weight (S, P) float32. Needs numba (`available()`)."""
    with trilinear_cpu.numba_threads():
        _buffer_slices(
            rows.contiguous().numpy(),
            fresh.contiguous().numpy(),
            torch.view_as_real(data.resolve_conj().to(torch.complex64).contiguous()).reshape(data.shape[0], -1).numpy(),
            row_planes(reference).numpy(),
            reference_rows.contiguous().numpy(),
            weight.to(torch.float32).contiguous().numpy(),
            channels.numpy(),
        )
