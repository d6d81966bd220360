"""Sharp particles after VDAM's initial phase search translations near their previous origin only."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.sampling.grid import build_search_grid, narrowed
from novomap.simulate import SimulationOptions, simulate
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import expectation, narrow_translations, pseudo_halves, search_setup
from novomap.vdam.start import initial_state


def test_narrowed_grid_keeps_orientations_and_the_central_translations():
    grid = build_search_grid(1, 6.0, 2.0, perturbation=0.3)
    narrow = narrowed(grid, 4.0)
    assert (grid.n_coarse_translations, narrow.n_coarse_translations) == (29, 13)
    assert torch.equal(narrow.fine_rotations, grid.fine_rotations) and torch.equal(narrow.coarse_rotations, grid.coarse_rotations)
    centre = 0.3 * 2.0
    assert float((narrow.coarse_translations - centre).norm(dim=-1).max()) <= 4.0 + 1e-6
    # every kept translation keeps its own four children
    for t in narrow.coarse_translations:
        row = int(torch.nonzero((grid.coarse_translations - t).abs().sum(-1) < 1e-9).squeeze())
        assert torch.equal(narrow.fine_translations[(narrow.coarse_translations - t).abs().sum(-1) < 1e-9][0], grid.fine_translations[row])
    assert narrowed(grid, 6.0) is grid


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """Simulated demo particles, their poses found once by a global search against the truth."""
    out = tmp_path_factory.mktemp("sim")
    volume, _ = load_demo_map()
    simulate(volume, out, SimulationOptions(n=40, snr=2.0, seed=5, max_shift_px=3.0, defocus_min_a=9000, defocus_max_a=12000))
    particles = ParticleSet.from_star(out / "particles.star", preread=True)
    config = VdamConfig(n_iter=10, seed=1, offset_range_px=6, offset_step_px=2)
    state = initial_state(particles, config)
    state.maps = volume.double()[None].clone()
    state.resolution_shell = 14
    grid, current_size, coarse_size = search_setup(state, particles, config, advance=False)
    expectation(state, particles, torch.arange(particles.n), pseudo_halves(particles), grid, current_size, coarse_size, config, [torch.device("cpu")], {}, with_sums=False)
    state.iteration = 5  # past the initial phase of a 10-iteration run (3 iterations)
    # the demo map is centred: as if its D2 had been imposed and its centre brought to the box centre
    state.symmetry_axes = [(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))]
    # every other particle counts as sharp, so that narrow and full chunks share one E-step
    state.max_probability = torch.where(torch.arange(particles.n) % 2 == 0, 0.9, 0.1).double()
    return particles, state, config


def _iteration_sums(particles, state, config):
    state = copy.deepcopy(state)
    grid, current_size, coarse_size = search_setup(state, particles, config, advance=False)
    timings: dict = {}
    sums = expectation(state, particles, torch.arange(particles.n), pseudo_halves(particles), grid, current_size, coarse_size, config, [torch.device("cpu")], timings)
    return sums, state, timings


def test_sharp_particles_are_searched_narrowly_with_the_same_outcome(searched):
    particles, state, config = searched
    sharp = (state.max_probability >= config.local_min_pmax) & (state.class_number > 0)
    assert int(sharp.sum()) == particles.n // 2
    narrow_sums, narrow_state, timings = _iteration_sums(particles, state, config)
    full_sums, full_state, full_timings = _iteration_sums(particles, state, dataclasses.replace(config, narrow_offset_steps=0))
    assert timings["n_narrow"] == int(sharp.sum()) and full_timings["n_narrow"] == 0
    # the previous origins are right to a pixel: the narrow search finds the same poses and the same sums
    assert torch.equal(narrow_state.rot_deg, full_state.rot_deg)
    assert torch.allclose(narrow_state.origin_x_a, full_state.origin_x_a) and torch.allclose(narrow_state.origin_y_a, full_state.origin_y_a)
    for name in ("gradient", "weight", "noise", "class_weight", "direction_weight"):
        a, b = getattr(narrow_sums, name), getattr(full_sums, name)
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max())), name


def test_no_narrowing_in_the_initial_phase_nor_in_a_pass_without_sums(searched):
    particles, state, config = searched
    grid, _, _ = search_setup(state, particles, config, advance=False)
    batch = torch.arange(particles.n)
    assert narrow_translations(state, batch, grid, config, with_sums=True) is not None
    assert narrow_translations(state, batch, grid, config, with_sums=False) is None
    early = copy.copy(state)
    early.iteration = 2
    assert narrow_translations(early, batch, grid, config, with_sums=True) is None


def test_a_batch_of_only_sharp_particles_is_searched(searched):
    """No empty chunk of full-range particles is searched (an empty image stack is not a batch)."""
    particles, state, config = searched
    state = copy.deepcopy(state)
    state.max_probability.fill_(0.95)
    sums, _, timings = _iteration_sums(particles, state, config)
    assert timings["n_narrow"] == particles.n
    assert float(sums.class_weight.sum()) == pytest.approx(particles.n, rel=1e-3)  # the retained 0.999 of each posterior


def test_several_classes_narrow_only_particles_of_centred_classes(searched):
    """A particle's origin means the same in every class whose map was centred on its own symmetry;
    particles placed in a class left uncentred keep every translation, and with
    narrow_in_centred_classes off one uncentred class stops all narrowing."""
    particles, state, config = searched
    grid, _, _ = search_setup(state, particles, config, advance=False)
    two = copy.copy(state)
    two.maps = torch.cat([state.maps, state.maps])
    two_config = dataclasses.replace(config, n_classes=2)
    centred = (torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    two.symmetry_axes = [centred, centred]
    rows, narrow_grid = narrow_translations(two, torch.arange(particles.n), grid, two_config, with_sums=True)
    assert int(rows.sum()) == particles.n // 2 and narrow_grid.n_coarse_translations < grid.n_coarse_translations
    two.symmetry_axes = [centred, (centred[0], torch.tensor([0.0, 3.0, 0.0], dtype=torch.float64))]
    two.class_number = torch.where(torch.arange(particles.n) % 4 == 0, 2, 1).to(state.class_number.dtype)
    rows, _ = narrow_translations(two, torch.arange(particles.n), grid, two_config, with_sums=True)
    sharp = two.max_probability >= two_config.local_min_pmax
    assert torch.equal(rows, sharp & (two.class_number == 1))  # class 2 is off its centre
    assert bool((sharp & (two.class_number == 2)).any())  # so the rule above excluded someone
    only_all = dataclasses.replace(two_config, narrow_in_centred_classes=False)
    assert narrow_translations(two, torch.arange(particles.n), grid, only_all, with_sums=True) is None
    two.symmetry_axes = [centred]  # the group imposed on one class only
    assert narrow_translations(two, torch.arange(particles.n), grid, two_config, with_sums=True) is None


def test_no_narrowing_where_no_symmetry_pins_the_frame(searched):
    """A C1 map drifts in its box: its particles' origins move with it, so their translations stay global."""
    particles, state, config = searched
    grid, _, _ = search_setup(state, particles, config, advance=False)
    c1 = copy.copy(state)
    c1.symmetry_axes = None
    assert narrow_translations(c1, torch.arange(particles.n), grid, config, with_sums=True) is None
    assert narrow_translations(state, torch.arange(particles.n), grid, dataclasses.replace(config, recentre_on_symmetry=False), with_sums=True) is None
    off = copy.copy(state)
    off.symmetry_axes = [(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 4.0, 0.0], dtype=torch.float64))]  # not recentred
    assert narrow_translations(off, torch.arange(particles.n), grid, config, with_sums=True) is None


def test_narrow_chunks_are_sized_by_their_own_grid(searched, monkeypatch):
    """Chunks hold about as many hypotheses whatever their grid: narrowed ones (fewer translations)
    take more particles."""
    import novomap.estep.driver as driver

    particles, state, config = searched
    monkeypatch.setattr(driver, "chunk_size", lambda grid, *args, **kwargs: max(1, 260 // grid.n_coarse_translations))
    searched_chunks = []
    original = driver.coarse_pass

    def recording(batch, coarse, grid, *args, **kwargs):
        searched_chunks.append((grid.n_coarse_translations, batch.masked.shape[0]))
        return original(batch, coarse, grid, *args, **kwargs)

    monkeypatch.setattr(driver, "coarse_pass", recording)
    _, _, timings = _iteration_sums(particles, state, config)
    full = [n for t, n in searched_chunks if t == 29]
    narrow = [n for t, n in searched_chunks if t == 13]
    assert sum(narrow) == timings["n_narrow"] == particles.n // 2 and sum(full) == particles.n - particles.n // 2
    assert max(full) == 260 // 29 and max(narrow) == min(particles.n // 2, 260 // 13)
