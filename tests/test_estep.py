"""The E-step recovers known poses: simulated particles of the demo map, searched against the truth."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.physics.euler import euler_to_matrix, rotation_angle_deg
from novomap.simulate import SimulationOptions, simulate
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import class_sizes, expectation, pseudo_halves, search_setup
from novomap.vdam.start import initial_state


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[ParticleSet, torch.Tensor]:
    out = tmp_path_factory.mktemp("sim")
    volume, pixel_size_a = load_demo_map()
    options = SimulationOptions(n=40, snr=2.0, seed=3, max_shift_px=3.0, defocus_min_a=9000, defocus_max_a=12000)
    simulate(volume, out, options)
    particles = ParticleSet.from_star(out / "particles.star", preread=True)
    return particles, volume.double()


def _search(particles: ParticleSet, volume: torch.Tensor, healpix_order: int = 1):
    config = VdamConfig(n_iter=10, seed=1, healpix_order=healpix_order, offset_range_px=6, offset_step_px=2)
    truth_rot = euler_to_matrix(particles.rot_deg, particles.tilt_deg, particles.psi_deg)
    truth_origin = torch.stack([particles.origin_x_a, particles.origin_y_a], -1) / particles.pixel_size_a
    state = initial_state(particles, config)
    state.maps = volume[None].clone()
    # search from zero origins, as for particles that come without poses
    state.origin_x_a.zero_()
    state.origin_y_a.zero_()
    state.resolution_shell = 16  # current size 52 px: enough detail for sharp posteriors
    grid, current_size, coarse_size = search_setup(state, particles, config)
    expectation(state, particles, torch.arange(particles.n), pseudo_halves(particles), grid, current_size, coarse_size, config, [torch.device("cpu")], {}, with_sums=False)
    found_rot = euler_to_matrix(state.rot_deg, state.tilt_deg, state.psi_deg)
    found_origin = torch.stack([state.origin_x_a, state.origin_y_a], -1) / particles.pixel_size_a
    return truth_rot, found_rot, truth_origin, found_origin, state


D2_OPERATORS = torch.stack([torch.diag(torch.tensor(d, dtype=torch.float64)) for d in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1])])


def d2_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between poses (B, 3, 3) modulo the demo map's D2 symmetry: P_A = P_{A g} for g in D2."""
    return torch.stack([rotation_angle_deg(a @ g, b) for g in D2_OPERATORS]).min(0).values


def test_estep_finds_true_orientations_and_origins(simulated):
    particles, volume = simulated
    truth_rot, found_rot, truth_origin, found_origin, state = _search(particles, volume)
    errors = d2_angle_deg(truth_rot, found_rot)
    # fine sampling 15 deg: the nearest fine orientation is within ~11 deg of any pose
    assert float(errors.median()) < 10.0, errors
    assert float((errors < 20).float().mean()) >= 0.9
    # fine translations are 1 px apart; the origin sign convention of spec 1.4 must hold
    origin_error = (found_origin - truth_origin).norm(dim=-1)
    assert float(origin_error.median()) <= 1.0, origin_error
    assert float(state.max_probability.mean()) > 0.3  # sharp posteriors at high SNR


def test_origin_sign_particle_at_plus_three_pixels_gets_minus_three(simulated):
    """A particle drawn 3 px right of centre is assigned rlnOriginX = -3 px (vdam-spec 1.4)."""
    particles, volume = simulated
    shifted_right = (particles.origin_x_a / particles.pixel_size_a) < -2.0
    assert shifted_right.any()
    _, _, truth_origin, found_origin, _ = _search(particles, volume)
    assert torch.all(found_origin[shifted_right, 0] < -1.0)
    assert torch.allclose(found_origin[shifted_right, 0], truth_origin[shifted_right, 0], atol=1.01)


def _sums_on(particles: ParticleSet, volume: torch.Tensor, chunk_size: int, device_lists: list) -> list:
    """The same E-step (truth as reference, resolution shell 12) on each list of devices -> [(sums, state)]."""
    config = VdamConfig(n_iter=10, seed=1, chunk_size=chunk_size)
    state = initial_state(particles, config)
    state.maps = volume[None].clone()
    state.resolution_shell = 12
    grid, current_size, coarse_size = search_setup(state, particles, config)
    half = pseudo_halves(particles)
    runs = []
    for devices in device_lists:
        copy_state = copy.deepcopy(state)
        sums = expectation(copy_state, particles, torch.arange(particles.n), half, grid, current_size, coarse_size, config, devices, {})
        runs.append((sums, copy_state))
    return runs


def test_several_devices_give_the_same_sums_as_one(simulated):
    """A mini-batch split over devices (here two CPU 'devices' in threads) adds up to the same sums."""
    particles, volume = simulated
    cpu = torch.device("cpu")
    (one, state_one), (two, state_two) = _sums_on(particles, volume, 8, [[cpu], [cpu, cpu]])
    assert float(one.weight.abs().sum()) > 0
    for name in ("gradient", "weight", "noise", "class_weight", "direction_weight", "offset_sq_a2"):
        a, b = getattr(one, name), getattr(two, name)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max())), name
    assert torch.equal(state_one.rot_deg, state_two.rot_deg)
    assert torch.equal(state_one.origin_x_a, state_two.origin_x_a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_estep_agrees_with_cpu(simulated):
    """The same E-step on a GPU: same poses for nearly every particle, sums equal to float32 rounding."""
    particles, volume = simulated
    devices = [[torch.device("cpu")], [torch.device("cuda:0")]]
    if torch.cuda.device_count() > 1:
        devices.append([torch.device("cuda:0"), torch.device("cuda:1")])
    runs = _sums_on(particles, volume, 16, devices)
    (cpu_sums, cpu_state) = runs[0]
    for gpu_sums, gpu_state in runs[1:]:
        same_pose = (cpu_state.rot_deg == gpu_state.rot_deg) & (cpu_state.tilt_deg == gpu_state.tilt_deg) & (cpu_state.psi_deg == gpu_state.psi_deg)
        assert float(same_pose.float().mean()) >= 0.9
        assert torch.allclose(cpu_sums.class_weight, gpu_sums.class_weight.cpu(), rtol=1e-6)
        # a particle whose pose differs moves its whole contribution: compare the grids as a whole
        for name in ("weight", "gradient"):
            a, b = getattr(cpu_sums, name).flatten(), getattr(gpu_sums, name).cpu().flatten()
            cosine = (a.conj() * b).sum().real / (a.abs().square().sum() * b.abs().square().sum()).sqrt()
            assert float(cosine) > 0.99, name


@pytest.mark.parametrize("truth_class", [1, 2])
def test_two_classes_particles_choose_the_true_map_with_the_true_pose(simulated, truth_class):
    """K = 2, the truth and a decoy: the class and pose indices must not mix."""
    particles, volume = simulated
    config = VdamConfig(n_iter=10, seed=1, n_classes=2, healpix_order=1, offset_range_px=6, offset_step_px=2)
    state = initial_state(particles, config)
    # same power spectrum, random phases: as strong as the truth, nothing alike (a mirrored or shifted
    # copy would not do: projections cannot tell the hand, and translations absorb shifts)
    noise_phase = torch.fft.fftn(torch.randn(volume.shape, generator=torch.Generator().manual_seed(5), dtype=volume.dtype))
    decoy = torch.fft.ifftn(torch.fft.fftn(volume).abs() * noise_phase / noise_phase.abs()).real
    state.maps = torch.stack([decoy, volume] if truth_class == 2 else [volume, decoy])
    state.origin_x_a.zero_()
    state.origin_y_a.zero_()
    state.resolution_shell = 16
    grid, current_size, coarse_size = search_setup(state, particles, config)
    sums = expectation(state, particles, torch.arange(particles.n), pseudo_halves(particles), grid, current_size, coarse_size, config, [torch.device("cpu")], {})
    assert float((state.class_number == truth_class).float().mean()) >= 0.9
    truth_rot = euler_to_matrix(particles.rot_deg, particles.tilt_deg, particles.psi_deg)
    found_rot = euler_to_matrix(state.rot_deg, state.tilt_deg, state.psi_deg)
    assert float(d2_angle_deg(truth_rot, found_rot).median()) < 10.0
    # the weights went to the true class's grids
    t, d = truth_class - 1, 2 - truth_class
    assert float(sums.class_weight[t]) > 0.9 * particles.n
    assert float(sums.weight[:, t].sum()) > 10 * float(sums.weight[:, d].sum())


def _low_passed(volume: torch.Tensor, radius_px: float) -> torch.Tensor:
    spectrum = torch.fft.fftshift(torch.fft.fftn(volume))
    n = volume.shape[-1]
    k = torch.arange(n, dtype=torch.float64) - n // 2
    radius = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return torch.fft.ifftn(torch.fft.ifftshift(torch.where(radius < radius_px, spectrum, 0))).real


def test_a_class_of_lower_resolution_is_searched_and_summed_on_its_own_window(simulated):
    """K = 2, a decoy and the truth low-passed, whose resolution trails the decoy's by 8 shells: searched
    on its own (narrower) window the E-step finds what it finds on the whole window (the map holds
    nothing beyond its window), and the class's grids get nothing beyond it."""
    particles, volume = simulated
    config = VdamConfig(n_iter=10, seed=1, n_classes=2, healpix_order=1, offset_range_px=6, offset_step_px=2)
    state = initial_state(particles, config)
    noise_phase = torch.fft.fftn(torch.randn(volume.shape, generator=torch.Generator().manual_seed(5), dtype=volume.dtype))
    decoy = torch.fft.ifftn(torch.fft.fftn(volume).abs() * noise_phase / noise_phase.abs()).real
    state.maps = torch.stack([decoy, _low_passed(volume, 12.0)])
    state.origin_x_a.zero_()
    state.origin_y_a.zero_()
    state.resolution_shell = 16  # current size 52 px
    n_shells = state.ssnr.shape[1]
    state.ssnr = torch.stack([(torch.arange(n_shells) <= 16).double() * 4, (torch.arange(n_shells) <= 8).double() * 4])
    grid, current_size, coarse_size = search_setup(state, particles, config)
    assert class_sizes(state, current_size, config) == [52, 36]
    runs = {}
    for windows in (True, False):
        searched = copy.deepcopy(state)
        run_config = dataclasses.replace(config, class_windows=windows)
        sums = expectation(searched, particles, torch.arange(particles.n), pseudo_halves(particles), grid, current_size, coarse_size, run_config, [torch.device("cpu")], {})
        runs[windows] = (searched, sums)
    (narrow, narrow_sums), (full, full_sums) = runs[True], runs[False]
    assert torch.equal(narrow.class_number, full.class_number)
    assert float((narrow.class_number == 2).float().mean()) > 0.5  # the narrow class is the one chosen
    found = lambda s: euler_to_matrix(s.rot_deg, s.tilt_deg, s.psi_deg)
    assert float(rotation_angle_deg(found(narrow), found(full)).max()) < 1e-3
    assert torch.allclose(narrow_sums.class_weight, full_sums.class_weight, rtol=0.01, atol=0.01)
    # the decoy's grids: nothing beyond its 36-px window (radius 18, plus the interpolation's reach), unlike the full run
    m = state.maps.shape[-1]
    k = torch.arange(m, dtype=torch.float64) - m // 2
    radius = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    beyond = radius > 18 + 2
    assert float(narrow_sums.weight[:, 1][:, beyond].abs().max()) == 0.0
    assert float(full_sums.weight[:, 1][:, beyond].abs().max()) > 0.0
    # inside it the same sums, but for the little the full window's projections hold beyond the low-pass
    # (interpolation and gridding correction spill a little past radius 12) and their norms add to the weights
    inside = radius < 16
    a, b = narrow_sums.weight[:, 1][:, inside], full_sums.weight[:, 1][:, inside]
    assert float((a - b).abs().sum() / b.abs().sum()) < 0.01


def test_chunks_are_sized_by_the_hypotheses_actually_searched():
    """A search over one asymmetric unit per class holds as many coarse values per chunk as a full
    search: about 1/3 of the (class, orientation) columns give about 3x the particles."""
    from novomap.estep.driver import chunk_size
    from novomap.sampling.grid import build_search_grid

    grid = build_search_grid(2, 6, 2)
    full = chunk_size(grid, 3)
    third = chunk_size(grid, 3, n_columns=grid.n_coarse_orientations)
    values_full = full * grid.n_coarse_translations * grid.n_coarse_orientations * 3
    values_third = third * grid.n_coarse_translations * grid.n_coarse_orientations
    assert third > 2.5 * full
    assert abs(values_third - values_full) < 0.05 * values_full


def test_particles_of_a_trailing_class_pass_fewer_coarse_hypotheses(simulated):
    """K = 2, the second class's resolution 8 shells behind the first's: the particles last placed in it
    pass at most lesser_class_max_significant coarse hypotheses to the fine pass, the others up to the
    usual cap; with one class, or classes within lesser_class_trail_shells of each other, no cap."""
    from novomap.vdam.iterate import particle_caps

    particles, volume = simulated
    config = VdamConfig(n_iter=10, seed=1, n_classes=2, healpix_order=1, offset_range_px=6, offset_step_px=2, lesser_class_max_significant=3)
    state = initial_state(particles, config)
    state.maps = torch.stack([volume, _low_passed(volume, 12.0)])
    state.origin_x_a.zero_()
    state.origin_y_a.zero_()
    state.resolution_shell = 6  # a coarse window: broad posteriors
    n_shells = state.ssnr.shape[1]
    state.ssnr = torch.stack([(torch.arange(n_shells) <= 14).double() * 4, (torch.arange(n_shells) <= 6).double() * 4])
    state.class_number = torch.where(torch.arange(particles.n) % 2 == 0, 2, 1)
    state.class_number[:2] = 0  # never placed: the usual cap
    caps = particle_caps(state, config)
    assert caps[:2].tolist() == [100, 100] and bool((caps[2::2] == 3).all()) and bool((caps[3::2] == 100).all())
    grid, current_size, coarse_size = search_setup(state, particles, config)
    found = {}
    for cap in (3, 0):
        searched = copy.deepcopy(state)
        run_config = dataclasses.replace(config, lesser_class_max_significant=cap)
        expectation(searched, particles, torch.arange(particles.n), pseudo_halves(particles), grid, current_size, coarse_size, run_config, [torch.device("cpu")], {})
        found[cap] = searched.n_significant
    lesser = torch.arange(particles.n)[2::2]
    assert int(found[3][lesser].max()) <= 3 and int(found[0][lesser].max()) > 3
    assert torch.equal(found[3][1::2], found[0][1::2])  # the others as before
    near = copy.deepcopy(state)
    near.ssnr = torch.stack([(torch.arange(n_shells) <= 14).double() * 4, (torch.arange(n_shells) <= 12).double() * 4])
    assert particle_caps(near, config) is None  # 2 shells behind: not a lesser class
    assert particle_caps(state, dataclasses.replace(config, lesser_class_max_significant=0)) is None
