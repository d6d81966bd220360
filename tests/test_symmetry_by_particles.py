"""`--sym auto` judged by the particles (novomap.analysis.symmetry_by_particles): the explained-energy score,
the in-place symmetrisation it needs, the candidate list, and the choice on particles of a known D2 map."""

from __future__ import annotations

import pytest
import torch

from _synthetic_maps import PIXEL_SIZE_A, add_noise, blob_map, correlation, random_rotation
from novomap.analysis.symmetry_by_particles import candidate_groups, explained_energy, score_groups, shell_score
from novomap.maps.transform import rotate_volume, shift_volume
from novomap.reconstruct import Poses
from novomap.symmetry.align import align_to_symmetry
from novomap.symmetry.detect import DetectionResult, GroupScore
from novomap.symmetry.groups import point_group
from novomap.symmetry.symmetrise import symmetrise_in_place
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import pseudo_halves
from novomap.vdam.start import initial_state

pytestmark = pytest.mark.usefixtures("one_thread")


def test_symmetrise_in_place_keeps_a_symmetric_map_where_it_is():
    """A D2 map turned and moved off-centre: imposing D2 about the axes found changes it only by
    interpolation, averages noise away, and a second pass changes nothing."""
    clean = shift_volume(rotate_volume(blob_map("D2"), random_rotation(4)), (1.5, -2.0, 0.5))
    noisy = add_noise(clean, 0.5, seed=2)
    group = point_group("D2")
    alignment = align_to_symmetry(noisy, PIXEL_SIZE_A, group)
    once = symmetrise_in_place(noisy, group, alignment.rotation, alignment.shift_zyx_px)
    assert correlation(once, clean) > correlation(noisy, clean) + 0.05
    assert correlation(once, clean) > 0.95
    twice = symmetrise_in_place(once, group, alignment.rotation, alignment.shift_zyx_px)
    assert correlation(twice, once) > 0.995


def _finished_run(particles, truth: torch.Tensor, config: VdamConfig):
    """A finished one-class run at the true poses (those of the table), resolved to ~14 Å."""
    state = initial_state(particles, config)
    state.class_number[:] = 1
    state.maps[0] = truth
    state.resolution_shell = 16
    return state


def test_explained_energy_ignores_the_map_scale_and_prefers_the_truth(simulated):
    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0)
    state = _finished_run(particles, truth, config)
    poses = Poses(state.rot_deg, state.tilt_deg, state.psi_deg, state.origin_x_a, state.origin_y_a)
    index = torch.arange(100)
    radius = config.particle_diameter_a / (2 * particles.pixel_size_a)

    def score(volume: torch.Tensor) -> float:
        return shell_score(*explained_energy(particles, index, poses, volume.float(), state.sigma2, 40, radius))

    right = score(truth)
    assert score(3.0 * truth) == pytest.approx(right, rel=1e-4)  # the best scale per shell is found
    assert score(rotate_volume(truth.float(), random_rotation(7))) < 0.5 * right  # the same map, turned: wrong poses
    assert right > 0


def test_the_particles_choose_the_true_group_over_its_subgroups_and_supergroups(simulated):
    """Particles of beta-gal (D2) at their true poses: D2's maps explain the other half best; its subgroups
    (less averaging) a little less, groups beta-gal lacks (D4, O: other structures averaged in) far less."""
    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0)
    state = _finished_run(particles, truth, config)
    from novomap.initial_model import final_reconstruction

    volume = final_reconstruction(state, particles, 0, config)
    groups = [point_group(name) for name in ("C1", "C2", "D2", "D4", "O")]
    scores = dict((group.name, score) for group, score, _ in score_groups(volume, groups, state, particles, pseudo_halves(particles), 0, config))
    assert max(scores, key=scores.get) == "D2", scores
    assert scores["C1"] < scores["D2"] and scores["C2"] < scores["D2"]
    margin = scores["D2"] - max(scores["C1"], scores["C2"])
    assert scores["D4"] < scores["D2"] - 3 * margin and scores["O"] < scores["D2"] - 3 * margin, scores


def _row(name: str, ratio: float | None) -> GroupScore:
    group = point_group(name)
    return GroupScore(name, group.order, 0.1 if ratio is None else ratio, 0.05, False, True, None if ratio is None else 1.0)


def test_candidates_are_c1_the_detection_the_most_plausible_and_plausible_polyhedra():
    table = [_row("C1", None)] + [_row(name, ratio) for name, ratio in
             [("C2", 0.1), ("D2", 0.2), ("C3", 0.3), ("D3", 0.35), ("C5", 0.4), ("D5", 0.45), ("T", 0.6), ("I", 0.7), ("O", 0.9), ("C7", 0.5)]]  # fmt: skip
    detection = DetectionResult("C2", table, 0.1, 0.001, torch.eye(3, dtype=torch.float64))
    names = [group.name for group in candidate_groups(detection)]
    assert names[0] == "C1" and set(names) == {"C1", "C2", "D2", "C3", "D3", "T", "I"}
    orders = [point_group(name).order for name in names]
    assert orders == sorted(orders)


def test_a_class_without_particles_falls_back_to_the_map(simulated):
    """No particle in the class: nothing to judge by, so the map-only detection decides (not the largest candidate)."""
    from novomap.analysis.symmetry_by_particles import choose_group_by_particles

    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0)
    state = _finished_run(particles, truth, config)
    state.class_number[:] = 2  # every particle in another class
    choice = choose_group_by_particles(truth.float(), state, particles, pseudo_halves(particles), 0, config)
    assert choice.group.name == choice.detection.point_group and len(choice.scores) == 1
    from novomap.symmetry.choice import particle_reason

    assert "too few particles" in particle_reason(choice)
