"""HEALPix directions (NEST ordering) and in-plane angles, as RELION samples them (vdam-spec 3.3).

Order n: Nside = 2^n, 12*4^n directions; psi step = 360 / (6 * 2^n) degrees. The children of
NEST pixel p at order n+1 are 4p .. 4p+3, which makes oversampling a matter of index arithmetic.
"""

from __future__ import annotations

import healpy
import numpy as np
import torch


def angular_step_deg(order: int) -> float:
    """Nominal angular sampling (degrees) of HEALPix order n: 60, 30, 15, 7.5, 3.75 for n = 0..4."""
    return 360.0 / (6 * 2**order)


def healpix_directions(order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rot_deg, tilt_deg), each (12*4^order,) float64: pixel centres, rot in (-180, 180], tilt in [0, 180]."""
    nside = 2**order
    theta, phi = healpy.pix2ang(nside, np.arange(12 * nside * nside), nest=True)
    rot = np.degrees(phi)
    rot = np.where(rot > 180.0, rot - 360.0, rot)
    return torch.from_numpy(rot), torch.from_numpy(np.degrees(theta))


def psi_angles(order: int) -> torch.Tensor:
    """In-plane angles (degrees) j * step for j = 0 .. 6*2^order - 1 -> (n_psi,) float64."""
    n_psi = 6 * 2**order
    return torch.arange(n_psi, dtype=torch.float64) * angular_step_deg(order)


def child_psi_angles(order: int) -> torch.Tensor:
    """Psi angles of the oversampled (order+1) grid arranged (n_psi_coarse, 2): psi_j - step/4, psi_j + step/4."""
    step = angular_step_deg(order)
    coarse = psi_angles(order)
    return torch.stack([coarse - step / 4, coarse + step / 4], dim=-1)
