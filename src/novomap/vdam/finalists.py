"""The race's runners-up, carried on beside a one-class run, and the choices among them.

The race of starts (vdam.restarts) picks one start by the likelihood of a sample at iteration 30. On
a small C1 particle with a pseudo-symmetry that choice can fail: hb2_c1_40 (two haemoglobin
tetramers, 120 kDa, 40 px) ended at 1.64-2.00x its true-pose bound on 3 of 7 seeds, each time from
a start whose particles split between their pose and its mate about the particle's pseudo-2-fold,
so that the map blends the two. Each failed seed's runner-up, run alone, ended right (1.09-1.10x).
The likelihood of the particles under the VDAM maps preferred the wrong start at 30 and on two of
three at 70, and at 100 still could not tell one pair apart (0.8 standard errors). What did, on
every pair, was how well each run's particles agree with themselves: the two pseudo half-sets
reconstructed at the run's poses agree better when the poses are right (mean half-set FSC at iteration 100: right 0.658-0.670, wrong
0.624-0.639; benchmarks/results/2026-12-06-s51-finalists.md).

So a one-class run that imposes no group carries the race's best other starts (config.runners_up,
the finalists) on beside the winner, each with its own mini-batch order, and keeps the one whose pseudo
half-sets agree better at their poses (pose_agreement). With one runner-up (sessions 51-53) two
seeds of hb2_c1_40's thirteen still ended blended (1.45x, 1.35x): both finalists were. With several,
at the cuts of config.finalist_prunes (70 % of the run) the two that agree best go on and the others stop: at iteration
70 every right run already led its wrong pair (by 0.006-0.041), though not yet by the margin of
iteration 100. At n_iter both maps are also superposed (rotation, shift, hand): when they agree to
about the runs' own resolution, the two starts found the same solution (a sign that the map is
right) and the choice hardly matters. No earlier check can drop a runner-up by its map: before n_iter
a wrong map and a right one still agree to the runs' resolution (hb2_c1_40 seed 5: 16.7 Å at
iteration 80, runs at 17.8 Å; 16.6 Å at 100 with the runs at 10.9 Å). A runner-up costs ~40 % of the
run's time after the race up to iteration 70 and ~60 % after (52-63 s of hb2_c1_40's ~150 s for one
carried to the end), so runners-up go on only where the race could not tell them from the winner: a
lead under config.finalist_max_z standard errors (vdam.restarts.lead_z). Every race of hb2_c1_40's ten
seeds was within 0.1-3.4, those that chose a wrong start within 0.6-2.2; hb6_c1's winner led by 11.8
and its runner-up ended in the same map at 1.8x the job's time.

A one-class run with an imposed group of high order (config.grouped_min_order: T, O, I) races every
start to the race's last round (race_for_group: no cut at iteration 10), carries
config.grouped_runners_up of them whatever the winner's lead, each with the group imposed as the run
has it (vdam.imposition), only to config.grouped_choice_at per 100 of the run, and keeps there the run
whose pseudo half-sets (symmetrised about each run's axes) agree better. On a tight icosahedral shell
(adk_i_tight, 1.3 MDa, the particle 90 % of its box, SNR 0.05) the fold forms, or not, between
iterations 30 and 50: at 50 right runs' half-sets agreed 0.52-0.63, wrong ones' 0.38-0.45, on every seed;
at 40 not yet. The race's likelihood cannot tell at 30 (wrong winners led by 1.4-31 standard errors, 7 of 9 by more than the 4 that gates C1 runners-up), and
its cut at 10 had left a winner that never formed the fold on 7 of 15 seeds (each a whole retry, 2.4x
the job; one seed wrong after it). With every start raced to 30 and the runner-up carried, 15 of 15 seeds
ended right in one attempt, at 1.4-1.5x the time of a run whose race had chosen right
(benchmarks/results/2026-12-07-s60-grouped-race.md). Groups of low order (Cn, Dn) carry none: their
wrong folds have not been seen, and the real tutorial job (D2) would pay for it.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import torch

from novomap.io.particles import ParticleSet
from novomap.maps.align import align_maps
from novomap.maps.fsc import fsc, resolution_at
from novomap.reconstruct import Poses, half_set_maps
from novomap.symmetry.groups import PointGroup
from novomap.symmetry.symmetrise import symmetrise_in_place
from novomap.vdam import convergence
from novomap.vdam.config import VdamConfig
from novomap.vdam.imposition import impose_if_due
from novomap.vdam.iterate import current_resolution_a, run_iteration
from novomap.vdam.restarts import adopt, start_config
from novomap.vdam.state import RunState

# the half-sets' reconstructions use at most this many particles (a random sample, the same for both runs)
MAX_AGREEMENT_PARTICLES = 20_000
# two runs' maps are the same solution when they agree (FSC 0.5) to within this factor of the coarser
# run's resolution: on hb2_c1_40 at iteration 100 (runs at 10.9 Å) two right runs agreed to 12.5 Å
# (1.15x), a wrong run and a right one to 16.6-22.2 Å (1.52-2.04x)
SAME_SOLUTION_FACTOR = 1.25


def imposes(group: PointGroup | None) -> bool:
    """Whether `group` (None: none) is imposed on the class maps during the run."""
    return group is not None and group.order > 1


def finalists_carried(config: VdamConfig, group: PointGroup | None) -> int:
    """How many of the race's runners-up a run with this config and imposed group (None: none) may carry
    (config.runners_up 0: none, with or without a group)."""
    if config.n_classes != 1:
        return 0
    if not imposes(group):
        return config.runners_up
    return min(config.grouped_runners_up, config.runners_up) if group.order >= config.grouped_min_order else 0


def race_for_group(config: VdamConfig, group: PointGroup | None) -> VdamConfig:
    """The config a run with this imposed group (None: none) races its starts with: with a group of high
    order whose run carries runners-up (finalists_carried), no start is dropped before the race's last
    round (start_survivors: all). On adk_i_tight the first round's cut at iteration 10 (the best two go
    on) left the race a winner that never formed the fold on 7 of 15 seeds; with every start scored at
    30, on 2 of 10, and the runner-up was right on both."""
    starts = config.starts()
    if imposes(group) and starts > 1 and finalists_carried(config, group) > 0:
        return dataclasses.replace(config, start_survivors=starts)
    return config


def lead_limit(config: VdamConfig, group: PointGroup | None) -> float:
    """A runner-up is carried only if the race's winner led it by less than this many standard errors
    (vdam.restarts.lead_z): config.finalist_max_z without a group; with one, any lead (on adk_i_tight the
    winners that never formed the fold led by 1.4-31 standard errors at iteration 30, 7 of 9 by more than 4)."""
    return float("inf") if imposes(group) else config.finalist_max_z


def choice_iteration(config: VdamConfig, group: PointGroup | None) -> int:
    """The iteration at which the last runner-up is dropped or takes over: n_iter without a group,
    config.grouped_choice_at per 100 of the run with one (and never past n_iter)."""
    return min(config.n_iter, config.iteration_at(config.grouped_choice_at)) if imposes(group) else config.n_iter


def runs_kept(config: VdamConfig, iteration: int) -> int | None:
    """How many runs (the run and its runners-up) go on after `iteration` by config.finalist_prunes
    (iterations per 100 of the run); None: no cut is due by then."""
    due = [kept for per_100, kept in config.finalist_prunes if iteration >= config.iteration_at(per_100)]
    return max(1, min(due)) if due else None


def maps_agreement_a(a: RunState, b: RunState, pixel_size_a: float) -> float:
    """FSC 0.5 resolution (Å) of b's map superposed onto a's (rotation, shift and hand): one class each."""
    reference = a.maps[0].detach().double().cpu()
    moved = align_maps(reference, b.maps[0].detach().double().cpu(), pixel_size_a).volume
    return resolution_at(fsc(reference, moved), 0.5, reference.shape[-1], pixel_size_a)


def agreement_rows(n_particles: int, seed: int) -> torch.Tensor:
    """The particles whose half-sets are compared: all, or a random MAX_AGREEMENT_PARTICLES (fixed by the seed)."""
    if n_particles <= MAX_AGREEMENT_PARTICLES:
        return torch.arange(n_particles)
    order = torch.randperm(n_particles, generator=torch.Generator().manual_seed(seed + 29))
    return order[:MAX_AGREEMENT_PARTICLES].sort().values


def pose_agreement(state: RunState, particles: ParticleSet, half: torch.Tensor, rows: torch.Tensor, group: PointGroup | None = None) -> float:
    """Mean FSC over shells 1..N/2 between the two pseudo half-sets of `rows`, each reconstructed at
    the state's latest poses: how well the run's particles agree with themselves (0-1). With an imposed
    group, each half is symmetrised about the run's axes (its poses lie in one asymmetric unit)."""
    poses = Poses(state.rot_deg, state.tilt_deg, state.psi_deg, state.origin_x_a, state.origin_y_a)
    halves = half_set_maps(particles, rows, poses, half)
    if imposes(group) and state.symmetry_axes:
        rotation, shift = state.symmetry_axes[0]
        halves = tuple(symmetrise_in_place(h.float(), group, rotation, shift).double() for h in halves)
    curve = fsc(*halves)
    return float(curve[1 : particles.box_size // 2 + 1].mean())


def apart_from(run: RunState, state: RunState) -> RunState:
    """`run` as a runner-up to carry beside `state`: when it is `state` itself (which adopt overwrites
    field by field when another run takes over), a shallow copy of it that carries no runners-up."""
    if run is not state:
        return run
    kept = copy.copy(state)
    kept.finalists = []
    return kept


def keep_finalists(state: RunState, runners_up: list[tuple[int, RunState]]) -> None:
    """Carry `runners_up` ([(start number, its state)], the race's better first) alongside the run's state."""
    state.finalists = [{"start": start, "state": runner_up, "seconds": 0.0} for start, runner_up in runners_up]


def advance(state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, device, group: PointGroup | None = None) -> None:
    """After the run's iteration (and its group's imposition, if due): bring the carried runners-up (if
    any) to the same iteration, each with the group imposed as the run has it; when a cut of
    config.finalist_prunes is due (runs_kept), keep the runs (the run among them) whose pseudo
    half-sets agree best (prune); at choice_iteration, keep the better of the last two (choose). The
    choices go into the iteration's figures (state.history[-1]["finalists_pruned"], ["finalists"]).
    state may become a runner-up (its history with it)."""
    if not state.finalists:
        return
    started = time.perf_counter()
    for carried in state.finalists:
        runner_up, start = carried["state"], carried["start"]
        began = time.perf_counter()
        while runner_up.iteration < state.iteration:
            run_iteration(runner_up, particles, half, start_config(config, start), device, group)
            impose_if_due(runner_up, group, particles.pixel_size_a, config)
            convergence.keep_snapshot(runner_up, config)
            if convergence.early_check(runner_up.iteration, config):  # the run's settledness test needs it
                runner_up.history[-1]["map_agreement"] = convergence.map_agreement(runner_up, config)
        carried["seconds"] += time.perf_counter() - began
    pruned = None
    final = state.iteration >= choice_iteration(config, group)
    due = 2 if final else runs_kept(config, state.iteration)
    kept = None if due is None else max(2, due)  # choose takes the last two
    if kept is not None and 1 + len(state.finalists) > kept:
        pruned = prune(state, particles, half, config, kept, group)
    record = choose(state, particles, half, config, group) if final else None
    spent = time.perf_counter() - started
    figures = state.history[-1]
    if pruned is not None:
        figures["finalists_pruned"] = pruned
    if record is not None:
        figures["finalists"] = record
    figures["timings"] = {**figures.get("timings", {}), "finalist": spent}
    figures["seconds"] = figures.get("seconds", 0.0) + spent  # the display's time estimates count every run


def _race_record(state: RunState) -> dict | None:
    return next((f for f in state.history if "start_rounds" in f), None)


def prune(state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, kept: int = 2, group: PointGroup | None = None) -> dict:
    """Of the run and its carried runners-up, go on with the `kept` (>= 2) whose pose_agreement is
    best: state becomes the best (the run on a tie), state.finalists the others, the better first.
    Returns the record for the iteration's figures: every start, its pose agreement, and the starts
    kept (the best first)."""
    race = _race_record(state)
    leader = race["chosen_start"] if race is not None else 0
    members = [(leader, state)] + [(c["start"], c["state"]) for c in state.finalists]
    rows = agreement_rows(particles.n, config.seed)
    scores = [pose_agreement(member, particles, half, rows, group) for _, member in members]
    order = sorted(range(len(members)), key=lambda i: (-scores[i], i))
    first, others = members[order[0]], [(start, apart_from(member, state)) for start, member in (members[i] for i in order[1:kept])]
    seconds = sum(c["seconds"] for c in state.finalists)  # the runners-up's whole cost so far
    if first[1] is not state:
        _take_over(state, first[1], first[0], race)
    state.finalists = [{"start": start, "state": member, "seconds": seconds if i == 0 else 0.0} for i, (start, member) in enumerate(others)]
    return {"iteration": state.iteration, "starts": [m[0] for m in members], "pose_agreement": scores, "kept": [first[0]] + [s for s, _ in others]}


def choose(state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, group: PointGroup | None = None) -> dict:
    """Keep whichever of the run and its one carried runner-up has the better pose_agreement (the
    run on a tie); state becomes the runner-up if it wins. Returns the record for the iteration's
    figures: the two starts, their pose agreements, the chosen start, and how far their maps agree
    (maps_agree_a, resolution_a: the coarser run's; same_solution: the former within
    SAME_SOLUTION_FACTOR of it), the runners-up's whole cost after the race (seconds), and mid_run
    (True: chosen before n_iter, as a run with an imposed group does)."""
    carried = state.finalists[0]
    runner_up, start = carried["state"], carried["start"]
    state.finalists = []
    rows = agreement_rows(particles.n, config.seed)
    scores = [pose_agreement(s, particles, half, rows, group) for s in (state, runner_up)]
    agreement_a = maps_agreement_a(state, runner_up, particles.pixel_size_a)
    coarser_a = max(current_resolution_a(state, particles), current_resolution_a(runner_up, particles))
    race = _race_record(state)
    leader = race["chosen_start"] if race is not None else 0
    record = {
        "starts": [leader, start], "pose_agreement": scores, "chosen_start": leader,
        "maps_agree_a": agreement_a, "resolution_a": coarser_a, "same_solution": agreement_a <= SAME_SOLUTION_FACTOR * coarser_a,
        "seconds": carried["seconds"], "mid_run": state.iteration < config.n_iter,
    }
    if scores[1] > scores[0]:
        record["chosen_start"] = start
        _take_over(state, runner_up, start, race)
    return record


# the records of the race and its runners-up that a run's history keeps when a runner-up takes over
_RECORDS = ("start_rounds", "chosen_start", "finalist_starts", "finalists_pruned")


def _take_over(state: RunState, runner_up: RunState, start: int, race: dict | None) -> None:
    """Make state the runner-up in place; its history keeps the race's record `race` (now naming the
    runner-up) and any earlier pruning's record."""
    kept = [(f["iteration"], {k: f[k] for k in _RECORDS if k in f}) for f in state.history if any(k in f for k in _RECORDS)]
    adopt(state, runner_up)
    state.finalists = []
    by_iteration = {f.get("iteration"): f for f in state.history}
    for iteration, record in kept:
        if race is not None and iteration == race["iteration"]:
            record["chosen_start"] = start
        if iteration in by_iteration:
            by_iteration[iteration].update(record)
