"""vdam.convergence: a run goes on past --iter while its map still changes, and only then."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from novomap.demo_data import load_demo_map
from novomap.initial_model import run_initial_model
from novomap.vdam.imposition import imposing_due
from novomap.physics.fourier import centred_radius
from novomap.simulate import SimulationOptions, simulate
from novomap.vdam import convergence
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState

pytestmark = pytest.mark.usefixtures("one_thread")


def _low_passed_noise(n: int, cutoff_shell: float, seed: int) -> torch.Tensor:
    noise = torch.randn((n, n, n), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    spectrum = torch.fft.fftshift(torch.fft.fftn(noise))
    spectrum[centred_radius(n) > cutoff_shell] = 0
    return torch.fft.ifftn(torch.fft.ifftshift(spectrum)).real


def _state(maps: torch.Tensor, iteration: int, shell: int) -> RunState:
    """A RunState with only what vdam.convergence reads filled in."""
    k = maps.shape[0]
    empty = torch.zeros(0)
    return RunState(
        iteration=iteration, maps=maps, moment1=empty, moment2=empty, sigma2=empty,
        class_fraction=torch.full((k,), 1.0 / k, dtype=torch.float64), direction_prior=empty, sigma_offset_a=10.0,
        resolution_shell=shell, healpix_order=1, offset_range_px=6.0, offset_step_px=2.0, perturbation=0.0,
        rng_state=torch.Generator().get_state(), rot_deg=empty, tilt_deg=empty, psi_deg=empty, origin_x_a=empty,
        origin_y_a=empty, class_number=empty.long(), max_probability=empty, n_significant=empty.long(),
        log_likelihood=empty, tau2=empty, ssnr=empty,
    )  # fmt: skip


def test_map_change_is_one_for_the_same_map_and_falls_with_an_independent_change():
    signal = _low_passed_noise(32, 8, seed=1)[None]
    change = _low_passed_noise(32, 8, seed=2)[None]
    fractions = torch.tensor([1.0], dtype=torch.float64)
    assert convergence.map_change(signal, signal.clone(), 8, fractions) == pytest.approx(1.0, abs=1e-9)
    # equal power of signal and an independent change: FSC = 1/sqrt(2) in every shell
    assert convergence.map_change(signal, signal + change, 8, fractions) == pytest.approx(2**-0.5, abs=0.03)
    assert abs(convergence.map_change(signal, change, 8, fractions)) < 0.15  # few voxels in the lowest shells


def test_map_change_weights_classes_by_their_fractions():
    a = _low_passed_noise(24, 6, seed=3)
    b = _low_passed_noise(24, 6, seed=4)
    before = torch.stack([a, a])
    after = torch.stack([a, b])  # class 1 unchanged, class 2 replaced
    assert convergence.map_change(before, after, 6, torch.tensor([0.9, 0.1], dtype=torch.float64)) == pytest.approx(0.9, abs=0.02)
    assert convergence.map_change(before, after, 6, torch.tensor([0.5, 0.5], dtype=torch.float64)) == pytest.approx(0.5, abs=0.03)


def _decide(state: RunState, config: VdamConfig) -> int:
    """What run_initial_model does at a check: the agreement, then the last iteration from it."""
    return convergence.last_iteration(state, config, convergence.map_agreement(state, config))


def test_last_iteration_extends_only_an_unsettled_run_and_stops_at_the_cap():
    config = VdamConfig(n_iter=40, max_extra_iterations=20)
    settled = _low_passed_noise(24, 6, seed=5)[None]
    moved = settled + 2.0 * _low_passed_noise(24, 6, seed=6)[None]
    state = _state(settled, iteration=20, shell=6)
    convergence.keep_snapshot(state, config)  # iteration 20 = n_iter - lag
    state.iteration, state.maps = 40, moved
    convergence.keep_snapshot(state, config)
    assert sorted(state.map_snapshots) == [20, 40]
    assert convergence.map_agreement(state, config) < 0.5
    assert _decide(state, config) == 50  # 10 more
    state.iteration = 60  # at the cap (n_iter + 20)
    state.map_snapshots[40] = moved.float()
    state.maps = moved + 3.0 * _low_passed_noise(24, 6, seed=7)[None]
    assert _decide(state, config) == 60
    # the same unsettled maps with the extension switched off, or before n_iter
    assert _decide(_with(state, 40), dataclasses.replace(config, max_extra_iterations=0)) == 40
    assert _decide(_with(state, 30), config) == 40


def test_a_map_seen_moving_must_pass_two_checks_in_a_row():
    config = VdamConfig(n_iter=40, max_extra_iterations=60)
    volume = _low_passed_noise(24, 6, seed=10)[None]
    state = _state(volume, iteration=60, shell=6)
    state.map_snapshots[40] = (volume + 0.05 * _low_passed_noise(24, 6, seed=11)[None]).float()
    assert convergence.map_agreement(state, config) > 0.99
    # it moved at the check before (iteration 50): one pass is not enough
    state.history = [{"iteration": 40, "map_agreement": 0.6}, {"iteration": 50, "map_agreement": 0.9}, {"iteration": 60}]
    assert _decide(state, config) == 70
    # passed at the check before too: settled
    state.history[1]["map_agreement"] = 0.97
    assert _decide(state, config) == 60
    # the same maps with no check before (a run continued from a checkpoint without one): settled at once
    state.iteration, state.history = 40, [{"iteration": 40}]
    state.map_snapshots = {20: state.map_snapshots[40]}
    assert _decide(state, config) == 40


def _with(state: RunState, iteration: int) -> RunState:
    copy = dataclasses.replace(state, iteration=iteration)
    copy.map_snapshots = {iteration - 20: state.map_snapshots[40]}
    return copy


def test_a_settled_run_or_one_without_the_earlier_snapshot_stops_at_n_iter():
    config = VdamConfig(n_iter=40)
    volume = _low_passed_noise(24, 6, seed=8)[None]
    state = _state(volume, iteration=40, shell=6)
    assert _decide(state, config) == 40  # no snapshot of iteration 20
    state.map_snapshots[20] = (volume + 0.05 * _low_passed_noise(24, 6, seed=9)[None]).float()
    assert convergence.map_agreement(state, config) > 0.99
    assert _decide(state, config) == 40


def test_agreement_is_measured_over_the_shells_the_earlier_map_had_reached():
    """A map that only gained shells past the earlier snapshot's resolution (its window grew) has
    settled; one that changed below that resolution has not."""
    config = VdamConfig(n_iter=40)
    earlier = _low_passed_noise(24, 4.5, seed=8)[None]
    finer = earlier + _low_passed_noise(24, 10, seed=9)[None] - _low_passed_noise(24, 4.5, seed=9)[None]
    state = _state(finer, iteration=40, shell=10)
    state.map_snapshots[20], state.snapshot_shells[20] = earlier.float(), 4
    assert convergence.map_agreement(state, config) > 0.99
    state.snapshot_shells.clear()  # a checkpoint from before snapshot_shells: the current shell
    assert convergence.map_agreement(state, config) < 0.8
    moved = _state(_low_passed_noise(24, 10, seed=10)[None], iteration=40, shell=10)
    moved.map_snapshots[20], moved.snapshot_shells[20] = earlier.float(), 4
    assert convergence.map_agreement(moved, config) < 0.3


def test_snapshots_fall_where_the_comparisons_need_them_and_old_ones_are_dropped():
    config = VdamConfig(n_iter=55)  # not a multiple of 10: comparisons at 55, 65, ... against 35, 45, ...
    state = _state(torch.zeros((1, 8, 8, 8), dtype=torch.float64), iteration=0, shell=2)
    for iteration in range(1, 76):
        state.iteration = iteration
        convergence.keep_snapshot(state, config)
    assert sorted(state.map_snapshots) == [55, 65, 75]
    assert sorted(state.snapshot_shells) == [55, 65, 75]


def test_symmetry_is_imposed_except_where_convergence_compares_maps_or_the_run_may_stop():
    config = VdamConfig(n_iter=100)  # initial phase 30, imposed every 5; comparisons 90 vs 70, 100 vs 80, ...
    assert [i for i in range(30, 131) if imposing_due(i, config)] == [35, 40, 45, 50, 55, 60, 65, 75, 85, 95, 105, 115, 125]
    without = dataclasses.replace(config, convergence_check_every=0)  # RELION's stop at n_iter: every 5 up to it
    assert [i for i in range(30, 131) if imposing_due(i, without)] == list(range(35, 100, 5))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    volume, pixel = load_demo_map()
    out = tmp_path_factory.mktemp("conv_sim")
    return simulate(volume, out, SimulationOptions(n=100, snr=1.0, seed=3, box=64, pixel_size_a=pixel)).star_path


@pytest.mark.parametrize("min_agreement, last", [(1.01, 5), (0.0, 3)])
def test_a_job_goes_on_past_iter_while_its_map_moves(small_dataset, tmp_path, min_agreement, last):
    """A threshold no map can meet keeps the job going to the cap; one every map meets stops it at --iter."""
    config = VdamConfig(
        n_iter=3, particle_diameter_a=200.0, n_starts=1, seed=2, convergence_check_every=1, convergence_lag=1,
        convergence_min_fsc=min_agreement, max_extra_iterations=2,
        retries=0,  # a 3-iteration map settles by these settings and is poor: flagged, it would be run again
    )  # fmt: skip
    seen: list[dict] = []
    result = run_initial_model(small_dataset, tmp_path / "job", config, symmetry="C1", progress=seen.append)
    assert result.state.iteration == last
    assert [f["iteration"] for f in seen] == list(range(1, last + 1))
    assert (tmp_path / "job" / f"run_it{last:03d}_class001.mrc").is_file()
    assert (tmp_path / "job" / "initial_model.mrc").is_file()
    # every check from n_iter on reports the agreement and what it decided
    checks = [f for f in seen if "more_iterations" in f]
    assert [f["iteration"] for f in checks] == list(range(3, last + 1))
    assert checks[-1]["more_iterations"] == 0
    assert all(f["map_agreement"] is not None and 0.0 < f["map_agreement"] <= 1.0 for f in checks)
    # the check before n_iter records its agreement and decides nothing; the one at n_iter is judged with it
    early = seen[1]
    assert early["iteration"] == 2 and 0.0 < early["map_agreement"] <= 1.0 and "more_iterations" not in early
    assert checks[0]["map_agreement_before"] == early["map_agreement"]


def test_the_command_says_why_it_goes_on_and_the_evidence_reports_it(small_dataset, tmp_path, monkeypatch):
    """`novomap initial-model` with a bar no map meets: run.out names each extension, the last
    iteration's files are the job's outputs, and evidence.json has the agreement and the warning."""
    import json

    import novomap.vdam.config
    from novomap.commands.main import main

    @dataclasses.dataclass(frozen=True)
    class Restless(VdamConfig):
        convergence_check_every: int = 1
        convergence_lag: int = 1
        convergence_min_fsc: float = 1.01

    monkeypatch.setattr(novomap.vdam.config, "VdamConfig", Restless)
    out = tmp_path / "job"
    args = ["initial-model", "--i", str(small_dataset), "--o", str(out), "--iter", "3", "--max-extra-iter", "2",
            "--particle-diameter", "200", "--j", "1", "--seed", "2", "--starts", "1", "--quiet", "--no-report",
            "--retries", "0"]  # fmt: skip  (unsettled at the cap it would run again: initial_model.race_undecided)
    assert main(args) == 0
    run_out = (out / "run.out").read_text()
    assert run_out.count("the map is still changing") == 2 and "): 1 more iteration\n" in run_out
    assert "iter    5/5" in run_out
    nodes = (out / "RELION_OUTPUT_NODES.star").read_text()
    assert "run_it005_data.star" in nodes and "run_it003_data.star" not in nodes
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["extra_iterations"] == 2 and evidence["map_agreement"] < 1.01
    assert any("still changing" in reason for reason in evidence["warnings"])
    assert "2 iterations past --iter (the most allowed)" in run_out


def test_several_classes_stop_at_iter_unless_asked():
    # class maps of a K-class run move more between iterations (a right two-complex run agreed
    # 0.66-0.85 and ran to the cap), so the check only extends one-class runs by default
    assert VdamConfig(n_iter=100).extra_iterations_cap() == 100
    assert VdamConfig(n_iter=100, n_classes=2).extra_iterations_cap() == 0
    assert VdamConfig(n_iter=100, n_classes=3, max_extra_iterations=30).extra_iterations_cap() == 30
    assert VdamConfig(n_iter=100, max_extra_iterations=0).extra_iterations_cap() == 0


def test_run_out_says_whether_the_map_still_changes_or_is_being_confirmed():
    from novomap.commands.initial_model import _still_moving_line

    config = VdamConfig(n_iter=100)
    moving = _still_moving_line({"iteration": 110, "map_agreement": 0.924}, 10, config)
    assert moving == "the map is still changing (agreement with iteration 90: 0.924 < 0.95): 10 more iterations"
    confirming = _still_moving_line({"iteration": 130, "map_agreement": 0.952}, 10, config)
    assert "agreement with iteration 110: 0.952 >= 0.95" in confirming and confirming.endswith("10 more iterations to confirm")


def test_run_out_says_why_a_c1_run_whose_map_looks_symmetric_stops_at_iter():
    from novomap.commands.initial_model import _stopped_as_symmetric_line

    line = _stopped_as_symmetric_line({"iteration": 100, "map_agreement": 0.728, "c1_map_looks": "D2"}, VdamConfig(n_iter=100))
    assert line.startswith("the map is still changing (agreement with iteration 80: 0.728 < 0.95), but it looks D2-symmetric")
    assert "the run stops at --iter" in line and line.endswith("(--sym D2 or --sym auto if the particle is D2)")


def test_a_regime_change_restarts_the_settling_test():
    """`--sym auto` imposing its group mid-run (auto_symmetry.group_mid_run): the checks before it compared
    C1 maps, so they neither confirm nor veto the next one, and the first new check comes a lag later."""
    config = VdamConfig(n_iter=40, max_extra_iterations=60)
    volume = _low_passed_noise(24, 6, seed=12)[None]
    state = _state(volume, iteration=40, shell=6)
    for iteration in (20, 30, 40):
        state.map_snapshots[iteration], state.snapshot_shells[iteration] = volume.float(), 6
    figures = {"iteration": 40, "map_agreement": 0.6}
    state.history = [{"iteration": 30, "map_agreement": 0.7}, figures]
    assert convergence.restart_settling(state, config, figures) == 60  # lag 20 on
    assert sorted(state.map_snapshots) == [40] and sorted(state.snapshot_shells) == [40]
    assert convergence.previous_agreement(state.history, 60) is None  # the failing 0.6 and 0.7 no longer count
    state.history.append({"iteration": 50, "map_agreement": 0.9})
    assert convergence.previous_agreement(state.history, 60) == 0.9  # checks after the restart do
    near_cap = VdamConfig(n_iter=40, max_extra_iterations=10)
    assert convergence.restart_settling(state, near_cap, {"iteration": 40}) == 50


def test_sym_auto_imposes_a_group_chosen_mid_run_and_keeps_it(small_dataset, tmp_path, monkeypatch):
    """A `--sym auto` run that a check sends on past --iter (no choice at 70 % of the run: auto_symmetry_at
    0): the particles choose at that check (here made to choose D2), the group is imposed from there, the
    settling test starts again, the group is not checked again at the end (chosen from --iter on), and
    symmetry.txt and a continued run keep the decision."""
    import novomap.auto_symmetry
    import novomap.initial_model
    from novomap.symmetry.groups import point_group

    real_choice = novomap.initial_model.choose_group_by_particles
    calls: list[int] = []

    def choose_d2(volume, state, *args, at_least=None, **kwargs):
        calls.append(state.iteration if at_least is None else f"end check at {state.iteration}, at least {at_least.name}")
        kwargs["at_least"] = at_least
        choice = real_choice(volume, state, *args, **kwargs)
        return dataclasses.replace(choice, group=point_group("D2"), scores=[("D2", 1.0), ("C1", 0.0)], alignment=None)

    for module in (novomap.initial_model, novomap.auto_symmetry):  # the end choice and the choices during the run
        monkeypatch.setattr(module, "choose_group_by_particles", choose_d2)
    config = VdamConfig(
        n_iter=3, particle_diameter_a=200.0, n_starts=1, seed=2, convergence_check_every=1, convergence_lag=1,
        convergence_min_fsc=1.01, max_extra_iterations=3, retries=0, auto_symmetry_at=0,
    )  # fmt: skip
    seen: list[dict] = []
    result = run_initial_model(small_dataset, tmp_path / "job", config, symmetry="auto", progress=seen.append)
    # chosen at --iter on a C1 map: checked against larger groups on its own map at the end
    assert calls == [3, "end check at 6, at least D2"] and result.symmetry == "D2"
    decided = next(f for f in seen if f["iteration"] == 3)
    assert decided["auto_symmetry"] == "D2" and decided["settling_restarted"] and decided["more_iterations"] == 1
    assert decided["timings"]["auto_symmetry"] > 0  # the choice's seconds, beside the iteration's phases
    assert result.state.iteration == 6  # never settled (a bar no map meets): to the cap
    assert result.symmetry_record["chosen_at_iteration"] == 3 and result.symmetry_record["applied"] == "D2"
    text = (tmp_path / "job" / "symmetry.txt").read_text()
    assert "D2 detected (--sym auto) at iteration 3, imposed from there" in text and "poses of iteration 3" in text
    assert RunState.load(tmp_path / "job" / "run_it006_state.pt").auto_symmetry["applied"] == "D2"

    again = run_initial_model(
        small_dataset, tmp_path / "continued", dataclasses.replace(config, max_extra_iterations=4), symmetry="auto",
        continue_from=tmp_path / "job" / "run_it006_optimiser.star",
    )  # fmt: skip
    assert [c for c in calls if not isinstance(c, str)] == [3] and again.symmetry == "D2" and again.symmetry_record["chosen_at_iteration"] == 3


@pytest.mark.parametrize(
    "answers, settles, calls, applied",
    [
        (["D2", "D2"], True, [(7, None), (10, "D2")], "D2"),  # imposed at 7, kept at the end check
        (["D2", "D4"], True, [(7, None), (10, "D2")], "D4"),  # imposed at 7, a larger group wins at the end
        (["C1", "C1"], True, [(7, None), (10, None)], "C1"),  # C1 at 7: chosen again on the final reconstruction
        (["C1", "D2", "D2"], False, [(7, None), (10, None), (12, "D2")], "D2"),  # again at --iter, unsettled: D2 from there, checked at the end
        (["C1", "C1", "C1"], False, [(7, None), (10, None), (12, None)], "C1"),  # not again at later checks
        (["D2", "D4", "D4"], False, [(7, None), (10, "D2"), (12, "D4")], "D4"),  # unsettled in D2 at --iter: enlarged there, checked at the end
        (["D2", "D2"], False, [(7, None), (10, "D2")], "D2"),  # unsettled in D2, kept there: that check stands at the end
    ],
)  # fmt: skip
def test_sym_auto_chooses_at_70_percent_of_the_run(small_dataset, tmp_path, monkeypatch, answers, settles, calls, applied):
    """`--sym auto` (config.auto_symmetry_at 70): the particles choose at iteration 7 of 10 (here made to
    give `answers` in turn). A group is imposed from there and checked at the end only against larger
    groups containing it (at_least), unless a check at --iter kept it; C1 keeps the run in C1, and the
    particles choose once more at the check that sends it on past --iter, or on the final reconstruction,
    but never twice past --iter. A group chosen or enlarged at --iter is checked at the end."""
    import novomap.auto_symmetry
    import novomap.initial_model
    from novomap.symmetry.groups import point_group

    real_choice = novomap.initial_model.choose_group_by_particles
    given = iter(answers)
    seen_calls: list[tuple[int, str | None]] = []

    def choose(volume, state, *args, at_least=None, **kwargs):
        seen_calls.append((state.iteration, None if at_least is None else at_least.name))
        name = next(given)
        choice = real_choice(volume, state, *args, at_least=at_least, **kwargs)
        return dataclasses.replace(choice, group=point_group(name), scores=[(name, 1.0)], alignment=None, unjudged="")

    for module in (novomap.initial_model, novomap.auto_symmetry):  # the end choice and the choices during the run
        monkeypatch.setattr(module, "choose_group_by_particles", choose)
    config = VdamConfig(
        n_iter=10, particle_diameter_a=200.0, n_starts=1, seed=2, convergence_check_every=1, convergence_lag=1,
        convergence_min_fsc=0.0 if settles else 1.01, max_extra_iterations=2, retries=0,
    )  # fmt: skip
    seen: list[dict] = []
    result = run_initial_model(small_dataset, tmp_path / "job", config, symmetry="auto", progress=seen.append)
    assert seen_calls == calls and result.symmetry == applied
    assert next(f for f in seen if f["iteration"] == 7)["auto_symmetry"] == answers[0]
    mid_run = [f["iteration"] for f in seen if f.get("auto_symmetry")]
    assert mid_run == [7] + ([10] if not settles else [])
    line = next(line for line in (tmp_path / "job" / "symmetry.txt").read_text().splitlines() if line.startswith("symmetry: "))
    if not settles and answers[0] == "D2":
        at_10 = next(f for f in seen if f["iteration"] == 10)
        assert at_10["auto_symmetry_from"] == "D2" and at_10["auto_symmetry"] == answers[1]
        if applied == "D4":
            assert at_10["settling_restarted"] and result.symmetry_record["chosen_at_iteration"] == 10
            assert "at iteration 10, imposed from there (D2 from iteration 7)" in line
            assert "larger_groups_check" in result.symmetry_record and "at the end the particles kept D4" in line
        else:
            assert "settling_restarted" not in at_10 and result.symmetry_record["chosen_at_iteration"] == 7
            assert result.symmetry_record["checked_at_iteration"] == 10 and "; at iteration 10 the particles kept D2" in line
        return
    if answers[:2] == ["D2", "D4"]:
        assert result.symmetry_record["enlarged_from"] == "D2" and result.symmetry_record["enlarged_from_iteration"] == 7
        assert "(D2 imposed from iteration 7, D4 at the end)" in line
    elif applied != "C1" and answers[0] == "C1":  # chosen at --iter on a C1 map: checked at the end in its group
        assert result.symmetry_record["chosen_at_iteration"] == 10 and "larger_groups_check" in result.symmetry_record
        assert f"at iteration 10, imposed from there: {result.symmetry_record['reason']}" in line and "at the end the particles kept D2" in line
    elif applied != "C1":  # chosen at 7, the run settled: checked at the end
        assert result.symmetry_record["chosen_at_iteration"] == 7 and "larger_groups_check" in result.symmetry_record
        assert "at iteration 7, imposed from there" in line and "at the end the particles kept D2" in line


@pytest.mark.parametrize("min_agreement, hinted", [(1.01, True), (0.0, False)])
def test_a_c1_run_that_did_not_settle_is_told_what_its_map_looks_like(small_dataset, tmp_path, monkeypatch, min_agreement, hinted):
    """Only a C1 run still changing at its end runs the map-only detection (here made to find D2), and its
    evidence warning then suggests the group; a settled run does not pay for the detection."""
    import novomap.initial_model

    looked: list[int] = []
    monkeypatch.setattr(novomap.initial_model, "c1_map_looks", lambda volume, pixel_size_a: looked.append(1) or "D2")
    config = VdamConfig(
        n_iter=3, particle_diameter_a=200.0, n_starts=1, seed=2, convergence_check_every=1, convergence_lag=1,
        convergence_min_fsc=min_agreement, max_extra_iterations=1, retries=0,
    )  # fmt: skip
    result = run_initial_model(small_dataset, tmp_path / "job", config, symmetry="C1")
    assert bool(looked) == hinted and result.evidence.c1_map_looks == ("D2" if hinted else None)
    assert any("looks D2-symmetric" in reason for reason in result.evidence.warnings) == hinted


@pytest.mark.parametrize("looks", ["D2", None])
def test_an_unsettled_c1_run_whose_map_looks_symmetric_stops_at_iter(small_dataset, tmp_path, monkeypatch, looks):
    """initial_model.stops_as_symmetric: at --iter a one-class C1 run that would go on is checked once by the
    map-only detection (here made to answer); a symmetric-looking map stops there, and its evidence and
    run.out say why, reusing that answer; an asymmetric one goes on to the cap as before."""
    import novomap.initial_model

    looked: list[int] = []
    monkeypatch.setattr(novomap.initial_model, "c1_map_looks", lambda volume, pixel_size_a: looked.append(volume.shape[-1]) or looks)
    config = VdamConfig(
        n_iter=3, particle_diameter_a=200.0, n_starts=1, seed=2, convergence_check_every=1, convergence_lag=1,
        convergence_min_fsc=1.01, retries=0,
    )  # fmt: skip
    seen: list[dict] = []
    result = run_initial_model(small_dataset, tmp_path / "job", config, symmetry="C1", progress=seen.append)
    at_iter = next(f for f in seen if f["iteration"] == 3)
    assert at_iter.get("c1_map_looks") == looks
    if looks:
        assert result.state.iteration == 3 and at_iter["more_iterations"] == 0
        assert len(looked) == 1  # the evidence reuses the answer given at --iter
        assert result.evidence.stopped_as_symmetric and result.evidence.c1_map_looks == "D2"
        assert any("stopped at --iter" in reason and "looks D2-symmetric" in reason for reason in result.evidence.warnings)
    else:
        assert result.state.iteration == 6 and at_iter["more_iterations"] == 1  # on to the cap (n_iter more)
        assert len(looked) == 2 and not result.evidence.stopped_as_symmetric  # at --iter, and on the final map
        assert not any("stopped at --iter" in reason for reason in result.evidence.warnings)


def test_stops_as_symmetric_only_judges_one_class_runs_asked_in_c1_without_extra_iterations_asked():
    """At --iter, only a one-class run asked in C1 (not --sym auto, not with --max-extra-iter) asks the
    map-only detection, on its VDAM map: D2 for a D2 map in any orientation, nothing for an asymmetric one."""
    import novomap.initial_model as job
    from _synthetic_maps import PIXEL_SIZE_A, add_noise, blob_map, random_rotation
    from novomap.maps.transform import rotate_volume
    from novomap.symmetry.groups import point_group

    state = _state(add_noise(rotate_volume(blob_map("D2"), random_rotation(5)), 0.1, seed=1)[None], iteration=100, shell=6)
    c1, d2 = point_group("C1"), point_group("D2")
    default = VdamConfig(n_iter=100)
    assert job.stops_as_symmetric(state, default, c1, PIXEL_SIZE_A) == "D2"
    assert job.stops_as_symmetric(state, default, None, PIXEL_SIZE_A) is None  # --sym auto: group_mid_run decides
    assert job.stops_as_symmetric(state, default, d2, PIXEL_SIZE_A) is None
    assert job.stops_as_symmetric(state, VdamConfig(n_iter=100, n_classes=2), c1, PIXEL_SIZE_A) is None
    assert job.stops_as_symmetric(state, VdamConfig(n_iter=100, max_extra_iterations=50), c1, PIXEL_SIZE_A) is None
    state.maps = add_noise(blob_map("C1"), 0.1, seed=1)[None]
    assert job.stops_as_symmetric(state, default, c1, PIXEL_SIZE_A) is None
