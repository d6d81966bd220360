"""Angular spectra of Fourier rings (novomap.analysis.ring_spectra): noise-free, turn-invariant, and they tell a
right map from one rounder than its particles."""

from __future__ import annotations

import pytest
import torch

from novomap.analysis.ring_spectra import (
    FLOOR_FACTOR,
    MISFIT_FLAG,
    RingCheck,
    angular_spectra,
    flag_rule,
    last_ring,
    misfit,
    ring_check,
    ring_geometry,
)
from novomap.maps.transform import centred_coordinates
from novomap.physics.fourier import rfft_image
from novomap.physics.window import fourier_window
from novomap.reconstruct import Poses

pytestmark = pytest.mark.usefixtures("one_thread")


def _spectra(images: torch.Tensor, first: int = 2, last: int = 10) -> torch.Tensor:
    window = fourier_window(images.shape[-1], 2 * (last + 1))
    return angular_spectra(window.take(rfft_image(images.double())), ring_geometry(window, first, last))


def test_noise_adds_nothing_on_average():
    """White noise alone: each |a_n|^2 less the diagonal averages to zero, against a diagonal of the ring's power."""
    noise = torch.randn((4000, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    window = fourier_window(32, 22)
    rings = ring_geometry(window, 2, 10)
    values = window.take(rfft_image(noise))
    spectra = angular_spectra(values, rings).mean(0)  # (R, L)
    diagonal = torch.stack([values[:, pixels].abs().square().sum(1).mean() * 2 for pixels in rings.pixels])
    relative = spectra.abs() / diagonal[:, None]
    assert float(relative.max()) < 0.1  # ~1/sqrt(4000) x a few per ring and order
    assert float(spectra.mean() / diagonal.mean()) == pytest.approx(0.0, abs=0.01)


def test_spectra_do_not_change_when_the_image_turns_in_its_plane():
    """A quarter turn about the centre pixel (N//2) maps the pixel grid onto itself: |a_n| of every ring is unchanged."""
    images = torch.randn((3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # rot90 turns about (N - 1) / 2; one row's roll moves that onto N // 2
    turned = torch.roll(torch.rot90(images, 1, dims=(-2, -1)), 1, dims=-2)
    assert torch.allclose(_spectra(images), _spectra(turned), rtol=1e-9, atol=1e-12)


def test_a_round_image_has_its_structure_in_order_zero_and_an_elongated_one_in_even_orders():
    coords = centred_coordinates(32, torch.float64)[0, :, :, :2]  # (y, x) plane of (x, y) coordinates
    r2 = coords.square().sum(-1)
    round_image = torch.exp(-r2 / 20.0)
    elongated = torch.exp(-(coords[..., 0].square() / 60.0 + coords[..., 1].square() / 8.0))
    round_spectra = _spectra(round_image[None])[0]
    long_spectra = _spectra(elongated[None])[0]
    def anisotropy(spectra: torch.Tensor) -> torch.Tensor:  # spread over orders >= 1 against order 0's lead, per ring
        others = spectra[:, 1:]
        return (others.max(1).values - others.min(1).values) / (spectra[:, 0] - others.min(1).values)

    # rings 4-7 (rows 2-5): the first rings' few pixels lie at quite different radii, which a square grid turns into orders 4, 8, ...
    assert float(anisotropy(round_spectra)[2:6].max()) < 0.15
    assert float(anisotropy(long_spectra)[2:6].min()) > 0.5
    # an ellipse: order 2 stands above orders 1 and 3; a round image has nothing in orders 1-3
    assert bool((long_spectra[:4, 2] > long_spectra[:4, 1]).all()) and bool((long_spectra[:4, 2] > long_spectra[:4, 3]).all())
    assert torch.allclose(round_spectra[:, 1:4], round_spectra[:, 1:2].expand(-1, 3), rtol=1e-9, atol=1e-15)


def test_misfit_is_zero_for_proportional_spectra_and_one_for_orthogonal_ones():
    data = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]], dtype=torch.float64)
    assert misfit(data, 3.0 * data) == pytest.approx(0.0, abs=1e-15)
    orthogonal = torch.tensor([[2.0, -1.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert misfit(data, orthogonal) == pytest.approx(1.0, abs=1e-12)


def test_last_ring_is_about_thirty_angstrom_with_at_least_four_rings():
    assert last_ring(64, 3.54) == 7
    assert last_ring(64, 5.74) == 12
    assert last_ring(64, 1.0) == 5  # 30 Å is ring 2: four rings at least
    assert last_ring(16, 8.0) == 5


def _true_poses(particles) -> Poses:
    return Poses(particles.rot_deg, particles.tilt_deg, particles.psi_deg, particles.origin_x_a, particles.origin_y_a)


def _radial_average(volume: torch.Tensor) -> torch.Tensor:
    """The map's spherical average about the box centre: the same radial profile, no angular structure."""
    n = volume.shape[-1]
    radius = torch.round(centred_coordinates(n, torch.float64).norm(dim=-1)).long().flatten()
    profile = torch.bincount(radius, weights=volume.double().flatten()) / torch.bincount(radius).clamp(min=1)
    return profile[radius].reshape(volume.shape)


def test_the_truth_passes_and_its_spherical_average_is_flagged(simulated):
    """Ground truth: 300 simulated beta-gal particles at their true poses. The map they came from fits
    their ring spectra to within the noise; its spherical average, a ball with the same radial profile
    (what averaging a particle over all its poses gives), misses their angular structure."""
    particles, truth = simulated
    members = torch.arange(particles.n)
    right = ring_check(particles, members, _true_poses(particles), truth, seed=1)
    ball = ring_check(particles, members, _true_poses(particles), _radial_average(truth), seed=1)
    assert not right.flagged and right.misfit < MISFIT_FLAG and right.ratio < FLOOR_FACTOR, right
    assert ball.flagged and ball.misfit > 10 * right.misfit, (ball, right)
    assert right.rings == (2, 7) and right.n_particles == particles.n
    assert ring_check(particles, members[:1], _true_poses(particles), truth) is None


@pytest.mark.parametrize(
    "misfit, ratio, flagged, run",
    [
        (0.0966, 15.0, True, "adk_o seed 1 of session 12: wrong fold"),
        (0.0412, 3.2, True, "hb16_c1 seed 10: wrong fold, the lowest wrong figures of session 18"),
        (0.048, 2.34, True, "hb16_c1 from 1,000 particles, seed 1 (session 34): wrong fold, cc 0.52"),
        (0.050, 9.6, True, "real beta-gal, all 2,374 particles, seed 1: wrong fold"),
        (0.027, 5.3, True, "real, all particles, seed 1,000,006 (session 28): half the particles ~30 deg from the rest"),
        (0.022, 3.8, True, "the same seed, session 29"),
        (0.022, 4.0, True, "real, all particles, seed 5: split likewise"),
        (0.0246, 2.8, False, "real beta-gal, 1,455 good particles: right"),
        (0.0169, 2.9, False, "real, 1,455: right, the highest ratio measured there"),
        (0.012, 2.3, False, "real, all particles, seed 2: right"),
        (0.0247, 1.8, False, "hb16_c1 seed 3: right"),
        (0.0076, 4.0, False, "hb_i seed 1: right, a small misfit far above a small floor"),
        (0.018, 2.93, False, "real, 1,455, seed 1 (session 34): right"),
        (0.005, 1.14, False, "adk_c4 from 500 particles, seed 1 (session 34): right"),
        # the final reconstruction's figures, which the job reads since session 36 (the rows above: the VDAM map's)
        (0.0618, 3.2, True, "reconstruction: hb16_c1 from 1,000 particles, seed 2: wrong fold"),
        (0.0498, 2.4, True, "reconstruction: hb16_c1 from 1,000 particles, seed 3: wrong fold"),
        (0.1130, 16.7, True, "reconstruction: adk_o seed 1 with one start: wrong fold"),
        (0.0519, 9.4, True, "reconstruction: real, all particles, seed 1: wrong fold"),
        (0.0243, 4.3, True, "reconstruction: real, all particles, seed 5: split"),
        (0.0176, 2.9, False, "reconstruction: real, 1,455, seed 1: right"),
        (0.0123, 2.2, False, "reconstruction: real, all particles, seed 2: right"),
        (0.0015, 0.8, False, "reconstruction: hb_i seed 1, whose VDAM map was flagged at 0.0200, 10.8x: right"),
        (0.0108, 0.8, False, "reconstruction: hb16_c1 from 1,500 particles, seed 2: right"),
    ],
)
def test_the_flag_separates_measured_wrong_and_split_runs_from_right_ones(misfit, ratio, flagged, run):
    """The two bars (ring_spectra's comment) against the figures of finished runs whose outcome is known
    from the truth or the published map (benchmarks/results/2026-12-02-ring-spectra.md, -s29-split-runs.md,
    2026-12-04-s36-ring-reconstruction.md)."""
    check = RingCheck(misfit=misfit, noise_floor=misfit / ratio, rings=(2, 7), resolution_a=30.0, n_particles=2000)
    assert check.flagged is flagged, run


def test_flag_rule_names_both_bars():
    assert flag_rule() == "above 0.035 and 2.0x, or 0.02 and 3.5x"
