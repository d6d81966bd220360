"""A flagged run is run again from new random starts and the better attempt is the job's
(novomap.initial_model.run_initial_model, novomap.outputs.attempts)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

import novomap.initial_model as job
from novomap.analysis.confidence import Evidence
from novomap.outputs.attempts import attempt_files, free_attempt_dir, move_attempt, set_aside_earlier_run
from novomap.vdam.config import VdamConfig


def _evidence(misfit: float, flagged: bool) -> Evidence:
    evidence = Evidence(
        pixel_size_a=3.54, box=64, n_half=(50, 50), half_fsc=[1.0] * 33, half_fsc05_a=12.0, half_fsc0143_a=9.0,
        agreement_fsc=[1.0] * 33, agreement_fsc05_a=15.0, agreement_cc=0.95, agreement_shift_px=0.3,
        radial_share=0.4, mean_pmax=0.3, seconds=1.0,
    )  # fmt: skip
    evidence.map_agreement, evidence.map_agreement_min, evidence.map_settled = 0.98, 0.95, True
    evidence.ring = {"misfit": misfit, "noise_floor": 0.01, "ratio": misfit / 0.01, "rings": [2, 7], "resolution_a": 30.0, "n_particles": 100, "flagged": flagged}
    return evidence


def _fake_attempts(monkeypatch, misfits: dict[int, tuple]) -> list[int]:
    """Replace the VDAM run by one that writes a few attempt files holding its seed; misfits: seed ->
    (misfit, flagged) or (misfit, flagged, {Evidence field: value})."""
    seeds, classes = [], []

    def fake(star_path, out_dir, config, options, continue_from=None):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        seeds.append(config.seed)
        classes.append(config.n_classes)
        assert not attempt_files(out_dir), "an attempt must start in an empty job folder"
        for name in ("run_it000_optimiser.star", "run_it003_class001.mrc", "initial_model.mrc", "history.json"):
            (out_dir / name).write_text(str(config.seed))
        misfit, flagged, *changes = misfits[config.seed]
        result = job.JobResult(out_dir, out_dir / "initial_model.mrc", None, 0.0, 1.0, evidence=_evidence(misfit, flagged))
        for name, value in (changes[0] if changes else {}).items():  # (misfit, flagged, {evidence field: value})
            setattr(result.evidence, name, value)
        job.write_evidence(out_dir, result.evidence)
        return result

    monkeypatch.setattr(job, "_run_attempt", fake)
    _fake_attempts.classes = classes
    return seeds


def test_a_right_first_attempt_is_not_repeated(tmp_path, monkeypatch):
    seeds = _fake_attempts(monkeypatch, {1: (0.01, False)})
    result = job.run_initial_model("p.star", tmp_path, VdamConfig(seed=1))
    assert seeds == [1] and result.evidence.attempts == [] and not list(tmp_path.glob("attempt*"))


@pytest.mark.parametrize("second, kept", [((0.02, False), 2), ((0.08, True), 1)])
def test_the_better_attempt_is_the_jobs_and_the_other_keeps_its_files(tmp_path, monkeypatch, second, kept):
    retry = job.retry_seed(1, 1)
    seeds = _fake_attempts(monkeypatch, {1: (0.06, True), retry: second})
    messages = []
    result = job.run_initial_model("p.star", tmp_path, VdamConfig(seed=1, retries=1), on_retry=lambda line, config: messages.append((line, config.seed, config.n_classes)))
    assert seeds == [1, retry] and len(messages) == 1 and "ring misfit 0.060" in messages[0][0]
    assert messages[0][1:] == (retry, 2) and "with 2 classes" in messages[0][0]
    kept_seed, other_seed = (retry, 1) if kept == 2 else (1, retry)
    # DIR holds the kept attempt's files only, the other attempt's are all in one attemptN folder
    assert (tmp_path / "initial_model.mrc").read_text() == str(kept_seed)
    assert (tmp_path / "run_it003_class001.mrc").read_text() == str(kept_seed)
    folders = [p for p in tmp_path.glob("attempt*") if p.is_dir()]
    assert len(folders) == 1
    assert {p.name for p in attempt_files(folders[0])} == {"run_it000_optimiser.star", "run_it003_class001.mrc", "initial_model.mrc", "history.json", "evidence.json"}
    assert (folders[0] / "initial_model.mrc").read_text() == str(other_seed)
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["kept_attempt"] == kept and result.evidence.kept_attempt == kept
    records = evidence["attempts"]
    assert [r["seed"] for r in records] == [1, retry]
    assert records[kept - 1]["folder"] == "." and records[2 - kept]["folder"] == folders[0].name
    assert "attempt" in result.evidence.line() and f"attempt {kept} of 2 kept" in result.evidence.line()
    from novomap.outputs.report import _evidence_caption

    caption = _evidence_caption(evidence)
    assert f"this is attempt {kept} of 2 (seed {kept_seed}" in caption
    assert ("2 classes: a one-class run's retries add a class" in html.unescape(caption)) == (kept == 2) and f"its files in {folders[0].name}/" in caption


def test_no_retry_when_asked_for_none(tmp_path, monkeypatch):
    seeds = _fake_attempts(monkeypatch, {1: (0.06, True)})
    job.run_initial_model("p.star", tmp_path / "a", VdamConfig(seed=1, retries=0))
    assert seeds == [1]


def test_several_classes_retry_when_the_largest_class_is_flagged(tmp_path, monkeypatch):
    seeds = _fake_attempts(monkeypatch, {1: (0.06, True), job.retry_seed(1, 1): (0.02, False)})
    job.run_initial_model("p.star", tmp_path / "b", VdamConfig(seed=1, n_classes=2))
    assert seeds == [1, job.retry_seed(1, 1)]


def test_attempt_folders_never_overwrite_each_other(tmp_path):
    (tmp_path / "attempt1").mkdir()
    assert free_attempt_dir(tmp_path).name == "attempt2"
    (tmp_path / "run_it001_data.star").write_text("x")
    (tmp_path / "run.out").write_text("log")  # the job's log is not an attempt's
    move_attempt(tmp_path, tmp_path / "attempt2")
    assert (tmp_path / "attempt2" / "run_it001_data.star").is_file() and (tmp_path / "run.out").is_file()


def test_an_earlier_runs_files_are_set_aside_not_deleted(tmp_path):
    assert set_aside_earlier_run(tmp_path) is None  # nothing to move: no folder made
    assert not (tmp_path / "previous1").exists()
    for name in ("run_it070_class001.mrc", "initial_model.mrc", "history.json", "run.out", "note.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "previous1").mkdir()
    moved = set_aside_earlier_run(tmp_path)
    assert moved == tmp_path / "previous2"
    assert sorted(p.name for p in moved.iterdir()) == ["history.json", "initial_model.mrc", "run_it070_class001.mrc"]
    assert (tmp_path / "run.out").is_file() and (tmp_path / "note.txt").is_file()  # the job's log and RELION's note stay
    assert attempt_files(tmp_path) == []


@pytest.mark.parametrize(
    "changes, due",
    [
        ({}, True),
        ({"ring": None}, False),  # not measured
        ({"map_agreement": None}, False),  # too short a run for the convergence check
        ({"map_settled": False}, False),  # still changing: more iterations, not a new start
    ],
)
def test_a_retry_needs_a_flagged_and_settled_map(changes, due):
    evidence = _evidence(0.06, True)
    for name, value in changes.items():
        setattr(evidence, name, value)
    result = job.JobResult(Path("."), Path("initial_model.mrc"), None, 0.0, 1.0, evidence=evidence)
    assert job.retry_due(result, VdamConfig()) is due
    # the largest class's map is judged alike, settled or not: runs with several classes are not extended
    assert job.retry_due(result, VdamConfig(n_classes=2)) is (due or changes == {"map_settled": False})
    assert not job.retry_due(job.JobResult(Path("."), Path("x"), None, 0.0, 1.0, evidence=_evidence(0.01, False)), VdamConfig())


@pytest.mark.parametrize("first, retry_classes, expected", [(1, 2, [1, 2, 2]), (1, 1, [1, 1, 1]), (3, 2, [3, 3, 3])])
def test_a_one_class_run_retries_with_a_class_for_junk(tmp_path, monkeypatch, first, retry_classes, expected):
    """Retries of a --K 1 run run with config.retry_classes classes (recorded per attempt and said in the
    evidence line when the kept attempt has them); runs of several classes keep theirs."""
    retries = [job.retry_seed(1, n) for n in (1, 2)]
    seeds = _fake_attempts(monkeypatch, {1: (0.06, True), retries[0]: (0.05, True), retries[1]: (0.02, False)})
    result = job.run_initial_model("p.star", tmp_path, VdamConfig(seed=1, n_classes=first, retries=2, retry_classes=retry_classes))
    assert seeds == [1, *retries] and _fake_attempts.classes == expected
    assert [a["classes"] for a in result.evidence.attempts] == expected and result.evidence.kept_attempt == 3
    assert ("2 classes, ring misfit" in result.evidence.line()) == (expected[-1] != expected[0])


def test_a_retry_with_more_classes_races_as_many_starts_as_they_do_by_default():
    """The command line resolves --starts' default (5 for one class); a two-class retry races the two-class
    default (2), while a number the user chose stays."""
    from novomap.vdam.config import starts_for_classes

    config = job.retry_attempt_config(VdamConfig(seed=1, n_classes=1, n_starts=starts_for_classes(1)), 1)
    assert (config.seed, config.n_classes, config.n_starts) == (job.retry_seed(1, 1), 2, starts_for_classes(2))
    assert job.retry_attempt_config(VdamConfig(seed=1, n_starts=-1), 2).starts() == starts_for_classes(2)
    assert job.retry_attempt_config(VdamConfig(seed=1, n_starts=8), 1).n_starts == 8
    assert job.retry_attempt_config(VdamConfig(seed=1, n_starts=5, retry_classes=1), 1).n_starts == 5
    assert job.retry_attempt_config(VdamConfig(seed=1, n_classes=3, n_starts=1), 1).n_classes == 3


def _finalists(a: float, b: float, same: bool = False, mid_run: bool = False) -> dict:
    return {"iteration": 100, "starts": [0, 1], "pose_agreement": [a, b], "chosen_start": 0, "maps_agree_a": 40.0, "resolution_a": 12.0,
            "same_solution": same, "seconds": 1.0, "mid_run": mid_run}  # fmt: skip


@pytest.mark.parametrize(
    "changes, n_classes, undecided",
    [
        ({}, 1, False),
        ({"finalists": _finalists(0.407, 0.405)}, 1, True),  # different maps the particles hardly tell apart
        ({"finalists": _finalists(0.456, 0.404)}, 1, False),  # the particles tell them apart
        ({"finalists": _finalists(0.407, 0.405, same=True)}, 1, False),  # one map
        ({"finalists": _finalists(0.407, 0.405, mid_run=True)}, 1, False),  # compared half way, not at the end
        ({"finalists": _finalists(0.407, 0.405)}, 2, False),  # several classes: the race is not theirs
        ({"map_settled": False, "map_agreement": 0.87, "extra_iterations": 100}, 1, True),  # still changing at the cap
        ({"map_settled": False, "map_agreement": 0.87, "extra_iterations": 40}, 1, False),  # stopped before it: not at the cap
        ({"map_settled": False, "map_agreement": 0.87, "extra_iterations": 100, "stopped_as_symmetric": True}, 1, False),
        ({"map_settled": False, "map_agreement": 0.87, "extra_iterations": 100, "c1_map_looks": "D2"}, 1, False),
        ({"map_agreement": None, "finalists": _finalists(0.407, 0.405)}, 1, False),  # too short a run to judge
    ],
)
def test_a_race_left_undecided_is_told_from_one_that_decided(changes, n_classes, undecided):
    evidence = _evidence(0.014, False)
    for name, value in changes.items():
        setattr(evidence, name, value)
    result = job.JobResult(Path("."), Path("initial_model.mrc"), None, 0.0, 1.0, evidence=evidence)
    assert job.race_undecided(result, VdamConfig(n_iter=100, n_classes=n_classes)) is undecided


@pytest.mark.parametrize(
    "second, kept",
    [
        # the new attempt's race chose no finalist at --iter: the ring spectra decide (fits_better, as a trial)
        ((0.010, False), 2),  # fits better
        ((0.020, False), 2),  # fits worse, within the noise floor (0.01), and its evidence holds against weak evidence
        ((0.030, False), 1),  # fits worse by more than the noise floor
        ((0.020, False, {"warnings": ["weak too"]}), 1),  # weak as well: the better fit stays
        # both races chose between finalists: the start whose half-sets agree better wins, whatever the rings say
        ((0.020, False, {"finalists": _finalists(0.493, 0.410)}), 2),  # hb16_c1 seed 8: its rerun fit worse, and was right
        ((0.010, False, {"finalists": _finalists(0.380, 0.367)}), 1),  # hb_c1 seed 4: its rerun fit better, and was worse
        ((0.050, True, {"finalists": _finalists(0.493, 0.410)}), 1),  # a map flagged as a wrong fold: the rings decide
    ],
)
def test_an_undecided_race_is_run_again_with_its_classes_and_the_better_choice_kept(tmp_path, monkeypatch, second, kept):
    """A one-class run whose finalists ended in different maps that the particles hardly tell apart
    (not flagged by the ring check) runs once more from new random starts, with one class (no junk is
    suspected). The new attempt is the job's where its race's choice agrees better with itself
    (initial_model.decided_better); where its race chose no finalist, where its map fits the ring spectra
    better, or where its evidence holds against the first's weak evidence and it fits worse by less
    than the noise floor."""
    retry = job.retry_seed(1, 1)
    undecided = {"finalists": _finalists(0.407, 0.405), "warnings": ["two random starts ended in different maps"]}
    seeds = _fake_attempts(monkeypatch, {1: (0.014, False, undecided), retry: second})
    messages = []
    result = job.run_initial_model("p.star", tmp_path, VdamConfig(seed=1, n_iter=100), on_retry=lambda message, config: messages.append(message))
    assert seeds == [1, retry] and _fake_attempts.classes == [1, 1]
    assert result.evidence.kept_attempt == kept and (tmp_path / "initial_model.mrc").read_text() == str([1, retry][kept - 1])
    assert "left the map undecided (two random starts ended in different maps" in messages[0]
    assert result.evidence.attempts[0]["race_agreement"] == pytest.approx(0.407)
    from novomap.outputs.report import _evidence_caption

    caption = html.unescape(_evidence_caption(json.loads((tmp_path / "evidence.json").read_text())))
    assert "The race of random starts left the map undecided" in caption and "A flagged map" not in caption
    if "finalists" in (second[2] if len(second) > 2 else {}) and not second[1]:  # both races chose: the line and report name both agreements
        assert "race agreement" in result.evidence.line() and "0.407" in result.evidence.line()
        assert "kept for the race's own choice" in caption and "0.407" in caption
    else:
        assert "race agreement" not in result.evidence.line() and "kept for its fit to the particles' ring spectra" in caption
    assert (tmp_path / "attempt1").is_dir() or (tmp_path / "attempt2").is_dir()
