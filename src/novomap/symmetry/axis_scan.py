"""Cyclic-symmetry scores of every order about many axes at once, from cylindrical harmonics.

Resample a map on a cylindrical grid (rho, phi, z) around an axis u and Fourier-transform along phi:
the power P(m) in angular order m (weighted by the volume element rho drho dphi dz, inside a sphere)
tells how the map varies around u. Averaging over Cn about u keeps exactly the orders m = 0 mod n,
so the Cn score of axis u, ||V - S_n V||^2 / ||V||^2, is 1 - sum_{m = 0 mod n} P(m) / sum_m P(m)
(the spec-5.2 score, for every n from one resampling).
"""

from __future__ import annotations

import math

import torch

from novomap.maps.so3_search import rotations_for_directions
from novomap.maps.transform import sample_at

N_PHI = 64  # angular samples: orders up to 32 are resolved


def _cylinder(radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cylindrical sample points (R, N_PHI, Z, 3) in an axis frame (axis = z) and weights (R, Z)."""
    rho = torch.arange(radius, dtype=torch.float64) + 0.5
    phi = torch.arange(N_PHI, dtype=torch.float64) * (2 * math.pi / N_PHI)
    z = torch.arange(-radius, radius + 1, dtype=torch.float64)
    r, p, h = torch.meshgrid(rho, phi, z, indexing="ij")
    points = torch.stack([r * torch.cos(p), r * torch.sin(p), h], dim=-1)
    inside = (rho[:, None] ** 2 + z[None, :] ** 2) <= radius**2
    weights = rho[:, None] * inside
    return points, weights


def angular_power(volume: torch.Tensor, directions: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Weighted power per angular order about each axis: (D, N_PHI // 2 + 1) float64.

    volume (N, N, N) centred; directions (D, 3) unit vectors; the cylinder fills the sphere of radius
    N/2 - 1 around the centre voxel.
    """
    radius = volume.shape[-1] // 2 - 1
    points, weights = _cylinder(radius)
    frames = rotations_for_directions(directions)  # A with A u = z; axis-frame point p sits at A^T p
    count = torch.full((N_PHI // 2 + 1,), 2.0, dtype=torch.float64)
    count[0] = 1.0
    count[-1] = 1.0
    powers = []
    for start in range(0, frames.shape[0], batch):
        block = frames[start : start + batch]
        positions = torch.einsum("rpzj,bjk->brpzk", points, block)  # rows p^T A = (A^T p)^T
        values = sample_at(volume, positions).double()  # (b, R, N_PHI, Z)
        spectrum = torch.fft.rfft(values, dim=2).abs() ** 2  # (b, R, M, Z)
        powers.append(torch.einsum("brmz,rz->bm", spectrum, weights) * count)
    return torch.cat(powers)


def cyclic_scores(power: torch.Tensor, orders: list[int]) -> torch.Tensor:
    """Cn scores (D, len(orders)) from angular power (D, M): 1 - power in orders m = 0 mod n / total."""
    total = power.sum(dim=1).clamp(min=1e-300)
    m = torch.arange(power.shape[1])
    columns = [1.0 - power[:, m % n == 0].sum(dim=1) / total for n in orders]
    return torch.stack(columns, dim=1)


def local_directions(centre: torch.Tensor, radius_deg: float, step_deg: float) -> torch.Tensor:
    """Unit vectors (M, 3) on a square tangent-plane grid within radius_deg of centre (3,), centre first."""
    helper = torch.tensor([1.0, 0.0, 0.0] if abs(float(centre[0])) < 0.9 else [0.0, 1.0, 0.0], dtype=torch.float64)
    e1 = torch.linalg.cross(centre, helper)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(centre, e1)
    count = int(radius_deg // step_deg)
    offsets = torch.arange(-count, count + 1, dtype=torch.float64) * step_deg
    a, b = torch.meshgrid(offsets, offsets, indexing="ij")
    a, b = a.flatten(), b.flatten()
    keep = a**2 + b**2 <= radius_deg**2
    a, b = a[keep], b[keep]
    order = torch.argsort(a**2 + b**2, stable=True)  # the centre (0, 0) comes first
    a, b = torch.tan(torch.deg2rad(a[order])), torch.tan(torch.deg2rad(b[order]))
    vectors = centre[None] + a[:, None] * e1[None] + b[:, None] * e2[None]
    return vectors / vectors.norm(dim=-1, keepdim=True)

