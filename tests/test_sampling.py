"""Sampling grids against vdam-spec 3.3 and Appendix B check 5: HEALPix directions, psi, translations, oversampling, perturbation."""

from __future__ import annotations

import healpy
import numpy as np
import pytest
import torch

from novomap.physics.euler import euler_to_matrix, rotation_angle_deg
from novomap.sampling.grid import build_search_grid
from novomap.sampling.healpix import (
    angular_step_deg,
    child_psi_angles,
    healpix_directions,
    mean_spacing_deg,
    pixel_angles,
    pixel_vectors,
    psi_angles,
)
from novomap.sampling.translations import child_translations, translation_grid


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    """Uniform rotations on SO(3) from normalised Gaussian quaternions (independent of the code under test)."""
    q = torch.randn((n, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


@pytest.mark.parametrize("order, n_dir, n_psi, step", [(0, 12, 6, 60.0), (1, 48, 12, 30.0), (2, 192, 24, 15.0), (3, 768, 48, 7.5)])
def test_appendix_b_check_5_counts(order, n_dir, n_psi, step):
    rot, tilt = healpix_directions(order)
    assert rot.numel() == tilt.numel() == n_dir
    assert psi_angles(order).numel() == n_psi
    assert angular_step_deg(order) == step
    grid = build_search_grid(order, 6, 2)
    assert grid.n_directions == n_dir
    assert grid.n_coarse_orientations == n_dir * n_psi  # 576, 4608, 36864 in C1
    assert grid.fine_rotations.shape == (n_dir * n_psi, 8, 3, 3)
    # rot wrapped to (-180, 180], tilt in [0, 180]
    assert float(rot.min()) > -180 and float(rot.max()) <= 180
    assert float(tilt.min()) >= 0 and float(tilt.max()) <= 180


def test_psi_values_and_children():
    psi = psi_angles(1)
    assert torch.allclose(psi, torch.arange(12, dtype=torch.float64) * 30.0)
    children = child_psi_angles(1)
    # psi_j - step/2 + (m + 1/2) step/2 for m = 0, 1: psi_j -/+ 7.5 at step 30
    assert torch.allclose(children[:, 0], psi - 7.5)
    assert torch.allclose(children[:, 1], psi + 7.5)


def test_twenty_nine_translations_for_range_6_step_2():
    t = translation_grid(6, 2)
    assert t.shape == (29, 2)
    # every point on the 2-px lattice within the 6-px disc, and nothing else
    expected = {(2 * i, 2 * j) for i in range(-3, 4) for j in range(-3, 4) if (2 * i) ** 2 + (2 * j) ** 2 <= 36}
    assert {(int(x), int(y)) for x, y in t.tolist()} == expected
    assert len(expected) == 29
    assert t.abs().sum().item() > 0 and torch.allclose(t.mean(0), torch.zeros(2, dtype=torch.float64))


def test_translation_children_are_a_2x2_grid_at_quarter_steps():
    coarse = translation_grid(6, 2)
    fine = child_translations(coarse, 2)
    assert fine.shape == (29, 4, 2)
    offsets = fine - coarse[:, None, :]
    expected = {(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5)}
    for row in offsets:
        assert {(float(x), float(y)) for x, y in row.tolist()} == expected
    # 116 distinct fine points, 1 px apart: the fine step is half the coarse step
    points = {(float(x), float(y)) for x, y in fine.reshape(-1, 2).tolist()}
    assert len(points) == 116
    xs = sorted({p[0] for p in points})
    assert np.allclose(np.diff(xs), 1.0)


def test_coarse_directions_are_healpix_pixel_centres():
    """The viewing direction (third row of A) of coarse orientation dir*n_psi + j is the centre of NEST pixel dir."""
    for order in (1, 2):
        grid = build_search_grid(order, 6, 2)
        nside = 2**order
        x, y, z = healpy.pix2vec(nside, np.arange(12 * nside * nside), nest=True)
        centres = torch.from_numpy(np.stack([x, y, z], -1))
        directions = grid.coarse_rotations[:, 2, :]
        assert torch.allclose(directions, centres[grid.coarse_direction], atol=1e-12)
        assert torch.equal(grid.coarse_direction, torch.arange(12 * 4**order).repeat_interleave(6 * 2**order))


def test_fine_directions_are_the_healpix_children_of_their_parent():
    grid = build_search_grid(1, 6, 2)
    v = grid.fine_rotations[:, :, 2, :].reshape(-1, 3).numpy()
    fine_pixel = healpy.vec2pix(4, v[:, 0], v[:, 1], v[:, 2], nest=True).reshape(-1, 8)
    # NEST: the children of pixel p at order n+1 are 4p .. 4p+3; each appears twice (two child psi)
    parent = grid.coarse_direction.numpy()[:, None]
    assert np.array_equal(fine_pixel // 4, np.broadcast_to(parent, fine_pixel.shape))
    for row in fine_pixel[:50]:
        assert sorted(set(row.tolist())) == sorted(set(range(4 * (row[0] // 4), 4 * (row[0] // 4) + 4)))


def test_fine_orientations_are_near_their_parent_and_distinct():
    grid = build_search_grid(1, 6, 2)
    to_parent = rotation_angle_deg(grid.coarse_rotations[:, None], grid.fine_rotations)  # (576, 8)
    assert float(to_parent.median()) < grid.fine_step_deg  # ~13.5 deg for a 15 deg fine step
    assert float(to_parent.max()) < grid.coarse_step_deg
    # the 8 children of a coarse orientation are distinct orientations
    pairwise = rotation_angle_deg(grid.fine_rotations[:, :, None], grid.fine_rotations[:, None, :])
    off_diagonal = pairwise[:, ~torch.eye(8, dtype=torch.bool)]
    assert float(off_diagonal.min()) > 5.0
    # most fine orientations are nearest to their own parent among all coarse ones
    fine = grid.fine_rotations.reshape(-1, 3, 3)
    nearest = rotation_angle_deg(fine[:, None], grid.coarse_rotations[None]).argmin(1)
    parent = torch.arange(grid.n_coarse_orientations).repeat_interleave(8)
    assert float((nearest == parent).float().mean()) > 0.8


def test_fine_grid_covers_so3():
    """For random rotations the nearest fine orientation (order 1, 15 deg) is within ~15 deg; coarse within ~30."""
    grid = build_search_grid(1, 6, 2)
    fine = grid.fine_rotations.reshape(-1, 3, 3)
    samples = _random_rotations(500, seed=11)
    nearest_fine = rotation_angle_deg(samples[:, None], fine[None]).min(1).values
    nearest_coarse = rotation_angle_deg(samples[:, None], grid.coarse_rotations[None]).min(1).values
    assert float(nearest_fine.max()) < 15.0
    assert float(nearest_coarse.max()) < 30.0
    assert float(nearest_fine.median()) < float(nearest_coarse.median())


@pytest.mark.parametrize("r", [0.3, -0.45])
def test_perturbation_shifts_translations_and_right_multiplies_rotations(r):
    plain = build_search_grid(1, 6, 2, 0.0)
    moved = build_search_grid(1, 6, 2, r)
    assert torch.allclose(moved.coarse_translations, plain.coarse_translations + r * 2.0)
    assert torch.allclose(moved.fine_translations, plain.fine_translations + r * 2.0)
    delta = torch.tensor(r * 30.0, dtype=torch.float64)  # r times the coarse angular step
    e = euler_to_matrix(delta, delta, delta)
    assert torch.allclose(moved.coarse_rotations, plain.coarse_rotations @ e, atol=1e-12)
    assert torch.allclose(moved.fine_rotations, plain.fine_rotations @ e, atol=1e-12)
    # right multiplication is an isometry of SO(3): distances within the grid are unchanged
    a = rotation_angle_deg(plain.coarse_rotations[:40, None], plain.coarse_rotations[None, :40])
    b = rotation_angle_deg(moved.coarse_rotations[:40, None], moved.coarse_rotations[None, :40])
    assert torch.allclose(a, b, atol=1e-5)
    # the bookkeeping does not move
    assert torch.equal(moved.coarse_direction, plain.coarse_direction)


@pytest.mark.parametrize("nest", [True, False])
@pytest.mark.parametrize("nside", [1, 2, 4, 8, 16, 64])
def test_pixel_centres_match_healpy(nside: int, nest: bool) -> None:
    """Our HEALPix pixel centres (healpy is not imported at run time: it costs ~1 s of start-up)."""
    pixels = np.arange(12 * nside * nside)
    theta, phi = pixel_angles(nside, nest)
    expected_theta, expected_phi = healpy.pix2ang(nside, pixels, nest=nest)
    np.testing.assert_allclose(theta, expected_theta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(phi, expected_phi, rtol=0, atol=1e-12)
    expected_vectors = np.stack(healpy.pix2vec(nside, pixels, nest=nest), axis=-1)
    np.testing.assert_allclose(pixel_vectors(nside, nest), expected_vectors, rtol=0, atol=1e-12)
    assert mean_spacing_deg(nside) == pytest.approx(np.degrees(healpy.nside2resol(nside)), rel=1e-12)
