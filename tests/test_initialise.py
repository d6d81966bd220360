"""Iteration 0 of a de novo run (vdam-spec 4.6): noise spectrum, random blobs, masked start on the data's greyscale."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.model.params import image_sizes
from novomap.physics.fourier import centred_ft_to_volume, rfft_image, volume_to_centred_ft
from novomap.simulate import SimulationOptions, fourier_resize, simulate
from novomap.vdam.config import VdamConfig
from novomap.vdam.initialise import initial_noise_spectrum, initial_references, initial_window, random_blobs
from novomap.vdam.start import initial_state, start_data


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: element-wise code is 60x slower with busy threads


def _radius(n: int, dims: int) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float64) - n // 2] * dims
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def _raised_cosine_mask(n: int, radius: float, edge: float = 5.0) -> torch.Tensor:
    """1 inside radius, 0.5 + 0.5 cos(pi (r - R)/edge) on the edge, 0 beyond (spec 4.5), 2D."""
    r = _radius(n, 2)
    t = ((r - radius) / edge).clamp(0, 1)
    return 0.5 + 0.5 * torch.cos(math.pi * t)


# ---------------------------------------------------------------------------------------------
# noise spectrum


def test_noise_spectrum_of_white_noise_is_s2_over_2n2():
    """Real-space variance s2 in an N x N image: with F = (1/N^2) sum f e^{...}, E|F(k)|^2 = N^2 s2 / N^4 = s2/N^2,
    and sigma^2 = mean |F|^2 / 2 = s2 / (2 N^2) in every shell (the DC term is real: E F0^2 = s2/N^2 too)."""
    n, s2, b = 64, 2.5, 400
    images = torch.randn((b, n, n), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.sqrt(s2)
    # a mask radius beyond the corners: no masking at all
    sigma2 = initial_noise_spectrum(images, 100.0)
    expected = s2 / (2 * n * n) * (1 - 1 / b)  # minus the power of the average image, sigma^2 / B
    assert sigma2.shape == (n // 2 + 1,)
    assert torch.allclose(sigma2[1:], torch.full_like(sigma2[1:], expected), rtol=0.06)
    assert float(sigma2[2:].mean()) == pytest.approx(expected, rel=0.01)


def test_noise_spectrum_with_the_particle_mask():
    """Masking white noise by M scales its power by sum M^2 / N^2: sigma^2 = s2 sum M^2 / (2 N^4)."""
    n, s2, b, radius = 64, 1.0, 400, 28.0
    images = torch.randn((b, n, n), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * math.sqrt(s2)
    sigma2 = initial_noise_spectrum(images, radius)
    mask = _raised_cosine_mask(n, radius)
    expected = s2 * float(mask.square().sum()) / (2 * n**4)
    # shells 0-1 also carry the background fill (a near-constant outside the circle)
    assert torch.allclose(sigma2[2:], torch.full_like(sigma2[2:], expected), rtol=0.06)


def test_noise_spectrum_ignores_what_all_images_share():
    """A signal common to every image is not noise: it is removed as the power of the average image."""
    n, s2, b = 32, 1.0, 300
    gen = torch.Generator().manual_seed(2)
    common = 5.0 * torch.randn((n, n), generator=gen, dtype=torch.float64)
    images = common + torch.randn((b, n, n), generator=gen, dtype=torch.float64) * math.sqrt(s2)
    sigma2 = initial_noise_spectrum(images, 100.0)
    expected = s2 / (2 * n * n) * (1 - 1 / b)
    assert float(sigma2[1:].mean()) == pytest.approx(expected, rel=0.03)
    assert torch.all(sigma2 > 0)


# ---------------------------------------------------------------------------------------------
# random blobs


def _smooth_reference(n: int) -> torch.Tensor:
    r = _radius(n, 3)
    return 0.3 * torch.exp(-(r / (0.25 * n)) ** 2)


def test_random_blobs_deterministic_for_a_seed_and_on_the_reference_scale():
    n, diameter = 24, 18.0
    reference = _smooth_reference(n)
    a = random_blobs(reference, diameter, torch.Generator().manual_seed(5))
    b = random_blobs(reference, diameter, torch.Generator().manual_seed(5))
    c = random_blobs(reference, diameter, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # rescaled to the reference's standard deviation: the data's greyscale is kept
    assert float(a.std()) == pytest.approx(float(reference.std()), rel=1e-9)
    assert float(c.std()) == pytest.approx(float(reference.std()), rel=1e-9)
    # 40 positive blobs minus half of 40 negative ones: net positive density
    assert float(a.mean()) > 0
    # centres ~ Normal(centre, d/6), profile within d/3: nearly all of the map lies within d/2 + d/6 of the centre
    r = _radius(n, 3)
    energy = a.square()
    assert float(energy[r <= diameter / 2 + diameter / 6].sum() / energy.sum()) > 0.97
    # and it is centred: the |map|-weighted centroid is within 2 px of the box centre
    coords = torch.arange(n, dtype=torch.float64) - n // 2
    w = a.abs() / a.abs().sum()
    centroid = torch.stack([(w.sum((1, 2)) * coords).sum(), (w.sum((0, 2)) * coords).sum(), (w.sum((0, 1)) * coords).sum()])
    assert float(centroid.norm()) < 2.0


def test_random_blobs_scale_with_the_reference():
    n, diameter = 24, 18.0
    reference = _smooth_reference(n)
    a = random_blobs(reference, diameter, torch.Generator().manual_seed(7))
    b = random_blobs(100.0 * reference, diameter, torch.Generator().manual_seed(7))
    assert torch.allclose(b, 100.0 * a, rtol=1e-9, atol=0)
    zero = random_blobs(torch.zeros((n, n, n), dtype=torch.float64), diameter, torch.Generator().manual_seed(7))
    assert torch.all(torch.isfinite(zero)) and float(zero.abs().max()) == 0.0


@pytest.mark.parametrize("n, diameter", [(24, 18.0), (32, 40.0), (33, 20.5)])
def test_random_blobs_equal_their_definition_over_the_whole_box(n, diameter):
    """random_blobs works on the cube around each blob; the result is that of summing every blob over the box."""
    reference = _smooth_reference(n)
    generator = torch.Generator().manual_seed(11)
    coords = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(coords, coords, coords, indexing="ij")
    sums = []
    for _ in range(2):
        total = torch.zeros_like(reference)
        for cx, cy, cz in (torch.randn((40, 3), generator=generator, dtype=torch.float64) * diameter / 6).tolist():
            index = [int(c) + n // 2 for c in (cz, cy, cx)]
            amplitude = abs(float(reference[tuple(index)])) if all(0 <= i < n for i in index) else 0.0
            near = ((x - cx).abs() <= diameter / 3) & ((y - cy).abs() <= diameter / 3) & ((z - cz).abs() <= diameter / 3)
            blob = amplitude * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) * (10.0 / diameter) ** 2)
            total += torch.where(near, blob, torch.zeros_like(blob))
        sums.append(total)
    expected = sums[0] - sums[1] / 2
    expected = expected * reference.std() / expected.std()
    assert torch.allclose(random_blobs(reference, diameter, torch.Generator().manual_seed(11)), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the whole start


# A 48-px data set (the demo map Fourier-cropped to 4.72 Å/px) keeps the 80 blobs of each start cheap.
BOX, PIXEL, DIAMETER = 48, 4.72, 160.0


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    volume, pixel = load_demo_map()
    small = fourier_resize(volume.double(), BOX).float()
    out = tmp_path_factory.mktemp("init_sim")
    options = SimulationOptions(n=120, snr=1.0, seed=4, box=BOX, pixel_size_a=PIXEL, particle_diameter_a=DIAMETER, max_shift_px=1.5)
    result = simulate(small, out, options)
    return ParticleSet.from_star(result.star_path, preread=True), small.double(), result.noise_sigma


@pytest.fixture(scope="module")
def start(simulated):
    particles, _, _ = simulated
    return initial_state(particles, VdamConfig(n_iter=10, seed=1, particle_diameter_a=DIAMETER))


def _lowpass(volume: torch.Tensor, radius_shells: float) -> torch.Tensor:
    """Raised cosine through 0.5 at radius_shells, 2 shells wide (spec 4.6 step 3)."""
    n = volume.shape[-1]
    r = _radius(n, 3)
    t = ((r - (radius_shells - 1)) / 2).clamp(0, 1)
    return centred_ft_to_volume(volume_to_centred_ft(volume) * (0.5 + 0.5 * torch.cos(math.pi * t)), n)


def test_initial_references_are_masked_and_on_the_data_greyscale(simulated, start):
    particles, truth, noise_sigma = simulated
    n = particles.box_size
    maps = start.maps
    assert maps.shape == (1, n, n, n) and maps.dtype == torch.float64
    assert torch.all(torch.isfinite(maps))
    radius_px = DIAMETER / PIXEL / 2
    r = _radius(n, 3)
    # solvent-flattened start: exactly zero beyond the particle radius plus the 5-px edge
    assert float(maps[0][r > radius_px + 5.0].abs().max()) == 0.0
    assert float(maps[0][r < radius_px].abs().max()) > 0.0
    # the data were normalised to background noise std 1, i.e. the map's greyscale divided by the noise std;
    # the start must be on that scale (not off by powers of N), compared at ini_high inside the mask
    expected = _lowpass(truth / noise_sigma, round(0.07 * n))
    inside = r < radius_px
    ratio = float(maps[0][inside].std()) / float(expected[inside].std())
    assert 0.5 < ratio < 2.0, ratio
    # determinism: the same seed gives the same start
    again = initial_state(particles, VdamConfig(n_iter=10, seed=1, particle_diameter_a=DIAMETER))
    assert torch.equal(again.maps, maps)
    assert torch.equal(again.rng_state, start.rng_state)


def test_starts_sharing_the_seed_free_data_equal_starts_made_alone(simulated):
    """A race makes start_data once for all its starts: each start is then the one it would be alone."""
    particles, _, _ = simulated
    config = VdamConfig(n_iter=10, seed=1, particle_diameter_a=DIAMETER)
    shared = start_data(particles, config)
    for seed in (1, 7):
        seeded = dataclasses.replace(config, seed=seed)
        alone, with_shared = initial_state(particles, seeded), initial_state(particles, seeded, shared)
        assert torch.equal(alone.maps, with_shared.maps) and torch.equal(alone.sigma2, with_shared.sigma2)
        assert torch.equal(alone.rng_state, with_shared.rng_state)
    with_shared.sigma2.mul_(2.0)  # a run's noise spectrum moves on: the shared one must not
    assert torch.equal(initial_state(particles, config, shared).sigma2, initial_state(particles, config).sigma2)


def test_initial_references_without_flattening_have_a_constant_background():
    """initial_references itself masks with the background mean outside (spec 4.6 step 4); classes differ.

    Synthetic input on a 36-px box (round(0.07 N) = 3: |k| < 1.5, shells 0 and 1): a Gaussian particle plus noise.
    """
    n, diameter_px = 36, 24.0
    gen = torch.Generator().manual_seed(8)
    particle = torch.exp(-(_radius(n, 2) / 6.0) ** 2)
    images = particle + 0.5 * torch.randn((60, n, n), generator=gen, dtype=torch.float64)
    window = initial_window(n)
    assert sorted(window.shell.unique().tolist()) == [0, 1]
    spectra = window.take(rfft_image(images))
    ctf = torch.ones_like(spectra.real)
    maps = initial_references(spectra, ctf, window, 2, diameter_px, round(0.07 * n), gen)
    assert maps.shape == (2, n, n, n)
    outside = _radius(n, 3) > diameter_px / 2 + 5.0
    for k in range(2):
        values = maps[k][outside]
        assert float((values - values[0]).abs().max()) < 1e-12 * max(1.0, float(maps[k].abs().max()))
        assert float(maps[k].std()) > 0
    # two classes: different data (round-robin) and different blobs
    assert not torch.allclose(maps[0], maps[1])


def test_initial_window_cuts_at_a_radius_of_round_007n_over_2():
    """Spec 4.6 step 2: only |k| < round(0.07 N)/2 of each image enters the random-orientation reconstruction."""
    for n in (36, 48, 64, 100, 128):
        window = initial_window(n)
        radius = torch.sqrt(window.kx**2 + window.ky**2)
        assert float(radius.max()) < round(0.07 * n) / 2
        # every rfft pixel inside that radius is there once (the redundant half of the kx = 0 column is not)
        inside = [(ky, kx) for ky in range(-n // 2, n // 2) for kx in range(0, n // 2 + 1) if ky * ky + kx * kx < (round(0.07 * n) / 2) ** 2 and not (kx == 0 and ky < 0)]
        assert window.n_pixels == len(inside), n
        assert 1 in window.shell.tolist(), n  # never the DC term alone (a constant map would scale the blobs to zero)
    for n in (16, 24, 32, 35):  # small boxes keep |k| < 1.5 (round(0.07 N) = 1 or 2 would keep the DC term alone)
        window = initial_window(n)
        assert window.size == 3 and 1 in window.shell.tolist(), n


def test_first_iteration_uses_ini_high(start):
    """Spec 3.1 / Appendix A: before iteration 1, maxres = round(0.07 N) shells (ini_high = p N / round(0.07 N)),
    not raised to minres_map = 5; for the tutorial's N = 64 that is 4 shells, 56.6 Å, current_size 28 px."""
    assert start.resolution_shell == round(0.07 * BOX) == 3
    assert image_sizes(start.resolution_shell, BOX, 30.0, DIAMETER, PIXEL)[0] == 2 * (3 + 10)
    assert image_sizes(round(0.07 * 64), 64, 30.0, 200.0, 3.54) == (28, 12)
    assert 64 * 3.54 / round(0.07 * 64) == pytest.approx(56.64)


def test_splitting_particles_into_optics_groups_keeps_the_start(simulated, tmp_path):
    """The same particles as two optics groups (same images, odd rows in group 2): the random-orientation
    start is built from the same particles (the first n in micrograph order, not n per group), so the
    maps are those of the one-group run; each group gets its own noise spectrum from its own particles."""
    import pandas as pd
    import starfile

    particles, _, _ = simulated
    blocks = starfile.read(particles.table.path, always_dict=True)
    optics, table = blocks["optics"].copy(), blocks["particles"].copy()
    folder = particles.table.path.parent
    table["rlnImageName"] = [f"{name.split('@')[0]}@{folder / name.split('@')[1]}" for name in table["rlnImageName"]]
    table.loc[table.index % 2 == 1, "rlnOpticsGroup"] = 2
    second = optics.iloc[[0]].copy()
    second["rlnOpticsGroup"], second["rlnOpticsGroupName"] = 2, "opticsGroup2"
    starfile.write({"optics": pd.concat([optics, second], ignore_index=True), "particles": table}, tmp_path / "two.star")
    two = ParticleSet.from_star(tmp_path / "two.star", preread=True)

    config = VdamConfig(n_iter=10, seed=3, particle_diameter_a=DIAMETER, n_particles_sigma2=50)
    one_start, two_start = initial_state(particles, config), initial_state(two, config)
    assert torch.equal(one_start.maps, two_start.maps)
    assert two_start.sigma2.shape == (2, BOX // 2 + 1)
    # each group's spectrum comes from 50 of its own particles: close to, not equal to, the one-group one
    for group in range(2):
        ratio = two_start.sigma2[group, 1:] / one_start.sigma2[0, 1:]
        assert not torch.allclose(two_start.sigma2[group], one_start.sigma2[0])
        assert float((ratio - 1).abs().median()) < 0.15, ratio
