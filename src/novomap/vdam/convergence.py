"""Has VDAM converged at its last planned iteration? If not, how many more iterations to run.

RELION stops a VDAM run after --iter mini-batches whatever the map does. On most particles the map
has settled long before (between iterations 80 and 100 it changes little at the resolution the run
has reached), but a large asymmetric particle can still be forming: hb16_c1 (960 kDa, C1) moved from
a wrong fold at 25.5 Å to 16.3 Å in 50 more iterations
(benchmarks/results/2026-12-01-convergence.md). So at the last planned iteration, and every
`check_every` iterations after it, the class maps are compared with those of `lag` iterations
before; while they still differ at the run's own resolution, VDAM goes on with its final-phase
settings (the schedules hold their final values past n_iter), up to config.extra_iterations_cap() more.

A map must be seen settled at two checks in a row, the first one made check_every iterations before
n_iter (it decides nothing on its own). A slowly forming map can pass one check on its way:
hb16_c1 seed 1 agreed 0.952 with iteration 110 at iteration 130 (cc 0.81 to the truth, wrong at
FSC 0.5), then 0.91 and 0.83 at the next checks while it moved to the right structure (cc 0.94 by
iteration 160), and settled for good at 0.956 and 0.975 (iterations 170, 180); seed 6 passed at
n_iter (0.950) after 0.947 at iteration 90, with a wrong map (cc 0.62), and reached the right one
(cc 0.94) by iteration 160. Most settled runs of the suite agree at 0.95-0.995 at both checks and
stop at n_iter as before; a few go on for 10 iterations (real beta-gal seed 1: 0.934 at iteration 90,
0.974 and 0.984 after; 1.02x the time, the same map)
(benchmarks/results/2026-12-01-convergence-confirmed.md).

The two maps are compared over the shells both had reached (the earlier one's resolution when
the window has grown since): when the final phase's window grows at its first iteration
(vdam.iterate.map_information), the particles had not yet reached the shells it adds 20 iterations before, and counting
them held every run of the real tutorial particles 10 iterations past --iter for nothing
(benchmarks/results/2026-12-03-accumulated-ssnr.md).
"""

from __future__ import annotations

import torch

from novomap.maps.fsc import fsc
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState


def first_check(config: VdamConfig) -> int:
    """The iteration of the first comparison: check_every before n_iter (it only informs the one at n_iter)."""
    return config.n_iter - config.convergence_check_every


def compared_iteration(iteration: int, config: VdamConfig) -> bool:
    """Whether this iteration's maps take part in a comparison: first_check - lag, then every
    check_every iterations (..., first_check, n_iter, n_iter + check_every, ...)."""
    every = config.convergence_check_every
    return every > 0 and iteration >= first_check(config) - config.convergence_lag and (iteration - config.n_iter) % every == 0


def early_check(iteration: int, config: VdamConfig) -> bool:
    """Whether this iteration is the check before n_iter (its agreement is recorded, nothing decided)."""
    return config.convergence_check_every > 0 and iteration == first_check(config) and iteration > 0


def keep_snapshot(state: RunState, config: VdamConfig) -> None:
    """Store the class maps of a compared iteration; drop those older than convergence_lag."""
    if not compared_iteration(state.iteration, config):
        return
    state.map_snapshots[state.iteration] = state.maps.detach().to("cpu", torch.float32).clone()
    state.snapshot_shells[state.iteration] = state.resolution_shell
    for iteration in [i for i in state.map_snapshots if i < state.iteration - config.convergence_lag]:
        del state.map_snapshots[iteration]
        state.snapshot_shells.pop(iteration, None)


def map_change(before: torch.Tensor, after: torch.Tensor, shell: int, class_fraction: torch.Tensor) -> float:
    """Agreement of two sets of class maps (K, N, N, N): per class the mean FSC over shells
    1..shell (the resolution the run has reached), averaged with the classes' fractions as weights."""
    shell = max(1, min(shell, before.shape[-1] // 2))
    weights = class_fraction.double().clamp(min=0)
    weights = weights / weights.sum() if float(weights.sum()) > 0 else torch.full_like(weights, 1.0 / len(weights))
    per_class = torch.stack([fsc(b, a)[1 : shell + 1].mean() for b, a in zip(before, after)])
    return float((per_class * weights).sum())


def map_agreement(state: RunState, config: VdamConfig) -> float | None:
    """map_change between this iteration's maps and those of convergence_lag iterations ago (None
    when that snapshot is missing, e.g. a run continued from a checkpoint written before it), over
    the shells both maps had reached: beyond the earlier one's resolution it held no information to
    agree with (the window grows at the start of the final phase, vdam.iterate.map_information)."""
    earlier = state.iteration - config.convergence_lag
    before = state.map_snapshots.get(earlier)
    if before is None or before.shape != state.maps.shape:
        return None
    shell = min(state.resolution_shell, state.snapshot_shells.get(earlier, state.resolution_shell))
    return map_change(before.double(), state.maps.detach().cpu().double(), shell, state.class_fraction)


def previous_agreement(history: list[dict], iteration: int) -> float | None:
    """The map agreement found at the check before `iteration` (None: no earlier check, or none since
    the settling test restarted: an iteration whose figures hold "settling_restarted", where the maps
    changed regime, e.g. `--sym auto` imposed its group; checks from before it compared other maps).
    history: the run's per-iteration figures (RunState.history)."""
    for figures in reversed(history):
        if figures.get("iteration", iteration) >= iteration:
            continue
        if figures.get("settling_restarted"):
            return None
        if figures.get("map_agreement") is not None:
            return float(figures["map_agreement"])
    return None


def restart_settling(state: RunState, config: VdamConfig, figures: dict) -> int:
    """Start the settling test afresh at this iteration, whose maps have just changed regime (an imposed
    group): the snapshots of earlier maps go, this iteration's maps are kept (when compared), and its
    figures mark the restart (previous_agreement). -> the first iteration that can be checked again,
    convergence_lag on (capped at the run's extension limit)."""
    state.map_snapshots.clear()
    state.snapshot_shells.clear()
    keep_snapshot(state, config)
    figures["settling_restarted"] = True
    return min(config.n_iter + config.extra_iterations_cap(), state.iteration + config.convergence_lag)


def settled(history: list[dict], iteration: int, agreement: float, config: VdamConfig) -> bool:
    """Agreement at the check of `iteration`, and at the one before if there was one (a map is
    trusted to have settled only when it passes twice in a row)."""
    before = previous_agreement(history, iteration)
    return agreement >= config.convergence_min_fsc and (before is None or before >= config.convergence_min_fsc)


def last_iteration(state: RunState, config: VdamConfig, agreement: float | None) -> int:
    """The iteration the run should reach: n_iter, or 10 (check_every) more while the maps still move.

    Called at the current target with this iteration's map_agreement; returns the target unchanged
    when the run has converged (settled: agreement >= convergence_min_fsc here and at the check
    before, if any), when no snapshot allowed the comparison (agreement None), or at the cap."""
    target = max(config.n_iter, state.iteration)
    if config.convergence_check_every <= 0 or config.extra_iterations_cap() <= 0:
        return target
    cap = config.n_iter + config.extra_iterations_cap()
    if state.iteration < config.n_iter or state.iteration >= cap:
        return target
    if agreement is None or settled(state.history, state.iteration, agreement, config):
        return target
    return min(cap, state.iteration + config.convergence_check_every)
