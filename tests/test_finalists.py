"""The race's runner-up carried to n_iter and the choice between the two runs (vdam.finalists)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from novomap.outputs.progress import finalists_line
from novomap.physics.euler import axis_angle_to_matrix, euler_to_matrix, matrix_to_euler
from novomap.symmetry.groups import point_group
from novomap.vdam import finalists, restarts
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import pseudo_halves
from novomap.vdam.start import initial_state


def _at_poses(particles, config, rotations: torch.Tensor | None = None):
    """A one-class state whose poses are the particles' true ones (or `rotations`, (n, 3, 3)), origins true."""
    state = initial_state(particles, config)
    if rotations is None:
        state.rot_deg, state.tilt_deg, state.psi_deg = particles.rot_deg.clone(), particles.tilt_deg.clone(), particles.psi_deg.clone()
    else:
        state.rot_deg, state.tilt_deg, state.psi_deg = (a.clone() for a in matrix_to_euler(rotations))
    state.origin_x_a, state.origin_y_a = particles.origin_x_a.clone(), particles.origin_y_a.clone()
    return state


def _true_rotations(particles) -> torch.Tensor:
    return euler_to_matrix(particles.rot_deg, particles.tilt_deg, particles.psi_deg)


def _mixed_rotations(particles, share: float, seed: int) -> torch.Tensor:
    """The true poses, with a random `share` of the particles turned 180 degrees about an axis that is
    not one of beta-gal's D2 axes: the pose mixing of a pseudo-symmetric particle."""
    rotations = _true_rotations(particles).clone()
    flip = axis_angle_to_matrix(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2**0.5, 180.0)
    chosen = torch.rand(particles.n, generator=torch.Generator().manual_seed(seed)) < share
    rotations[chosen] = rotations[chosen] @ flip
    return rotations


def test_pose_agreement_ranks_true_poses_above_mixed_above_random(simulated, one_thread):
    particles, _ = simulated
    config = VdamConfig(seed=1)
    half = pseudo_halves(particles)
    rows = finalists.agreement_rows(particles.n, config.seed)
    right = finalists.pose_agreement(_at_poses(particles, config), particles, half, rows)
    mixed = finalists.pose_agreement(_at_poses(particles, config, _mixed_rotations(particles, 0.4, 3)), particles, half, rows)
    u = torch.rand(particles.n, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    random = euler_to_matrix(360 * u[:, 0], torch.rad2deg(torch.arccos(1 - 2 * u[:, 1])), 360 * u[:, 2])
    noise = finalists.pose_agreement(_at_poses(particles, config, random), particles, half, rows)
    assert 0.0 < noise < mixed < right <= 1.0
    assert right - mixed > 0.02


def test_agreement_rows_are_all_particles_or_a_fixed_sample():
    assert torch.equal(finalists.agreement_rows(50, seed=3), torch.arange(50))
    many = finalists.MAX_AGREEMENT_PARTICLES + 1000
    sample = finalists.agreement_rows(many, seed=3)
    assert sample.numel() == finalists.MAX_AGREEMENT_PARTICLES and torch.equal(sample, sample.unique())
    assert torch.equal(sample, finalists.agreement_rows(many, seed=3))


def test_a_map_agrees_with_its_turned_mirror_image_and_not_with_blobs(simulated, one_thread):
    from novomap.maps.transform import mirror_volume, rotate_volume, shift_volume

    particles, volume = simulated
    config = VdamConfig(seed=1)
    state = _at_poses(particles, config)
    state.maps = volume[None].clone()
    same = state.scratch_copy()
    turn = axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64) / (0.98**0.5), 37.0)
    same.maps = shift_volume(rotate_volume(mirror_volume(volume), turn), (1.0, -2.0, 0.5))[None]
    blobs = initial_state(particles, dataclasses.replace(config, seed=9))
    pixel = particles.pixel_size_a
    assert finalists.maps_agreement_a(state, same, pixel) < 4 * pixel
    assert finalists.maps_agreement_a(state, blobs, pixel) > 8 * pixel


def test_one_class_runs_carry_runners_up_and_a_grouped_run_chooses_half_way():
    assert finalists.finalists_carried(VdamConfig(n_classes=1, runners_up=4), None) == 4
    assert finalists.finalists_carried(VdamConfig(n_classes=1, runners_up=4), point_group("C1")) == 4
    assert finalists.finalists_carried(VdamConfig(n_classes=1, grouped_runners_up=1), point_group("I")) == 1
    assert finalists.finalists_carried(VdamConfig(n_classes=1, grouped_runners_up=1, grouped_min_order=12), point_group("T")) == 1
    assert finalists.finalists_carried(VdamConfig(n_classes=1, grouped_runners_up=1, grouped_min_order=12), point_group("D2")) == 0
    assert finalists.finalists_carried(VdamConfig(n_classes=1, grouped_runners_up=1, grouped_min_order=4), point_group("D2")) == 1
    assert finalists.finalists_carried(VdamConfig(n_classes=1, grouped_runners_up=0), point_group("I")) == 0
    assert finalists.finalists_carried(VdamConfig(n_classes=1, runners_up=0), point_group("I")) == 0
    assert finalists.lead_limit(VdamConfig(finalist_max_z=4.0), None) == 4.0 and finalists.lead_limit(VdamConfig(), point_group("O")) == float("inf")
    assert finalists.finalists_carried(VdamConfig(n_classes=2), None) == 0
    assert finalists.finalists_carried(VdamConfig(n_classes=2), point_group("D2")) == 0
    assert finalists.finalists_carried(VdamConfig(n_classes=1, runners_up=0), None) == 0
    assert finalists.choice_iteration(VdamConfig(n_iter=100), None) == 100
    assert finalists.choice_iteration(VdamConfig(n_iter=100, grouped_choice_at=50), point_group("O")) == 50
    assert finalists.choice_iteration(VdamConfig(n_iter=12, grouped_choice_at=50), point_group("O")) == 6
    assert finalists.choice_iteration(VdamConfig(n_iter=100, grouped_choice_at=150), point_group("O")) == 100


def _race_config(**changes) -> VdamConfig:
    settings = dict(seed=1, n_iter=100, n_starts=3, start_survivors=2, start_iterations=1, start_final_iterations=2, initial_subset=40, local_searches=False)
    return VdamConfig(**{**settings, **changes})


def test_the_race_keeps_its_runner_up_even_when_that_is_the_first_start(monkeypatch, simulated, one_thread):
    particles, _ = simulated
    seen = []

    def scores_by_start(states, particles, half, config, device, group=None, per_particle=None):
        seen.append([s.maps.clone() for s in states])
        # first round, starts 0, 1, 2: start 1 leads, start 0 second; last round, starts 1 and 0 (best first): start 1 again
        return [-2.0, -1.0, -3.0] if len(seen) == 1 else [-1.0, -2.0]

    monkeypatch.setattr(restarts, "score_starts", scores_by_start)
    config = _race_config()
    state = initial_state(particles, config)
    outcome = restarts.compete(state, particles, pseudo_halves(particles), config, "cpu", None)
    assert outcome["chosen_start"] == 1
    assert len(state.finalists) == 1  # three starts: the first round kept two
    carried = state.finalists[0]
    assert carried["start"] == 0 and carried["state"] is not state
    last_round = seen[-1]  # the maps of starts 1 and 0 when the last round scored them
    assert torch.equal(state.maps, last_round[0]) and torch.equal(carried["state"].maps, last_round[1])
    assert carried["state"].iteration == state.iteration == 2 and carried["state"].finalists == []
    # each run that goes on keeps its own maps as the race left them (`--sym auto`'s fold check)
    assert torch.equal(state.race_maps, last_round[0].float()) and torch.equal(carried["state"].race_maps, last_round[1].float())
    for group, changes in ((point_group("O"), {"grouped_runners_up": 0}), (None, {"runners_up": 0})):
        seen.clear()
        other = _race_config(**changes)
        again = initial_state(particles, other)
        restarts.compete(again, particles, pseudo_halves(particles), other, "cpu", group)
        assert again.finalists == []
        assert (again.race_maps is None) == (group is not None)  # only a run in C1 keeps its race maps
    # and only with one class: a run of several classes never tries larger groups after a fold change
    seen.clear()
    classes = _race_config(n_classes=2)
    several = initial_state(particles, classes)
    restarts.compete(several, particles, pseudo_halves(particles), classes, "cpu", None)
    assert several.race_maps is None and all(c["state"].race_maps is None for c in several.finalists)


def test_lead_z_is_the_paired_lead_in_standard_errors():
    first = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    second = first - torch.tensor([1.0, 3.0, 1.0, 3.0], dtype=torch.float64)  # lead 2, sd 2/sqrt(3)... of the differences
    differences = first - second
    expected = float(differences.mean()) / (float(differences.std()) / 2.0)
    assert restarts.lead_z([-1.0, -3.0], [first, second]) == pytest.approx(expected)
    assert restarts.lead_z([-3.0, -1.0], [second, first]) == pytest.approx(expected)  # whichever order they come in
    assert restarts.lead_z([-1.0, -3.0], []) == 0.0  # no per-particle values: no evidence of a lead
    assert restarts.lead_z([-1.0, -2.0], [first, first - 1.0]) == float("inf")


def test_a_clear_lead_in_the_race_carries_no_runner_up(monkeypatch, simulated, one_thread):
    particles, _ = simulated
    config = _race_config()
    for step, spread, carried in ((1.0, 0.1, False), (0.01, 3.0, True)):
        calls = []

        def scores_with_spread(states, particles, half, config, device, group=None, per_particle=None):
            # each position in the round `step` below the one before, every particle's score with its own noise
            calls.append(len(states))
            generator = torch.Generator().manual_seed(len(calls))
            values = [-step * i + spread * torch.randn(40, generator=generator, dtype=torch.float64) for i in range(len(states))]
            per_particle.extend(values)
            return [float(v.mean()) for v in values]

        monkeypatch.setattr(restarts, "score_starts", scores_with_spread)
        state = initial_state(particles, config)
        outcome = restarts.compete(state, particles, pseudo_halves(particles), config, "cpu", None)
        lead = outcome["start_rounds"][-1]["lead_z"]
        assert bool(state.finalists) == carried == ("finalist_starts" in outcome)
        assert (lead < config.finalist_max_z) == carried
        # with a group of high order the best runner-up goes on to half way whatever the lead
        calls.clear()
        state = initial_state(particles, config)
        outcome = restarts.compete(state, particles, pseudo_halves(particles), config, "cpu", point_group("O"))
        assert outcome["start_rounds"][-1]["lead_z"] == lead
        assert len(state.finalists) == 1 and outcome["finalists_choice_at"] == 50


def test_the_race_carries_its_best_runners_up_that_it_cannot_tell_from_the_winner(monkeypatch, simulated, one_thread):
    particles, _ = simulated

    def close_scores(states, particles, half, config, device, group=None, per_particle=None):
        # position i in the round 0.01 i below the first, every particle's score with its own noise; in the last
        # round the start at position 4 trails by far (a clear lead over it)
        generator = torch.Generator().manual_seed(len(states))
        values = [-0.01 * i + 3.0 * torch.randn(40, generator=generator, dtype=torch.float64) for i in range(len(states))]
        if len(states) == 5 and per_particle is not None and len(seen) == 1:
            values[4] = values[4] - 100.0
        seen.append(len(states))
        per_particle.extend(values)
        return [float(v.mean()) for v in values]

    monkeypatch.setattr(restarts, "score_starts", close_scores)
    for runners_up in (1, 2, 4):
        seen = []
        config = _race_config(n_starts=5, runners_up=runners_up, start_survivors=4, start_tie_z=100.0)
        state = initial_state(particles, config)
        outcome = restarts.compete(state, particles, pseudo_halves(particles), config, "cpu", None)
        last = outcome["start_rounds"][-1]
        ranked = [last["starts"][i] for i in restarts.ranked_starts(last["scores"])]
        assert outcome["chosen_start"] == ranked[0] and len(last["starts"]) == 5  # the first round's ties kept all five
        expected = [s for s in ranked[1 : 1 + runners_up] if s != last["starts"][4]]  # not the one it leads clearly
        assert outcome["finalist_starts"] == expected == [c["start"] for c in state.finalists]
        assert all(c["state"] is not state and c["state"].iteration == state.iteration for c in state.finalists)


def _pair_at(iteration: int, particles, config, winner_rotations, finalist_rotations):
    state = _at_poses(particles, config, winner_rotations)
    runner_up = _at_poses(particles, dataclasses.replace(config, seed=8), finalist_rotations)
    for s in (state, runner_up):
        s.iteration = iteration
        s.history = [{"iteration": 30, "start_rounds": [{"iteration": 30, "starts": [2, 4], "scores": [-1.0, -2.0]}], "chosen_start": 2},
                     {"iteration": iteration, "seconds": 1.0}]
    runner_up.history[0] = {"iteration": 30, "seconds": 1.0}  # its own history has no record of the race
    finalists.keep_finalists(state, [(4, runner_up)])
    return state, runner_up


def test_at_n_iter_the_run_whose_half_sets_agree_better_is_kept(simulated, one_thread):
    particles, volume = simulated
    config = VdamConfig(seed=1, n_iter=100)
    half = pseudo_halves(particles)
    mixed = _mixed_rotations(particles, 0.4, 3)
    state, runner_up = _pair_at(100, particles, config, mixed, None)
    runner_maps = runner_up.maps
    finalists.advance(state, particles, half, config, "cpu")
    record = state.history[-1]["finalists"]
    assert record["starts"] == [2, 4] and record["chosen_start"] == 4
    assert record["pose_agreement"][1] > record["pose_agreement"][0] and record["seconds"] > 0
    assert state.finalists == [] and state.maps is runner_maps and torch.equal(state.rot_deg, particles.rot_deg)
    race = next(f for f in state.history if "start_rounds" in f)
    assert race["chosen_start"] == 4 and race["start_rounds"][0]["starts"] == [2, 4]
    line = finalists_line(record)
    assert f"{record['pose_agreement'][0]:.3f}" in line and f"{record['pose_agreement'][1]:.3f}" in line and "continuing from start 4" in line
    # the other way round the run keeps its own state
    state, runner_up = _pair_at(100, particles, config, None, mixed)
    own_maps = state.maps
    finalists.advance(state, particles, half, config, "cpu")
    assert state.history[-1]["finalists"]["chosen_start"] == 2 and state.maps is own_maps and state.finalists == []


def test_at_the_pruning_iteration_the_two_runs_whose_half_sets_agree_best_go_on(simulated, one_thread):
    particles, _ = simulated
    config = VdamConfig(seed=1, n_iter=100, finalist_prunes=((70, 2),))
    half = pseudo_halves(particles)
    state, runner_up = _pair_at(70, particles, config, _mixed_rotations(particles, 0.3, 3), None)
    worse = _at_poses(particles, dataclasses.replace(config, seed=9), _mixed_rotations(particles, 0.5, 5))
    worse.iteration, worse.history = 70, [{"iteration": 30, "seconds": 1.0}, {"iteration": 70, "seconds": 1.0}]
    finalists.keep_finalists(state, [(4, runner_up), (5, worse)])
    leader_rotations = state.rot_deg.clone()
    finalists.advance(state, particles, half, config, "cpu")
    record = state.history[-1]["finalists_pruned"]
    assert record["starts"] == [2, 4, 5] and record["kept"] == [4, 2] and record["iteration"] == 70
    a_leader, a_right, a_worse = record["pose_agreement"]
    assert a_right > a_leader > a_worse
    assert state.maps is runner_up.maps and torch.equal(state.rot_deg, particles.rot_deg)  # the best took over
    assert [c["start"] for c in state.finalists] == [2] and torch.equal(state.finalists[0]["state"].rot_deg, leader_rotations)
    assert state.finalists[0]["state"].finalists == [] and "finalists" not in state.history[-1]
    assert next(f for f in state.history if "start_rounds" in f)["chosen_start"] == 4
    # at n_iter the other run wins (its poses made true): the pruning's record stays in the history it takes over
    kept = state.finalists[0]["state"]
    kept.rot_deg, kept.tilt_deg, kept.psi_deg = particles.rot_deg.clone(), particles.tilt_deg.clone(), particles.psi_deg.clone()
    state.rot_deg, state.tilt_deg, state.psi_deg = (a.clone() for a in matrix_to_euler(_mixed_rotations(particles, 0.5, 7)))
    for s in (state, kept):
        s.iteration = 100
        s.history.append({"iteration": 100, "seconds": 1.0})
    finalists.advance(state, particles, half, config, "cpu")
    assert state.history[-1]["finalists"]["starts"] == [4, 2] and state.history[-1]["finalists"]["chosen_start"] == 2
    assert state.maps is kept.maps and next(f for f in state.history if "start_rounds" in f)["chosen_start"] == 2
    assert next(f for f in state.history if f["iteration"] == 70)["finalists_pruned"]["kept"] == [4, 2]


def test_the_cuts_come_at_their_share_of_the_run():
    config = VdamConfig(n_iter=200, finalist_prunes=((50, 3), (70, 2)))
    assert [finalists.runs_kept(config, i) for i in (99, 100, 139, 140, 200)] == [None, 3, 3, 2, 2]
    assert finalists.runs_kept(VdamConfig(n_iter=100, finalist_prunes=()), 100) is None


def test_a_cut_to_three_keeps_the_best_three_in_order(simulated, one_thread):
    particles, _ = simulated
    config = VdamConfig(seed=1, n_iter=100, finalist_prunes=((50, 3), (70, 2)))
    half = pseudo_halves(particles)
    state, runner_up = _pair_at(50, particles, config, _mixed_rotations(particles, 0.2, 3), None)
    worse, worst = (_at_poses(particles, dataclasses.replace(config, seed=s), _mixed_rotations(particles, share, s)) for s, share in ((9, 0.4), (11, 0.6)))
    for s in (worse, worst):
        s.iteration, s.history = 50, [{"iteration": 30, "seconds": 1.0}, {"iteration": 50, "seconds": 1.0}]
    finalists.keep_finalists(state, [(5, worst), (4, runner_up), (6, worse)])
    for i, carried in enumerate(state.finalists):
        carried["seconds"] = float(i + 1)
    finalists.advance(state, particles, half, config, "cpu")
    record = state.history[-1]["finalists_pruned"]
    assert record["starts"] == [2, 5, 4, 6] and record["kept"] == [4, 2, 6]
    assert state.maps is runner_up.maps and [c["start"] for c in state.finalists] == [2, 6]
    assert state.finalists[1]["state"] is worse and sum(c["seconds"] for c in state.finalists) >= 6.0  # the cost so far kept


def test_the_choice_records_whether_the_two_maps_are_the_same_solution(simulated, one_thread):
    from novomap.maps.transform import rotate_volume

    particles, volume = simulated
    config = VdamConfig(seed=1, n_iter=100)
    half = pseudo_halves(particles)
    state, runner_up = _pair_at(100, particles, config, None, None)
    state.maps = volume[None].clone()
    state.resolution_shell = runner_up.resolution_shell = 8
    runner_up.maps = rotate_volume(volume, axis_angle_to_matrix(torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64), 50.0))[None]
    finalists.advance(state, particles, half, config, "cpu")
    record = state.history[-1]["finalists"]
    assert record["same_solution"] and record["maps_agree_a"] <= record["resolution_a"]
    assert "the same solution" in finalists_line(record)
    state, runner_up = _pair_at(100, particles, config, None, None)  # the runner-up's maps: random blobs
    state.maps = volume[None].clone()
    state.resolution_shell = runner_up.resolution_shell = 8
    finalists.advance(state, particles, half, config, "cpu")
    assert not state.history[-1]["finalists"]["same_solution"] and "different solutions" in finalists_line(state.history[-1]["finalists"])


def test_before_n_iter_the_runner_up_only_follows(simulated, one_thread, monkeypatch):
    """Below n_iter advance brings the runner-up to the run's iteration with its own seed and decides nothing."""
    particles, _ = simulated
    config = VdamConfig(seed=1, n_iter=100)
    state, runner_up = _pair_at(60, particles, config, None, None)
    runner_up.iteration = 58
    seeds = []

    def one_iteration(s, particles, half, config, device, group=None):
        seeds.append(config.seed)
        s.iteration += 1
        s.history.append({"iteration": s.iteration, "seconds": 0.5})
        return s.history[-1]

    monkeypatch.setattr(finalists, "run_iteration", one_iteration)
    finalists.advance(state, particles, pseudo_halves(particles), config, "cpu")
    assert runner_up.iteration == 60 and seeds == [restarts.start_seed(config, 4)] * 2
    assert state.finalists[0]["state"] is runner_up and "finalists" not in state.history[-1]
    assert "finalist" in state.history[-1]["timings"] and state.finalists[0]["seconds"] >= 0


def test_a_checkpoint_keeps_the_finalist(tmp_path, simulated):
    from novomap.vdam.state import RunState

    particles, _ = simulated
    config = VdamConfig(seed=1)
    state, runner_up = _pair_at(40, particles, config, None, None)
    state.save(tmp_path / "state.pt")
    loaded = RunState.load(tmp_path / "state.pt")
    assert loaded.finalists[0]["start"] == 4 and torch.equal(loaded.finalists[0]["state"].maps, runner_up.maps)
    assert loaded.finalists[0]["state"].iteration == 40
    # a checkpoint of sessions 51-53 held one runner-up as `finalist`
    stored = torch.load(tmp_path / "state.pt", weights_only=False)
    stored["finalist"] = {"start": 3, "state": stored.pop("finalists")[0]["state"]}
    torch.save(stored, tmp_path / "legacy.pt")
    legacy = RunState.load(tmp_path / "legacy.pt")
    assert [c["start"] for c in legacy.finalists] == [3] and legacy.finalists[0]["state"].iteration == 40


def test_pose_agreement_does_not_change_the_state(simulated, one_thread):
    particles, _ = simulated
    config = VdamConfig(seed=1)
    state = _at_poses(particles, config)
    before = state.rot_deg.clone()
    finalists.pose_agreement(state, particles, pseudo_halves(particles), finalists.agreement_rows(particles.n, 1))
    assert torch.equal(state.rot_deg, before)


def test_halves_symmetrised_about_the_map_axes_agree_better_than_unsymmetrised_or_about_wrong_axes(simulated, one_thread):
    from novomap.symmetry.impose import impose_group

    particles, volume = simulated
    state = _at_poses(particles, VdamConfig(seed=1))
    group = point_group("D2")
    _, axes = impose_group(volume[None].float(), group, particles.pixel_size_a)
    half, rows = pseudo_halves(particles), finalists.agreement_rows(particles.n, 1)
    plain = finalists.pose_agreement(state, particles, half, rows)
    state.symmetry_axes = axes
    about_axes = finalists.pose_agreement(state, particles, half, rows, group)
    rotation, shift = axes[0]
    state.symmetry_axes = [(axis_angle_to_matrix(torch.tensor([0.3, 0.5, 0.81], dtype=torch.float64), 35.0) @ rotation, shift)]
    about_wrong_axes = finalists.pose_agreement(state, particles, half, rows, group)
    assert about_axes > plain + 0.05 and about_axes > about_wrong_axes + 0.05


def test_a_grouped_run_keeps_the_better_run_half_way_with_the_group_imposed_on_both(simulated, one_thread, monkeypatch):
    particles, volume = simulated
    config = VdamConfig(seed=1, n_iter=100, grouped_choice_at=50)
    group = point_group("D2")
    mixed = _mixed_rotations(particles, 0.4, 3)
    state, runner_up = _pair_at(50, particles, config, mixed, None)
    for s in (state, runner_up):
        s.maps = volume[None].to(s.maps.dtype).clone()
    runner_up.iteration = 48
    groups = []

    def one_iteration(s, particles, half, config, device, group=None):
        groups.append(group)
        s.iteration += 1
        s.history.append({"iteration": s.iteration, "seconds": 0.5})
        return s.history[-1]

    monkeypatch.setattr(finalists, "run_iteration", one_iteration)
    finalists.advance(state, particles, pseudo_halves(particles), config, "cpu", group)
    assert groups == [group, group]
    record = state.history[-1]["finalists"]
    assert record["mid_run"] and record["chosen_start"] == 4 and record["pose_agreement"][1] > record["pose_agreement"][0]
    # the runner-up had D2 imposed after iteration 50, as the run has: it now is the run, with its axes
    assert state.finalists == [] and state.symmetry_axes is not None and torch.equal(state.rot_deg, particles.rot_deg)
    # before the choice the runner-up only follows; a C1 run's runner-up goes on to n_iter
    state, runner_up = _pair_at(49, particles, config, mixed, None)
    finalists.advance(state, particles, pseudo_halves(particles), config, "cpu", group)
    assert "finalists" not in state.history[-1] and state.finalists[0]["state"] is runner_up
    state, runner_up = _pair_at(50, particles, config, mixed, None)
    finalists.advance(state, particles, pseudo_halves(particles), config, "cpu", None)
    assert "finalists" not in state.history[-1] and state.finalists[0]["state"] is runner_up


def test_a_run_of_high_symmetry_that_carries_every_start_drops_none_before_the_last_round():
    from novomap.outputs.progress import race_notice

    config = VdamConfig(n_classes=1, n_starts=5, start_survivors=2, grouped_runners_up=4)
    raced = finalists.race_for_group(config, point_group("I"))
    assert raced.start_survivors == 5 and restarts.competition_rounds(raced) == [(30, 1)]
    assert "the best 1 at iteration 30" in race_notice(raced)[1] and "iteration 10" not in race_notice(raced)[1]
    assert finalists.race_for_group(dataclasses.replace(config, grouped_runners_up=1), point_group("O")).start_survivors == 5
    for group, changes in ((point_group("D2"), {}), (None, {}), (point_group("I"), {"grouped_runners_up": 0}), (point_group("I"), {"n_classes": 2})):
        assert finalists.race_for_group(dataclasses.replace(config, **changes), group).start_survivors == 2
