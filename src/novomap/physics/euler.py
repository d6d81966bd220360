"""RELION's ZYZ Euler angles (rot, tilt, psi) in degrees <-> rotation matrices.

A = Rz(psi) @ Ry(tilt) @ Rz(rot), with RELION's sign convention
Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]] and Ry(t) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
(vdam-spec 1.4). A maps volume coordinates into the projection frame: the image of a
volume V under A is P_A(x, y) = integral V(A^T (x, y, z)) dz, and its Fourier slice samples the
3D transform at A^T (kx, ky, 0). The third row of A is the viewing direction.
"""

from __future__ import annotations

import math

import torch

_EPS = 16 * torch.finfo(torch.float32).eps


def euler_to_matrix(rot_deg: torch.Tensor, tilt_deg: torch.Tensor, psi_deg: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles (degrees, any broadcastable shape (...)) -> matrices (..., 3, 3)."""
    rot, tilt, psi = torch.broadcast_tensors(
        torch.as_tensor(rot_deg), torch.as_tensor(tilt_deg), torch.as_tensor(psi_deg)
    )
    if not torch.is_floating_point(rot):
        rot, tilt, psi = rot.double(), tilt.double(), psi.double()
    a, b, g = torch.deg2rad(rot), torch.deg2rad(tilt), torch.deg2rad(psi)
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def matrix_to_euler(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotation matrices (..., 3, 3) -> RELION (rot, tilt, psi) in degrees, tilt in [0, 180].

    Follows RELION's Euler_matrix2angles: for tilt 0 or 180 (gimbal lock) rot is set to 0.
    """
    a = matrix
    sin_tilt = torch.sqrt(a[..., 0, 2] ** 2 + a[..., 1, 2] ** 2)
    regular = sin_tilt > _EPS
    psi = torch.atan2(a[..., 1, 2], -a[..., 0, 2])
    rot = torch.atan2(a[..., 2, 1], a[..., 2, 0])
    tilt = torch.atan2(sin_tilt, a[..., 2, 2])
    # gimbal lock: only rot + psi (tilt 0) or psi - rot (tilt 180) is defined; put it all in psi
    up = a[..., 2, 2] > 0
    psi_lock = torch.where(up, torch.atan2(-a[..., 1, 0], a[..., 0, 0]), torch.atan2(a[..., 1, 0], -a[..., 0, 0]))
    tilt_lock = torch.where(up, torch.zeros_like(tilt), torch.full_like(tilt, math.pi))
    rot = torch.where(regular, rot, torch.zeros_like(rot))
    psi = torch.where(regular, psi, psi_lock)
    tilt = torch.where(regular, tilt, tilt_lock)
    return torch.rad2deg(rot), torch.rad2deg(tilt), torch.rad2deg(psi)


def rotation_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of the rotation a^T b between rotation matrices (..., 3, 3)."""
    trace = (a * b).sum(dim=(-2, -1))
    return torch.rad2deg(torch.arccos(((trace - 1) / 2).clamp(-1.0, 1.0)))


def nearest_rotations(matrices: torch.Tensor) -> torch.Tensor:
    """The proper rotation nearest (Frobenius) to each 3x3 matrix (..., 3, 3) -> (..., 3, 3):
    U diag(1, 1, det UV^T) V^T from the SVD U S V^T (a chordal mean of rotations, a noisy estimate)."""
    u, _, vh = torch.linalg.svd(matrices)
    sign = torch.sign(torch.det(u @ vh))
    u = torch.cat([u[..., :2], u[..., 2:] * sign[..., None, None]], dim=-1)
    return u @ vh


def axis_angle_to_matrix(axis: torch.Tensor, angle_deg: torch.Tensor | float) -> torch.Tensor:
    """Active right-handed rotation by angle_deg about axis (..., 3) -> (..., 3, 3) (Rodrigues).

    R @ v rotates the vector v counter-clockwise about the axis when viewed from its tip.
    """
    axis = torch.as_tensor(axis, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    theta = torch.deg2rad(torch.as_tensor(angle_deg, dtype=axis.dtype, device=axis.device))
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = torch.zeros_like(x)
    k = torch.stack(
        [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)], -2
    )
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(k)
    s, c = theta.sin()[..., None, None], theta.cos()[..., None, None]
    return eye + s * k + (1 - c) * (k @ k)
