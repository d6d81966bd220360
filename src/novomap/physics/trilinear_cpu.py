"""Central slices and their adjoint on the CPU: trilinear gather and scatter compiled with numba.

PyTorch's CPU kernels for 3D `grid_sample` and its input gradient are scalar loops; projections and
back-projections of the E-step's slices spent most of their time there. These loops do the same
interpolation (the grid of `physics.projection`: centre at M//2, x along the last axis, zero
outside the grid) 3.3-5.3x faster (benchmarks/results/2026-12-01-speed.md), and the scatter sums
into private double-precision grids, one per thread, so its result does not depend on the order in
which threads run. Kernels compile on first use and are cached beside this file.

Without numba, `available()` is False and `physics.projection` uses grid_sample.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import torch

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    numba = None
else:
    if "NUMBA_THREADING_LAYER" not in os.environ:
        # numba's default OpenMP layer brings a second OpenMP runtime beside PyTorch's, whose threads
        # spin after each loop and starve PyTorch's: one-thread jobs ran 4x slower (every phase, not
        # only these loops). The plain thread pool does not spin.
        numba.config.THREADING_LAYER = "workqueue"

_SCATTER_BUDGET_BYTES = 512 * 2**20  # the scatter's private grids together
_LOCK = threading.Lock()  # numba's workqueue pool must not be entered from two threads at once


def available() -> bool:
    return numba is not None


if numba is not None:

    @njit(inline="always", fastmath=True)
    def _slice_point(rows, o, kx, ky, centre):  # pragma: no cover - compiled
        """Grid position of pixel (kx, ky) of slice o (rows: the first two rows of each rotation, times
        the padding factor): its lower corner (x0, y0, z0) and fractions."""
        x = kx * rows[o, 0, 0] + ky * rows[o, 1, 0] + centre
        y = kx * rows[o, 0, 1] + ky * rows[o, 1, 1] + centre
        z = kx * rows[o, 0, 2] + ky * rows[o, 1, 2] + centre
        x0, y0, z0 = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
        return x0, y0, z0, x - x0, y - y0, z - z0

    @njit(inline="always", fastmath=True)
    def _edge_neighbours(x0, y0, z0, fx, fy, fz, m, index, weight):  # pragma: no cover - compiled
        """The neighbours of a point at the grid's edge that lie inside it: flat indices
        (z m + y) m + x into index, weights into weight (both (8,)); returns how many."""
        n = 0
        for dz in range(2):
            zz = z0 + dz
            if zz < 0 or zz >= m:
                continue
            wz = fz if dz else 1 - fz
            for dy in range(2):
                yy = y0 + dy
                if yy < 0 or yy >= m:
                    continue
                wzy = wz * (fy if dy else 1 - fy)
                for dx in range(2):
                    xx = x0 + dx
                    if xx < 0 or xx >= m:
                        continue
                    index[n] = (zz * m + yy) * m + xx
                    weight[n] = wzy * (fx if dx else 1 - fx)
                    n += 1
        return n

    # Both gathers make two passes per slice. The first interpolates every pixel as if its 8 neighbours
    # were inside the grid, with the lower corner clamped into it (a no-op off the rim): no branch and
    # hand-made flat indices, a loop the compiler vectorises. The second redoes the pixels of the rim
    # (the only ones that can reach the grid's edge) that do reach it, one by one. With the edge case
    # inside the one loop it ran 2.7x longer (30,000 slices of 1,563 pixels from a 64^3 map: 0.40
    # against 0.15 s on 2 Intel cores); with an inside test and 3D indexing in the first loop instead of
    # the clamp 1.7x longer on a 2-core AMD EPYC (32,000 slices: 0.50 against 0.30 s). One kernel per
    # output layout, each written out in full: through strided views of one output array, or with the
    # interpolation in shared inlined helpers, the loop ran 1.8-2.8x longer.

    @njit(parallel=True, fastmath=True, cache=True)
    def _gather(volume, rows, kx, ky, rim, out):  # pragma: no cover - compiled
        """Slices into out (O, P) complex."""
        m = volume.shape[0]
        centre = m // 2
        flat = volume.reshape(m * m * m)
        for o in prange(out.shape[0]):
            r00, r01, r02 = rows[o, 0, 0], rows[o, 0, 1], rows[o, 0, 2]
            r10, r11, r12 = rows[o, 1, 0], rows[o, 1, 1], rows[o, 1, 2]
            for p in range(out.shape[1]):
                x = kx[p] * r00 + ky[p] * r10 + centre
                y = kx[p] * r01 + ky[p] * r11 + centre
                z = kx[p] * r02 + ky[p] * r12 + centre
                # int() truncates, which is floor wherever the clamp changes nothing (x >= 0)
                x0 = min(max(int(x), 0), m - 2)
                y0 = min(max(int(y), 0), m - 2)
                z0 = min(max(int(z), 0), m - 2)
                fx, fy, fz = x - x0, y - y0, z - z0
                gx, gy = 1 - fx, 1 - fy
                i00 = (z0 * m + y0) * m + x0
                i01, i10 = i00 + m, i00 + m * m
                i11 = i10 + m
                near = (flat[i00] * gx + flat[i00 + 1] * fx) * gy + (flat[i01] * gx + flat[i01 + 1] * fx) * fy
                far = (flat[i10] * gx + flat[i10 + 1] * fx) * gy + (flat[i11] * gx + flat[i11 + 1] * fx) * fy
                value = near * (1 - fz) + far * fz
                out[o, p] = value
            index = np.empty(8, dtype=np.int64)
            weight = np.empty(8, dtype=np.float64)
            for j in range(rim.shape[0]):
                p = rim[j]
                x0, y0, z0, fx, fy, fz = _slice_point(rows, o, kx[p], ky[p], centre)
                if x0 >= 0 and y0 >= 0 and z0 >= 0 and x0 < m - 1 and y0 < m - 1 and z0 < m - 1:
                    continue
                n = _edge_neighbours(x0, y0, z0, fx, fy, fz, m, index, weight)
                value = flat[0] * 0
                for i in range(n):
                    value += flat[index[i]] * weight[i]
                out[o, p] = value

    @njit(parallel=True, fastmath=True, cache=True)
    def _gather_planes(volume, rows, kx, ky, rim, out):  # pragma: no cover - compiled
        """Slices into out (O, 2, P) real: real and imaginary parts in planes of their own."""
        m = volume.shape[0]
        centre = m // 2
        flat = volume.reshape(m * m * m)
        for o in prange(out.shape[0]):
            r00, r01, r02 = rows[o, 0, 0], rows[o, 0, 1], rows[o, 0, 2]
            r10, r11, r12 = rows[o, 1, 0], rows[o, 1, 1], rows[o, 1, 2]
            for p in range(out.shape[2]):
                x = kx[p] * r00 + ky[p] * r10 + centre
                y = kx[p] * r01 + ky[p] * r11 + centre
                z = kx[p] * r02 + ky[p] * r12 + centre
                # int() truncates, which is floor wherever the clamp changes nothing (x >= 0)
                x0 = min(max(int(x), 0), m - 2)
                y0 = min(max(int(y), 0), m - 2)
                z0 = min(max(int(z), 0), m - 2)
                fx, fy, fz = x - x0, y - y0, z - z0
                gx, gy = 1 - fx, 1 - fy
                i00 = (z0 * m + y0) * m + x0
                i01, i10 = i00 + m, i00 + m * m
                i11 = i10 + m
                near = (flat[i00] * gx + flat[i00 + 1] * fx) * gy + (flat[i01] * gx + flat[i01 + 1] * fx) * fy
                far = (flat[i10] * gx + flat[i10 + 1] * fx) * gy + (flat[i11] * gx + flat[i11 + 1] * fx) * fy
                value = near * (1 - fz) + far * fz
                out[o, 0, p] = value.real
                out[o, 1, p] = value.imag
            index = np.empty(8, dtype=np.int64)
            weight = np.empty(8, dtype=np.float64)
            for j in range(rim.shape[0]):
                p = rim[j]
                x0, y0, z0, fx, fy, fz = _slice_point(rows, o, kx[p], ky[p], centre)
                if x0 >= 0 and y0 >= 0 and z0 >= 0 and x0 < m - 1 and y0 < m - 1 and z0 < m - 1:
                    continue
                n = _edge_neighbours(x0, y0, z0, fx, fy, fz, m, index, weight)
                value = flat[0] * 0
                for i in range(n):
                    value += flat[index[i]] * weight[i]
                out[o, 0, p] = value.real
                out[o, 1, p] = value.imag

    @njit(parallel=True, fastmath=True, cache=True)
    def _scatter(values, slice_rows, rows, kx, ky, grids, centre, offset):  # pragma: no cover - compiled
        # slice o is row slice_rows[o] of values (C, N, P): a buffer's rows are inserted in place.
        # grids (n_parts, m, m, m, C) are the cube of the full grid from voxel `offset` on; positions are
        # computed about the full grid's centre and shifted by whole voxels, so a cropped cube gets the
        # very weights the full grid would. The slice buffer's three channels (real, imaginary, weight)
        # take a path of their own: flat indices, and each pair of x-neighbours' six values added
        # together (0.32 -> 0.27 s for 12,000 slices of 1,563 pixels on a 2-core AMD EPYC, the same sums)
        n_parts = grids.shape[0]
        m = grids.shape[1]
        # the slices' first len(kx) pixels (a prefix of the shell-ordered window: a narrower class's window)
        n_channels, n_pixels = values.shape[0], min(values.shape[2], kx.shape[0])
        n_slices = slice_rows.shape[0]
        per_part = (n_slices + n_parts - 1) // n_parts
        step_y, step_z = m * n_channels, m * m * n_channels
        for part in prange(n_parts):
            grid = grids[part]
            flat = grid.reshape(m * m * m, n_channels)
            grid_values = grid.reshape(m * m * m * n_channels)
            index = np.empty(8, dtype=np.int64)
            weight = np.empty(8, dtype=np.float64)
            for o in range(part * per_part, min(n_slices, (part + 1) * per_part)):
                row = slice_rows[o]
                for p in range(n_pixels):
                    x0, y0, z0, fx, fy, fz = _slice_point(rows, o, kx[p], ky[p], centre)
                    x0, y0, z0 = x0 - offset, y0 - offset, z0 - offset
                    if x0 >= 0 and y0 >= 0 and z0 >= 0 and x0 < m - 1 and y0 < m - 1 and z0 < m - 1:
                        gx, gy, gz = 1 - fx, 1 - fy, 1 - fz
                        if n_channels == 3:
                            v0, v1, v2 = values[0, row, p], values[1, row, p], values[2, row, p]
                            first = (z0 * m + y0) * step_y + x0 * 3
                            for dz, dy, wzy in ((0, 0, gz * gy), (0, 1, gz * fy), (1, 0, fz * gy), (1, 1, fz * fy)):
                                j = first + dz * step_z + dy * step_y
                                low, high = wzy * gx, wzy * fx
                                grid_values[j] += low * v0
                                grid_values[j + 1] += low * v1
                                grid_values[j + 2] += low * v2
                                grid_values[j + 3] += high * v0
                                grid_values[j + 4] += high * v1
                                grid_values[j + 5] += high * v2
                            continue
                        w000, w001, w010, w011 = gz * gy * gx, gz * gy * fx, gz * fy * gx, gz * fy * fx
                        w100, w101, w110, w111 = fz * gy * gx, fz * gy * fx, fz * fy * gx, fz * fy * fx
                        for c in range(n_channels):
                            v = values[c, row, p]
                            grid[z0, y0, x0, c] += w000 * v
                            grid[z0, y0, x0 + 1, c] += w001 * v
                            grid[z0, y0 + 1, x0, c] += w010 * v
                            grid[z0, y0 + 1, x0 + 1, c] += w011 * v
                            grid[z0 + 1, y0, x0, c] += w100 * v
                            grid[z0 + 1, y0, x0 + 1, c] += w101 * v
                            grid[z0 + 1, y0 + 1, x0, c] += w110 * v
                            grid[z0 + 1, y0 + 1, x0 + 1, c] += w111 * v
                        continue
                    n = _edge_neighbours(x0, y0, z0, fx, fy, fz, m, index, weight)
                    for i in range(n):
                        for c in range(n_channels):
                            flat[index[i], c] += weight[i] * values[c, row, p]

    @njit(parallel=True, cache=True)
    def _add_parts(grids, data, weight, offset):  # pragma: no cover - compiled
        # data (M, M, M, 2) += the parts' channels 0 and 1, weight (M, M, M) += channel 2: the private
        # grids (n_parts, m, m, m, 3), the cube from voxel `offset` on, added part after part, as
        # numpy's sum over them would, in one pass
        n_parts, m = grids.shape[0], grids.shape[1]
        for z in prange(m):
            for y in range(m):
                for x in range(m):
                    re = grids[0, z, y, x, 0]
                    im = grids[0, z, y, x, 1]
                    w = grids[0, z, y, x, 2]
                    for part in range(1, n_parts):
                        re += grids[part, z, y, x, 0]
                        im += grids[part, z, y, x, 1]
                        w += grids[part, z, y, x, 2]
                    data[z + offset, y + offset, x + offset, 0] += re
                    data[z + offset, y + offset, x + offset, 1] += im
                    weight[z + offset, y + offset, x + offset] += w

    @njit(parallel=True, fastmath=True, cache=True)
    def _operator_average(grids, operators, scale, identity_share, radius, out):  # pragma: no cover - compiled
        # out(p) = identity_share grids(p) + scale sum_g grids(g p) for every voxel p within `radius`
        # of the centre (beyond it the caller knows the grids hold nothing); channels last, so one
        # voxel's 8 neighbours serve every channel
        m = grids.shape[0]
        n_channels = grids.shape[3]
        centre = m // 2
        limit = radius * radius
        flat = grids.reshape(m * m * m, n_channels)
        for z in prange(m):
            index = np.empty(8, dtype=np.int64)
            weight = np.empty(8, dtype=np.float64)
            pz = z - centre
            for y in range(m):
                py = y - centre
                for x in range(m):
                    px = x - centre
                    if px * px + py * py + pz * pz > limit:
                        continue
                    for c in range(n_channels):
                        out[z, y, x, c] = grids[z, y, x, c] * identity_share
                    for g in range(operators.shape[0]):
                        qx = operators[g, 0, 0] * px + operators[g, 0, 1] * py + operators[g, 0, 2] * pz + centre
                        qy = operators[g, 1, 0] * px + operators[g, 1, 1] * py + operators[g, 1, 2] * pz + centre
                        qz = operators[g, 2, 0] * px + operators[g, 2, 1] * py + operators[g, 2, 2] * pz + centre
                        x0, y0, z0 = int(np.floor(qx)), int(np.floor(qy)), int(np.floor(qz))
                        fx, fy, fz = qx - x0, qy - y0, qz - z0
                        if x0 >= 0 and y0 >= 0 and z0 >= 0 and x0 < m - 1 and y0 < m - 1 and z0 < m - 1:
                            gx, gy, gz = 1 - fx, 1 - fy, 1 - fz
                            for c in range(n_channels):
                                near = (grids[z0, y0, x0, c] * gx + grids[z0, y0, x0 + 1, c] * fx) * gy + (grids[z0, y0 + 1, x0, c] * gx + grids[z0, y0 + 1, x0 + 1, c] * fx) * fy
                                far = (grids[z0 + 1, y0, x0, c] * gx + grids[z0 + 1, y0, x0 + 1, c] * fx) * gy + (grids[z0 + 1, y0 + 1, x0, c] * gx + grids[z0 + 1, y0 + 1, x0 + 1, c] * fx) * fy
                                out[z, y, x, c] += (near * gz + far * fz) * scale
                            continue
                        n = _edge_neighbours(x0, y0, z0, fx, fy, fz, m, index, weight)
                        for i in range(n):
                            w = weight[i] * scale
                            for c in range(n_channels):
                                out[z, y, x, c] += flat[index[i], c] * w


@contextlib.contextmanager
def numba_threads():
    """Run compiled parallel loops on as many threads as PyTorch uses, one caller at a time; yields that number."""
    with _LOCK:
        n_threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(n_threads)
        yield n_threads


def _geometry(rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows (O, 2, 3): the rotations' first two rows times pad, kx, ky) as arrays of dtype.

    A slice pixel sits at (kx, ky) times those rows (physics.projection.slice_coordinates)."""
    return (
        (rotations.detach()[:, :2, :].to(dtype) * pad).contiguous().numpy(),
        kx.detach().to(dtype).contiguous().numpy(),
        ky.detach().to(dtype).contiguous().numpy(),
    )


def _pixel_reach(rows: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """(P,) float64: how far from the grid's centre each pixel can land at any slice, |k| times the
    rows' largest norm (rows (O, 2, 3) as _geometry gives them)."""
    norm = float(np.sqrt((rows.astype(np.float64) ** 2).sum(-1)).max()) if rows.size else 1.0
    return np.sqrt(kx.astype(np.float64) ** 2 + ky.astype(np.float64) ** 2) * norm


def _rim_pixels(rows: np.ndarray, kx: np.ndarray, ky: np.ndarray, m: int) -> np.ndarray:
    """Indices of the pixels that may have a neighbour outside the (M, M, M) grid at some slice:
    one closer to the centre than M/2 - 1 (less a margin for rounding) has all 8 neighbours inside."""
    return np.nonzero(_pixel_reach(rows, kx, ky) >= m / 2 - 1.01)[0].astype(np.int64)


def gather_slices(volume_ft: torch.Tensor, rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, out: torch.Tensor) -> None:
    """Write the central slices of volume_ft (M, M, M) complex at rotations (O, 3, 3) into out:
    (O, 2, P) real of volume_ft's real dtype, contiguous: the slices' real and imaginary parts as
    planes (estep.cache.ProjectionCache(with_planes=True)); or (O, P) complex, same dtype, contiguous.
    Needs numba (`available()`)."""
    volume = volume_ft.detach().contiguous().numpy()
    rows, kx_values, ky_values = _geometry(rotations, kx, ky, pad, volume_ft.real.dtype)
    kernel = _gather if out.is_complex() else _gather_planes
    with numba_threads():
        kernel(volume, rows, kx_values, ky_values, _rim_pixels(rows, kx_values, ky_values, volume.shape[0]), out.numpy())


def scatter_slices(
    channels: list[torch.Tensor], rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, m: int
) -> torch.Tensor:
    """The adjoint of gather_slices for C real channels (each (O, P), one dtype) -> (C, M, M, M)
    float64 sums. Needs numba (`available()`)."""
    values = torch.stack([c.detach() for c in channels])
    parts, offset = _scattered_parts(values, torch.arange(values.shape[1]), rotations, kx, ky, pad, m)
    out = np.zeros((m, m, m, values.shape[0]), dtype=np.float64)
    inner = slice(offset, offset + parts.shape[1])
    out[inner, inner, inner] = parts.sum(0)
    return torch.from_numpy(out).permute(3, 0, 1, 2)


def add_scattered_rows(
    values: torch.Tensor, slice_rows: torch.Tensor, rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int,
    data_grid: torch.Tensor, weight_grid: torch.Tensor,
) -> None:
    """scatter_slices of rows slice_rows (O,) of 3 channels values (3, N, P) (real, imaginary, weight),
    over their first len(kx) <= P pixels, read where they are (a slice buffer's rows need no gathering or stacking first), at rotations
    (O, 3, 3), added into data_grid (M, M, M) complex128 and weight_grid (M, M, M) float64 in place:
    the threads' private grids summed straight into them, with no (3, M, M, M) sum and complex copy
    in between (the same values as scatter_slices and adding its result). Needs numba (`available()`)."""
    parts, offset = _scattered_parts(values, slice_rows, rotations, kx, ky, pad, data_grid.shape[-1])
    with numba_threads():
        _add_parts(parts, torch.view_as_real(data_grid).numpy(), weight_grid.numpy(), offset)


def private_grids(m: int, n_channels: int = 3) -> np.ndarray:
    """Zeroed per-thread float64 grids (n_parts, M, M, M, C) for scatter_into_grids (_n_parts of them)."""
    with numba_threads() as n_threads:
        n_parts = _n_parts(n_threads, n_channels, m)
    return np.zeros((n_parts, m, m, m, n_channels), dtype=np.float64)


def _n_parts(n_threads: int, n_channels: int, m: int) -> int:
    """How many private grids a scatter of C channels into an (M, M, M) grid uses: one per thread,
    within a memory budget (a 160^3 grid of 3 channels is 98 MB), at least one. Set by the whole grid,
    so that the slices' split among the parts, hence the sums, do not depend on a crop of it."""
    return max(1, min(n_threads, _SCATTER_BUDGET_BYTES // (8 * n_channels * m**3)))


def scatter_into_grids(grids: np.ndarray, channels: torch.Tensor, rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int) -> None:
    """scatter_slices of channels (C, O, P) real at rotations (O, 3, 3), added into grids from
    private_grids (the whole (M, M, M) grid), in place.

    For many batches into one grid (a reconstruction): scatter_slices clears, sums and copies grids of
    the whole box for every batch, which on a 256^3 grid (a 128 px map, padded twice) took longer than
    the scatter itself; here that happens once, in add_grids_into."""
    source = channels.detach().contiguous().numpy()
    rows, kx_values, ky_values = _geometry(rotations, kx, ky, pad, channels.dtype)
    with numba_threads():
        _scatter(source, np.arange(source.shape[1], dtype=np.int64), rows, kx_values, ky_values, grids, grids.shape[1] // 2, 0)


def add_grids_into(grids: np.ndarray, data_grid: torch.Tensor, weight_grid: torch.Tensor) -> None:
    """Add private grids of 3 channels (real, imaginary, weight) into data_grid (M, M, M) complex and
    weight_grid (M, M, M) real, of either precision, in place."""
    with numba_threads():
        _add_parts(grids, torch.view_as_real(data_grid).numpy(), weight_grid.numpy(), 0)


def reached_cube(rows: np.ndarray, kx: np.ndarray, ky: np.ndarray, m: int) -> tuple[int, int]:
    """(offset, size): the cube of the (M, M, M) grid, from voxel `offset` on along each axis, that holds
    all 8 neighbours of every slice pixel, or (0, M) where that is the whole grid.

    A pixel lies within _pixel_reach of the centre M//2. Early in a run
    the slices reach a small sphere (current_size 30: a 37-voxel cube, 2 % of a 128-voxel grid), and
    private grids of the whole box cost more to clear, fill and add than the scatter itself: 8,000
    such slices into a 128-voxel grid took 135 ms, into their cube 52 ms (2 cores; on the 64-voxel grid
    of the real tutorial job the gain is ~7 % of the scatter, 0.15 s in 30 iterations)."""
    extent = float(_pixel_reach(rows, kx, ky).max()) if kx.size else 0.0
    half = int(np.ceil(extent)) + 3  # the upper neighbour and a margin for rounding
    centre = m // 2
    if centre - half < 0 or centre + half > m - 1:
        return 0, m
    return centre - half, 2 * half + 1


def _scattered_parts(
    values: torch.Tensor, slice_rows: torch.Tensor, rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, m: int
) -> tuple[np.ndarray, int]:
    """The scatter of values' rows slice_rows into one private float64 grid per thread: the cube of the
    (M, M, M) grid the slices reach (reached_cube) -> ((n_parts, m, m, m, C), the cube's offset)."""
    source = values.detach().contiguous().numpy()
    rows, kx_values, ky_values = _geometry(rotations, kx, ky, pad, values.dtype)
    offset, size = reached_cube(rows, kx_values, ky_values, m)
    with numba_threads() as n_threads:
        grids = np.zeros((_n_parts(n_threads, values.shape[0], m), size, size, size, values.shape[0]), dtype=np.float64)
        _scatter(source, slice_rows.to(torch.int64).contiguous().numpy(), rows, kx_values, ky_values, grids, m // 2, offset)
    return grids, offset


def operator_average(grids: torch.Tensor, operators: torch.Tensor, radius: float) -> torch.Tensor:
    """(1/G) sum_g V(g p) of C channels (M, M, M, C) float64, trilinear, zero outside the grid, for
    operators (G, 3, 3) acting on (x, y, z) from the grid's centre M//2 -> (M, M, M, C) float64,
    computed within `radius` voxels of the centre (zero beyond). Needs numba (`available()`)."""
    source = grids.detach().to(torch.float64).contiguous().numpy()
    ops = operators.detach().to(torch.float64)
    # the identity's term is the grid itself: copied, not interpolated
    identity = (ops - torch.eye(3, dtype=torch.float64)).abs().amax((1, 2)) < 1e-6
    out = np.zeros_like(source)
    with numba_threads():
        _operator_average(source, ops[~identity].contiguous().numpy(), 1.0 / ops.shape[0], float(identity.sum()) / ops.shape[0], float(radius), out)
    return torch.from_numpy(out)
