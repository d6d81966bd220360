"""Synthetic test maps: Gaussian blobs closed under a point group, in RELION's standard frame."""

from __future__ import annotations

import math

import torch

from novomap.maps.transform import centred_coordinates
from novomap.physics.euler import euler_to_matrix
from novomap.symmetry.groups import point_group

PIXEL_SIZE_A = 3.0


def blob_map(group_name: str, size: int = 64, blobs_per_unit: int | None = None, seed: int = 0) -> torch.Tensor:
    """A (size, size, size) float32 map: random blobs and their images under every group operator.

    Blob centres are random (not on any axis or mirror), with random heights and widths, so the map
    has the group's symmetry and, almost surely, no more.
    """
    group = point_group(group_name)
    generator = torch.Generator().manual_seed(seed)
    count = blobs_per_unit or max(1, min(6, 48 // group.order))
    radius = torch.empty(count, dtype=torch.float64).uniform_(0.2 * size, 0.34 * size, generator=generator)
    direction = torch.randn(count, 3, dtype=torch.float64, generator=generator)
    centres = direction / direction.norm(dim=-1, keepdim=True) * radius[:, None]
    heights = torch.empty(count, dtype=torch.float64).uniform_(0.5, 1.0, generator=generator)
    widths = torch.empty(count, dtype=torch.float64).uniform_(0.03 * size, 0.05 * size, generator=generator)
    coords = centred_coordinates(size, torch.float64)
    volume = torch.zeros(size, size, size, dtype=torch.float64)
    for g in group.operators:
        for centre, height, width in zip(centres @ g.T, heights, widths):
            volume += height * torch.exp(-((coords - centre) ** 2).sum(-1) / (2 * width**2))
    return volume.float()


def random_rotation(seed: int) -> torch.Tensor:
    """A uniformly distributed random rotation (3, 3) float64 (deterministic per seed)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(3, dtype=torch.float64, generator=generator)
    rot = 360.0 * u[0]
    tilt = torch.rad2deg(torch.arccos(1 - 2 * u[1]))
    psi = 360.0 * u[2]
    return euler_to_matrix(rot, tilt, psi)


def add_noise(volume: torch.Tensor, relative_std: float, seed: int) -> torch.Tensor:
    """volume + white Gaussian noise of std relative_std * std(volume)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(volume.shape, generator=generator, dtype=torch.float64).float()
    return volume + relative_std * float(volume.std()) * noise


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double().flatten() - a.double().mean()
    b = b.double().flatten() - b.double().mean()
    return float((a @ b) / math.sqrt(float((a @ a) * (b @ b))))
