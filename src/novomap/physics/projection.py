"""Fourier-space projection (central slices) and back-projection on a centred 3D grid.

The slice of orientation A samples the 3D transform at k3 = A^T (kx, ky, 0) (vdam-spec 1.4),
on a (pad*N)^3 grid whose zero frequency sits at index pad*N//2, by trilinear interpolation.
Back-projection is the exact adjoint: each value is splatted onto the same 8 neighbours with the
same weights. Gathers and scatters use one set of corner indices, so the two never disagree.
"""

from __future__ import annotations

import math

import torch

from novomap.physics.fourier import centred_radius, hermitian_partner


def slice_coordinates(rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int) -> torch.Tensor:
    """3D grid coordinates (x, y, z), in padded voxels from the centre, of slice pixels.

    rotations (O, 3, 3), kx/ky (P,) -> (O, P, 3). k3 = A^T (kx, ky, 0): k3_j = A_0j kx + A_1j ky.
    """
    a = rotations.to(kx.dtype)
    k3 = a[:, 0, None, :] * kx[None, :, None] + a[:, 1, None, :] * ky[None, :, None]
    return k3 * pad


def _trilinear_corners(coords: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates (..., 3) as (x, y, z) from the centre -> flat indices (..., 8), weights (..., 8).

    Corners outside the grid get weight 0 (and a valid dummy index). Built from per-axis weight
    pairs by broadcasting: this runs for every pixel of every slice, so it avoids Python loops.
    """
    pos = coords + m // 2
    base = torch.floor(pos)
    frac = pos - base
    base = base.long()
    low_ok = (base >= 0) & (base < m)
    high_ok = (base + 1 >= 0) & (base + 1 < m)
    axis_weights = torch.stack([(1 - frac) * low_ok, frac * high_ok], dim=-1)  # (..., 3, 2) for x, y, z
    wx, wy, wz = axis_weights[..., 0, :], axis_weights[..., 1, :], axis_weights[..., 2, :]
    weights = (wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]).flatten(-3)
    flat = (base[..., 2] * m + base[..., 1]) * m + base[..., 0]
    offsets = torch.tensor([dz * m * m + dy * m + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)], device=coords.device)
    index = (flat[..., None] + offsets).clamp(0, m**3 - 1)
    return index, weights


def extract_slices(volume_ft: torch.Tensor, rotations: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad: int) -> torch.Tensor:
    """Central slices of a centred 3D transform.

    volume_ft (M, M, M) complex, rotations (O, 3, 3), kx/ky (P,) in cycles per unpadded box
    -> (O, P) complex (same dtype as volume_ft).
    """
    m = volume_ft.shape[-1]
    coords = slice_coordinates(rotations, kx, ky, pad)
    index, weight = _trilinear_corners(coords, m)
    flat = torch.view_as_real(volume_ft.reshape(-1))  # (M^3, 2)
    gathered = flat[index.reshape(-1)].reshape(*index.shape, 2)  # (O, P, 8, 2)
    values = (gathered * weight.to(flat.dtype)[..., None]).sum(-2)
    return torch.view_as_complex(values.contiguous())


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
    """Back-project slices into centred grids in place (the adjoint of extract_slices).

    values (O, P) complex -> added into data_grid (M, M, M) complex; weights (O, P) real ->
    added into weight_grid (M, M, M) real. Either pair may be None. Only the half-plane of each
    image is inserted; call `hermitian_symmetrise` afterwards to add the conjugate half.
    """
    grid = data_grid if data_grid is not None else weight_grid
    m = grid.shape[-1]
    coords = slice_coordinates(rotations, kx, ky, pad)
    index, corner_weight = _trilinear_corners(coords, m)
    flat_index = index.reshape(-1)
    if values is not None and data_grid is not None:
        real_grid = torch.view_as_real(data_grid).reshape(-1, 2)
        v = torch.view_as_real(values.to(data_grid.dtype)).unsqueeze(-2) * corner_weight.to(real_grid.dtype)[..., None]
        real_grid.index_add_(0, flat_index, v.reshape(-1, 2))
    if weights is not None and weight_grid is not None:
        w = weights.to(weight_grid.dtype).unsqueeze(-1) * corner_weight.to(weight_grid.dtype)
        weight_grid.view(-1).index_add_(0, flat_index, w.reshape(-1))


def hermitian_symmetrise(data_grid: torch.Tensor | None, weight_grid: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Add each grid's Hermitian partner: D(k) + conj(D(-k)), W(k) + W(-k).

    Half-plane insertions then hold both halves of every slice, as a full-plane insertion would.
    """
    data = None if data_grid is None else data_grid + hermitian_partner(data_grid).conj()
    weight = None if weight_grid is None else weight_grid + hermitian_partner(weight_grid)
    return data, weight


def gridding_correction(n: int, pad: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """sinc^2(|r| / (pad N)) on an (N, N, N) real-space grid: trilinear interpolation's attenuation.

    Divide a map by it before computing the projector transform (RELION's griddingCorrect), or
    after a trilinear back-projection reconstruction.
    """
    r = centred_radius(n, 1, device).to(dtype) / (pad * n)
    x = math.pi * r
    sinc = torch.where(r > 0, torch.sin(x) / torch.where(r > 0, x, torch.ones_like(x)), torch.ones_like(x))
    return sinc * sinc
