"""RELION's ZYZ Euler convention (vdam-spec 1.4) against hand-computed and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from novomap.physics.euler import axis_angle_to_matrix, euler_to_matrix, matrix_to_euler, nearest_rotations, rotation_angle_deg

S3 = math.sqrt(3.0)


def _rz(t_deg: float) -> np.ndarray:
    """RELION's elementary Rz (spec 1.4): [[c, s, 0], [-s, c, 0], [0, 0, 1]]."""
    c, s = math.cos(math.radians(t_deg)), math.sin(math.radians(t_deg))
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def _ry(t_deg: float) -> np.ndarray:
    """RELION's elementary Ry (spec 1.4): [[c, 0, -s], [0, 1, 0], [s, 0, c]]."""
    c, s = math.cos(math.radians(t_deg)), math.sin(math.radians(t_deg))
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


def _random_angles(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rot = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    tilt = torch.rand(n, generator=g, dtype=torch.float64) * 180
    psi = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    return rot, tilt, psi


def test_table_at_rot30_tilt60_psi90_by_hand():
    # c/s of rot = 30: sqrt3/2, 1/2; tilt = 60: 1/2, sqrt3/2; psi = 90: 0, 1. Table of spec 1.4:
    # A00 = cg cb ca - sg sa = -1/2          A01 = cg cb sa + sg ca = sqrt3/2     A02 = -cg sb = 0
    # A10 = -sg cb ca - cg sa = -sqrt3/4     A11 = -sg cb sa + cg ca = -1/4       A12 = sg sb = sqrt3/2
    # A20 = sb ca = 3/4                      A21 = sb sa = sqrt3/4                A22 = cb = 1/2
    expected = torch.tensor(
        [
            [-0.5, S3 / 2, 0.0],
            [-S3 / 4, -0.25, S3 / 2],
            [0.75, S3 / 4, 0.5],
        ],
        dtype=torch.float64,
    )
    a = euler_to_matrix(torch.tensor(30.0, dtype=torch.float64), torch.tensor(60.0, dtype=torch.float64), torch.tensor(90.0, dtype=torch.float64))
    torch.testing.assert_close(a, expected, atol=1e-12, rtol=0)
    rot, tilt, psi = matrix_to_euler(a)
    assert float(rot) == pytest.approx(30.0, abs=1e-9)
    assert float(tilt) == pytest.approx(60.0, abs=1e-9)
    assert float(psi) == pytest.approx(90.0, abs=1e-9)


def test_integer_and_float32_inputs():
    a = euler_to_matrix(torch.tensor(30), torch.tensor(60), torch.tensor(90))
    assert a.dtype == torch.float64
    assert float(a[1, 0]) == pytest.approx(-S3 / 4, abs=1e-12)
    a32 = euler_to_matrix(torch.tensor([30.0]), torch.tensor([60.0]), torch.tensor([90.0]))
    assert a32.shape == (1, 3, 3)
    assert float(a32[0, 2, 0]) == pytest.approx(0.75, abs=1e-6)


def test_orthonormal_and_proper():
    a = euler_to_matrix(*_random_angles(500, 1))
    eye = torch.eye(3, dtype=torch.float64).expand_as(a)
    torch.testing.assert_close(a @ a.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(a), torch.ones(500, dtype=torch.float64), atol=1e-12, rtol=0)


def test_composition_of_elementary_matrices():
    rot, tilt, psi = _random_angles(50, 2)
    a = euler_to_matrix(rot, tilt, psi).numpy()
    for i in range(50):
        expected = _rz(float(psi[i])) @ _ry(float(tilt[i])) @ _rz(float(rot[i]))
        np.testing.assert_allclose(a[i], expected, atol=1e-12)


def test_matches_scipy_active_intrinsic_zyz_transposed():
    # RELION's Rz/Ry are the transposes of the active rotations, so A = (Rz(rot) Ry(tilt) Rz(psi))_active^T
    rot, tilt, psi = _random_angles(50, 3)
    a = euler_to_matrix(rot, tilt, psi).numpy()
    active = Rotation.from_euler("ZYZ", torch.stack([rot, tilt, psi], -1).numpy(), degrees=True).as_matrix()
    np.testing.assert_allclose(a, np.transpose(active, (0, 2, 1)), atol=1e-12)


def test_third_row_is_viewing_direction():
    rot, tilt, psi = _random_angles(100, 4)
    a = euler_to_matrix(rot, tilt, psi)
    alpha, beta = torch.deg2rad(rot), torch.deg2rad(tilt)
    direction = torch.stack([beta.sin() * alpha.cos(), beta.sin() * alpha.sin(), beta.cos()], -1)
    torch.testing.assert_close(a[:, 2, :], direction, atol=1e-12, rtol=0)


def test_round_trip_compares_matrices():
    rot, tilt, psi = _random_angles(1000, 5)
    a = euler_to_matrix(rot, tilt, psi)
    r2, t2, p2 = matrix_to_euler(a)
    assert bool(((t2 >= 0) & (t2 <= 180)).all())
    b = euler_to_matrix(r2, t2, p2)
    torch.testing.assert_close(b, a, atol=1e-10, rtol=0)
    assert float(rotation_angle_deg(a, b).max()) < 1e-5


@pytest.mark.parametrize("tilt", [0.0, 180.0, 1e-9, 180.0 - 1e-9])
def test_round_trip_at_gimbal_lock(tilt):
    g = torch.Generator().manual_seed(6)
    rot = torch.rand(200, generator=g, dtype=torch.float64) * 360 - 180
    psi = torch.rand(200, generator=g, dtype=torch.float64) * 360 - 180
    a = euler_to_matrix(rot, torch.full_like(rot, tilt), psi)
    r2, t2, p2 = matrix_to_euler(a)
    torch.testing.assert_close(euler_to_matrix(r2, t2, p2), a, atol=1e-8, rtol=0)
    # RELION puts the whole in-plane angle into psi at gimbal lock
    assert bool((r2 == 0).all())
    assert float((t2 - round(tilt)).abs().max()) < 1e-6


def test_rotation_angle_deg():
    deg = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    a = euler_to_matrix(deg(10.0), deg(20.0), deg(30.0))
    b = a @ euler_to_matrix(deg(0.0), deg(0.0), deg(25.0))
    assert float(rotation_angle_deg(a, b)[0]) == pytest.approx(25.0, abs=1e-6)


def test_axis_angle_rotates_x_to_y_about_z():
    r = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0]), 90.0)
    v = r @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(v, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    # and agrees with an independent (scipy) active rotation for a random axis
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    r = axis_angle_to_matrix(axis, 37.0).numpy()
    expected = Rotation.from_rotvec((axis / axis.norm()).numpy() * math.radians(37.0)).as_matrix()
    np.testing.assert_allclose(r, expected, atol=1e-12)


def test_nearest_rotation_of_a_scaled_rotation_is_the_rotation_and_reflections_become_proper():
    rotation = euler_to_matrix(*(torch.tensor([a], dtype=torch.float64) for a in (40.0, 70.0, -20.0)))
    assert torch.allclose(nearest_rotations(0.3 * rotation), rotation, atol=1e-12)
    flipped = nearest_rotations(rotation @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)))
    assert float(torch.det(flipped)) == pytest.approx(1.0)
    assert torch.allclose(nearest_rotations(0.3 * rotation[0]), rotation[0], atol=1e-12)  # one matrix, no batch
