"""Fourier-space projection (central slices) and back-projection on a centred 3D grid.

The slice of orientation A samples the 3D transform at k3 = A^T (kx, ky, 0) (vdam-spec 1.4),
on a (pad*N)^3 grid whose zero frequency sits at index pad*N//2, by trilinear interpolation.
Back-projection is the exact adjoint: each value is splatted onto the same 8 neighbours with the
same weights (computed as the gradient of the same grid_sample call, so the two never disagree).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from novomap.physics.fourier import centred_radius, hermitian_partner, volume_to_centred_ft
from novomap.physics.grid_cache import cached_grid


def compiled_loops():
    """physics.trilinear_cpu when numba is installed, else None. Imported on first use: numba takes
    ~0.4 s to import, which `novomap --help` and GPU runs need not pay."""
    from novomap.physics import trilinear_cpu

    return trilinear_cpu if trilinear_cpu.available() else None


def slice_coordinates(rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int) -> torch.Tensor:
    """3D grid coordinates (x, y, z), in padded voxels from the centre, of slice pixels.

    rotations (O, 3, 3), kx/ky (P,) -> (O, P, 3). k3 = A^T (kx, ky, 0): k3_j = A_0j kx + A_1j ky,
    i.e. (kx, ky) times the first two rows of A, one batched matrix product.
    """
    k2 = torch.stack([kx, ky], -1).to(rotations.dtype) * pad  # (P, 2)
    return torch.matmul(k2, rotations[:, :2, :])


def _sampling_grid(rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, m: int, dtype: torch.dtype) -> torch.Tensor:
    """grid_sample coordinates (1, O, P, 1, 3) in [-1, 1] (align_corners=True) of every slice pixel."""
    # homogeneous form: [kx, ky, 1] times [A_0; A_1; shift] does the scaling and the centring in
    # the one matrix product, so the (O, P, 3) result is written once
    scale = 2.0 / (m - 1)
    k3 = torch.stack([kx.to(dtype) * (pad * scale), ky.to(dtype) * (pad * scale), torch.ones_like(kx, dtype=dtype)], -1)  # (P, 3)
    shift = torch.full((rotations.shape[0], 1, 3), (m // 2) * scale - 1.0, dtype=dtype, device=rotations.device)
    coords = torch.matmul(k3, torch.cat([rotations[:, :2, :].to(dtype), shift], 1))
    return coords[None, :, :, None, :]


def _split_batches(grid: torch.Tensor, n_split: int) -> tuple[torch.Tensor, int]:
    """(1, O, P, 1, 3) -> (n_split, ceil(O / n_split), P, 1, 3), padded with points outside the grid; and the padding."""
    n = grid.shape[1]
    per_split = -(-n // n_split)
    extra = n_split * per_split - n
    if extra:  # padding slices sample outside the grid (coordinate 2 > 1): zero weight everywhere
        grid = torch.cat([grid, grid.new_full((1, extra, *grid.shape[2:]), 2.0)], 1)
    return grid.reshape(n_split, per_split, *grid.shape[2:]), extra


def _n_split(n_slices: int, limit: int, device: torch.device) -> int:
    """grid_sample runs in parallel over its batch only on the CPU: one batch entry per thread there,
    one batch on a GPU. Every batch entry holds at least one slice."""
    if device.type != "cpu":
        return 1
    n_split = max(1, min(torch.get_num_threads(), limit, n_slices))
    return -(-n_slices // -(-n_slices // n_split))  # ceil(O / S) slices per entry leaves no entry empty


def _as_channels(volume_ft: torch.Tensor) -> torch.Tensor:
    """Complex (M, M, M) -> real (1, 2, M, M, M) with channels (real, imaginary)."""
    return torch.view_as_real(volume_ft).permute(3, 0, 1, 2).unsqueeze(0)


def extract_slices(
    volume_ft: torch.Tensor, rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Central slices of a centred 3D transform.

    volume_ft (M, M, M) complex, rotations (O, 3, 3), kx/ky (P,) in cycles per unpadded box
    -> (O, P) complex (same dtype as volume_ft), written into `out` (O, P) when given.
    Trilinear interpolation (zero outside the grid): on the CPU by the compiled loops of
    `trilinear_cpu`, elsewhere by grid_sample, which is several times faster than an explicit
    gather in tensor operations.
    """
    n_slices, n_pixels = rotations.shape[0], kx.shape[0]
    if out is None:
        out = torch.empty((n_slices, n_pixels), dtype=volume_ft.dtype, device=volume_ft.device)
    compiled = compiled_loops() if volume_ft.device.type == "cpu" else None
    if compiled is not None:
        target = out if out.is_contiguous() else torch.empty_like(out)
        compiled.gather_slices(volume_ft, rotations, kx, ky, pad, target)
        if target is not out:
            out.copy_(target)
        return out
    return _grid_sample_slices(volume_ft, rotations, kx, ky, pad, out)


def extract_slice_planes(volume_ft: torch.Tensor, rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, out: torch.Tensor) -> torch.Tensor:
    """extract_slices as real and imaginary planes: written into out (O, 2, P) real (contiguous), directly
    by the compiled CPU gather (no complex intermediate), elsewhere from extract_slices' result."""
    compiled = compiled_loops() if volume_ft.device.type == "cpu" else None
    if compiled is not None and out.is_contiguous():
        compiled.gather_slices(volume_ft, rotations, kx, ky, pad, out)
        return out
    slices = extract_slices(volume_ft, rotations, kx, ky, pad)
    out[:, 0].copy_(slices.real)
    out[:, 1].copy_(slices.imag)
    return out


def _grid_sample_slices(volume_ft: torch.Tensor, rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, out: torch.Tensor) -> torch.Tensor:
    """extract_slices by grid_sample, into out (O, P)."""
    n_slices = rotations.shape[0]
    m = volume_ft.shape[-1]
    channels = _as_channels(volume_ft)
    n_split = _n_split(n_slices, 16, volume_ft.device)
    grid, _ = _split_batches(_sampling_grid(rotations, kx, ky, pad, m, channels.dtype), n_split)
    # the volume is shared by every batch entry (stride 0, no copy)
    sampled = F.grid_sample(channels.expand(n_split, -1, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # (S, 2, O/S, P, 1)
    pairs = torch.view_as_real(out)  # (O, P, 2): one strided copy per batch entry, no intermediate
    per_split = grid.shape[1]
    for split in range(n_split):
        rows = slice(split * per_split, min(n_slices, (split + 1) * per_split))
        pairs[rows].copy_(sampled[split, :, : rows.stop - rows.start, :, 0].permute(1, 2, 0))
    return out


def insert_slices(
    values: torch.Tensor | None,
    weights: torch.Tensor | None,
    rotations: torch.Tensor,
    kx: torch.Tensor,
    ky: torch.Tensor,
    pad: int,
    data_grid: torch.Tensor | None,
    weight_grid: torch.Tensor | None,
) -> None:
    """Back-project slices into centred grids in place (the exact adjoint of extract_slices).

    values (O, P) complex -> added into data_grid (M, M, M) complex; weights (O, P) real ->
    added into weight_grid (M, M, M) real. Either pair may be None. Only the half-plane of each
    image is inserted; call `hermitian_symmetrise` afterwards to add the conjugate half.
    The adjoint of trilinear sampling: on the CPU the compiled scatter of `trilinear_cpu`, elsewhere
    grid_sample's input gradient, i.e. its scatter kernel.
    """
    grid_ref = data_grid if data_grid is not None else weight_grid
    m = grid_ref.shape[-1]
    # computed in the precision of the inserted values; accumulated in the grids' own
    dtype = values.real.dtype if values is not None else weights.dtype
    parts = []
    if values is not None and data_grid is not None:
        parts += [values.real.to(dtype), values.imag.to(dtype)]
    if weights is not None and weight_grid is not None:
        parts.append(weights.to(dtype))
    if not parts:
        return
    compiled = compiled_loops() if grid_ref.device.type == "cpu" else None
    if compiled is not None:
        adjoint = compiled.scatter_slices(parts, rotations, kx, ky, pad, m)
    else:
        adjoint = _grid_sample_adjoint(parts, rotations, kx, ky, pad, m, dtype, grid_ref.device)
    _add_adjoint(adjoint, data_grid if values is not None else None, weight_grid if weights is not None else None)


def insert_slice_rows(
    channels: torch.Tensor, index: torch.Tensor, rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, data_grid: torch.Tensor, weight_grid: torch.Tensor
) -> None:
    """insert_slices of rows `index` (O,) of a buffer channels (3, N, P) real (the slices' real parts,
    imaginary parts and weights), their first len(kx) <= P pixels, at rotations (O, 3, 3), into data_grid (M, M, M) complex128 and
    weight_grid (M, M, M) float64 (the E-step's double-precision sums), in place: on the CPU the
    compiled scatter reads the rows where they are, with no gathered copy of them, and adds its
    per-thread sums straight into the grids (estep.cache.SliceBuffer)."""
    compiled = compiled_loops() if data_grid.device.type == "cpu" else None
    if compiled is None:
        n = kx.shape[0]
        insert_slices(torch.complex(channels[0, index, :n], channels[1, index, :n]), channels[2, index, :n], rotations, kx, ky, pad, data_grid, weight_grid)
    else:
        compiled.add_scattered_rows(channels, index, rotations, kx, ky, pad, data_grid, weight_grid)


def _add_adjoint(adjoint: torch.Tensor, data_grid: torch.Tensor | None, weight_grid: torch.Tensor | None) -> None:
    """Add a scatter's channels (real, imaginary, weight; either pair may be absent) into the grids."""
    if data_grid is not None:
        data_grid += torch.complex(adjoint[0], adjoint[1]).to(data_grid.dtype)
    if weight_grid is not None:
        weight_grid += adjoint[-1].to(weight_grid.dtype)


def _grid_sample_adjoint(parts: list[torch.Tensor], rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int, m: int, dtype: torch.dtype, device) -> torch.Tensor:
    """insert_slices' scatter by grid_sample's input gradient: C channels (O, P) -> (C, M, M, M)."""
    grid = _sampling_grid(rotations, kx, ky, pad, m, dtype)  # (1, O, P, 1, 3)
    stacked = torch.stack(parts)[:, :, :, None]  # (C, O, P, 1)
    # split the slices over a batch of grids: grid_sample's scatter runs in parallel over the batch
    n_split = _n_split(rotations.shape[0], 4, torch.device(device))
    grid, extra = _split_batches(grid, n_split)
    if extra:
        stacked = torch.cat([stacked, stacked.new_zeros((stacked.shape[0], extra, *stacked.shape[2:]))], 1)
    per_split = grid.shape[1]
    stacked = stacked.reshape(stacked.shape[0], n_split, per_split, *stacked.shape[2:]).transpose(0, 1)
    # the adjoint is grid_sample's input gradient; calling the backward kernel directly skips the
    # forward pass autograd would run first (the input's values are never read, only its shape)
    shape_only = torch.empty((n_split, len(parts), m, m, m), dtype=dtype, device=device)
    adjoint, _ = torch.ops.aten.grid_sampler_3d_backward(stacked, shape_only, grid, 0, 0, True, [True, False])
    return adjoint.sum(0)


def average_over_operators(
    data_grid: torch.Tensor, weight_grid: torch.Tensor, operators: torch.Tensor, radius: float | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums of a symmetric map from those of its slices inserted once: (1/G) sum_g D(g p) and
    (1/G) sum_g W(g p) for centred grids (M, M, M) (complex, real) and operators (G, 3, 3) acting on
    (x, y, z) -> grids of the same shapes and dtypes. Trilinear, zero outside the grid. radius: the
    grids hold nothing beyond this many voxels from the centre (the back-projected window's radius
    plus the interpolation's reach), so neither does the result; None: anywhere in the grid.
    out: (data, weight) grids of the same shapes to write the result into (the inputs themselves may be
    given: they are read before anything is written); returned.

    Every slice inserted at A lands, with this average, also at each equivalent A g, as if it had been
    inserted there with 1/G of its values (for operators that permute the grid, such as D2 about x, y
    and z, exactly so): one insertion per slice instead of G, and a cost that does not grow with the
    number of slices. Interpolating the sums smooths them by about a voxel, as RELION's symmetrised
    back-projector does.
    """
    channels = torch.cat([torch.view_as_real(data_grid), weight_grid[..., None].to(data_grid.real.dtype)], -1)  # (M, M, M, 3)
    compiled = compiled_loops() if data_grid.device.type == "cpu" else None
    if compiled is not None:
        reach = math.sqrt(3) * (data_grid.shape[0] / 2 + 1) if radius is None else radius
        averaged = compiled.operator_average(channels, operators, reach).to(channels.dtype)
    else:
        averaged = _grid_sample_operator_average(channels, operators)
    if out is not None:  # one copy into place, instead of a contiguous complex grid and then a copy of it
        torch.view_as_real(out[0]).copy_(averaged[..., :2])
        out[1].copy_(averaged[..., 2])
        return out
    return torch.view_as_complex(averaged[..., :2].contiguous()).to(data_grid.dtype), averaged[..., 2].to(weight_grid.dtype)


def _grid_sample_operator_average(channels: torch.Tensor, operators: torch.Tensor) -> torch.Tensor:
    """average_over_operators by grid_sample: channels (M, M, M, C) real -> (M, M, M, C)."""
    m = channels.shape[0]
    axis = torch.arange(m, dtype=channels.dtype, device=channels.device) - m // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    points = torch.stack([x, y, z], -1).reshape(-1, 3)  # (M^3, 3) as (x, y, z)
    source = channels.permute(3, 0, 1, 2)[None]  # (1, C, M, M, M)
    scale = 2.0 / (m - 1)
    total = torch.zeros_like(source[0])
    for g in operators.to(device=channels.device, dtype=channels.dtype):
        grid = (points @ g.T) * scale + ((m // 2) * scale - 1.0)
        total += F.grid_sample(source, grid.reshape(1, m, m, m, 3), mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    return (total / operators.shape[0]).permute(1, 2, 3, 0)


def hermitian_symmetrise(data_grid: torch.Tensor | None, weight_grid: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Add each grid's Hermitian partner: D(k) + conj(D(-k)), W(k) + W(-k).

    Half-plane insertions then hold both halves of every slice, as a full-plane insertion would.
    """
    data = None if data_grid is None else data_grid + hermitian_partner(data_grid).conj()
    weight = None if weight_grid is None else weight_grid + hermitian_partner(weight_grid)
    return data, weight


@cached_grid
def gridding_correction(n: int, pad: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """sinc^2(|r| / (pad N)) on an (N, N, N) real-space grid: trilinear interpolation's attenuation
    (shared: read-only).

    Divide a map by it before computing the projector transform (RELION's griddingCorrect), or
    after a trilinear back-projection reconstruction.
    """
    r = centred_radius(n, 1, device).to(dtype) / (pad * n)
    x = math.pi * r
    sinc = torch.where(r > 0, torch.sin(x) / torch.where(r > 0, x, torch.ones_like(x)), torch.ones_like(x))
    return sinc * sinc


def projector_transform(volume: torch.Tensor, pad: int) -> torch.Tensor:
    """Real map (N, N, N) -> the centred transform its projections are sampled from (gridding-corrected)."""
    n = volume.shape[-1]
    return volume_to_centred_ft(volume / gridding_correction(n, pad, volume.device), pad)
