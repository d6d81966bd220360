"""`--sym auto` judged by the particles (novomap.analysis.symmetry_by_particles): the explained-energy score,
the in-place symmetrisation it needs, the candidate list, and the choice on particles of a known D2 map."""

from __future__ import annotations

import pytest
import torch

from _synthetic_maps import PIXEL_SIZE_A, add_noise, blob_map, correlation, random_rotation
from novomap.analysis.symmetry_by_particles import candidate_groups, explained_energy, joining_groups, score_groups, shell_score
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
    from novomap.final_map import final_reconstruction

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


def test_axes_of_several_orders_that_no_candidate_joins_bring_the_polyhedral_groups_that_do():
    # C2, C3, C5 and C10 plausible, no polyhedral group tested: C3 and C5 are joined only by I, C2 and C3
    # by T, O and I (C10 joins C2 and C5 itself); the four best by ratio are candidates as before
    # C15 (at the noise's ratio) would join C3 and C5 too, but it is not among the four most plausible
    table = [_row("C1", None), _row("C2", 0.42), _row("C3", 0.57), _row("C5", 0.52), _row("C10", 0.7), _row("C15", 0.78), _row("C4", 0.95), _row("D3", None), _row("I", None)]
    detection = DetectionResult("C1", table, 0.1, 0.001, torch.eye(3, dtype=torch.float64))
    assert [group.name for group in candidate_groups(detection)] == ["C1", "C2", "C3", "C5", "C10", "T", "O", "I"]
    assert joining_groups(["C3", "C5"]) == ["I"]
    assert joining_groups(["C3", "C4"]) == ["O"]
    assert joining_groups(["C2", "C3"]) == ["T", "O", "I"]
    assert joining_groups(["C2", "C3"], rejected={"O"}) == ["T", "I"]  # tested and implausible: not offered
    assert joining_groups(["C2", "C3", "D3"]) == []  # D3 joins them itself
    assert joining_groups(["C2", "D2"]) == [] and joining_groups(["C2"]) == []
    assert joining_groups(["C3", "C7"]) == []  # no polyhedral group has a 7-fold


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


def test_only_c1_plausible_is_chosen_without_scoring(simulated, monkeypatch):
    """When the map-only detection finds no group but C1 plausible, there is nothing for the particles to
    choose between: C1 without the cross-validated searches (they cost ~5 s a candidate), and the reason says so."""
    import novomap.analysis.symmetry_by_particles as by_particles
    from novomap.symmetry.choice import particle_reason

    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0)
    state = _finished_run(particles, truth, config)
    table = [_row("C1", None), _row("C2", 0.9), _row("D2", 0.95), _row("T", 1.0)]
    monkeypatch.setattr(by_particles, "detect_point_group", lambda *a, **k: DetectionResult("C1", table, 0.1, 0.001, torch.eye(3, dtype=torch.float64)))
    monkeypatch.setattr(by_particles, "score_groups", lambda *a, **k: pytest.fail("scored a single candidate"))
    choice = by_particles.choose_group_by_particles(truth.float(), state, particles, pseudo_halves(particles), 0, config)
    assert choice.group.name == "C1" and choice.scores == [("C1", 0.0)]
    assert "no other group plausible" in particle_reason(choice)


@pytest.mark.parametrize("imposed, offered", [("D4", ["D4", "O"]), ("T", ["T", "O", "I"]), ("O", ["O"])])
def test_a_group_imposed_mid_run_is_put_only_against_larger_groups_containing_it(simulated, monkeypatch, imposed, offered):
    """choose_group_by_particles(at_least=G), the end check of a group `--sym auto` imposed during the run:
    the particles judge G against the plausible groups that contain it, never a smaller or unrelated one;
    with none, G stands without a search."""
    import novomap.analysis.symmetry_by_particles as by_particles

    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0)
    state = _finished_run(particles, truth, config)
    table = [_row("C1", None)] + [_row(name, ratio) for name, ratio in [("C2", 0.1), ("C4", 0.2), ("D2", 0.2), ("D4", 0.3), ("T", 0.5), ("O", 0.6), ("I", 0.7)]]
    monkeypatch.setattr(by_particles, "detect_point_group", lambda *a, **k: DetectionResult("D4", table, 0.1, 0.001, torch.eye(3, dtype=torch.float64)))
    judged: list[list[str]] = []

    def score(volume, groups, *args, **kwargs):
        judged.append([group.name for group in groups])
        return [(group, float(group.order), None) for group in sorted(groups, key=lambda g: -g.order)]

    monkeypatch.setattr(by_particles, "score_groups", score)
    choice = by_particles.choose_group_by_particles(truth.float(), state, particles, pseudo_halves(particles), 0, config, at_least=point_group(imposed))
    if len(offered) == 1:
        assert judged == [] and choice.group.name == imposed and "no larger group containing O" in choice.unjudged
    else:
        assert judged == [offered] and choice.group.name == offered[-1]


def test_sym_auto_mid_run_imposes_the_chosen_group_and_restarts_settling(simulated):
    """auto_symmetry.group_mid_run on a run of beta-gal (D2) particles at their true poses, its class map
    noisy and its last checks failing: the particles choose D2, the map is made D2-symmetric about the
    axes it keeps for later impositions, the race's runner-up stops, the decision is stored in the state
    (for --continue and symmetry.txt), and the run must settle afresh, a lag later."""
    from novomap.auto_symmetry import group_mid_run
    from novomap.symmetry.align import align_to_symmetry as align

    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0, n_iter=100)
    state = _finished_run(particles, truth, config)
    state.maps[0] = add_noise(truth, 0.5, seed=3)
    state.iteration = 100
    state.map_snapshots = {80: state.maps.float(), 90: state.maps.float(), 100: state.maps.float()}
    state.snapshot_shells = {80: 16, 90: 16, 100: 16}
    figures = {"iteration": 100, "map_agreement": 0.8}
    state.history = [{"iteration": 90, "map_agreement": 0.7}, figures]
    state.finalists = [{"start": 3, "state": None, "seconds": 0.0}]  # a runner-up of the race, carried for C1 particles
    noisy_score = align(state.maps[0].float(), PIXEL_SIZE_A, point_group("D2")).score

    group, last = group_mid_run(state, particles, pseudo_halves(particles), config, "cpu", figures, 110)
    assert group is not None and group.name == "D2"
    assert state.finalists == [] and figures["finalists_dropped"] == [3]
    assert last == 120 and figures["settling_restarted"] and figures["auto_symmetry"] == "D2"
    assert sorted(state.map_snapshots) == [100]
    assert torch.equal(state.map_snapshots[100][0], state.maps[0].float())  # the snapshot is of the imposed map
    assert align(state.maps[0].float(), PIXEL_SIZE_A, point_group("D2")).score < 0.5 * noisy_score
    assert state.symmetry_axes is not None and len(state.symmetry_axes) == 1
    record = state.auto_symmetry
    assert record["applied"] == "D2" and record["chosen_at_iteration"] == 100 and record["particle_scores"][0]["group"] == "D2"
