"""`--sym auto` on a particle of high symmetry: the polyhedral groups run imposed when the detected group's map is weak.

`--sym auto` runs in C1 until the particles choose the group (auto_symmetry.group_mid_run, at iteration
70 of 100). A tight icosahedral shell (adk_i_tight) run so fell into a wrong fold on 3 of 5 seeds
before its group was chosen: the C1 map was 54-56 Å from the truth already at iteration 30, the
map-only detection found C2 on it and nothing of I (I scored worst of all groups), and the particles,
offered I at iteration 30 all the same, scored it lowest (75.6 against C1's 182.6 per particle;
benchmarks/early_group_scores.py). The same particles run with `--sym I` reached the true-pose limit
on 15 of 15 seeds (benchmarks/results/2026-12-07-s60-grouped-race.md): a group of high order imposed
from iteration 30 pulls a start into the right fold that C1 lets drift. Nothing in the wrong map
says which group that is; what it does show is weak evidence (analysis.confidence: the ring misfit
flagged, or a map that never settled).

So when a one-class `--sym auto` run ends with weak evidence and a group other than C1, the job runs
again with each polyhedral group containing that group imposed, largest first (`trial_groups`), and
keeps the attempt whose map fits the particles' angular ring spectra best (analysis.ring_spectra: the
attempts' usual ranking), a trial whose evidence holds also when it fits as well as the weak map
within the rings' noise (initial_model.fits_better: a right map in a subgroup of the particle's group
fits them as well); it stops at the first trial kept whose own evidence is not weak. A group the
particle lacks averages different parts of it together, and its projections then turn less like the
particles than a map of the right group.

A wrong fold can also half recover. On seed 8 of the same shell the race's map was 46 Å from the truth
at iteration 30, and 21 Å at 70, where the particles chose C2 (C3 and C5 only half-way, I 107 units
behind). Run in C2 from there it settled at 1.43x the true-pose limit with evidence that held: the
map fits its particles as a right C2 map would. What gives it away is the fold change itself: the
map at the choice, superposed on the race's winner at its end, agreed with it to cc 0.37 (measured
in the run). On the maps written at iterations 30 and 70 the runs of this shell whose race had
chosen a wrong fold gave 0.40-0.63, and runs whose race's map was right 0.75-0.97 (two seeds of this
shell and 18 other specimens, C2 to I; adk_d3, the lowest, 0.71 in the run;
benchmarks/results/2026-12-07-s62-sym-auto-end-check.md). So a map whose choice came after such a
change (`race_map_cc` below FOLD_KEPT_CC) gets a trial too, and keeps its own map unless the
trial's fits the particles' ring spectra better. Only one: a fold can also change and recover
fully (hb_t_tight seed 2, 0.52: its I and O trials were each far worse than its T map, and the job
took 3.7x the time), so a map whose evidence holds is tried only with the polyhedral group the
particles scored best at the choice (seed 8: I, 107 units behind C2, T 107.5, O 118.9).
"""

from __future__ import annotations

import torch

from novomap.maps.align import align_maps
from novomap.symmetry.groups import POLYHEDRAL_GROUPS, contains_type, point_group

LARGEST_FIRST = tuple(reversed(POLYHEDRAL_GROUPS))  # the order trials run in
FOLD_KEPT_CC = 0.6  # the map at the choice agrees with the race's map at least this well: the fold held (module doc)


def trial_groups(applied: str) -> list[str]:
    """The polyhedral groups that contain `applied` (a subgroup of the particle's group that a map in a
    wrong fold kept, as C2 of I above), largest first; none for C1 (left to the ordinary retry) or for
    a polyhedral group itself unless a larger one contains it."""
    chosen = point_group(applied)
    if chosen.order == 1:
        return []
    return [name for name in LARGEST_FIRST if name != applied and contains_type(point_group(name), chosen)]


def best_scored(groups: list[str], record: dict) -> list[str]:
    """`groups` ordered by the particles' explained energy in `record` (a `--sym auto` choice's
    particle_scores), best first; groups it did not score keep their order after those it did."""
    scores = {row["group"]: row["explained"] for row in record.get("particle_scores", [])}
    return sorted(groups, key=lambda name: -scores.get(name, float("-inf")))


def race_map_cc(race_map: torch.Tensor, volume: torch.Tensor, pixel_size_a: float) -> float:
    """How well a map (N, N, N) agrees with the race's winner at the race's end (N, N, N): their
    correlation once superposed (maps.align.align_maps: rotation, shift and hand)."""
    return float(align_maps(volume, race_map, pixel_size_a).cc)


def fold_changed(record: dict) -> bool:
    """Whether a `--sym auto` symmetry record says its map changed fold after the race (race_map_cc
    measured at the choice and below FOLD_KEPT_CC)."""
    cc = record.get("race_map_cc")
    return cc is not None and cc < FOLD_KEPT_CC


def why_trials(record: dict, weak: bool = True) -> str:
    """Why the trials ran, after "--sym auto's map ...": its change of fold, its weak evidence, or both."""
    if not fold_changed(record):
        return "had weak evidence"
    changed = f"changed fold after the race of starts (cc {record['race_map_cc']:.2f} with the race's map once superposed)"
    return f"{changed} and had weak evidence" if weak else changed


def trial_record(
    kept: dict, auto_group: str, auto_misfit: float, tried: list[tuple[str, float]], kept_group: str | None, auto_record: dict | None = None, weak: bool = True
) -> dict:
    """The kept attempt's symmetry record (`kept`) with the trials beside it: the group `--sym auto` chose
    and its map's ring misfit, each group tried with its map's misfit (in the order run), the trial
    group whose map is the job's (None: the `--sym auto` attempt's), and why the trials ran (why_trials
    of the `--sym auto` attempt's own record `auto_record` and whether its evidence was weak), in words
    and as the two facts behind them."""
    why = why_trials(auto_record or {}, weak)
    misfits = "; ".join(f"{group} {misfit:.3f}" for group, misfit in [(auto_group, auto_misfit), *tried])
    names = ", ".join(group for group, _ in tried)
    if kept_group is not None:
        fit = "best" if dict(tried)[kept_group] < auto_misfit else f"as well as the {auto_group} map, within the rings' noise, and its evidence holds"
        summary = f"{kept_group} run imposed after --sym auto's {auto_group} map {why}; its map fits the particles' ring spectra {fit} (misfit {misfits})"
    else:
        summary = f"--sym auto's map {why}, so {names} {'was' if len(tried) == 1 else 'were each'} run imposed; none fits the particles' ring spectra better (misfit {misfits})"
    trial = {"groups": [group for group, _ in tried], "misfits": [misfit for _, misfit in tried], "auto_group": auto_group, "auto_misfit": auto_misfit,
             "kept": kept_group, "why": why, "fold_changed": fold_changed(auto_record or {}), "weak_evidence": weak, "summary": summary}  # fmt: skip
    return {**kept, "requested": "auto", "group_trial": trial}
