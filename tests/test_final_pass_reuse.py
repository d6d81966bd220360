"""The final pass keeps the poses the last mini-batch gave its sharp particles and searches the rest."""

from __future__ import annotations

import pytest
import torch

from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.simulate import SimulationOptions, simulate
from novomap.vdam import iterate
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import assign_all, pseudo_halves, recently_assigned, run_iteration
from novomap.vdam.start import initial_state

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def after_two_iterations(tmp_path_factory):
    volume, pixel = load_demo_map()
    out = tmp_path_factory.mktemp("reuse_sim")
    star = simulate(volume, out, SimulationOptions(n=120, snr=1.0, seed=3, box=64, pixel_size_a=pixel)).star_path
    particles = ParticleSet.from_star(star, preread=True)
    # reuse applies when the final pass searches no finer than the mini-batches (no local refinement)
    config = VdamConfig(n_iter=2, n_classes=1, particle_diameter_a=200.0, initial_subset=50, final_subset=50, n_starts=1, local_searches=False)
    state = initial_state(particles, config)
    half = pseudo_halves(particles)
    for _ in range(2):
        run_iteration(state, particles, half, config, "cpu")
    return particles, config, state, half


def spy_on_expectation(monkeypatch) -> list[torch.Tensor]:
    """The batch_index of every E-step the final pass runs, recorded as it runs."""
    searched = []
    original = iterate.expectation

    def spy(state_, particles_, batch_index, *args, **kwargs):
        searched.append(batch_index.clone())
        return original(state_, particles_, batch_index, *args, **kwargs)

    monkeypatch.setattr(iterate, "expectation", spy)
    return searched


def test_last_batch_is_recorded_and_only_its_sharp_particles_are_reused(after_two_iterations, monkeypatch):
    particles, config, state, half = after_two_iterations
    state = state.__class__(**{name: getattr(state, name) for name in state.__dataclass_fields__})
    state.rot_deg = state.rot_deg.clone()
    state.max_probability = state.max_probability.clone()
    last = state.last_batch
    assert last is not None and last.numel() == 50 and last.unique().numel() == 50
    # half of the last batch sharp, half not; particles outside it sharp but stale
    state.max_probability[:] = 0.9
    state.max_probability[last[::2]] = 0.1
    fresh = recently_assigned(state, particles.n, config)
    expected = torch.zeros(particles.n, dtype=torch.bool)
    expected[last[1::2]] = True
    assert torch.equal(fresh, expected)

    searched = spy_on_expectation(monkeypatch)
    kept = state.rot_deg[last[1::2]].clone()
    timings = assign_all(state, particles, half, config, "cpu")
    assert len(searched) == 1
    assert torch.equal(torch.sort(searched[0]).values, torch.nonzero(~expected).squeeze(1))
    assert torch.equal(state.rot_deg[last[1::2]], kept)  # reused poses untouched
    assert timings["reused_fraction"] == pytest.approx(25 / particles.n)


def test_reuse_can_be_switched_off(after_two_iterations):
    particles, config, state, _ = after_two_iterations
    off = VdamConfig(**{**config.__dict__, "final_reuse_min_pmax": 1.5})
    assert not recently_assigned(state, particles.n, off).any()


def test_no_reuse_when_the_final_pass_refines_locally(after_two_iterations):
    # a local final pass at a finer order than the mini-batches searched: every particle gets its finer pose
    particles, config, state, _ = after_two_iterations
    state.max_probability[:] = 0.9
    local = VdamConfig(**{**config.__dict__, "local_searches": True})
    assert recently_assigned(state, particles.n, config).any()
    assert not recently_assigned(state, particles.n, local).any()


def test_large_one_class_sets_give_final_poses_to_a_subset(after_two_iterations, monkeypatch):
    """Beyond final_pass_max particles (one class) the final pass searches the last mini-batch's
    particles and a seeded random sample of the rest, final_pass_max in all; the others are left
    unassigned (class 0), so the final reconstruction reads none of their stale poses."""
    from novomap.vdam.iterate import final_pass_size, final_pass_subset

    particles, config, state, half = after_two_iterations
    state = state.__class__(**{name: getattr(state, name) for name in state.__dataclass_fields__})
    state.class_number = state.class_number.clone()
    state.max_probability = state.max_probability.clone()
    state.max_probability[:] = 0.9
    small = VdamConfig(**{**config.__dict__, "final_pass_max": 80})
    fresh = recently_assigned(state, particles.n, small)
    assert int(fresh.sum()) == 50
    chosen = final_pass_subset(fresh, small)
    assert int(chosen.sum()) == 80 and bool(chosen[fresh].all())
    assert torch.equal(chosen, final_pass_subset(fresh, small))  # fixed by the seed
    assert final_pass_subset(fresh, config) is None and final_pass_size(particles.n, small) == 80
    assert final_pass_subset(fresh, VdamConfig(**{**small.__dict__, "n_classes": 2})) is None  # every particle's class counts

    searched = spy_on_expectation(monkeypatch)
    timings = assign_all(state, particles, half, small, "cpu")
    assert torch.equal(torch.sort(searched[0]).values, torch.nonzero(chosen & ~fresh).squeeze(1))
    assert bool((state.class_number[~chosen] == 0).all()) and bool((state.class_number[chosen] > 0).all())
    assert timings["assigned_fraction"] == pytest.approx(80 / particles.n)
    assert timings["reused_fraction"] == pytest.approx(50 / particles.n)
