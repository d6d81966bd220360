"""Independent short starts, so that one unlucky random start cannot decide the run.

VDAM from random blobs can settle in a wrong solution (a near-spherical map with confident,
wrong poses on a tight particle; two quality groups over seeds on real data), and the way out is
decided in the first iterations. So, at iteration config.start_iterations, config.n_starts - 1
other starts (other random initial maps and mini-batch orders) are run to the same iteration, and
the run continues from the one whose maps explain the data best: the mean log marginal
likelihood of the same particles (a fixed random sample), every start scored with the same noise
spectrum, Fourier window and global search, so the scores differ only through the maps, the
direction and offset priors. The scores and the choice go into the iteration's figures.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from novomap.io.particles import ParticleSet
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState

# per-particle arrays a scoring pass writes to (cloned, so that scoring leaves the start untouched)
_PER_PARTICLE = ("rot_deg", "tilt_deg", "psi_deg", "origin_x_a", "origin_y_a", "class_number", "max_probability", "n_significant", "log_likelihood")
# fields that describe the job rather than the start: kept when another start wins
_KEEP = ("fingerprint",)


def competition_iteration(config: VdamConfig) -> int:
    """The iteration at which the starts are compared: config.start_iterations per 100 iterations
    of the run (the same point of VDAM's schedules, which scale with n_iter); 0 = no competition
    (a single start, or a run shorter than 50 iterations, where the phases are too short to tell)."""
    if config.n_starts < 2 or config.n_iter < 50:
        return 0
    return max(1, round(config.start_iterations * config.n_iter / 100))


def start_seed(config: VdamConfig, start: int) -> int:
    """Seed of start s (start 0 is the run's own seed)."""
    return config.seed + 104_729 * start


def score_sample(n_particles: int, config: VdamConfig) -> torch.Tensor:
    """The particles every start is scored on: a fixed random sample of up to config.start_score_particles."""
    order = torch.randperm(n_particles, generator=torch.Generator().manual_seed(config.seed + 17))
    return order[: min(n_particles, config.start_score_particles)].sort().values


def score_starts(states: list[RunState], particles: ParticleSet, half: torch.Tensor, config: VdamConfig, device) -> list[float]:
    """Mean log marginal likelihood of the sample under each start's maps, all with the first
    start's noise spectrum and the coarsest window and sampling among them."""
    from novomap.vdam.iterate import as_devices, expectation, search_setup

    sample = score_sample(particles.n, config)
    shell = min(s.resolution_shell for s in states)
    order = min(s.healpix_order for s in states)
    scoring = dataclasses.replace(config, local_searches=False)
    scores = []
    for state in states:
        trial = copy.copy(state)
        for name in _PER_PARTICLE:
            setattr(trial, name, getattr(state, name).clone())
        trial.sigma2 = states[0].sigma2
        trial.resolution_shell = shell
        if trial.healpix_order != order:
            trial.healpix_order = order
            n_dir = 12 * 4**order
            trial.direction_prior = torch.full((state.n_classes, n_dir), 1.0 / (state.n_classes * n_dir), dtype=torch.float64)
        grid, current_size, coarse_size = search_setup(trial, particles, scoring, advance=False)
        expectation(trial, particles, sample, half, grid, current_size, coarse_size, scoring, as_devices(device), {}, with_sums=False)
        scores.append(float(trial.log_likelihood[sample].mean()))
    return scores


def best_start(scores: list[float]) -> int:
    """Index of the highest score (the first on ties)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def adopt(state: RunState, winner: RunState) -> None:
    """Make `state` the winning start, in place (the job's own fields kept)."""
    for f in dataclasses.fields(RunState):
        if f.name not in _KEEP:
            setattr(state, f.name, getattr(winner, f.name))


def compete(state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, device) -> dict:
    """Run the other starts to state.iteration, score all, continue from the best (in place).

    Returns {"start_scores": [...], "chosen_start": i} (0 = the run's own start).
    """
    from novomap.vdam.iterate import run_iteration
    from novomap.vdam.start import initial_state

    states = [state]
    for start in range(1, config.n_starts):
        other = dataclasses.replace(config, seed=start_seed(config, start), n_starts=1)
        alternative = initial_state(particles, other)
        while alternative.iteration < state.iteration:
            run_iteration(alternative, particles, half, other, device)
        states.append(alternative)
    scores = score_starts(states, particles, half, config, device)
    chosen = best_start(scores)
    if chosen != 0:
        history = state.history
        adopt(state, states[chosen])
        state.history = states[chosen].history if states[chosen].history else history
    return {"start_scores": scores, "chosen_start": chosen}
