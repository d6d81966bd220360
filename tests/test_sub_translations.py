"""Translational auto-sampling: an iteration's grid drops the 4 children of each coarse translation
while the expected translational error says the coarse step is fine enough (sampling.grid)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from novomap.demo_data import load_demo_map
from novomap.estep.search import sub_shift_phases
from novomap.io.particles import ParticleSet
from novomap.physics.euler import euler_to_matrix, rotation_angle_deg
from novomap.physics.window import fourier_window
from novomap.sampling.grid import SUB_TRANSLATION_RESOLUTION_STEPS, build_search_grid, narrowed, sub_translations_needed, without_sub_translations
from novomap.symmetry.groups import point_group
from novomap.simulate import SimulationOptions, simulate
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import expectation, pseudo_halves, search_setup
from novomap.vdam.start import initial_state


def test_a_grid_without_sub_translations_keeps_each_coarse_translation_as_its_only_child():
    grid = build_search_grid(1, 6.0, 2.0, perturbation=0.3)
    single = without_sub_translations(grid)
    assert (grid.n_sub_translations, single.n_sub_translations) == (4, 1)
    assert single.fine_translations.shape == (29, 1, 2)
    assert torch.equal(single.fine_translations[:, 0], grid.coarse_translations)
    assert torch.equal(single.fine_rotations, grid.fine_rotations) and torch.equal(single.coarse_translations, grid.coarse_translations)
    # the child offset is zero: its phases are 1 at every pixel
    phases = sub_shift_phases(fourier_window(16, 16, "cpu"), single)
    assert phases.shape[0] == 1 and torch.allclose(phases, torch.ones_like(phases))
    # narrowing keeps the central translations with their single child
    narrow = narrowed(single, 4.0)
    assert narrow.fine_translations.shape == (13, 1, 2)
    assert torch.equal(narrow.fine_translations[:, 0], narrow.coarse_translations)


def test_sub_translations_are_needed_once_the_resolution_is_finer_than_four_steps():
    # real beta-gal at 3.54 Å/px, 2-px steps: 45-32 Å in its first 30 iterations, 25 Å and finer later
    step_a = 2 * 3.54
    assert not sub_translations_needed(step_a, 45.3) and not sub_translations_needed(step_a, 32.4)
    assert sub_translations_needed(step_a, 25.2) and sub_translations_needed(step_a, 9.0)
    assert not sub_translations_needed(5.0, 20.0) and sub_translations_needed(5.0, 19.99)
    # what the rule bounds: a uniform error of up to half a step per axis (rms step / sqrt(12)) damps
    # amplitudes at the resolution limit like a B-factor, by no more than 0.90 where the children are dropped
    resolution_a = SUB_TRANSLATION_RESOLUTION_STEPS * step_a
    rms_error_a = step_a / math.sqrt(12)
    assert math.exp(-2 * math.pi**2 * rms_error_a**2 / resolution_a**2) == pytest.approx(0.90, abs=0.005)


@pytest.fixture(scope="module")
def simulated():
    """Demo particles with known poses, and a state holding the true map."""
    import tempfile
    from pathlib import Path

    out = Path(tempfile.mkdtemp())
    volume, _ = load_demo_map()
    simulate(volume, out, SimulationOptions(n=24, snr=2.0, seed=3, max_shift_px=3.0, defocus_min_a=9000, defocus_max_a=12000))
    particles = ParticleSet.from_star(out / "particles.star", preread=True)
    config = VdamConfig(n_iter=10, seed=1, offset_range_px=6, offset_step_px=2)
    state = initial_state(particles, config)
    state.maps = volume.double()[None].clone()
    state.resolution_shell = 14
    return particles, state, config


def test_only_an_iterations_grid_drops_the_sub_translations_and_only_while_the_resolution_is_coarse(simulated):
    particles, state, config = simulated
    state = copy.deepcopy(state)
    step_a = config.offset_step_px * particles.pixel_size_a
    state.resolution_shell = int(particles.box_size * particles.pixel_size_a / (6 * step_a))  # ~6 steps
    assert search_setup(copy.deepcopy(state), particles, config)[0].n_sub_translations == 1
    # passes outside the iteration sequence (the race's scores, the final pass) keep the children
    assert search_setup(copy.deepcopy(state), particles, config, advance=False)[0].n_sub_translations == 4
    off = dataclasses.replace(config, auto_sub_translations=False)
    assert search_setup(copy.deepcopy(state), particles, off)[0].n_sub_translations == 4
    state.resolution_shell = int(particles.box_size * particles.pixel_size_a / (2 * step_a))  # ~2 steps
    assert search_setup(copy.deepcopy(state), particles, config)[0].n_sub_translations == 4


def test_a_search_without_sub_translations_finds_the_same_orientations_on_the_coarse_lattice(simulated):
    particles, state, config = simulated
    everyone = torch.arange(particles.n)
    found = []
    for single in (False, True):
        trial = copy.deepcopy(state)
        grid, current_size, coarse_size = search_setup(trial, particles, config, advance=False)
        if single:
            grid = without_sub_translations(grid)
        expectation(trial, particles, everyone, pseudo_halves(particles), grid, current_size, coarse_size, config, [torch.device("cpu")], {}, with_sums=False)
        found.append((trial, grid))
    (full, full_grid), (single, single_grid) = found
    # the demo map is D2-symmetric: poses are compared up to its operators
    rotations = [euler_to_matrix(s.rot_deg, s.tilt_deg, s.psi_deg) for s in (full, single)]
    operators = point_group("D2").operators.to(rotations[0].dtype)
    apart = torch.stack([rotation_angle_deg(rotations[0], rotations[1] @ g) for g in operators] + [rotation_angle_deg(rotations[0], g @ rotations[1]) for g in operators]).min(0).values
    # nearly all the same; the others a neighbouring fine orientation, as the translation moved too
    assert float((apart < 1e-3).double().mean()) >= 0.8, apart
    assert float(apart.max()) <= 2 * full_grid.fine_step_deg, apart
    # every chosen translation is a coarse one (from the rounded previous origin), within a coarse step
    # per axis of the full search's
    def origins_px(s):
        return torch.stack([s.origin_x_a, s.origin_y_a], -1).double() / particles.pixel_size_a

    single_px, full_px = origins_px(single), origins_px(full)
    assert float((single_px - full_px).abs().max()) <= single_grid.offset_step_px + 1e-6
    moved = single_px - torch.round(origins_px(state))
    distance = (moved[:, None, :] - single_grid.coarse_translations[None]).abs().sum(-1).min(-1).values
    assert float(distance.max()) < 1e-4
    assert not torch.equal(single_px, full_px)  # the full search does use its children
