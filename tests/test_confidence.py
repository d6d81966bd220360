"""How sure is the run (novomap.analysis.confidence): strong evidence for a right map, warnings for a wrong one."""

from __future__ import annotations

import json

import pytest
import torch

from novomap.analysis.confidence import (
    MIN_AGREEMENT_CC,
    MIN_AGREEMENT_CC_IMPOSED,
    Evidence,
    assess_run,
    warnings_for,
    weak_resolution_a,
    write_evidence,
)
from novomap.io.particles import ParticleSet
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import pseudo_halves
from novomap.vdam.start import initial_state
from test_ring_spectra import _radial_average

pytestmark = pytest.mark.usefixtures("one_thread")


def _run_state(particles: ParticleSet, truth: torch.Tensor, config: VdamConfig):
    """A finished one-class run whose last VDAM map is the truth; poses as in the table (the true ones)."""
    state = initial_state(particles, config)
    state.class_number[:] = 1
    state.maps[0] = truth
    state.max_probability[:] = 0.4
    return state


def test_true_poses_give_strong_evidence(simulated):
    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0)
    state = _run_state(particles, truth, config)
    from novomap.final_map import final_reconstruction

    final = final_reconstruction(state, particles, 0, config)
    evidence = assess_run(state, particles, pseudo_halves(particles), 0, final, config)
    assert evidence.warnings == [], evidence.line()
    assert sum(evidence.n_half) == particles.n and min(evidence.n_half) > 100
    assert evidence.half_fsc05_a is not None and evidence.half_fsc05_a < 20.0
    assert evidence.agreement_cc > 0.85 and evidence.radial_share < 0.7
    assert "consistent" in evidence.line()


def test_random_poses_give_a_warning(simulated):
    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0)
    state = _run_state(particles, truth, config)
    generator = torch.Generator().manual_seed(1)
    n = particles.n
    state.rot_deg = torch.rand(n, generator=generator, dtype=torch.float64) * 360
    state.tilt_deg = torch.rad2deg(torch.arccos(1 - 2 * torch.rand(n, generator=generator, dtype=torch.float64)))
    state.psi_deg = torch.rand(n, generator=generator, dtype=torch.float64) * 360
    from novomap.final_map import final_reconstruction

    final = final_reconstruction(state, particles, 0, config)
    evidence = assess_run(state, particles, pseudo_halves(particles), 0, final, config)
    assert evidence.weak and "WEAK" in evidence.line()
    assert evidence.half_fsc05_a is None or evidence.half_fsc05_a > weak_resolution_a(particles.pixel_size_a)
    assert evidence.agreement_cc < MIN_AGREEMENT_CC
    assert evidence.radial_share > 0.85


def test_the_ring_check_reads_the_final_reconstruction_not_the_last_vdam_map(simulated):
    """The ring misfit is measured on the map rebuilt from the particles at their final poses: with the
    true poses and a last VDAM map that is only the truth's spherical average (a ball), the particles'
    own reconstruction fits their ring spectra and nothing is flagged; the ball itself would be
    (tests/test_ring_spectra.py). A VDAM map's own errors are not the poses' (session 36: a right
    icosahedral run flagged on its VDAM map, its reconstruction at the noise floor)."""
    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0)
    state = _run_state(particles, truth, config)
    state.maps[0] = _radial_average(truth).to(truth.dtype)
    from novomap.final_map import final_reconstruction

    final = final_reconstruction(state, particles, 0, config)
    evidence = assess_run(state, particles, pseudo_halves(particles), 0, final, config)
    assert evidence.ring is not None and not evidence.ring["flagged"], evidence.ring
    assert evidence.ring["ratio"] < 1.5, evidence.ring


def _evidence(**changes) -> Evidence:
    figures = dict(
        pixel_size_a=3.54, box=64, n_half=(700, 700), half_fsc=[1.0] * 33, half_fsc05_a=12.0, half_fsc0143_a=9.0,
        agreement_fsc=[1.0] * 33, agreement_fsc05_a=15.0, agreement_cc=0.95, agreement_shift_px=0.3,
        radial_share=0.4, mean_pmax=0.3, seconds=1.0,
    )  # fmt: skip
    figures.update(changes)
    return Evidence(**figures)


@pytest.mark.parametrize(
    "changes, weak",
    [
        ({}, False),
        ({"half_fsc05_a": 30.0}, True),
        ({"half_fsc05_a": None}, True),
        ({"pixel_size_a": 6.0, "half_fsc05_a": 30.0}, False),  # coarse grid: the bar is 3 x Nyquist = 36 Å
        ({"agreement_cc": 0.5}, True),
        ({"agreement_cc": 0.82}, False),  # C1 runs: right maps of symmetric particles agree to ~0.7
        ({"agreement_cc": 0.82, "agreement_min": MIN_AGREEMENT_CC_IMPOSED}, True),  # the wrong octahedral fold, group imposed
        ({"agreement_cc": 0.956, "agreement_min": MIN_AGREEMENT_CC_IMPOSED}, False),  # the lowest right run with the group imposed
        ({"radial_share": 0.95}, True),
        ({"radial_share": 0.75, "mean_pmax": 0.01}, True),
        ({"radial_share": 0.75, "mean_pmax": 0.99}, True),
        ({"radial_share": 0.75, "mean_pmax": 0.3}, False),
        ({"radial_share": 0.5, "mean_pmax": 0.99}, False),
        ({"map_agreement": 0.90, "map_agreement_min": 0.95}, True),  # still changing at the last iteration
        ({"map_agreement": 0.97, "map_agreement_min": 0.95}, False),
        ({"map_agreement": None, "map_agreement_min": 0.95}, False),  # not measured
        # passed at the last check only, after moving at the one before (vdam.convergence.settled; the cap stopped it)
        ({"map_agreement": 0.97, "map_agreement_min": 0.95, "map_settled": False}, True),
        ({"map_agreement": 0.97, "map_agreement_min": 0.95, "map_settled": True}, False),
    ],
)
def test_each_threshold(changes, weak):
    evidence = _evidence(**changes)
    assert bool(warnings_for(evidence)) == weak


def test_evidence_json_holds_the_figures_and_thresholds(tmp_path):
    evidence = _evidence(agreement_cc=0.5)
    evidence.warnings = warnings_for(evidence)
    path = write_evidence(tmp_path, evidence, {"requested": "auto", "applied": "D2", "alignment_score": 0.01})
    data = json.loads(path.read_text())
    assert data["weak"] is True and data["warnings"] and data["symmetry"]["applied"] == "D2"
    assert data["half_fsc05_a"] == 12.0 and data["thresholds"]["min_agreement_cc"] == MIN_AGREEMENT_CC
    assert len(data["resolution_inv_a"]) == len(data["half_fsc"]) and data["nyquist_a"] == pytest.approx(7.08)


def test_the_race_of_starts_is_part_of_the_evidence(tmp_path):
    """The line names the number of starts and the winner's lead in the last round; evidence.json and
    the report keep every round's scores."""
    rounds = [{"iteration": 10, "starts": [0, 1, 2, 3, 4], "scores": [-421.0, -422.8, -422.6, -439.7, -429.9]},
              {"iteration": 30, "starts": [2, 0], "scores": [-523.0, -534.6]}]
    evidence = _evidence(start_rounds=rounds, chosen_start=2)
    assert "best of 5 random starts (log L at iteration 30, 11.6 ahead of the next)" in evidence.line()
    assert "random starts" not in _evidence().line()
    data = json.loads(write_evidence(tmp_path, evidence).read_text())
    assert data["start_rounds"] == rounds and data["chosen_start"] == 2

    from novomap.outputs.report import _evidence_caption

    caption = _evidence_caption(data)
    assert "5 random starts raced" in caption and "start 2 -523.0, start 0 -534.6" in caption


def test_the_race_runner_up_is_part_of_the_evidence(tmp_path):
    """The choice between the run and the race's runner-up is named with both agreements, and warned
    about when their maps differ and the particles hardly tell them apart; evidence.json and the report keep it."""
    from novomap.outputs.report import _evidence_caption

    def choice(a: float, b: float, agree_a: float) -> dict:
        return {"iteration": 100, "starts": [3, 4], "pose_agreement": [a, b], "chosen_start": 3 if a >= b else 4,
                "maps_agree_a": agree_a, "resolution_a": 10.9, "same_solution": agree_a <= 12.0}

    same = _evidence(finalists=choice(0.664, 0.660, 10.2))
    assert "runner-up (start 4) ended in the same map (10.2 Å); half-set agreement 0.664 (start 3) vs 0.660, start 3 kept" in same.line()
    assert not warnings_for(same)  # close, but the same solution
    clear = _evidence(finalists=choice(0.627, 0.658, 17.3))
    assert "another map (agreeing to 17.3 Å only)" in clear.line() and "start 4 kept" in clear.line() and not warnings_for(clear)
    close = _evidence(finalists=choice(0.652, 0.655, 17.3))
    assert any("hardly tell apart" in reason for reason in warnings_for(close))
    data = json.loads(write_evidence(tmp_path, clear).read_text())
    assert data["finalists"] == clear.finalists
    caption = _evidence_caption(data)
    assert "At iteration 100, the run (start 3) and the race&#x27;s runner-up (start 4)" in caption and "different solutions" in caption
    assert "agree 0.627 and 0.658 (mean FSC) -&gt; continuing from start 4." in caption
    assert "runner-up" not in _evidence().line()
    pruned = {"iteration": 70, "starts": [4, 2, 3], "pose_agreement": [0.527, 0.542, 0.570], "kept": [3, 2]}
    caption = _evidence_caption(json.loads(write_evidence(tmp_path, _evidence(finalists=choice(0.627, 0.658, 17.3), finalists_pruned=[pruned])).read_text()))
    assert "Iteration 70: the run and the race&#x27;s runners-up" in caption and "4: 0.527, 2: 0.542, 3: 0.570" in caption
    assert caption.index("Iteration 70") < caption.index("At iteration 100")


def test_the_line_says_when_the_run_went_on_past_iter():
    settled = _evidence(map_agreement=0.97, map_agreement_min=0.95, extra_iterations=30)
    assert "30 iterations past --iter until the map settled" in settled.line() and not warnings_for(settled)
    capped = _evidence(map_agreement=0.8, map_agreement_min=0.95, extra_iterations=100)
    capped.warnings = warnings_for(capped)
    assert "100 iterations past --iter (the most allowed)" in capped.line() and "still changing" in capped.line()
    assert "past --iter" not in _evidence(map_agreement=0.99, map_agreement_min=0.95).line()
    unconfirmed = _evidence(map_agreement=0.96, map_agreement_min=0.95, map_settled=False, extra_iterations=100)
    unconfirmed.warnings = warnings_for(unconfirmed)
    assert "(the most allowed)" in unconfirmed.line() and "not at the check before" in unconfirmed.line()


def test_a_c1_run_still_changing_whose_map_looks_symmetric_gets_a_hint():
    """The still-changing warning of a C1 run names the group its map looks to have and the way out;
    a settled run has no warning, whatever its map looks like."""
    moving = _evidence(map_agreement=0.88, map_agreement_min=0.95, extra_iterations=100, c1_map_looks="D2")
    (reason,) = warnings_for(moving)
    assert "still changing" in reason and "looks D2-symmetric" in reason and "--sym D2 or --sym auto" in reason
    assert "looks" not in warnings_for(_evidence(map_agreement=0.88, map_agreement_min=0.95))[0]
    assert not warnings_for(_evidence(map_agreement=0.97, map_agreement_min=0.95, c1_map_looks="D2"))


def test_the_report_caption_gives_the_final_agreement(tmp_path):
    from novomap.outputs.report import _evidence_caption

    evidence = _evidence(map_agreement=0.971, map_agreement_min=0.95, extra_iterations=20)
    caption = _evidence_caption(json.loads(write_evidence(tmp_path, evidence).read_text()))
    assert "agreed with the map of 20 iterations before to 0.971" in caption and "went on 20 iterations past --iter" in caption


def test_an_imposed_group_raises_the_agreement_bar(simulated):
    particles, truth = simulated
    config = VdamConfig(particle_diameter_a=200.0)
    state = _run_state(particles, truth, config)
    from novomap.final_map import final_reconstruction

    final = final_reconstruction(state, particles, 0, config)
    assert assess_run(state, particles, pseudo_halves(particles), 0, final, config).agreement_min == MIN_AGREEMENT_CC
    state.symmetry_axes = [(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))]
    evidence = assess_run(state, particles, pseudo_halves(particles), 0, final, config)
    assert evidence.agreement_min == MIN_AGREEMENT_CC_IMPOSED
    assert evidence.to_json()["thresholds"]["min_agreement_cc"] == MIN_AGREEMENT_CC_IMPOSED
    assert evidence.warnings == [], evidence.line()  # right poses clear the higher bar too
