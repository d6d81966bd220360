"""initial_model's final step: the largest class reconstructed from its particles at their final poses."""

from __future__ import annotations

import torch

from novomap.final_map import final_reconstruction
from novomap.vdam.config import VdamConfig
from novomap.vdam.start import initial_state


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_members_at_their_true_poses_give_the_true_map(simulated):
    particles, truth = simulated
    config = VdamConfig(n_classes=2)
    state = initial_state(particles, config)
    # the state's poses are the true ones (initial_state copies the table's); class 2 holds every particle
    state.class_number[:] = 2
    volume = final_reconstruction(state, particles, 1, config)
    assert volume.shape == truth.shape
    assert _correlation(volume, truth) > 0.9
    # wrong poses (every particle at the first one's) must not give it
    state.rot_deg[:] = state.rot_deg[0]
    assert _correlation(final_reconstruction(state, particles, 1, config), truth) < 0.6


def test_a_class_no_particle_chose_keeps_its_vdam_map(simulated):
    particles, _ = simulated
    config = VdamConfig(n_classes=2)
    state = initial_state(particles, config)
    state.class_number[:] = 2
    assert torch.equal(final_reconstruction(state, particles, 0, config), state.maps[0].float())


def test_large_classes_are_reconstructed_from_a_subset(simulated):
    """Beyond final_reconstruction_max members, a random subset (fixed by the seed) still gives the map."""
    particles, truth = simulated
    config = VdamConfig(n_classes=2, final_reconstruction_max=150)
    state = initial_state(particles, config)
    state.class_number[:] = 2
    subset = final_reconstruction(state, particles, 1, config)
    assert _correlation(subset, truth) > 0.8
    assert torch.equal(subset, final_reconstruction(state, particles, 1, config))  # reproducible
    assert not torch.equal(subset, final_reconstruction(state, particles, 1, VdamConfig(n_classes=2)))
