"""Expected angular/translational accuracy (vdam-spec 3.7) on the demo map: the pose error at which
sum c^2 |P1 - P0|^2 / (2 sigma^2) exceeds ln(100), capped at 30 deg and 10 px."""

from __future__ import annotations

import math

import pytest
import torch

from novomap.demo_data import load_demo_map
from novomap.physics.fourier import centred_ft_to_volume, centred_radius, volume_to_centred_ft
from novomap.physics.projection import extract_slices
from novomap.physics.window import fourier_window
from novomap.sampling.accuracy import MAX_ANGLE_DEG, MAX_SHIFT_PX, expected_errors
from novomap.vdam.iterate import projector_transforms

N = 64
B = 12  # particles


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: element-wise code is 60x slower with busy threads


@pytest.fixture(scope="module")
def setup():
    volume, pixel = load_demo_map()
    volume = volume.double()
    q = torch.randn((B, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    rotations = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    window = fourier_window(N, 40)
    return volume, pixel, rotations, window


def _lowpass(volume: torch.Tensor, resolution_a: float, pixel: float) -> torch.Tensor:
    """Hard low-pass at resolution_a (shell N p / res)."""
    keep = centred_radius(N) < N * pixel / resolution_a
    return centred_ft_to_volume(volume_to_centred_ft(volume) * keep, N)


def _errors(volume, rotations, window, sigma2_factor: float, ctf_value: float = 1.0):
    """sigma^2 = factor / (2 N^2): factor 1 is white noise of std 1 per pixel (the particles' normalisation)."""
    reference = projector_transforms(volume[None])[0]
    sigma2 = sigma2_factor / (2 * N * N)
    inv_sigma2 = torch.where(window.shell > 0, 1.0 / sigma2, 0.0).double().expand(rotations.shape[0], -1)
    ctf = torch.full((rotations.shape[0], window.n_pixels), ctf_value, dtype=torch.float64)
    return expected_errors(reference, rotations, ctf, inv_sigma2, window, 1)


def test_sharper_map_gives_smaller_angular_error(setup):
    volume, pixel, rotations, window = setup
    sharp = _errors(volume, rotations, window, 4.0)
    blurred = _errors(_lowpass(volume, 20.0, pixel), rotations, window, 4.0)
    very_blurred = _errors(_lowpass(volume, 40.0, pixel), rotations, window, 4.0)
    assert sharp[0] < blurred[0] < very_blurred[0]
    assert sharp[1] < blurred[1] < very_blurred[1]  # translations need high frequencies too


def test_more_noise_gives_larger_errors_and_the_caps_hold(setup):
    volume, _, rotations, window = setup
    errors = [_errors(volume, rotations, window, f) for f in (1.0, 4.0, 100.0)]
    assert errors[0][0] < errors[1][0] < errors[2][0]
    assert errors[0][1] < errors[1][1] < errors[2][1]
    # almost no signal: every particle reaches the caps of 30 deg and 10 px
    angle, shift = _errors(volume, rotations, window, 1e9)
    assert angle == pytest.approx(MAX_ANGLE_DEG) and MAX_ANGLE_DEG == 30.0
    assert shift == pytest.approx(MAX_SHIFT_PX) and MAX_SHIFT_PX == 10.0


def test_errors_scale_with_the_noise_standard_deviation(setup):
    """For small errors the distance is quadratic in the error and proportional to 1/sigma^2:
    4x sigma^2 -> ~2x error (a bit more for shifts, whose phase term sin^2 saturates)."""
    volume, _, rotations, window = setup
    angle1, shift1 = _errors(volume, rotations, window, 4.0)
    angle4, shift4 = _errors(volume, rotations, window, 16.0)
    assert 1.8 < angle4 / angle1 < 2.3
    assert 1.8 < shift4 / shift1 < 2.4


def test_ctf_and_sigma2_enter_only_as_c2_over_sigma2(setup):
    volume, _, rotations, window = setup
    halved_ctf = _errors(volume, rotations, window, 4.0, ctf_value=0.5)
    quadrupled_noise = _errors(volume, rotations, window, 16.0)
    assert halved_ctf[0] == pytest.approx(quadrupled_noise[0], abs=1e-9)
    assert halved_ctf[1] == pytest.approx(quadrupled_noise[1], abs=1e-9)


def test_translation_error_matches_a_direct_search(setup):
    """Shift the projection by s px along x (phase e^{-2 pi i kx s / N}) or y, and find by fine bisection the s where
    sum c^2 |P e^{...} - P|^2 / (2 sigma^2) first exceeds ln(100); the mean over particles and axes is the error."""
    volume, _, rotations, window = setup
    factor = 16.0
    _, shift = _errors(volume, rotations, window, factor)
    reference = projector_transforms(volume[None])[0]
    p0 = extract_slices(reference, rotations, window.kx, window.ky, 1)
    weight = torch.where(window.shell > 0, 1.0 / (2 * factor / (2 * N * N)), 0.0)
    found = []
    for k in (window.kx, window.ky):
        lo = torch.zeros(B, dtype=torch.float64)
        hi = torch.full((B,), 10.0, dtype=torch.float64)
        for _ in range(50):
            mid = (lo + hi) / 2
            moved = p0 * torch.exp(-2j * math.pi * k * mid[:, None] / N)
            above = (weight * (moved - p0).abs().square()).sum(-1) > math.log(100.0)
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        found.append(hi)
    direct = float(torch.stack(found).mean())
    # the module bisects 7 times over [0, 10 px] and reports the upper bracket: within 10/128 px above
    assert direct <= shift + 1e-9
    assert shift - direct <= MAX_SHIFT_PX / 2**7 + 1e-9


# ---------------------------------------------------------------------------------------------
# the estimate feeds auto-sampling in the same iteration (vdam-spec 4.7: estimate, then updateAngularSampling)


def test_auto_sampling_at_iteration_10_uses_the_accuracy_estimated_at_iteration_10(tmp_path):
    """At iteration 10 the model is already sharp (here: the truth), but the last estimate (iteration 1, blobs)
    said 999 deg. Spec 4.7 estimates acc_rot first and then decides: fine step 15 >= 0.75 acc_rot -> HEALPix order 2."""
    from novomap.io.particles import ParticleSet
    from novomap.simulate import SimulationOptions, fourier_resize, simulate
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.iterate import pseudo_halves, run_iteration
    from novomap.vdam.start import initial_state

    volume, _ = load_demo_map()
    box, pixel, diameter = 48, 4.72, 160.0  # the demo map Fourier-cropped: cheaper blobs and search
    small = fourier_resize(volume.double(), box).float()
    options = SimulationOptions(n=12, snr=1.0, seed=5, box=box, pixel_size_a=pixel, particle_diameter_a=diameter, max_shift_px=1.0)
    particles = ParticleSet.from_star(simulate(small, tmp_path, options).star_path, preread=True)
    config = VdamConfig(n_iter=100, seed=1, particle_diameter_a=diameter)
    state = initial_state(particles, config)
    state.maps = small.double()[None].clone()
    state.iteration = 9
    state.resolution_shell = 12
    state.iterations_without_gain = 1  # the resolution stalled in iteration 9
    state.acc_rot_deg, state.acc_trans_px = 999.0, 999.0  # what iteration 1 estimated from the blob start
    figures = run_iteration(state, particles, pseudo_halves(particles), config, torch.device("cpu"))
    assert figures["acc_rot_deg"] < 10.0  # estimated in this iteration, from the sharp map
    assert state.healpix_order == 2, figures
    assert figures["fine_step_deg"] == 7.5
    assert state.direction_prior.shape == (1, 192)
