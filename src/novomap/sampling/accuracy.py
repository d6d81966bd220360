"""Expected angular and translational accuracy of the current model (vdam-spec 3.7).

For a particle at its current pose, the error is the smallest perturbation that makes the
CTF-weighted, noise-normalised squared difference between the two projections exceed ln(100):
a pose that far away is 100 times less likely. Found per particle by bisection, all particles at once.
"""

from __future__ import annotations

import math

import torch

from novomap.physics.euler import axis_angle_to_matrix
from novomap.physics.projection import extract_slices
from novomap.physics.window import FourierWindow

THRESHOLD = math.log(100.0)
MAX_ANGLE_DEG = 30.0
MAX_SHIFT_PX = 10.0
_BISECTION_STEPS = 7


def _bisect(distance, upper: float, n: int, device) -> torch.Tensor:
    """Smallest x in [0, upper] with distance(x) > THRESHOLD, per item; distance maps (n,) -> (n,)."""
    lo = torch.zeros(n, dtype=torch.float64, device=device)
    hi = torch.full((n,), upper, dtype=torch.float64, device=device)
    reaches = distance(hi) > THRESHOLD
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        above = distance(mid) > THRESHOLD
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    return torch.where(reaches, hi, torch.full_like(hi, upper))


def expected_errors(
    reference: torch.Tensor, rotations: torch.Tensor, ctf: torch.Tensor, inv_sigma2: torch.Tensor, window: FourierWindow, pad: int
) -> tuple[float, float]:
    """(angular error in degrees, translational error in px), averaged over particles.

    reference (M, M, M) complex projector transform; rotations (B, 3, 3) current poses;
    ctf, inv_sigma2 (B, P) on `window`.
    """
    device = reference.device
    rotations = rotations.to(device=device, dtype=torch.float64)
    kx, ky = window.kx.to(device), window.ky.to(device)
    q = (ctf.double() ** 2) * inv_sigma2.double() / 2
    p0 = extract_slices(reference, rotations, kx, ky, pad)
    errors = []
    for axis in torch.eye(3, dtype=torch.float64, device=device):

        def distance(angle: torch.Tensor) -> torch.Tensor:
            turned = rotations @ axis_angle_to_matrix(axis.expand(angle.numel(), 3), angle).to(device)
            p1 = extract_slices(reference, turned, kx, ky, pad)
            return (q * (p1 - p0).abs().square()).sum(-1)

        errors.append(_bisect(distance, MAX_ANGLE_DEG, rotations.shape[0], device))
    angular = float(torch.stack(errors).mean())

    power = q * p0.abs().square()  # (B, P)
    shift_errors = []
    for k in (kx, ky):

        def shift_distance(shift: torch.Tensor) -> torch.Tensor:
            phase = torch.pi * k[None, :] * shift[:, None] / window.box
            return (power * 4 * torch.sin(phase) ** 2).sum(-1)

        shift_errors.append(_bisect(shift_distance, MAX_SHIFT_PX, rotations.shape[0], device))
    return angular, float(torch.stack(shift_errors).mean())
