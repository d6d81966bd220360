"""Pooling classes that hold one structure: poses carried into another map's frame (either hand),
checked by reconstructing simulated particles at their carried true poses."""

from __future__ import annotations

import pytest
import torch
from _synthetic_maps import correlation

from novomap.analysis.pool_classes import pool_same_structure, poses_onto_aligned_map
from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.maps.transform import mirror_volume, rotate_volume, shift_volume
from novomap.physics.euler import euler_to_matrix
from novomap.reconstruct import Poses, reconstruct_with_poses
from novomap.simulate import SimulationOptions, simulate
from novomap.vdam.config import VdamConfig
from novomap.vdam.start import initial_state

ROTATION = euler_to_matrix(torch.tensor(40.0), torch.tensor(70.0), torch.tensor(-25.0)).double()
SHIFT_ZYX_PX = torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[ParticleSet, torch.Tensor]:
    volume, pixel_size_a = load_demo_map()
    out = tmp_path_factory.mktemp("pool")
    simulate(volume, out, SimulationOptions(n=600, snr=5.0, seed=3, box=64, pixel_size_a=pixel_size_a, max_shift_px=3.0))
    return ParticleSet.from_star(out / "particles.star", preread=True), volume.double()


def _moved(volume: torch.Tensor, mirrored: bool) -> torch.Tensor:
    return shift_volume(rotate_volume(mirror_volume(volume) if mirrored else volume, ROTATION), SHIFT_ZYX_PX)


@pytest.mark.parametrize("mirrored", [False, True])
def test_carried_poses_reconstruct_the_moved_map(simulated, mirrored):
    particles, volume = simulated
    target = _moved(volume, mirrored)
    index = torch.arange(particles.n)
    scores = {}
    for flip in (False, True):
        poses = poses_onto_aligned_map(
            particles.rot_deg, particles.tilt_deg, particles.psi_deg, particles.origin_x_a, particles.origin_y_a,
            ROTATION, SHIFT_ZYX_PX, particles.pixel_size_a, flip,
        )  # fmt: skip
        scores[flip] = correlation(reconstruct_with_poses(particles, index, Poses(*poses)), target)
    at_true_poses = correlation(reconstruct_with_poses(particles, index, Poses(particles.rot_deg, particles.tilt_deg, particles.psi_deg, particles.origin_x_a, particles.origin_y_a)), volume)
    assert scores[mirrored] > at_true_poses - 0.01  # as good as the unmoved map from the true poses (0.97)
    assert scores[not mirrored] < 0.8  # the other hand's carry does not fit: the test can tell


def test_the_mirrored_class_joins_and_another_structure_does_not(simulated):
    particles, volume = simulated
    config = VdamConfig(n_iter=10, seed=1, n_classes=3)
    state = initial_state(particles, config)
    noise_phase = torch.fft.fftn(torch.randn(volume.shape, generator=torch.Generator().manual_seed(5), dtype=volume.dtype))
    decoy = torch.fft.ifftn(torch.fft.fftn(volume).abs() * noise_phase / noise_phase.abs()).real  # same spectrum, another structure
    state.maps = torch.stack([volume, _moved(volume, True), decoy])
    state.class_number = torch.arange(particles.n) % 3 + 1
    mirrored_rows = torch.nonzero(state.class_number == 2).squeeze(1)
    before = state.rot_deg[mirrored_rows].clone()
    pooled = pool_same_structure(state, 0, particles.pixel_size_a, config)
    assert [(p.class_number, p.hand_flipped) for p in pooled] == [(2, True)]
    assert pooled[0].cc > 0.95 and pooled[0].n_particles == mirrored_rows.numel()
    assert bool((state.class_number[mirrored_rows] == 1).all())
    assert int((state.class_number == 3).sum()) == particles.n // 3  # the decoy's particles stay
    assert not torch.allclose(state.rot_deg[mirrored_rows], before)  # their poses were carried over
    assert pool_same_structure(state, 0, particles.pixel_size_a, VdamConfig(n_classes=3, pool_min_cc=1.5)) == []


def test_a_class_that_resolves_much_less_is_not_pooled(simulated):
    """A class of poor particles can superpose on the structure as a blurred copy of it."""
    particles, volume = simulated
    config = VdamConfig(n_iter=10, seed=1, n_classes=2)
    state = initial_state(particles, config)
    state.maps = torch.stack([volume, _moved(volume, False)])
    state.class_number = torch.arange(particles.n) % 2 + 1
    n_shells = state.ssnr.shape[1]
    state.ssnr = torch.zeros_like(state.ssnr)
    state.ssnr[0, :20] = 10.0  # resolves to shell 19
    state.ssnr[1, :12] = 10.0  # to shell 11: 1.7x coarser
    assert n_shells > 20
    assert pool_same_structure(state, 0, particles.pixel_size_a, config) == []
    state.ssnr[1, :17] = 10.0  # to shell 16: 1.19x coarser
    assert [p.class_number for p in pool_same_structure(state, 0, particles.pixel_size_a, config)] == [2]


def test_evidence_json_lists_the_pooled_classes(tmp_path):
    import json

    from novomap.analysis.confidence import write_evidence
    from novomap.analysis.pool_classes import PooledClass

    class _Evidence:
        def to_json(self) -> dict:
            return {"weak": False}

    path = write_evidence(tmp_path, _Evidence(), None, [PooledClass(2, 835, 0.968, True)])
    assert json.loads(path.read_text())["pooled_classes"] == [{"class_number": 2, "n_particles": 835, "cc": 0.968, "hand_flipped": True}]
    assert "pooled_classes" not in json.loads(write_evidence(tmp_path, _Evidence(), None, []).read_text())
