"""A flagged run is run again from new random starts and the better attempt is the job's
(novomap.initial_model.run_initial_model, novomap.outputs.attempts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import novomap.initial_model as job
from novomap.analysis.confidence import Evidence
from novomap.outputs.attempts import attempt_files, free_attempt_dir, move_attempt
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


def _fake_attempts(monkeypatch, misfits: dict[int, tuple[float, bool]]) -> list[int]:
    """Replace the VDAM run by one that writes a few attempt files holding its seed; misfits: seed -> (misfit, flagged)."""
    seeds = []

    def fake(star_path, out_dir, config, options, continue_from=None):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        seeds.append(config.seed)
        assert not attempt_files(out_dir), "an attempt must start in an empty job folder"
        for name in ("run_it000_optimiser.star", "run_it003_class001.mrc", "initial_model.mrc", "history.json"):
            (out_dir / name).write_text(str(config.seed))
        misfit, flagged = misfits[config.seed]
        result = job.JobResult(out_dir, out_dir / "initial_model.mrc", None, 0.0, 1.0, evidence=_evidence(misfit, flagged))
        job.write_evidence(out_dir, result.evidence)
        return result

    monkeypatch.setattr(job, "_run_attempt", fake)
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
    result = job.run_initial_model("p.star", tmp_path, VdamConfig(seed=1, retries=1), on_retry=messages.append)
    assert seeds == [1, retry] and len(messages) == 1 and "ring misfit 0.060" in messages[0]
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
    assert f"this is attempt {kept} of 2 (seed {kept_seed})" in caption and f"its files in {folders[0].name}/" in caption


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
