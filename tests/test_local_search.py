"""Local searches beyond the global grid (sampling.local, estep.local) and the choice among starts (vdam.restarts)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.physics.euler import axis_angle_to_matrix, euler_to_matrix, matrix_to_euler, rotation_angle_deg
from novomap.sampling.grid import build_search_grid
from novomap.sampling.healpix import angular_step_deg
from novomap.sampling.local import coarse_orientations, local_candidates, max_candidates, nearest_candidates, restricted_grid
from novomap.simulate import SimulationOptions, simulate
from novomap.vdam import restarts
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import assign_all, expectation, local_order, polish_config, pseudo_halves, run_iteration, search_setup, split_local
from novomap.vdam.start import initial_state

D2_OPERATORS = torch.stack([torch.diag(torch.tensor(d, dtype=torch.float64)) for d in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1])])


def d2_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([rotation_angle_deg(a @ g, b) for g in D2_OPERATORS]).min(0).values


def random_rotations(n: int, seed: int) -> torch.Tensor:
    u = torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return euler_to_matrix(360 * u[:, 0], torch.rad2deg(torch.arccos(1 - 2 * u[:, 1])), 360 * u[:, 2])


@pytest.mark.parametrize("order, perturbation", [(3, 0.0), (3, 0.37), (4, -0.21)])
def test_candidates_are_exactly_the_grid_orientations_within_the_radius(order, perturbation):
    previous = random_rotations(40, seed=order)
    radius = 2 * angular_step_deg(order)
    near = nearest_candidates(previous, order, perturbation, radius, max_candidates(order, radius))
    every = coarse_orientations(order, perturbation)
    angles = rotation_angle_deg(previous[:, None], every[None])  # (40, O) brute force
    for i in range(previous.shape[0]):
        found = set(near[i][near[i] >= 0].tolist())
        assert found == set(torch.nonzero(angles[i] <= radius + 1e-6).squeeze(1).tolist())
        assert int(near[i, 0]) == int(angles[i].argmin())  # nearest first, always kept
    # about the share of SO(3) within the radius: (r - sin r) / pi of the grid
    r = math.radians(radius)
    expected = every.shape[0] * (r - math.sin(r)) / math.pi
    assert 0.6 * expected < float((near >= 0).sum(1).float().mean()) < 1.5 * expected


def test_restricted_grid_matches_the_global_grid_at_the_same_indices():
    order, perturbation = 3, 0.25
    full = build_search_grid(order, 2.0, 1.0, perturbation)
    index = torch.tensor([0, 5, 47, 48, 1000, 36_863])
    part = restricted_grid(order, 2, index, 2.0, 1.0, perturbation)
    assert torch.allclose(part.coarse_rotations, full.coarse_rotations[index], atol=1e-12)
    assert torch.allclose(part.fine_rotations, full.fine_rotations[index], atol=1e-12)
    # directions reported at the global order (parent HEALPix pixels), so the direction prior keeps its size
    assert torch.equal(part.coarse_direction, full.coarse_direction[index] // 4)
    assert part.n_directions == 12 * 4**2
    assert torch.allclose(part.coarse_translations, full.coarse_translations)


def test_the_true_pose_is_among_the_candidates_of_a_nearby_start():
    truth = random_rotations(60, seed=7)
    axis = torch.randn(60, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    start = truth @ axis_angle_to_matrix(axis, 6.0)  # previous poses 6 deg off
    local = local_candidates(start, 3, 2, 2.0, 1.0, 0.1, sigma_deg=7.5)
    chosen = local.grid.coarse_rotations[local.candidates.clamp(min=0)]  # (60, L, 3, 3)
    angle = torch.where(local.candidates >= 0, rotation_angle_deg(chosen, truth[:, None]), torch.full(local.candidates.shape, 999.0, dtype=torch.float64))
    # the coarse orientation nearest to the truth (within ~half a 7.5 deg step in each angle) is a candidate
    assert float(angle.min(1).values.max()) < 6.0


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[ParticleSet, torch.Tensor]:
    out = tmp_path_factory.mktemp("sim_local")
    volume, _ = load_demo_map()
    options = SimulationOptions(n=40, snr=2.0, seed=5, max_shift_px=2.0, defocus_min_a=9000, defocus_max_a=12000)
    simulate(volume, out, options)
    return ParticleSet.from_star(out / "particles.star", preread=True), volume.double()


def _state_near_truth(particles, volume, config, offset_deg: float, acc_rot_deg: float):
    state = initial_state(particles, config)
    state.maps = volume[None].clone()
    state.healpix_order = config.max_healpix_order
    state.direction_prior = torch.full((1, 12 * 4**state.healpix_order), 1.0 / (12 * 4**state.healpix_order), dtype=torch.float64)
    state.resolution_shell = 24  # full 64 px window
    state.acc_rot_deg = acc_rot_deg
    state.iteration = 50  # past VDAM's initial phase (30 of 100 iterations)
    truth = euler_to_matrix(particles.rot_deg, particles.tilt_deg, particles.psi_deg)
    axis = torch.randn(particles.n, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    state.rot_deg, state.tilt_deg, state.psi_deg = matrix_to_euler(truth @ axis_angle_to_matrix(axis, offset_deg))
    state.class_number[:] = 1
    state.max_probability[:] = 1.0
    return state, truth


@pytest.mark.parametrize("acc_rot_deg, final, expected_order, bound_deg", [(6.0, False, 3, 3.0), (3.0, False, 3, 3.0), (3.0, True, 4, 1.8)])
def test_local_search_recovers_poses_finer_than_the_global_grid(simulated, one_thread, acc_rot_deg, final, expected_order, bound_deg):
    particles, volume = simulated
    config = VdamConfig(seed=1, max_healpix_order=2, max_local_order_iterations=3)
    state, truth = _state_near_truth(particles, volume, config, offset_deg=5.0, acc_rot_deg=acc_rot_deg)
    # iterations stop at order 3 (fine 3.75 deg); the final pass, which back-projects nothing, goes to order 4
    assert local_order(state, config, final=final) == expected_order
    local_index, global_index = split_local(state, torch.arange(particles.n), config)
    assert local_index.numel() == particles.n and global_index.numel() == 0
    grid, current_size, coarse_size = search_setup(state, particles, config, advance=False)
    timings: dict = {}
    sums = expectation(state, particles, torch.arange(particles.n), pseudo_halves(particles), grid, current_size, coarse_size, config, [torch.device("cpu")], timings, with_sums=not final)
    assert timings["n_local"] == particles.n
    found = euler_to_matrix(state.rot_deg, state.tilt_deg, state.psi_deg)
    errors = d2_angle_deg(truth, found)
    # the global grid's fine step is 7.5 deg (median error ~3-4 deg at best); local: 3.75 or 1.875 deg
    assert float(errors.median()) < bound_deg, errors
    assert float(errors.max()) < 7.5
    origin_error = torch.hypot(state.origin_x_a - particles.origin_x_a, state.origin_y_a - particles.origin_y_a) / particles.pixel_size_a
    assert float(origin_error.median()) < 0.5  # local translations at 0.5 px
    if final:
        assert sums is None
        return
    # the sums are those of a normal E-step: one unit of weight per particle, direction prior at the global order
    assert sums.direction_weight.shape == (1, 192)
    assert float(sums.class_weight.sum()) == pytest.approx(particles.n, rel=1e-3)  # 0.999 of each posterior kept


def test_the_final_pass_polishes_every_pose_one_order_finer(simulated, one_thread):
    """assign_all's second stage: every placed particle searched again around its first-stage pose,
    one order finer (fine step 0.94 deg) with translations at a quarter pixel: closer to the true poses;
    a second polish, around the first's posterior-mean poses, closer still."""
    particles, volume = simulated
    found = {}
    for passes in (0, 1, 2):
        config = VdamConfig(seed=1, max_healpix_order=2, final_polish_passes=passes)
        state, truth = _state_near_truth(particles, volume, config, offset_deg=5.0, acc_rot_deg=1.2)
        state.max_probability[: particles.n // 2] = 0.1  # half of them not sharp: searched globally in the first stage
        assert local_order(state, config, final=True) == 4
        assert local_order(state, polish_config(config), final=True) == 5
        timings = assign_all(state, particles, pseudo_halves(particles), config, "cpu")
        assert ("polish_seconds" in timings) == (passes > 0)
        rotations = euler_to_matrix(state.rot_deg, state.tilt_deg, state.psi_deg)
        origin_error = torch.hypot(state.origin_x_a - particles.origin_x_a, state.origin_y_a - particles.origin_y_a) / particles.pixel_size_a
        found[passes] = (d2_angle_deg(truth, rotations), origin_error)
    (angle_before, origin_before), (angle_after, origin_after), (angle_twice, origin_twice) = found[0], found[1], found[2]
    assert float(angle_after.median()) < 0.8 * float(angle_before.median())
    assert float(angle_after.median()) < 1.0
    assert float(origin_after.median()) <= float(origin_before.median())
    # median 2.31 -> 0.68 -> 0.44 deg, rms 4.0 -> 1.9 -> 1.1 deg: the first polish starts up to 5 deg off its best grid
    assert float(angle_twice.median()) < 0.85 * float(angle_after.median())
    assert float(angle_twice.square().mean()) < float(angle_after.square().mean())
    assert float(origin_twice.median()) <= 1.05 * float(origin_after.median())


def _mirror_classes_state(particles, volume, config: VdamConfig):
    """A two-class state near the true poses: class 1 the map, class 2 its mirror, every other particle
    placed in the mirror."""
    state, _ = _state_near_truth(particles, volume, config, offset_deg=2.0, acc_rot_deg=1.2)
    state.maps = torch.stack([volume, torch.flip(volume, (0,))])
    n_dir = state.direction_prior.shape[1]
    state.direction_prior = torch.full((2, n_dir), 1.0 / (2 * n_dir), dtype=torch.float64)
    state.class_fraction = torch.tensor([0.5, 0.5], dtype=torch.float64)
    state.class_number[1::2] = 2
    return state


def _polish_everyone(state, particles, polish: VdamConfig) -> None:
    grid, current_size, coarse_size = search_setup(state, particles, polish, advance=False)
    everyone = torch.arange(particles.n)
    expectation(state, particles, everyone, pseudo_halves(particles), grid, current_size, coarse_size, polish, [torch.device("cpu")], {}, with_sums=False)


def test_with_several_classes_the_polish_searches_each_particle_in_its_own_class(simulated, one_thread):
    """polish_config's local searches evaluate only the class the first stage chose (polish_in_own_class):
    particles placed in a worse class (the map's mirror) stay there, where searching every class moves
    them to the right map."""
    particles, volume = simulated
    classes = {}
    for own_class in (True, False):
        config = VdamConfig(seed=1, max_healpix_order=2, n_classes=2, polish_in_own_class=own_class)
        state = _mirror_classes_state(particles, volume, config)
        polish = polish_config(config)
        assert local_order(state, polish, final=True) > 0
        _polish_everyone(state, particles, polish)
        classes[own_class] = state.class_number.clone()
    assert torch.equal(classes[True][0::2], torch.ones(particles.n // 2, dtype=classes[True].dtype))
    assert torch.equal(classes[True][1::2], torch.full((particles.n // 2,), 2, dtype=classes[True].dtype))
    # searched over both classes, the particles placed in the mirror move to the right map
    assert float((classes[False] == 1).float().mean()) > 0.9


def test_with_several_classes_the_final_pass_keeps_sharp_particles_in_their_class(simulated, one_thread):
    """assign_all's first stage (final_local_in_own_class): a sharp particle placed in a worse class (the
    map's mirror) is searched there only, and a particle whose last posterior was broad searches
    every class globally and mostly moves to the right map; with the option off the sharp ones move too."""
    particles, volume = simulated
    classes = {}
    for own_class in (True, False):
        config = VdamConfig(seed=1, max_healpix_order=2, n_classes=2, final_local_in_own_class=own_class, polish_in_own_class=True)
        state = _mirror_classes_state(particles, volume, config)
        state.max_probability[1::4] = 0.1  # every other particle of the mirror class: broad, searched globally
        assign_all(state, particles, pseudo_halves(particles), config, "cpu")
        classes[own_class] = state.class_number.clone()
    sharp_in_mirror = torch.arange(particles.n)[3::4]
    broad_in_mirror = torch.arange(particles.n)[1::4]
    assert bool((classes[True][sharp_in_mirror] == 2).all())
    # searched globally (at the global order, where the mirror fits some of them about as well), most move
    assert float((classes[True][broad_in_mirror] == 1).float().mean()) > 0.5
    assert float((classes[False][sharp_in_mirror] == 1).float().mean()) > 0.9
    assert float((classes[True][0::2] == 1).float().mean()) > 0.9


def test_local_searches_in_the_iterations_keep_a_lesser_class_particles_cap(simulated, one_thread):
    """vdam.iterate.particle_caps holds in the local coarse pass too: with local searches in the mini-batch
    iterations, the particles last placed in a class 8 shells behind pass at most their cap, the others more."""
    particles, volume = simulated
    found = {}
    for cap in (2, 0):
        config = VdamConfig(seed=1, max_healpix_order=2, max_local_order_iterations=3, n_classes=2, lesser_class_max_significant=cap)
        state = _mirror_classes_state(particles, volume, config)
        state.acc_rot_deg = 6.0
        n_shells = state.ssnr.shape[1]
        state.ssnr = torch.stack([(torch.arange(n_shells) <= 20).double() * 4, (torch.arange(n_shells) <= 12).double() * 4])
        assert local_order(state, config) == 3
        grid, current_size, coarse_size = search_setup(state, particles, config, advance=False)
        everyone = torch.arange(particles.n)
        expectation(state, particles, everyone, pseudo_halves(particles), grid, current_size, coarse_size, config, [torch.device("cpu")], {})
        found[cap] = state.n_significant.clone()
    in_mirror = torch.arange(particles.n)[1::2]
    assert int(found[2][in_mirror].max()) <= 2 and int(found[0][in_mirror].max()) > 2


def test_the_polish_in_own_class_projects_only_its_classes_orientations_with_the_same_result(simulated, one_thread, monkeypatch):
    """With each particle searched in its own class, a chunk projects class k only where its own
    particles' candidates lie (driver._chunk_coarse): the poses and likelihoods are those of projecting
    every class at every candidate."""
    from novomap.estep import driver

    particles, volume = simulated
    config = VdamConfig(seed=1, max_healpix_order=2, n_classes=2, polish_in_own_class=True)
    full_chunk_coarse = driver._chunk_coarse
    projected = {}
    results = {}
    for restricted in (True, False):
        if not restricted:
            monkeypatch.setattr(driver, "_chunk_coarse", lambda work, grid, candidates, classes=None: full_chunk_coarse(work, grid, candidates))
        else:
            def counting(work, grid, candidates, classes=None):
                coarse, used, renumbered = full_chunk_coarse(work, grid, candidates, classes)
                projected["nonzero rows"] = projected.get("nonzero rows", 0) + int((coarse.power.sum(-1) > 0).sum())
                projected["rows"] = projected.get("rows", 0) + coarse.power.shape[0]
                return coarse, used, renumbered
            monkeypatch.setattr(driver, "_chunk_coarse", counting)
        state = _mirror_classes_state(particles, volume, config)
        polish = polish_config(config)
        _polish_everyone(state, particles, polish)
        results[restricted] = (state.rot_deg.clone(), state.tilt_deg.clone(), state.psi_deg.clone(), state.log_likelihood.clone(), state.class_number.clone())
    for restricted_value, full_value in zip(results[True], results[False]):
        assert torch.allclose(restricted_value.double(), full_value.double(), atol=1e-4)
    # fewer rows projected than every class at every candidate
    assert 0 < projected["nonzero rows"] < projected["rows"]


def test_uncertain_particles_keep_the_global_search(simulated):
    particles, volume = simulated
    config = VdamConfig(seed=1, max_healpix_order=2, local_min_pmax=0.5, max_local_order_iterations=3)
    state, _ = _state_near_truth(particles, volume, config, offset_deg=5.0, acc_rot_deg=6.0)
    state.max_probability[::2] = 0.2
    state.class_number[1::4] = 0  # never assigned
    local_index, global_index = split_local(state, torch.arange(particles.n), config)
    assert set(global_index.tolist()) == set(range(0, particles.n, 2)) | set(range(1, particles.n, 4))
    assert len(local_index) + len(global_index) == particles.n
    # before the global search reaches its finest order, or with an uncertain model: no local searches
    state.acc_rot_deg = 20.0
    assert local_order(state, config) == 0
    state.acc_rot_deg, state.healpix_order = 6.0, 1
    assert local_order(state, config) == 0
    state.healpix_order, state.iteration = 2, 20  # VDAM's initial phase: poses still move far
    assert local_order(state, config) == 0
    state.iteration = 30
    assert local_order(state, config) == 3
    assert local_order(state, VdamConfig(max_healpix_order=2)) == 0  # default: iterations stay global
    assert local_order(state, VdamConfig(max_healpix_order=2), final=True) == 3  # the final pass goes local
    # the option of searching locally at the global order itself (off by default)
    same_order = VdamConfig(max_healpix_order=2, max_local_order_iterations=2, local_same_order=True)
    assert local_order(state, same_order) == 2
    assert local_order(state, same_order, final=True) == 3
    assert local_order(state, dataclasses.replace(same_order, max_local_order_iterations=0)) == 0
    state.iteration = 20  # never in VDAM's initial phase
    assert local_order(state, same_order) == 0


def test_local_search_at_the_global_order_finds_the_poses_the_global_search_finds(simulated, one_thread):
    particles, volume = simulated
    config = VdamConfig(seed=1, max_healpix_order=2, max_local_order_iterations=2, local_same_order=True)
    state, truth = _state_near_truth(particles, volume, config, offset_deg=12.0, acc_rot_deg=7.0)
    assert local_order(state, config) == 2
    grid, current_size, coarse_size = search_setup(state, particles, config, advance=False)
    poses = {}
    for name, cfg in (("local", config), ("global", dataclasses.replace(config, local_same_order=False))):
        trial = dataclasses.replace(state, rot_deg=state.rot_deg.clone(), tilt_deg=state.tilt_deg.clone(), psi_deg=state.psi_deg.clone(),
                                    origin_x_a=state.origin_x_a.clone(), origin_y_a=state.origin_y_a.clone(), max_probability=state.max_probability.clone())
        timings: dict = {}
        sums = expectation(trial, particles, torch.arange(particles.n), pseudo_halves(particles), grid, current_size, coarse_size, cfg, [torch.device("cpu")], timings)
        assert timings["n_local"] == (particles.n if name == "local" else 0)
        assert float(sums.class_weight.sum()) == pytest.approx(particles.n, rel=1e-3)
        poses[name] = euler_to_matrix(trial.rot_deg, trial.tilt_deg, trial.psi_deg)
    # 12 deg from the truth, inside the 30 deg window: the local search lands where the global one does
    errors = {name: d2_angle_deg(truth, found) for name, found in poses.items()}
    assert float(errors["local"].median()) < 5.0, errors["local"]
    assert float(errors["local"].median()) <= float(errors["global"].median()) + 1.0
    assert float(d2_angle_deg(poses["local"], poses["global"]).median()) < 1.0


def test_starts_are_ranked_highest_score_first_earlier_start_first_on_ties():
    assert restarts.ranked_starts([-3.0, -1.0, -2.0]) == [1, 2, 0]
    assert restarts.ranked_starts([-1.0, -1.0]) == [0, 1]
    assert restarts.start_seed(VdamConfig(seed=4), 0) == 4 and restarts.start_seed(VdamConfig(seed=4), 1) != 4


def test_scoring_prefers_the_true_map_over_a_wrong_one(simulated, one_thread):
    particles, volume = simulated
    config = VdamConfig(seed=1, start_score_particles=30)
    right = initial_state(particles, config)
    right.maps = volume[None].clone()
    right.resolution_shell = 10
    wrong = initial_state(particles, config)  # random blobs of the right size
    wrong.maps = wrong.maps * float(volume.std() / wrong.maps.std())
    wrong.resolution_shell = 14
    scores = restarts.score_starts([wrong, right], particles, pseudo_halves(particles), config, "cpu")
    assert restarts.ranked_starts(scores)[0] == 1
    # scoring leaves the starts' poses untouched
    assert torch.equal(right.rot_deg, particles.rot_deg)


def test_with_a_group_the_starts_are_scored_symmetrised_about_their_own_axes(simulated, one_thread):
    """The score under a group is the C1 score of the maps imposed by symmetry.impose (each about its
    own axes), and the starts themselves keep their C1 maps."""
    from novomap.symmetry.groups import point_group
    from novomap.symmetry.impose import impose_group

    particles, volume = simulated
    config = VdamConfig(seed=1, start_score_particles=30)
    half = pseudo_halves(particles)
    starts = []
    for seed in (2, 3):
        state = initial_state(particles, dataclasses.replace(config, seed=seed))  # random blobs: not D2
        state.resolution_shell = 10
        starts.append(state)
    before = [s.maps.clone() for s in starts]
    group = point_group("D2")
    scores = restarts.score_starts(starts, particles, half, config, "cpu", group)
    assert all(torch.equal(s.maps, b) for s, b in zip(starts, before))
    imposed = []
    for state in starts:
        copy = state.scratch_copy()
        copy.maps, _ = impose_group(state.maps, group, particles.pixel_size_a)
        imposed.append(copy)
    assert scores == pytest.approx(restarts.score_starts(imposed, particles, half, config, "cpu"), abs=1e-6)
    assert scores != pytest.approx(restarts.score_starts(starts, particles, half, config, "cpu"), abs=1e-3)
    # C1 is no group
    assert restarts.score_starts(starts, particles, half, config, "cpu", point_group("C1")) == restarts.score_starts(
        starts, particles, half, config, "cpu"
    )


def test_only_the_last_round_of_the_race_scores_with_the_group(monkeypatch, simulated):
    from novomap.symmetry.groups import point_group

    particles, _ = simulated
    config = VdamConfig(seed=1, n_iter=100, n_starts=3, start_survivors=2, start_iterations=1, start_final_iterations=2,
                        initial_subset=40, local_searches=False)
    seen = []

    def record(states, particles, half, config, device, group=None, per_particle=None):
        seen.append(None if group is None else group.name)
        return [0.0] * len(states)

    monkeypatch.setattr(restarts, "score_starts", record)
    restarts.compete(initial_state(particles, config), particles, pseudo_halves(particles), config, "cpu", point_group("O"))
    assert seen == [None, "O"]
    seen.clear()
    off = dataclasses.replace(config, start_score_symmetrised=False)
    restarts.compete(initial_state(particles, off), particles, pseudo_halves(particles), off, "cpu", point_group("O"))
    assert seen == [None, None]


def test_the_race_halves_the_field_at_a_tenth_and_picks_one_at_three_tenths_of_a_long_run():
    assert restarts.competition_rounds(VdamConfig(n_iter=100, n_starts=3)) == [(10, 2), (30, 1)]
    assert restarts.competition_rounds(VdamConfig(n_iter=200, n_starts=4, start_survivors=2)) == [(20, 2), (60, 1)]
    assert restarts.competition_rounds(VdamConfig(n_iter=100, n_starts=2)) == [(30, 1)]  # nothing to halve
    assert restarts.competition_iteration(VdamConfig(n_iter=100, n_starts=3)) == 10
    assert restarts.competition_iteration(VdamConfig(n_iter=12, n_starts=3)) == 0  # short runs: one start
    assert restarts.competition_iteration(VdamConfig(n_iter=100, n_starts=1)) == 0


def test_compete_races_the_starts_and_adopts_the_winner_in_place(monkeypatch, simulated):
    """Round 1 keeps the best two of three, round 2 the best of those; the run continues at round 2's
    iteration from the winner's own state (its random start, its history)."""
    particles, _ = simulated
    config = VdamConfig(seed=1, n_iter=100, n_starts=3, start_survivors=2, start_iterations=1, start_final_iterations=2,
                        initial_subset=40, local_searches=False)
    state = initial_state(particles, config)
    state.fingerprint = {"job": "mine"}
    # round 1: start 1 best, then start 0, start 2 out; round 2: start 0 ahead of start 1
    rounds = iter([[1.0, 5.0, 0.0], [2.0, 3.0]])  # round 2 lists start 1, then start 0
    monkeypatch.setattr(restarts, "score_starts", lambda states, *a, **k: next(rounds))
    outcome = restarts.compete(state, particles, pseudo_halves(particles), config, "cpu")
    assert outcome["chosen_start"] == 0
    assert [r["starts"] for r in outcome["start_rounds"]] == [[0, 1, 2], [1, 0]]
    assert [r["iteration"] for r in outcome["start_rounds"]] == [1, 2]
    assert state.iteration == 2 and [f["iteration"] for f in state.history] == [1, 2]

    rounds = iter([[0.0, 5.0, 1.0], [1.0, 3.0]])
    monkeypatch.setattr(restarts, "score_starts", lambda states, *a, **k: next(rounds))
    state = initial_state(particles, config)
    state.fingerprint = {"job": "mine"}
    outcome = restarts.compete(state, particles, pseudo_halves(particles), config, "cpu")
    assert outcome["chosen_start"] == 2
    other = initial_state(particles, dataclasses.replace(config, seed=restarts.start_seed(config, 2), n_starts=1))
    run_iteration(other, particles, pseudo_halves(particles), dataclasses.replace(config, seed=restarts.start_seed(config, 2), n_starts=1), "cpu")
    run_iteration(other, particles, pseudo_halves(particles), dataclasses.replace(config, seed=restarts.start_seed(config, 2), n_starts=1), "cpu")
    assert torch.equal(state.maps, other.maps)  # the third start's own run to iteration 2
    assert state.fingerprint == {"job": "mine"}


def test_default_starts_keep_the_race_to_five_class_maps():
    from novomap.vdam.config import starts_for_classes

    assert [starts_for_classes(k) for k in (1, 2, 3, 4, 5, 8)] == [5, 2, 1, 1, 1, 1]
    assert VdamConfig().starts() == 5
    assert VdamConfig(n_classes=2).starts() == 2
    assert VdamConfig(n_classes=3, n_starts=4).starts() == 4  # asked for: honoured
    assert restarts.competition_rounds(VdamConfig(n_iter=100, n_classes=3)) == []  # the classes race instead
    assert restarts.competition_rounds(VdamConfig(n_iter=100, n_classes=2)) == [(30, 1)]


def test_a_start_the_sample_cannot_tell_from_the_second_goes_on_too():
    """Round 1 keeps the best two, and a third whose per-particle deficit to the second is within
    tie_z standard errors; a clear deficit, no per-particle values or tie_z 0 keep two."""
    generator = torch.Generator().manual_seed(3)
    n = 400
    base = -300.0 + torch.randn(n, generator=generator, dtype=torch.float64)

    def noise() -> torch.Tensor:  # zero mean, unit spread
        values = torch.randn(n, generator=generator, dtype=torch.float64)
        return values - values.mean()

    best, second = base + 5.0, base + noise()
    tied = second - 0.01 + noise()  # mean deficit 0.01 against a standard error of about 0.05
    behind = second - 3.0 + noise()  # about 60 standard errors behind
    per_particle = [behind, tied, best, second]
    scores = [float(v.mean()) for v in per_particle]
    assert restarts.ranked_starts(scores)[:2] == [2, 3]
    assert restarts.survivors_with_ties(scores, per_particle, 2, 1.0) == [2, 3, 1]
    assert restarts.survivors_with_ties(scores, per_particle, 2, 0.0) == [2, 3]
    assert restarts.survivors_with_ties(scores, [], 2, 1.0) == [2, 3]
    clear = [behind, second - 0.5 + 0.01 * noise(), best, second]  # 0.5 behind with a standard error of ~0.05
    assert restarts.survivors_with_ties([float(v.mean()) for v in clear], clear, 2, 1.0) == [2, 3]


def test_compete_carries_a_tied_start_into_the_last_round(monkeypatch, simulated):
    """Start 0 ties with the second of round 1 (start 1): all three reach round 2, which picks start 0."""
    particles, _ = simulated
    config = VdamConfig(seed=1, n_iter=100, n_starts=3, start_survivors=2, start_iterations=1, start_final_iterations=2,
                        initial_subset=40, local_searches=False)
    ones = torch.ones(50, dtype=torch.float64)
    wiggle = torch.linspace(-1, 1, 50, dtype=torch.float64)
    rounds = iter([[ones * -2.01 + wiggle, ones * -2.0, ones * 0.0], [ones * 1.0, ones * 0.0, ones * 5.0]])

    def scores(states, particles, half, config, device, group=None, per_particle=None):
        values = next(rounds)[: len(states)]
        if per_particle is not None:
            per_particle.extend(values)
        return [float(v.mean()) for v in values]

    monkeypatch.setattr(restarts, "score_starts", scores)
    outcome = restarts.compete(initial_state(particles, config), particles, pseudo_halves(particles), config, "cpu")
    assert [r["starts"] for r in outcome["start_rounds"]] == [[0, 1, 2], [2, 1, 0]]
    assert outcome["chosen_start"] == 0
