"""Progress of a running job: live display on a terminal, plain lines otherwise, everything in run.out."""

from __future__ import annotations

import dataclasses
import io

import pytest
from test_pipeline import N_ITER, N_PARTICLES, small_job

from novomap.outputs.progress import FINAL_PASS_COST, ProgressDisplay, RunLog, batch_plan, format_duration, iteration_line
from novomap.vdam import schedules
from novomap.vdam.config import VdamConfig


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def figures(iteration: int, batch: int = 100, seconds: float = 1.0) -> dict:
    return {
        "iteration": iteration,
        "batch_size": batch,
        "step_size": 0.9,
        "tau2_fudge": 1.0,
        "current_size": 32,
        "coarse_size": 24,
        "resolution_a": 25.5,
        "healpix_order": 1,
        "fine_step_deg": 15.0,
        "acc_rot_deg": 12.0,
        "acc_trans_a": 3.0,
        "log_likelihood": -1234.5,
        "average_pmax": 0.42,
        "class_fraction": [0.7, 0.3],
        "sigma_offset_a": 8.0,
        "seconds": seconds,
        "timings": {"coarse": 0.5, "mstep": 0.1},
    }


def test_plain_lines_on_a_pipe_and_in_run_out(tmp_path):
    terminal = io.StringIO()
    log = RunLog(tmp_path, terminal=terminal, errors=io.StringIO())
    with ProgressDisplay(log, n_iter=4, planned_batches=[100] * 4, final_pass_particles=400) as display:
        assert display.mode == "plain"
        for i in range(1, 3):
            display.update(figures(i))
        display.stage("final pass")
    log.close()
    lines = terminal.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("iter    1/4 | res  25.5 Å | batch   100 | step 0.90 | T 1.00 | sampling 15.00°")
    assert lines[1].endswith("ETA 14s")  # (1 iteration + 400-particle final pass x FINAL_PASS_COST 3) x 0.01 s per particle
    assert (tmp_path / "run.out").read_text().splitlines() == lines


def test_quiet_shows_only_the_summary_but_run_out_keeps_everything(tmp_path):
    terminal = io.StringIO()
    log = RunLog(tmp_path, quiet=True, terminal=terminal, errors=io.StringIO())
    with ProgressDisplay(log, n_iter=2) as display:
        display.update(figures(1))
        display.message("hello")
    log.summary("initial model: x.mrc")
    log.close()
    assert terminal.getvalue() == "initial model: x.mrc\n"
    run_out = (tmp_path / "run.out").read_text()
    assert "iter    1/2" in run_out and "hello" in run_out and "initial model: x.mrc" in run_out


def test_live_display_on_a_terminal(tmp_path):
    terminal = FakeTerminal()
    log = RunLog(tmp_path, terminal=terminal, errors=io.StringIO())
    with ProgressDisplay(log, n_iter=3, planned_batches=[100] * 3, final_pass_particles=300) as display:
        assert display.mode == "live"
        display.update(figures(1))
        display.update(figures(2))
        display.message("wrote something")
    log.close()
    shown = terminal.getvalue()
    for text in ("iter", "2/3", "ETA", "res 25.5 Å", "batch 100", "step 0.90", "sampling 15.00°", "wrote something", "done"):
        assert text in shown, text
    run_out = (tmp_path / "run.out").read_text()
    assert "\x1b[" not in run_out  # no terminal codes in the log file
    assert "iter    2/3" in run_out and "wrote something" in run_out


def test_verbose_lines_have_the_details():
    line = iteration_line(figures(7), 10, eta="1m00s", verbose=True)
    for text in ("logL -1234", "acc rot 12.0°", "classes 0.70,0.30", "coarse 0.50s", "ETA 1m00s"):
        assert text in line


def test_eta_counts_particles_not_iterations(tmp_path):
    log = RunLog(None, terminal=io.StringIO(), errors=io.StringIO())
    display = ProgressDisplay(log, n_iter=4, planned_batches=[100, 100, 200, 200], final_pass_particles=1000, mode="plain")
    display.update(figures(1, batch=100, seconds=1.0))  # 0.01 s per particle
    assert display.eta_seconds(1) == pytest.approx((100 + 200 + 200 + FINAL_PASS_COST * 1000) * 0.01)
    display = ProgressDisplay(log, n_iter=4, mode="plain")  # no plan: seconds per iteration
    display.update(figures(1, seconds=2.0))
    assert display.eta_seconds(1) == pytest.approx(6.0)


def test_a_run_going_on_past_iter_extends_the_plan_and_the_eta():
    """vdam.convergence: 2 more iterations at the last mini-batch size, and the lines count to the new end."""
    terminal = io.StringIO()
    log = RunLog(None, terminal=terminal, errors=io.StringIO())
    display = ProgressDisplay(log, n_iter=4, planned_batches=[100, 100, 200, 200], final_pass_particles=1000, mode="plain")
    display.update(figures(4, batch=200, seconds=2.0))  # 0.01 s per particle
    assert display.eta_seconds(4) == pytest.approx(FINAL_PASS_COST * 1000 * 0.01)
    display.extend(6)
    assert display.planned == [100, 100, 200, 200, 200, 200]
    assert display.eta_seconds(4) == pytest.approx((200 + 200 + FINAL_PASS_COST * 1000) * 0.01)
    display.update(figures(5, batch=200, seconds=2.0))
    assert "iter    5/6" in terminal.getvalue()
    display.extend(5)  # never shortens the run
    assert display.n_iter == 6


def test_batch_plan_follows_the_schedule():
    config = VdamConfig(n_iter=100, n_starts=1)
    plan = batch_plan(config, 100_000)
    initial, final = schedules.default_subset_sizes(100_000)
    assert len(plan) == 100 and plan[0] == initial == 500 and plan[-1] == final == 10_000
    assert plan == sorted(plan)
    capped = VdamConfig(n_iter=100, n_starts=1, final_subset_max_fraction=1 / 3)
    small = batch_plan(capped, 1_455)  # the final size capped at a third of a small data set, as run_iteration does
    assert small[0] == 200 and small[-1] == 485
    assert batch_plan(config, 1_455)[-1] == 728  # by default at most half the data set (RELION's 1,000 otherwise)
    assert batch_plan(dataclasses.replace(config, final_subset_max_fraction=0.0), 1_455)[-1] == 1000  # no cap: RELION's


def test_batch_plan_counts_the_race_of_starts_at_its_first_round():
    """5 starts: 4 others run iterations 1-10, 1 other runs 11-30; 5 + 2 scorings of 300 particles."""
    single = batch_plan(VdamConfig(n_iter=100, n_starts=1), 2000)
    raced = batch_plan(VdamConfig(n_iter=100, n_starts=5, start_survivors=2), 2000)
    extra = 4 * sum(single[:10]) + 1 * sum(single[10:30]) + (5 + 2) * 300
    assert raced[9] == single[9] + extra
    assert raced[:9] == single[:9] and raced[10:] == single[10:]


def test_format_duration():
    assert [format_duration(s) for s in (5, 65, 3725, float("nan"), None)] == ["5s", "1m05s", "1h02m", "?", "?"]


def test_run_log_does_not_double_lines_when_relion_redirects_stdout_to_run_out(tmp_path):
    with open(tmp_path / "run.out", "a") as stdout, open(tmp_path / "run.err", "a") as stderr:
        log = RunLog(tmp_path, terminal=stdout, errors=stderr)
        log.info("one line")
        log.error("one error", to_stderr=True)
        log.close()
    assert (tmp_path / "run.out").read_text() == "one line\n"
    assert (tmp_path / "run.err").read_text() == "one error\n"


def test_the_short_job_logged_every_iteration(tmp_path_factory):
    job = small_job(tmp_path_factory)
    run_out = (job["dir"] / "run.out").read_text().splitlines()
    iterations = [line for line in run_out if line.startswith("iter ")]
    assert len(iterations) == N_ITER
    for line in iterations:
        for text in ("res ", "batch   150", "step ", "sampling ", "ETA "):
            assert text in line
    assert any(line.startswith(f"novomap initial-model: {N_PARTICLES} particles") for line in run_out)
    assert any(line.startswith("initial model: ") for line in run_out)


def test_the_race_line_says_which_round_scored_symmetrised_maps():
    from novomap.outputs.progress import starts_line

    rounds = [
        {"iteration": 10, "starts": [0, 1, 2], "scores": [-480.0, -470.5, -490.0], "scored_as": "C1"},
        {"iteration": 30, "starts": [1, 0], "scores": [-488.2, -480.6], "scored_as": "O"},
    ]
    line = starts_line({"start_rounds": rounds, "chosen_start": 0})
    assert "iteration 10 (0: -480.0, 1: -470.5, 2: -490.0)" in line
    assert "iteration 30, maps symmetrised by O (1: -488.2, 0: -480.6)" in line
    assert line.endswith("continuing from start 0")
    del rounds[0]["scored_as"]  # histories written before the key existed: C1
    assert "iteration 10 (0: -480.0" in starts_line({"start_rounds": rounds, "chosen_start": 0})
    rounds[-1]["lead_z"] = 1.37
    carried = starts_line({"start_rounds": rounds, "chosen_start": 0, "finalist_starts": [1]})
    assert "its lead over start 1 is 1.4 standard errors, so that start goes on beside it" in carried
    several = starts_line({"start_rounds": rounds, "chosen_start": 0, "finalist_starts": [1, 3]})
    assert "cannot tell it clearly from starts 1, 3, so they go on beside it" in several
    grouped = starts_line({"start_rounds": rounds, "chosen_start": 0, "finalist_starts": [1], "finalists_choice_at": 50})
    assert "start 1 goes on beside it to iteration 50" in grouped and "standard errors" not in grouped


def test_the_pruning_line_names_every_start_and_the_two_that_go_on():
    from novomap.outputs.progress import pruned_line

    line = pruned_line({"iteration": 70, "starts": [2, 4, 5], "pose_agreement": [0.571, 0.596, 0.555], "kept": [4, 2]})
    assert line.startswith("iteration 70:") and "2: 0.571, 4: 0.596, 5: 0.555" in line
    assert line.endswith("continuing from start 4, with start 2 beside it")
    assert pruned_line({"iteration": 50, "starts": [2, 4, 5], "pose_agreement": [0.5, 0.6, 0.4], "kept": [4, 2, 5]}).endswith("with starts 2, 5 beside it")


def test_run_out_says_before_the_race_that_it_goes_quiet(tmp_path):
    """The race of starts runs inside one iteration (vdam.restarts); the line before it says so, once,
    after the iteration before the race's first round, in the terminal and in run.out alike."""
    terminal = io.StringIO()
    log = RunLog(tmp_path, terminal=terminal, errors=io.StringIO())
    config = VdamConfig(n_iter=100, n_starts=5)
    with ProgressDisplay(log, n_iter=100, planned_batches=[100] * 100, config=config) as display:
        for i in range(1, 11):
            display.update(figures(i))
    log.close()
    lines = terminal.getvalue().splitlines()
    notice = [k for k, line in enumerate(lines) if line.startswith("next: 5 random starts race")]
    assert len(notice) == 1 and lines[notice[0] - 1].startswith("iter    9/100") and lines[notice[0] + 1].startswith("iter   10/100")
    assert "the best 2 at iteration 10, the best 1 at iteration 30" in lines[notice[0]]
    assert (tmp_path / "run.out").read_text().splitlines() == lines
    # no race, no notice
    (tmp_path / "one").mkdir()
    quiet_log = RunLog(tmp_path / "one", terminal=io.StringIO(), errors=io.StringIO())
    with ProgressDisplay(quiet_log, n_iter=100, config=VdamConfig(n_iter=100, n_starts=1)) as display:
        for i in range(1, 11):
            display.update(figures(i))
    quiet_log.close()
    assert "random starts race" not in (tmp_path / "one" / "run.out").read_text()


def test_a_retry_with_two_classes_announces_its_own_race(tmp_path):
    """A --K 1 job's retry runs with two classes (initial_model.retry_classes), which race 2 starts in one
    round: after restart(config) the notice and the plan are the retry's."""
    terminal = io.StringIO()
    log = RunLog(tmp_path, terminal=terminal, errors=io.StringIO())
    one = VdamConfig(n_iter=100)
    with ProgressDisplay(log, n_iter=100, planned_batches=batch_plan(one, 2000), config=one) as display:
        display.restart(VdamConfig(n_iter=100, n_classes=2, seed=1_000_004), 2000)
        assert display.planned == batch_plan(VdamConfig(n_iter=100, n_classes=2), 2000) != batch_plan(one, 2000)
        for i in range(1, 30):
            display.update(figures(i))
    log.close()
    notices = [line for line in terminal.getvalue().splitlines() if line.startswith("next:")]
    assert notices == ["next: 2 random starts race (the best 1 at iteration 30 go on); nothing is printed until the race has chosen (the ETA includes it)"]


def test_the_report_is_redrawn_mid_run_only_when_the_final_one_is_not_near():
    from novomap.commands.initial_model import REPORT_INTERVAL_S, mid_run_report_due

    # not before the interval has passed
    assert not mid_run_report_due(REPORT_INTERVAL_S - 1, 500.0)
    assert mid_run_report_due(REPORT_INTERVAL_S + 1, 500.0)
    assert mid_run_report_due(REPORT_INTERVAL_S + 1, None)  # no estimate yet: by the clock alone
    # the final report is due in seconds: no redraw however long ago the last one was
    assert not mid_run_report_due(10 * REPORT_INTERVAL_S, 10.0)
