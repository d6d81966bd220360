"""`--sym auto` with weak evidence: the polyhedral groups containing the group found are each run imposed until
one fits, and the attempt whose map fits the particles' rings best is the job's (novomap.symmetry.group_trial,
initial_model.run_initial_model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import novomap.auto_symmetry as auto_symmetry
import novomap.initial_model as job
from novomap.analysis.confidence import Evidence
from novomap.symmetry.choice import summary_line
from novomap.symmetry.group_trial import trial_groups, trial_record
from novomap.vdam.config import VdamConfig


def _choice(applied: str, scores: dict[str, float], **extra) -> dict:
    """A `--sym auto` record as symmetry.choice.symmetry_record writes it (an empty detection table)."""
    rows = [{"group": name, "explained": score} for name, score in sorted(scores.items(), key=lambda item: -item[1])]
    return {
        "requested": "auto", "applied": applied, "alignment_score": 0.1, "particle_scores": rows, "reason": "particles", "table": [],
        "noise_fraction": 0.1, "resampling_floor": 0.01, **extra,
    }  # fmt: skip


def test_the_polyhedral_groups_containing_the_chosen_one_are_tried_largest_first():
    assert trial_groups("C2") == ["I", "O", "T"]
    assert trial_groups("D2") == ["I", "O", "T"]
    assert trial_groups("C4") == ["O"] and trial_groups("D4") == ["O"]
    assert trial_groups("C5") == ["I"] and trial_groups("D5") == ["I"]
    assert trial_groups("T") == ["I", "O"]
    assert trial_groups("I") == [] and trial_groups("O") == []
    assert trial_groups("C1") == []  # left to the ordinary retry
    assert trial_groups("C7") == [] and trial_groups("D6") == []


def test_the_trials_are_named_in_the_symmetry_line_whichever_attempt_is_kept():
    kept = trial_record({"requested": "I", "applied": "I", "alignment_score": 0.02}, "C2", 0.032, [("I", 0.005)], "I")
    assert kept["requested"] == "auto" and kept["group_trial"]["kept"] == "I"
    assert kept["group_trial"]["fold_changed"] is False and kept["group_trial"]["weak_evidence"] is True
    line = summary_line(kept)
    assert line.startswith("symmetry: I (--sym auto)") and "C2 map had weak evidence" in line and "C2 0.032; I 0.005" in line
    lost = trial_record(_choice("D5", {"C1": 1.0, "D5": 3.0}), "D5", 0.006, [("I", 0.02)], None)
    line = summary_line(lost)
    assert "D5 detected (--sym auto)" in line and "I was run imposed; none fits" in line and "D5 0.006; I 0.020" in line


def _evidence(misfit: float, weak: bool) -> Evidence:
    evidence = Evidence(
        pixel_size_a=3.0, box=64, n_half=(50, 50), half_fsc=[1.0] * 33, half_fsc05_a=12.0, half_fsc0143_a=9.0,
        agreement_fsc=[1.0] * 33, agreement_fsc05_a=15.0, agreement_cc=0.95, agreement_shift_px=0.3,
        radial_share=0.4, mean_pmax=0.3, seconds=1.0,
    )  # fmt: skip
    evidence.map_agreement, evidence.map_agreement_min, evidence.map_settled = 0.98, 0.95, True
    evidence.ring = {"misfit": misfit, "noise_floor": 0.01, "ratio": misfit / 0.01, "rings": [2, 7], "resolution_a": 30.0, "n_particles": 100, "flagged": False}
    evidence.warnings = ["the map was still changing at the last iteration"] if weak else []
    return evidence


def _fake_runs(monkeypatch, runs: dict[str, tuple]) -> list[tuple[str, int, int]]:
    """Replace the VDAM run: by the --sym it is given (runs: sym -> (group applied, ring misfit, weak[, the
    auto record's race_map_cc])), write
    an attempt's files and return its result; the calls' (sym, seed, classes) are returned."""
    calls = []

    def fake(star_path, out_dir, config, options, continue_from=None):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        calls.append((options.symmetry, config.seed, config.n_classes))
        _fake_runs.fingerprints.append(options.fingerprint)
        applied, misfit, weak, *race = runs[options.symmetry]
        (out_dir / "initial_model.mrc").write_text(options.symmetry)
        if options.symmetry == "auto":
            record = _choice(applied, {"C1": 10.0, applied: 14.0}, chosen_at_iteration=70, **({"race_map_cc": race[0]} if race else {}))
        else:
            record = {"requested": applied, "applied": applied, "alignment_score": 0.02}
        result = job.JobResult(out_dir, out_dir / "initial_model.mrc", None, 0.0, 1.0, applied, record, _evidence(misfit, weak))
        job.write_evidence(out_dir, result.evidence, record)
        return result

    monkeypatch.setattr(job, "_run_attempt", fake)
    _fake_runs.fingerprints = []
    return calls


def test_a_weak_auto_map_is_run_with_the_polyhedral_groups_until_one_fits(tmp_path, monkeypatch):
    # I's map fits worse than C2's, O's fits better and is not weak: T is not run
    calls = _fake_runs(monkeypatch, {"auto": ("C2", 0.03, True), "I": ("I", 0.05, True), "O": ("O", 0.005, False), "T": ("T", 0.001, False)})
    messages = []
    fingerprint = {"arguments": {"sym": "auto", "seed": 3}}
    result = job.run_initial_model(
        "p.star", tmp_path, VdamConfig(seed=3), symmetry="auto", fingerprint=fingerprint, on_retry=lambda line, config: messages.append((line, config))
    )
    # a --continue from a trial's checkpoint restores its group, not auto
    assert [f["arguments"]["sym"] for f in _fake_runs.fingerprints] == ["auto", "I", "O"] and fingerprint["arguments"]["sym"] == "auto"
    # one class, not the flagged retry's two: the grouped race needs one
    assert calls == [("auto", 3, 1), ("I", job.retry_seed(3, 1), 1), ("O", job.retry_seed(3, 2), 1)]
    assert "weak" in messages[0][0] and "--sym I imposed" in messages[0][0] and "--sym O imposed" in messages[1][0]
    assert messages[0][1].start_survivors == messages[0][1].starts()  # the display's plan: the grouped race, no cut
    assert (tmp_path / "initial_model.mrc").read_text() == "O" and result.symmetry == "O"
    symmetry_txt = (tmp_path / "symmetry.txt").read_text()
    assert "requested: --sym auto" in symmetry_txt and "C2 0.030; I 0.050; O 0.005" in symmetry_txt
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["symmetry"]["group_trial"]["kept"] == "O" and evidence["kept_attempt"] == 3
    assert [a.get("symmetry") for a in evidence["attempts"]] == [None, "I", "O"]
    assert "--sym O" in result.evidence.line()
    from novomap.outputs.report import _evidence_caption

    caption = _evidence_caption(evidence)
    assert "evidence was weak, so the job was run again with I, O imposed" in caption and "kept for its fit" in caption
    # every attempt's files are kept: the others in attempt folders
    assert sorted((p / "initial_model.mrc").read_text() for p in tmp_path.glob("attempt*")) == ["I", "auto"]


def test_the_auto_map_stays_when_no_trial_fits_better(tmp_path, monkeypatch):
    calls = _fake_runs(monkeypatch, {"auto": ("D5", 0.006, True), "I": ("I", 0.02, False)})
    result = job.run_initial_model("p.star", tmp_path, VdamConfig(seed=2), symmetry="auto")
    assert [call[0] for call in calls] == ["auto", "I"]
    assert (tmp_path / "initial_model.mrc").read_text() == "auto" and result.symmetry == "D5"
    assert "I was run imposed; none fits" in (tmp_path / "symmetry.txt").read_text()


def test_no_trial_for_consistent_evidence_an_explicit_group_several_classes_c1_or_no_retries(tmp_path, monkeypatch):
    calls = _fake_runs(monkeypatch, {"auto": ("C2", 0.005, True), "C2": ("C2", 0.005, True)})
    job.run_initial_model("p.star", tmp_path / "a", VdamConfig(seed=1), symmetry="C2")
    job.run_initial_model("p.star", tmp_path / "b", VdamConfig(seed=1, n_classes=2), symmetry="auto")
    job.run_initial_model("p.star", tmp_path / "c", VdamConfig(seed=1, retries=0), symmetry="auto")
    assert calls == [("C2", 1, 1), ("auto", 1, 2), ("auto", 1, 1)]
    calls.clear()
    _fake_runs(monkeypatch, {"auto": ("C2", 0.005, False)})
    job.run_initial_model("p.star", tmp_path / "d", VdamConfig(seed=1), symmetry="auto")
    _fake_runs(monkeypatch, {"auto": ("C1", 0.005, True)})
    job.run_initial_model("p.star", tmp_path / "e", VdamConfig(seed=1), symmetry="auto")
    assert not list((tmp_path / "d").glob("attempt*")) and not list((tmp_path / "e").glob("attempt*"))


@pytest.mark.parametrize("trial_weak, kept", [(False, "I"), (True, "auto")])
def test_a_trial_whose_evidence_holds_wins_a_tie_within_the_rings_noise(tmp_path, monkeypatch, trial_weak, kept):
    # a right C5 map of an icosahedral particle fits the rings as well as the I map (adk_i_tight seed 7):
    # misfits 0.0055 against 0.0056, the noise floor 0.01
    _fake_runs(monkeypatch, {"auto": ("C5", 0.0055, True), "I": ("I", 0.0056, trial_weak)})
    result = job.run_initial_model("p.star", tmp_path, VdamConfig(seed=7), symmetry="auto")
    assert (tmp_path / "initial_model.mrc").read_text() == kept
    if kept == "I":
        assert result.symmetry == "I" and "as well as the C5 map, within the rings' noise" in summary_line(result.symmetry_record)
    else:
        assert result.symmetry == "C5" and "none fits" in summary_line(result.symmetry_record)


def test_a_plain_retry_needs_a_lower_misfit():
    weak, holds = _evidence(0.0055, True), _evidence(0.0056, False)
    kept = job.JobResult(Path("."), Path("a"), None, 0.0, 1.0, evidence=weak)
    attempt = job.JobResult(Path("."), Path("b"), None, 0.0, 1.0, evidence=holds)
    assert not job.fits_better(attempt, kept) and job.fits_better(attempt, kept, trial=True)
    attempt.evidence.ring["misfit"] = 0.02  # above the kept one by more than the noise floor
    assert not job.fits_better(attempt, kept, trial=True)


@pytest.mark.parametrize("race_cc, i_misfit, runs, kept", [
    (0.49, 0.0053, ["auto", "I"], "I"),  # adk_i_tight seed 8: C2 at 70 after a fold change, I fits better
    (0.49, 0.02, ["auto", "I"], "auto"),  # the one trial does not fit better: the auto map stays, O and T are not run
    (0.85, 0.0053, ["auto"], "auto"),  # the fold held since the race: no trial
])  # fmt: skip
def test_a_consistent_auto_map_that_changed_fold_after_the_race_gets_one_trial(tmp_path, monkeypatch, race_cc, i_misfit, runs, kept):
    calls = _fake_runs(monkeypatch, {"auto": ("C2", 0.007, False, race_cc), "I": ("I", i_misfit, False), "O": ("O", 0.03, False), "T": ("T", 0.03, False)})
    messages = []
    result = job.run_initial_model("p.star", tmp_path, VdamConfig(seed=8), symmetry="auto", on_retry=lambda line, config: messages.append(line))
    assert [call[0] for call in calls] == runs and (tmp_path / "initial_model.mrc").read_text() == kept
    if len(runs) > 1:
        assert "C2 map changed fold after the race of starts (cc 0.49" in messages[0]
        line = summary_line(result.symmetry_record)
        assert "changed fold after the race of starts (cc 0.49" in line and "weak" not in line
        assert result.symmetry_record["group_trial"]["why"].startswith("changed fold")
        assert result.symmetry_record["group_trial"]["fold_changed"] is True
        from novomap.outputs.report import _evidence_caption

        caption = _evidence_caption(json.loads((tmp_path / "evidence.json").read_text()))
        assert "The --sym auto map changed fold after the race of starts (cc 0.49" in caption and "evidence was weak" not in caption
    assert result.symmetry == ("I" if kept == "I" else "C2")


def test_race_map_cc_superposes_before_it_correlates():
    """The same map turned and shifted agrees with itself; a map of another shape does not (maps.align)."""
    import torch
    from _synthetic_maps import PIXEL_SIZE_A, blob_map, random_rotation
    from novomap.maps.transform import rotate_volume, shift_volume
    from novomap.symmetry.group_trial import FOLD_KEPT_CC, fold_changed, race_map_cc

    race = blob_map("C1")
    moved = shift_volume(rotate_volume(race, random_rotation(3)), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    other = blob_map("D2")
    same, different = race_map_cc(race, moved, PIXEL_SIZE_A), race_map_cc(race, other, PIXEL_SIZE_A)
    assert same > 0.95 and different < FOLD_KEPT_CC
    assert fold_changed({"race_map_cc": different}) and not fold_changed({"race_map_cc": same}) and not fold_changed({})


def test_the_trials_say_why_they_ran():
    from novomap.symmetry.group_trial import why_trials

    assert why_trials({}, weak=True) == "had weak evidence"
    assert why_trials({"race_map_cc": 0.42}, weak=False) == "changed fold after the race of starts (cc 0.42 with the race's map once superposed)"
    assert why_trials({"race_map_cc": 0.42}, weak=True).endswith("superposed) and had weak evidence")
    assert why_trials({"race_map_cc": 0.8}, weak=True) == "had weak evidence"


def test_the_fold_check_is_measured_only_for_groups_a_trial_could_enlarge():
    """auto_symmetry.with_race_map_cc: on the class's VDAM map against its race map, for a group inside a
    polyhedral group and a run that kept race maps; a later decision carries the first one's."""
    import types

    import torch
    from _synthetic_maps import PIXEL_SIZE_A, blob_map

    race, now = blob_map("C1"), blob_map("D2")
    state = types.SimpleNamespace(race_maps=torch.stack([now, race]).float(), maps=torch.stack([now, now]).double())
    assert auto_symmetry.with_race_map_cc({"applied": "C2"}, state, 0, PIXEL_SIZE_A)["race_map_cc"] > 0.99
    assert auto_symmetry.with_race_map_cc({"applied": "D2"}, state, 1, PIXEL_SIZE_A)["race_map_cc"] < 0.7
    assert "race_map_cc" not in auto_symmetry.with_race_map_cc({"applied": "C7"}, state, 1, PIXEL_SIZE_A)
    # the first decision's figure stands (it read the map the race left behind), not a new one
    assert auto_symmetry.with_race_map_cc({"applied": "D2"}, state, 1, PIXEL_SIZE_A, earlier={"race_map_cc": 0.91})["race_map_cc"] == 0.91
    state.race_maps = None  # no race, or several classes (vdam.restarts.compete keeps none: no trials with classes)
    assert "race_map_cc" not in auto_symmetry.with_race_map_cc({"applied": "C2"}, state, 1, PIXEL_SIZE_A)


def test_the_one_trial_after_a_fold_change_is_the_group_the_particles_scored_best():
    from novomap.symmetry.group_trial import best_scored

    record = _choice("T", {"T": 169.5, "C1": 162.7, "I": 108.3, "O": 95.3})  # hb_t_tight seed 2
    assert best_scored(["I", "O"], record) == ["I", "O"]
    record = _choice("C2", {"C2": 200.0, "O": 120.0, "I": 100.0})
    assert best_scored(["I", "O", "T"], record) == ["O", "I", "T"]  # T unscored: after the scored ones
    assert best_scored(["I", "O", "T"], {}) == ["I", "O", "T"]
    evidence = _evidence(0.007, False)
    result = job.JobResult(Path("."), Path("a"), None, 0.0, 1.0, "C2", {**record, "race_map_cc": 0.4}, evidence)
    assert job.polyhedral_trials(result, "auto", VdamConfig()) == ["O"]
    result.evidence = _evidence(0.007, True)  # weak: every group, largest first
    assert job.polyhedral_trials(result, "auto", VdamConfig()) == ["I", "O", "T"]
