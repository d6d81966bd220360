"""Independent short starts, so that one unlucky random start cannot decide the run.

VDAM from random blobs can settle in a wrong solution (a map of the wrong fold with confident,
wrong poses), and the way in is decided in the first tens of iterations. So config.starts() random
starts (other initial maps and mini-batch orders) race in rounds: at each round's iteration every
start still in the race is scored, and only the best continue (config.start_survivors after
start_iterations, one after start_final_iterations, both per 100 iterations of the run, so the
same point of VDAM's schedules). The run then continues from the winner.

The score is the mean log marginal likelihood of the same particles (a fixed random sample), every
start scored with the same noise spectrum, Fourier window and global search, so the scores differ
only through the maps and the direction and offset priors. Measured on simulated beta-gal
(benchmarks/results/2026-11-30-starts.md): at iteration 30 a wrong fold scores 15-20 units per
particle below the right ones, while at iteration 10 the ranking is still noisy (hence a first
round that only halves the field). Since the first round's scores are noisy, a start that the
sample cannot tell from the last survivor (within config.start_tie_z standard errors of the paired
per-particle differences) goes on with the survivors (survivors_with_ties). The scores and the
choice go into the iteration's figures.

With an explicit point group the run goes on with the group imposed (symmetry.impose), so the last
round scores each start's maps symmetrised about their own axes: what the run would continue from.
A wrong fold can fit the particles better in C1 than the right one at iteration 30 and lose when
forced into the group: tight octahedral adk_o, seed 1, scored -473.4 (wrong) vs -474.9 (right) in C1
and -488.2 vs -480.6 symmetrised (benchmarks/results/2026-12-01-race-symmetrised.md). The first round
keeps C1 scores: at iteration 10 the maps are too rough for their axes, and it only halves the field.
"""

from __future__ import annotations

import dataclasses

import torch

from novomap.io.particles import ParticleSet
from novomap.symmetry.groups import PointGroup
from novomap.symmetry.impose import impose_group
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState

# fields that describe the job rather than the start: kept when another start wins
_KEEP = ("fingerprint",)


def competition_rounds(config: VdamConfig) -> list[tuple[int, int]]:
    """[(iteration, starts that go on)] of the race; [] for one start or a run shorter than 50
    iterations (its phases are too short to tell starts apart)."""
    if config.starts() < 2 or config.n_iter < 50:
        return []
    scale = config.n_iter / 100
    rounds = []
    if 1 < config.start_survivors < config.starts():
        rounds.append((max(1, round(config.start_iterations * scale)), config.start_survivors))
    last = max(1, round(config.start_final_iterations * scale))
    if rounds and last <= rounds[0][0]:
        rounds = []
    rounds.append((last, 1))
    return rounds


def competition_iteration(config: VdamConfig) -> int:
    """The iteration at which the race starts (0: no race)."""
    rounds = competition_rounds(config)
    return rounds[0][0] if rounds else 0


def start_seed(config: VdamConfig, start: int) -> int:
    """Seed of start s (start 0 is the run's own seed)."""
    return config.seed + 104_729 * start


def start_config(config: VdamConfig, start: int) -> VdamConfig:
    """The config start `start` runs with: its own seed (initial map and mini-batch order), one start."""
    return dataclasses.replace(config, seed=start_seed(config, start), n_starts=1)


def score_sample(n_particles: int, config: VdamConfig) -> torch.Tensor:
    """The particles every start is scored on: a fixed random sample of up to config.start_score_particles."""
    order = torch.randperm(n_particles, generator=torch.Generator().manual_seed(config.seed + 17))
    return order[: min(n_particles, config.start_score_particles)].sort().values


def score_starts(
    states: list[RunState],
    particles: ParticleSet,
    half: torch.Tensor,
    config: VdamConfig,
    device,
    group: PointGroup | None = None,
    per_particle: list[torch.Tensor] | None = None,
) -> list[float]:
    """Mean log marginal likelihood of the sample under each start's maps, all with the first
    start's noise spectrum and the coarsest window and sampling among them; with a group (order > 1),
    each start's maps symmetrised about their own axes first (the states are left as they are).
    per_particle: if given, each start's (n_sample,) float64 log likelihoods are appended to it."""
    from novomap.vdam.iterate import as_devices, expectation, search_setup

    sample = score_sample(particles.n, config)
    shell = min(s.resolution_shell for s in states)
    order = min(s.healpix_order for s in states)
    scoring = dataclasses.replace(config, local_searches=False)
    scores = []
    for state in states:
        trial = state.scratch_copy()
        trial.sigma2 = states[0].sigma2
        trial.resolution_shell = shell
        if group is not None and group.order > 1:
            trial.maps, _ = impose_group(trial.maps, group, particles.pixel_size_a)
        if trial.healpix_order != order:
            trial.healpix_order = order
            n_dir = 12 * 4**order
            trial.direction_prior = torch.full((state.n_classes, n_dir), 1.0 / (state.n_classes * n_dir), dtype=torch.float64)
        grid, current_size, coarse_size = search_setup(trial, particles, scoring, advance=False)
        expectation(trial, particles, sample, half, grid, current_size, coarse_size, scoring, as_devices(device), {}, with_sums=False)
        values = trial.log_likelihood[sample].double()
        if per_particle is not None:
            per_particle.append(values)
        scores.append(float(values.mean()))
    return scores


def ranked_starts(scores: list[float]) -> list[int]:
    """Indices of the scores from highest to lowest (the earlier start first on ties)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def survivors_with_ties(scores: list[float], per_particle: list[torch.Tensor], survivors: int, tie_z: float) -> list[int]:
    """Indices of the starts that go on: the best `survivors` by score, and every other start that the
    sample cannot tell from the last of them (its mean deficit per particle within tie_z standard
    errors of the paired per-particle differences), best first. Without per-particle values (one per
    start), the best `survivors` alone.

    At a tenth of the run the scores are noisy: a start whose map goes on to the right fold can trail
    the second by far less than the sample's error (simulated beta-gal with 40 % junk, seed 5: 0.03
    against a standard error of 0.55 per particle), and halving the field then drops it at random.
    """
    ranked = ranked_starts(scores)
    kept = ranked[:survivors]
    if tie_z <= 0 or len(per_particle) != len(scores) or not kept:
        return kept
    last = per_particle[kept[-1]]
    for other in ranked[survivors:]:
        deficit = last - per_particle[other]
        if float(deficit.mean()) <= tie_z * paired_standard_error(deficit):
            kept.append(other)
    return kept


def paired_standard_error(differences: torch.Tensor) -> float:
    """Standard error of the mean of per-particle score differences (0 for fewer than two)."""
    return float(differences.std()) / differences.numel() ** 0.5 if differences.numel() > 1 else 0.0


def lead_z(scores: list[float], per_particle: list[torch.Tensor], rank: int = 1) -> float:
    """The best start's lead over the start ranked `rank` (1: the second), in standard errors of their
    paired per-particle differences; 0 without per-particle values (the sample cannot tell), inf for
    identical particles."""
    if len(scores) <= rank or len(per_particle) != len(scores):
        return 0.0
    ranked = ranked_starts(scores)
    lead = per_particle[ranked[0]] - per_particle[ranked[rank]]
    error = paired_standard_error(lead)
    return float(lead.mean()) / error if error > 0 else float("inf")


def adopt(state: RunState, winner: RunState) -> None:
    """Make `state` the winning start, in place (the job's own fields kept)."""
    for f in dataclasses.fields(RunState):
        if f.name not in _KEEP:
            setattr(state, f.name, getattr(winner, f.name))


def compete(
    state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, device, group: PointGroup | None = None
) -> dict:
    """Race the starts (state is start 0, at the first round's iteration) and continue from the
    winner, in place: state may end at a later iteration (the last round's). group: the point group
    the run imposes (None or C1: none); the last round scores the starts' maps symmetrised by it.
    A one-class run keeps the last round's best config.runners_up other starts in state.finalists
    (vdam.finalists), those the winner led by less than config.finalist_max_z standard errors; with a
    group of high order imposed, its best config.grouped_runners_up whatever the lead (finalists_carried, lead_limit).

    Returns {"start_rounds": [{"iteration", "starts", "scores", "scored_as" (group name), "lead_z" (the
    best start's lead over the second: lead_z)}, ...], "chosen_start": i, and "finalist_starts" (the
    runners-up that go on, the better first) when any does, with "finalists_choice_at" (the iteration
    of the choice) when it comes before n_iter}.
    """
    from novomap.vdam.finalists import apart_from, choice_iteration, finalists_carried, imposes, keep_finalists, lead_limit
    from novomap.vdam.iterate import run_iteration
    from novomap.vdam.start import initial_state, start_data

    shared = start_data(particles, config)  # the same for every start: only the seed differs
    contenders = [(0, state)] + [(s, initial_state(particles, start_config(config, s), shared)) for s in range(1, config.starts())]
    rounds = []
    runners_up = []
    for iteration, survivors in competition_rounds(config):
        for start, contender in contenders:
            while contender.iteration < iteration:
                run_iteration(contender, particles, half, start_config(config, start), device)
        symmetrised = group if survivors == 1 and config.start_score_symmetrised else None
        per_particle: list[torch.Tensor] = []
        scores = score_starts([c for _, c in contenders], particles, half, config, device, symmetrised, per_particle=per_particle)
        scored_as = symmetrised.name if symmetrised is not None else "C1"
        rounds.append({"iteration": iteration, "starts": [s for s, _ in contenders], "scores": scores, "scored_as": scored_as})
        tie_z = config.start_tie_z if survivors > 1 else 0.0  # the last round picks one: a tie there is a coin toss either way
        ranked = ranked_starts(scores)
        runners_up = [(contenders[i], lead_z(scores, per_particle, rank)) for rank, i in enumerate(ranked[1:], start=1)]
        if runners_up:
            rounds[-1]["lead_z"] = runners_up[0][1]
        contenders = [contenders[i] for i in survivors_with_ties(scores, per_particle, survivors, tie_z)]
    # a one-class run in C1 (`--sym auto` until it chooses) keeps each start's maps as the race left them:
    # only such runs try larger groups after a fold change (auto_symmetry.with_race_map_cc)
    if group is None and config.n_classes == 1:
        for _, contender in contenders + [c for c, _ in runners_up]:
            contender.race_maps = contender.maps.detach().to("cpu", torch.float32).clone()
    chosen, winner = contenders[0]
    close = [c for c, z in runners_up[: finalists_carried(config, group)] if z < lead_limit(config, group)]
    carried = [(start, apart_from(c, state)) for start, c in close]  # start 0 is `state` itself
    if winner is not state:
        adopt(state, winner)
    outcome = {"start_rounds": rounds, "chosen_start": chosen}
    if carried:
        keep_finalists(state, carried)
        outcome["finalist_starts"] = [start for start, _ in carried]
        if imposes(group):  # a grouped run chooses before n_iter
            outcome["finalists_choice_at"] = choice_iteration(config, group)
    return outcome
