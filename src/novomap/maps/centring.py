"""Where is the particle? Its centre of mass and extent, robust to noise in the solvent.

RELION re-centres by the centre of mass of the positive voxels. In a noisy map the positive half of
the solvent noise, spread over the whole box, drags that centre towards the box centre (by pixels),
which moves symmetry axes off the rotation centre. Here the mass is the map smoothed to ~4 px and
clipped at a noise level taken from the voxel histogram (median + 2 robust sigma; ~0 for a clean
map, so it is then RELION's positive-voxel centre of mass), and the centre is re-estimated a few
times inside a sphere around the current estimate, where leftover noise pulls symmetrically.
"""

from __future__ import annotations

import math

import torch

from novomap.maps.transform import center_of_mass, centred_coordinates, fourier_resize, lowpass, shift_volume

_ITERATIONS = 5
_MAX_SIZE = 64  # larger maps are analysed on a Fourier-resized copy (centre and radius scale with it)


def _small_copy(volume: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(copy of at most _MAX_SIZE^3, px of the input per px of the copy)."""
    n = volume.shape[-1]
    if n <= _MAX_SIZE:
        return volume, 1.0
    return fourier_resize(volume.double(), _MAX_SIZE).to(volume.dtype), n / _MAX_SIZE


def density_weights(volume: torch.Tensor) -> torch.Tensor:
    """Non-negative mass (N, N, N) float64: the map smoothed to 4 px, minus the noise level, clipped at 0."""
    smooth = lowpass(volume.to(torch.float64), 1.0, 4.0)
    median = smooth.median()
    spread = 1.4826 * (smooth - median).abs().median()
    return (smooth - (median + 2.0 * spread)).clamp(min=0.0)


def _masked_com(weights: torch.Tensor, centre_zyx: torch.Tensor, radius: float) -> torch.Tensor:
    """Centre of mass (3,) zyx px from the box centre of the weights inside a sphere at centre_zyx."""
    axis = torch.arange(weights.shape[-1], dtype=torch.float64) - weights.shape[-1] // 2
    z, y, x = (axis - c for c in centre_zyx.tolist())
    inside = (z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2) <= radius**2
    return center_of_mass(weights * inside, positive_only=True)


def particle_centre(volume: torch.Tensor) -> torch.Tensor:
    """Centre of the particle (3,) zyx px from the centre voxel (see module doc)."""
    small, scale = _small_copy(volume)
    weights = density_weights(small)
    centre = center_of_mass(weights, positive_only=True)
    radius = 0.4 * small.shape[-1]
    for _ in range(_ITERATIONS):
        centre = _masked_com(weights, centre, radius)
    return centre * scale


def centre_by_mass(volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift a map so that its particle centre sits on the centre voxel: (map, shift (3,) zyx px)."""
    shift = -particle_centre(volume)
    return shift_volume(volume, shift), shift


def particle_radius(volume: torch.Tensor, fraction: float = 0.99) -> float:
    """Radius (px) around the centre voxel that holds `fraction` of the particle's mass (N/2 if none)."""
    small, scale = _small_copy(volume)
    n = small.shape[-1]
    weights = density_weights(small).flatten()
    total = float(weights.sum())
    if total <= 0:
        return volume.shape[-1] / 2
    r = centred_coordinates(n, torch.float64).norm(dim=-1).flatten()
    order = torch.argsort(r)
    cumulative = torch.cumsum(weights[order], 0) / total
    position = int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=torch.float64)))
    return float(r[order][min(position, r.numel() - 1)]) * scale


def search_box(volume: torch.Tensor) -> int:
    """Even real-space box (px) that holds the (centred) particle with a margin, at most the map's box."""
    n = volume.shape[-1]
    box = 2 * math.ceil(1.15 * particle_radius(volume) + 3)
    return min(n, max(box, 16))
