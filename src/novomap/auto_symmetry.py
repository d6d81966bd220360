"""`--sym auto` during a run: when the particles choose the group, what each decision records, and
the check of a group chosen late against the larger groups that contain it.

The choice itself (analysis.symmetry_by_particles) scores the groups the map makes plausible by how
well each one's symmetrised half map predicts the other half's images; this module decides when it
runs (at config.auto_symmetry_at per 100 of the run, and at a check past n_iter), imposes what it
chooses, and keeps the record that symmetry.txt, the report and the polyhedral trials
(symmetry.group_trial) read. initial_model runs the job around it.
"""

from __future__ import annotations

import time

import torch

from novomap.analysis.symmetry_by_particles import choose_group_by_particles
from novomap.final_map import final_reconstruction
from novomap.io.particles import ParticleSet
from novomap.symmetry.choice import AUTO, symmetry_record
from novomap.symmetry.group_trial import race_map_cc, trial_groups
from novomap.symmetry.groups import PointGroup, has_larger_group, point_group
from novomap.vdam import convergence
from novomap.vdam.config import VdamConfig
from novomap.vdam.imposition import impose_on_class_maps
from novomap.vdam.state import RunState


def auto_choice_due(state: RunState, config: VdamConfig) -> bool:
    """`--sym auto`, still in C1 after this iteration: whether the particles choose the group now, at the
    first iteration at or past config.auto_symmetry_at per 100 of the run and before n_iter, once."""
    if config.auto_symmetry_at <= 0 or state.auto_symmetry is not None:
        return False
    return config.iteration_at(config.auto_symmetry_at) <= state.iteration < config.n_iter


def last_decision(record: dict) -> int:
    """The iteration of `--sym auto`'s latest decision during the run (group_mid_run's record): its last
    check against larger groups, else its choice."""
    return record.get("checked_at_iteration", record["chosen_at_iteration"])


def chooses_past_n_iter(state: RunState, config: VdamConfig) -> bool:
    """`--sym auto` at a check that sends the run on past n_iter: whether the particles choose there
    (config.auto_symmetry_mid_run), unless they already have at or after n_iter (once). A run still in C1
    chooses among all plausible groups, one with a group imposed among the larger groups containing it."""
    earlier = state.auto_symmetry
    if earlier is None:
        return config.auto_symmetry_mid_run
    return config.auto_symmetry_mid_run and last_decision(earlier) < config.n_iter


def group_mid_run(
    state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, device, figures: dict, last: int,
    imposed: PointGroup | None = None,
) -> tuple[PointGroup | None, int]:
    """`--sym auto` during the run: the particles choose the group now, as they would at the end
    (analysis.symmetry_by_particles, on the largest class's reconstruction at the current poses), and a
    group > C1 is imposed from here as an explicit one is, without the race's runners-up (they are
    carried for C1 particles: vdam.finalists). The settling test starts again (the maps compared so far
    were C1's) -> (the group, None for C1, and the iteration to reach).

    When: at config.auto_symmetry_at per 100 of the run (auto_choice_due), after the finalists' prune,
    and again, if the particles kept C1 then, at a check that sends the run on past n_iter
    (chooses_past_n_iter). A C1 run of a symmetric particle settles slowly, its posteriors split over
    symmetry mates (the real tutorial particles: still changing at the cap, twice n_iter;
    benchmarks/results/2026-12-05-s40-sym-auto-mid-run.md), and until its group is imposed it goes
    without the explicit group's search over one asymmetric unit: on a tight C2 dimer a choice at
    iteration 100 cost 0.1-0.6 Å against --sym C2 (benchmarks/results/2026-12-07-suite-s57-sym-auto-s2-4.md).
    At 70 the particles chose right on every checkpoint tried, at 50 not on a pseudo-C2 pair
    (benchmarks/results/2026-12-07-s57-sym-auto-earlier-choice.md). Runs that settle in C1 decide
    again at the end.

    imposed: the group chosen earlier in the run, when a check past n_iter finds its map still moving:
    only larger groups containing it are put to the particles (at_least), and one that wins replaces it
    (an octahedral particle given D4 at iteration 70 never settled in it: 40 iterations past n_iter;
    benchmarks/results/2026-12-07-s58-sym-auto-at-70.md). The group kept -> (imposed, last), unchanged."""
    started = time.perf_counter()
    largest = int(torch.argmax(state.class_fraction))
    volume = final_reconstruction(state, particles, largest, config)
    choice = choose_group_by_particles(volume, state, particles, half, largest, config, device, at_least=imposed)
    figures["auto_symmetry"] = choice.group.name
    if imposed is not None:
        figures["auto_symmetry_from"] = imposed.name
    figures["timings"] = {**figures.get("timings", {}), "auto_symmetry": time.perf_counter() - started}
    if imposed is not None and choice.group.name == imposed.name:
        state.auto_symmetry["checked_at_iteration"] = state.iteration
        state.auto_symmetry["larger_groups_check"] = larger_groups_check(imposed.name, state.auto_symmetry["chosen_at_iteration"], choice, f"at iteration {state.iteration}")
        return imposed, last
    score = choice.alignment.score if choice.alignment is not None else 0.0
    earlier = state.auto_symmetry
    state.auto_symmetry = {**symmetry_record(AUTO, choice.group, score, None, choice), "chosen_at_iteration": state.iteration}
    with_race_map_cc(state.auto_symmetry, state, largest, particles.pixel_size_a, earlier)
    if imposed is not None:
        state.auto_symmetry.update(enlarged_from=imposed.name, enlarged_from_iteration=earlier["chosen_at_iteration"])
        state.symmetry_axes = None  # the smaller group's axes: the larger group's are searched afresh
    if choice.group.order == 1:
        return None, last
    if state.finalists:
        figures["finalists_dropped"] = [carried["start"] for carried in state.finalists]
        state.finalists = []
    impose_on_class_maps(state, choice.group, particles.pixel_size_a, config)
    return choice.group, max(last, convergence.restart_settling(state, config, figures))


def with_race_map_cc(record: dict, state: RunState, class_index: int, pixel_size_a: float, earlier: dict | None = None) -> dict:
    """`record` (a `--sym auto` decision) with race_map_cc, how well the class's VDAM map agrees with the
    race's winner at the race's end (symmetry.group_trial: a fold changed since triggers the polyhedral
    trials), where the group applied is in a polyhedral group and the run kept race maps (a one-class
    run in C1 with a race: vdam.restarts.compete; only those run trials); else unchanged. Measured
    once per run: a later decision carries the first one's (`earlier`), which read the map the race left behind."""
    if carry_race_map_cc(record, earlier):
        return record
    if state.race_maps is not None and trial_groups(record["applied"]):
        record["race_map_cc"] = race_map_cc(state.race_maps[class_index], state.maps[class_index].float().cpu(), pixel_size_a)
    return record


def carry_race_map_cc(record: dict, earlier: dict | None) -> bool:
    """Copy an earlier decision's race_map_cc into `record`; whether there was one."""
    if earlier is None or "race_map_cc" not in earlier:
        return False
    record["race_map_cc"] = earlier["race_map_cc"]
    return True


def enlarged_at_end(state: RunState, group: PointGroup) -> bool:
    """Whether `group` replaces a group that `--sym auto` imposed during the run (its axes do not fit it)."""
    return state.auto_symmetry is not None and state.auto_symmetry["applied"] not in ("C1", group.name)


def larger_groups_check(kept: str, imposed_at: int, larger, when: str) -> dict:
    """The record of a check of the group `kept`, imposed from iteration `imposed_at`, against the larger
    plausible groups containing it (`larger`: analysis.symmetry_by_particles.GroupByParticles with
    at_least; `when`: "at iteration N" or "at the end"): the groups, their scores and a phrase for
    symmetry.txt."""
    if larger.unjudged:
        phrase = f"{when} no larger group containing {kept} was plausible enough to put to the particles"
    elif larger.group.name == kept:
        margins = ", ".join(f"{name} {margin:+.2f}" for name, margin in larger.margins()[1:])
        phrase = f"{when} the particles kept {kept} against the larger groups containing it ({margins})"
    else:
        phrase = f"{kept} imposed from iteration {imposed_at}, {larger.group.name} {when}"
    return {"groups": [name for name, _ in larger.scores], "scores": [float(score) for _, score in larger.scores], "summary": phrase}


def end_check_record(imposed: dict, larger, alignment_score: float) -> dict:
    """symmetry.txt's record for a group imposed during the run (`imposed`: group_mid_run's record) and
    checked at the end against the larger plausible groups that contain it (`larger`:
    analysis.symmetry_by_particles.GroupByParticles with at_least). The group kept has the mid-run
    record with the check beside it; a larger group that won has its own, naming the one it replaced.

    Why the check: at iteration 70 the particles of an octahedral particle chose D4, by 1.5 units over O
    (at 100 they chose O; benchmarks/results/2026-12-07-s58-sym-auto-at-70.md)."""
    kept = imposed["applied"]
    check = larger_groups_check(kept, imposed["chosen_at_iteration"], larger, "at the end")
    if larger.group.name == kept:
        return {**imposed, "alignment_score": alignment_score, "larger_groups_check": check}
    record = symmetry_record(AUTO, larger.group, alignment_score, None, larger)
    carry_race_map_cc(record, imposed)
    return {**record, "enlarged_from": kept, "enlarged_from_iteration": imposed["chosen_at_iteration"], "larger_groups_check": check}


def checks_at_end(state: RunState, config: VdamConfig) -> bool:
    """`--sym auto` with a group imposed during the run: whether the particles check it against larger
    groups on the final reconstruction: unless a check against larger groups was made from n_iter on,
    on a map still moving in that group; that one stands (each costs ~10 s).

    A group chosen from n_iter on (from C1, or enlarged from a smaller group) was chosen on a map that
    did not yet have it, so it is checked at the end like one chosen earlier: on a tight icosahedral
    shell the particles chose T at iteration 100 from a C1 map (I 133 units behind), and the run ended
    in T at 1.11x the true-pose limit, although its settled T map was icosahedral to within the
    alignment score of an I run (0.015; benchmarks/results/2026-12-07-s62-sym-auto-end-check.md).
    O and I are not checked: no group contains them."""
    record = state.auto_symmetry
    if not has_larger_group(point_group(record["applied"])):
        return False
    return "checked_at_iteration" not in record or record["checked_at_iteration"] < config.n_iter
