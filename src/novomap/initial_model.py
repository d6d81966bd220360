"""The de novo initial-model job: VDAM from random blobs, then symmetry alignment (library entry point).

run_initial_model is what `novomap initial-model` calls; it reads like the job:
initialise (or continue) -> iterate -> write every `write_every` -> assign all particles ->
initial_model.mrc (the largest class, with any class of the same structure pooled into it, reconstructed
from its particles at their final poses, aligned to the group's standard axes and symmetrised).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from novomap.analysis.confidence import Evidence, assess_run, chosen_agreement, close_finalists, warnings_for, write_evidence
from novomap.analysis.pool_classes import PooledClass, pool_same_structure
from novomap.analysis.symmetry_by_particles import choose_group_by_particles
from novomap.auto_symmetry import (
    auto_choice_due, checks_at_end, chooses_past_n_iter, end_check_record, enlarged_at_end, group_mid_run, with_race_map_cc,
)
from novomap.errors import NovomapError
from novomap.final_map import final_map, final_reconstruction, fine_final_map, reconstruction_onto_vdam
from novomap.io.mrc import write_map
from novomap.io.particles import ParticleSet
from novomap.io.star import refuse_ctf_premultiplied
from novomap.io.working_grid import final_grid_max_resolution_a, to_output_grid
from novomap.outputs.attempts import free_attempt_dir, move_attempt
from novomap.outputs.background import BackgroundWriter
from novomap.outputs.relion import state_path_for, write_iteration
from novomap.symmetry.choice import (
    align_near, apply_point_group, choose_group, requested_group, symmetry_record, write_symmetry_file,
)
from novomap.symmetry.group_trial import best_scored, fold_changed, trial_groups, trial_record, why_trials
from novomap.symmetry.groups import PointGroup, point_group
from novomap.vdam import convergence, finalists
from novomap.vdam.config import VdamConfig, starts_for_classes
from novomap.vdam.imposition import impose_if_due
from novomap.vdam.iterate import as_devices, assign_all, pseudo_halves, run_iteration, search_setup
from novomap.vdam.start import initial_state
from novomap.vdam.state import RunState
from novomap.vdam.unit_search import spread_equivalent_poses
from novomap.vdam.update import fisher_weight_floor


@dataclass
class JobResult:
    out_dir: Path
    initial_model: Path
    state: RunState
    symmetry_score: float
    seconds: float
    symmetry: str = "C1"  # the group applied (the detected one for --sym auto)
    symmetry_record: dict | None = None  # novomap.symmetry.choice.symmetry_record: the decision and, for auto, the table
    evidence: Evidence | None = None  # novomap.analysis.confidence: how sure the run is
    pooled: list[PooledClass] = dataclasses.field(default_factory=list)  # classes whose particles joined the largest


def check_inputs(particles: ParticleSet, config: VdamConfig) -> None:
    """Refuse settings that cannot work, with a message that says what to change."""
    box_a = particles.box_size * particles.pixel_size_a
    if config.particle_diameter_a <= 2 * particles.pixel_size_a:
        raise NovomapError(f"--particle-diameter {config.particle_diameter_a:g} Å is smaller than two pixels ({particles.pixel_size_a:g} Å/px)")
    if config.particle_diameter_a > box_a:
        raise NovomapError(
            f"--particle-diameter {config.particle_diameter_a:g} Å is larger than the box ({particles.box_size} px x {particles.pixel_size_a:g} Å = {box_a:g} Å); use at most {box_a:g}"
        )
    if particles.n < 2 * config.n_classes:
        raise NovomapError(f"{particles.n} particle(s) are too few for {config.n_classes} class(es): at least {2 * config.n_classes} are needed")
    if config.n_iter < 1:
        raise NovomapError("--iter must be at least 1")
    refuse_ctf_premultiplied(particles.table, "initial-model compares particles as extracted with CTF-modulated projections")


def _weight_floor(particles: ParticleSet, notify: Callable[[str], None] | None) -> float:
    """The VDAM update's Fisher-weight floor for these images (vdam.update.fisher_weight_floor), with a
    warning when they are not RELION-normalised."""
    background_std = particles.background_std()
    floor = fisher_weight_floor(background_std)
    if floor != 1.0 and notify is not None:
        notify(
            f"warning: the particles are not normalised (background std {background_std:.3g}, RELION's is 1); "
            "novomap adapts to their scale, but RELION's Class3D and Refine3D expect normalised particles "
            "(RELION's Extract job: Normalize particles? Yes)"
        )
    return floor


@dataclass
class JobOptions:
    """How a job reads its particles and reports (run_initial_model's arguments after the config)."""

    symmetry: str = "C1"
    device: str | torch.device | list = "cpu"
    preread: bool = False
    scratch_dir: str | Path | None = None
    progress: Callable[[dict], None] | None = None
    on_write: Callable[[Path], None] | None = None
    max_resolution_a: float | None = None
    output_pixel_size_a: float | None = None
    fingerprint: dict | None = None
    cryosparc: object = None
    notify: Callable[[str], None] | None = None  # a warning about the input, for the user


def c1_map_looks(volume: torch.Tensor, pixel_size_a: float) -> str | None:
    """The point group the map-only detection (de novo) finds on a C1 run's final reconstruction
    (N, N, N), or None for C1: a hint for a run asked in C1 that did not settle. On the suite's C1
    aggregates (hb16_c1, hb6_c1, hb4_rod) it finds C1, on the real tutorial particles run in C1 D2."""
    found, _ = choose_group(volume, pixel_size_a, None)
    return None if found.order == 1 else found.name


def stops_as_symmetric(state: RunState, config: VdamConfig, group: PointGroup | None, pixel_size_a: float) -> str | None:
    """At n_iter of a one-class run asked in C1 whose map has not settled (vdam.convergence would go on):
    the group the map-only detection finds on its VDAM map, if not C1, and then the run stops there.

    A symmetric particle run in C1 spreads its particles over their equivalent poses, and the share each
    takes drifts from one mini-batch to the next, so the map keeps changing whatever the iterations: the
    real tutorial particles (D2) run in C1 agreed 0.73 with the map of 20 iterations before at iteration
    100 and 0.85 at 200, the extension's cap; it cost 124 s of the job's 216 s and gave 11.97 Å to
    betaGal.mrc against 11.17 Å at n_iter (seed 1; benchmarks/results/2026-12-06-s52-symmetric-c1.md).
    The only run of the suite that goes on past n_iter, a large asymmetric particle still forming
    (hb16_c1), is found C1 there and goes on as before. Not for --sym auto (group None), which imposes
    the group it finds when the run goes on (group_mid_run), nor when --max-extra-iter asks for more."""
    if group is None or group.order != 1 or config.n_classes != 1 or config.max_extra_iterations >= 0:
        return None
    return c1_map_looks(state.maps[0].detach().float().cpu(), pixel_size_a)


def _run_attempt(star_path: str | Path, out_dir: str | Path, config: VdamConfig, options: JobOptions, continue_from: str | Path | None = None) -> JobResult:
    """Run one attempt of the job into out_dir (the options as run_initial_model's arguments); its
    checkpoints are written behind it, and all of them are on disk when it returns or fails."""
    with BackgroundWriter() as writer:
        return _attempt(star_path, out_dir, config, options, continue_from, writer)


def _attempt(star_path: str | Path, out_dir: str | Path, config: VdamConfig, options: JobOptions, continue_from: str | Path | None, writer: BackgroundWriter) -> JobResult:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    group = requested_group(options.symmetry)  # validate before any work; None for --sym auto (detected at the end)
    device = as_devices(options.device)  # several GPUs split each mini-batch (estep.driver)
    particles = ParticleSet.from_star(
        star_path, preread=options.preread, scratch_dir=options.scratch_dir, max_resolution_a=options.max_resolution_a, output_pixel_size_a=options.output_pixel_size_a,
        cryosparc=options.cryosparc,
    )
    check_inputs(particles, config)
    config = finalists.race_for_group(dataclasses.replace(config, weight_floor=_weight_floor(particles, options.notify)), group)
    command_line = shlex.join(["novomap", *sys.argv[1:]]) if sys.argv else "novomap"
    out_dir.mkdir(parents=True, exist_ok=True)
    if continue_from is not None:
        state = RunState.load(state_path_for(continue_from))
        if state.n_classes != config.n_classes:  # a --K 1 job killed in a retry with a class for junk (retry_classes)
            config = dataclasses.replace(config, n_classes=state.n_classes)
        if options.fingerprint is not None:
            state.fingerprint = dict(options.fingerprint)
    else:
        state = initial_state(particles, config)
        state.fingerprint = dict(options.fingerprint or {})
        written = write_iteration(out_dir, particles, state, config, particles.box_size, str(star_path), command_line, writer)
        if options.on_write is not None:
            options.on_write(written)
    auto = group is None
    if auto and state.auto_symmetry is not None and state.auto_symmetry["applied"] != "C1":  # decided before the checkpoint
        group = point_group(state.auto_symmetry["applied"])
    half = pseudo_halves(particles)
    last = config.n_iter
    if state.iteration >= config.n_iter:  # continued past n_iter: go on only if the map still moved there
        last = convergence.last_iteration(state, config, convergence.map_agreement(state, config))
    while state.iteration < last:  # the race of starts (vdam.restarts) may advance it by several
        figures = run_iteration(state, particles, half, config, device, group)
        impose_if_due(state, group, particles.pixel_size_a, config)
        if state.finalists:  # the race's runners-up, carried on (vdam.finalists): state may become one
            finalists.advance(state, particles, half, config, device, group)
            figures = state.history[-1]
        if auto and group is None and auto_choice_due(state, config):
            group, last = group_mid_run(state, particles, half, config, device[0], figures, last)
        convergence.keep_snapshot(state, config)
        if state.iteration >= last or convergence.early_check(state.iteration, config):
            figures["map_agreement"] = convergence.map_agreement(state, config)
        if state.iteration >= last:
            figures["map_agreement_before"] = convergence.previous_agreement(state.history, state.iteration)
            last = convergence.last_iteration(state, config, figures["map_agreement"])
            if last > state.iteration and state.iteration == config.n_iter:
                looks = stops_as_symmetric(state, config, group, particles.pixel_size_a)
                if looks is not None:
                    figures["c1_map_looks"], last = looks, state.iteration
            if auto and last > state.iteration and chooses_past_n_iter(state, config):
                group, last = group_mid_run(state, particles, half, config, device[0], figures, last, imposed=group)
            figures["more_iterations"] = last - state.iteration
        if options.progress is not None:
            options.progress(figures)
        if state.iteration % config.write_every == 0 or state.iteration == last:
            written = write_iteration(out_dir, particles, state, config, figures["current_size"], str(star_path), command_line, writer)
            if options.on_write is not None:
                options.on_write(written)

    assign_all(state, particles, half, config, device, group)
    spread_equivalent_poses(state, group, config)
    _, current_size, _ = search_setup(state, particles, config, advance=False)
    written = write_iteration(out_dir, particles, state, config, current_size, str(star_path), command_line, writer)
    if options.on_write is not None:
        options.on_write(written)

    largest = int(torch.argmax(state.class_fraction))
    pooled = pool_same_structure(state, largest, particles.pixel_size_a, config)  # after the last run_it files
    volume = final_reconstruction(state, particles, largest, config)
    evidence = assess_run(state, particles, half, largest, volume, config)  # half-set FSC, agreement with VDAM
    if group is not None and group.order == 1 and not evidence.settled():
        looked = next((f["c1_map_looks"] for f in reversed(state.history) if f.get("c1_map_looks")), None)  # stops_as_symmetric's
        evidence.c1_map_looks = looked or c1_map_looks(volume, particles.pixel_size_a)
        evidence.stopped_as_symmetric = looked is not None
        evidence.warnings = warnings_for(evidence)
    by_particles = larger = None
    if group is None:  # --sym auto: the groups this C1 map makes plausible, judged by the particles
        by_particles = choose_group_by_particles(volume, state, particles, half, largest, config, device[0])
        group = by_particles.group
    elif auto and checks_at_end(state, config):  # chosen during the run: a larger group containing it may still win (enlarged_at_end)
        larger = choose_group_by_particles(volume, state, particles, half, largest, config, device[0], at_least=group)
        group = larger.group
    onto_vdam = reconstruction_onto_vdam(state, volume, largest, config)
    combined = final_map(state, volume, largest, config, particles.pixel_size_a, onto_vdam)
    # align to the group's axes and symmetrise (the particles' choice was aligned on the
    # reconstruction, in another frame by the combination's shift: the combined map is aligned afresh)
    alignment = None
    if group.order > 1 and state.symmetry_axes and largest < len(state.symmetry_axes) and not enlarged_at_end(state, group):
        # the group was imposed on this class during the run: refine its axes there instead of searching
        alignment = align_near(combined, particles.pixel_size_a, group, state.symmetry_axes[largest])
    applied = apply_point_group(combined, particles.pixel_size_a, group, config, alignment)
    final, final_pixel_a = applied.volume, particles.pixel_size_a
    fine_resolution_a = final_grid_max_resolution_a(particles.grid) if config.final_fine_grid else None
    if fine_resolution_a is not None:
        fine_particles = ParticleSet.from_star(
            star_path, validate=False, max_resolution_a=fine_resolution_a, output_pixel_size_a=options.output_pixel_size_a, cryosparc=options.cryosparc
        )
        final = fine_final_map(applied.volume, onto_vdam, state, particles, fine_particles, largest, config, applied)
        final_pixel_a = fine_particles.pixel_size_a
    initial_model = out_dir / "initial_model.mrc"
    write_map(initial_model, to_output_grid(final.float(), particles.grid, final_pixel_a), particles.grid.output_pixel_size_a)
    if larger is not None:  # imposed since group_mid_run chose it, then checked against larger groups
        record = end_check_record(state.auto_symmetry, larger, float(applied.alignment.score))
    elif auto and by_particles is None:  # imposed since group_mid_run chose it, checked there from n_iter on
        record = {**state.auto_symmetry, "alignment_score": float(applied.alignment.score)}
    else:
        record = symmetry_record(options.symmetry, applied.group, applied.alignment.score, applied.detection, by_particles)
        if by_particles is not None:
            with_race_map_cc(record, state, largest, particles.pixel_size_a)
    write_symmetry_file(out_dir, record)
    write_evidence(out_dir, evidence, record, pooled)
    seconds = time.perf_counter() - started
    return JobResult(out_dir, initial_model, state, applied.alignment.score, seconds, applied.group.name, record, evidence, pooled)


def run_initial_model(
    star_path: str | Path,
    out_dir: str | Path,
    config: VdamConfig,
    symmetry: str = "C1",
    device: str | torch.device | list = "cpu",
    preread: bool = False,
    scratch_dir: str | Path | None = None,
    continue_from: str | Path | None = None,
    progress: Callable[[dict], None] | None = None,
    on_write: Callable[[Path], None] | None = None,
    max_resolution_a: float | None = None,
    output_pixel_size_a: float | None = None,
    fingerprint: dict | None = None,
    cryosparc=None,
    on_retry: Callable[[str, VdamConfig], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> JobResult:
    """Run the job into out_dir, and again from new random starts while the evidence flags a wrong
    fold, or a one-class run's race left its map undecided (race_undecided), config.retries times at
    most (with several classes, as the largest class's map is judged).

    progress(figures) is called after each iteration; on_write(optimiser_star) after each set of
    run_itNNN_* files is written (iteration 0, every write_every, the last, the final pass).
    fingerprint: stored in every checkpoint (what `novomap initial-model --continue` compares).
    cryosparc: io.cryosparc.CryosparcOptions when star_path is a cryoSPARC `.cs` file (None: defaults).

    A flagged attempt's files move to the next free DIR/attemptN and the next attempt runs in DIR with
    the seed retry_seed(seed, n); the attempt whose map fits the particles' ring spectra best
    (analysis.ring_spectra), or after an undecided race the one whose race's choice agrees best with
    itself (decided_better), is the job's: its files end in DIR, every other attempt's in an attemptN
    folder (outputs.attempts). on_retry(message, config) is called before each new attempt, with the
    attempt's config (its seed, and for a one-class run retry_classes classes). notify(line) is
    called with warnings about the input (once, in the first attempt).
    """
    out_dir = Path(out_dir)
    options = JobOptions(symmetry, device, preread, scratch_dir, progress, on_write, max_resolution_a, output_pixel_size_a, fingerprint, cryosparc, notify)
    result = _run_attempt(star_path, out_dir, config, options, continue_from)
    options.notify = None
    attempts = [_attempt_record(result, config.seed, config.n_classes)]  # each attempt's seed, misfit and folder ("." = DIR: the kept one)
    best, result_config = 0, config
    auto_result, trials, tried = result, polyhedral_trials(result, symmetry, config), []
    for number in range(1, (len(trials) if trials else config.retries) + 1):
        trial_group = trials[number - 1] if trials else None
        flagged = trial_group is None and retry_due(result, result_config)
        undecided = trial_group is None and not flagged and race_undecided(result, result_config)
        if trial_group is None and not flagged and not undecided:
            break
        if trial_group is not None and result is not auto_result and not result.evidence.weak:  # a trial fits: no larger search
            break
        archive = free_attempt_dir(out_dir)
        move_attempt(out_dir, archive)
        attempts[best]["folder"] = archive.name
        attempt_options = options
        if undecided:  # not junk: the same classes, new random starts
            retry_config = dataclasses.replace(config, seed=retry_seed(config.seed, number))
            why = f"the race of random starts left the map undecided ({undecided_phrase(result)}): running again from new random starts"
        elif trial_group is None:
            retry_config = retry_attempt_config(config, number)
            classes = f" with {retry_config.n_classes} classes, one for particles the map cannot explain," if retry_config.n_classes != config.n_classes else ""
            why = f"the map's projections lack angular structure the particles have (ring misfit {ring_misfit(result):.3f}): running again from new random starts{classes}"
        else:  # one class: the grouped race (vdam.finalists.race_for_group) needs it
            retry_config = dataclasses.replace(config, seed=retry_seed(config.seed, number))
            attempt_options = dataclasses.replace(options, symmetry=trial_group, fingerprint=with_symmetry(options.fingerprint, trial_group))
            why = (
                f"--sym auto's {auto_result.symmetry} map {why_trials(auto_result.symmetry_record, auto_result.evidence.weak)}, and a particle of high symmetry run in C1 can drift into a wrong fold "
                f"before its group is chosen: running again with --sym {trial_group} imposed (of {', '.join(trials)}, the groups containing "
                f"{auto_result.symmetry}, until one fits; the map that fits the particles' ring spectra best is kept)"
            )
        if on_retry is not None:
            on_retry(f"{why} (seed {retry_config.seed}); the files of this attempt are in {archive}", finalists.race_for_group(retry_config, requested_group(attempt_options.symmetry)))
        retry = _run_attempt(star_path, out_dir, retry_config, attempt_options)
        attempts.append(_attempt_record(retry, retry_config.seed, retry_config.n_classes, trial_group))
        if trial_group is not None:
            tried.append((trial_group, ring_misfit(retry)))
        if (decided_better(retry, result) if undecided else fits_better(retry, result, trial=trial_group is not None)):
            result, best, result_config = retry, len(attempts) - 1, retry_config
        else:  # the earlier attempt stays the job's: back into DIR
            loser = free_attempt_dir(out_dir)
            move_attempt(out_dir, loser)
            attempts[-1]["folder"] = loser.name
            move_attempt(archive, out_dir)
            archive.rmdir()
            attempts[best]["folder"] = "."
    if tried:
        kept_group = None if result is auto_result else result.symmetry
        result.symmetry_record = trial_record(result.symmetry_record, auto_result.symmetry, ring_misfit(auto_result), tried, kept_group, auto_result.symmetry_record, auto_result.evidence.weak)
        write_symmetry_file(out_dir, result.symmetry_record)
    if len(attempts) > 1 and result.evidence is not None:
        result.evidence.attempts = attempts
        result.evidence.kept_attempt = best + 1
        write_evidence(out_dir, result.evidence, result.symmetry_record, result.pooled)
    return result


# a new attempt's seed: far from the random starts' own (vdam.restarts.start_seed steps by 104729)
RETRY_SEED_STEP = 1_000_003


def retry_seed(seed: int, attempt: int) -> int:
    """The seed of the attempt-th retry of a run with `seed`."""
    return seed + RETRY_SEED_STEP * attempt


def _ring(result: JobResult) -> dict | None:
    """The run's ring check (analysis.ring_spectra.RingCheck.to_json()); None when it was not measured."""
    return result.evidence.ring if result.evidence is not None else None


def ring_misfit(result: JobResult) -> float:
    """The kept map's ring misfit (analysis.ring_spectra); infinite when it was not measured."""
    ring = _ring(result)
    return float(ring["misfit"]) if ring else float("inf")


def fits_better(attempt: JobResult, kept: JobResult, trial: bool = False) -> bool:
    """Whether a new attempt's map replaces the kept one: a lower ring misfit, or, for a trial (an
    attempt run because the kept map's evidence was weak: a polyhedral group's, symmetry.group_trial,
    or an undecided race's new starts, race_undecided) whose evidence holds against a kept map whose
    evidence is weak, a misfit above the kept one's by less than the trial's noise floor. A right map in
    a subgroup of the particle's group fits the rings as well as the right group's map: on adk_i_tight
    seed 7 a C5 map that never settled (9.6 Å from the truth) had 0.00554 against the I map's 0.00557
    (6.3 Å), whose noise floor was 0.0046 (benchmarks/results/2026-12-07-s61-sym-auto-polyhedral.md).
    Nor do the rings tell an undecided race's map from a right one: hb16_c1 seed 8's first attempt
    (1.16x its true-pose bound, close finalists) 0.0144, its rerun (1.01x, consistent) 0.0155, at a
    floor of 0.014 (benchmarks/results/2026-12-08-s65-undecided-race.md)."""
    if ring_misfit(attempt) < ring_misfit(kept):
        return True
    ring = _ring(attempt)
    if not trial or not ring or attempt.evidence.weak or kept.evidence is None or not kept.evidence.weak:
        return False
    return ring_misfit(attempt) <= ring_misfit(kept) + float(ring["noise_floor"])


def race_agreement(result: JobResult) -> float | None:
    """The half-set agreement at its poses (vdam.finalists.pose_agreement) of the start a one-class run's race
    kept when it chose between its finalists at --iter; None when it carried none or chose half way."""
    return chosen_agreement(result.evidence.finalists if result.evidence is not None else None)


def decided_better(attempt: JobResult, kept: JobResult) -> bool:
    """Whether the new attempt of an undecided race (race_undecided) replaces the kept one: the race's own
    choice between finalists carried on across attempts, the start whose pseudo half-sets agree better at
    its poses, as vdam.finalists.choose measures it (the same particles and half-sets, at the same
    iteration, in every attempt). Where either attempt chose no finalist at --iter, or the new map is
    flagged as a wrong fold, the ring spectra decide (fits_better, as a trial).

    The ring misfit cannot rank these maps: on hb_c1, a 60 kDa pseudo-symmetric particle, every map, right or
    wrong, fits the rings to the noise floor. Of eight undecided races run twice (hb16_c1 seeds 8 and 10,
    hb_c1 seeds 4 and 5, hb_c1_36 seeds 3, 5, 9 and 10), the attempt with the better map had the higher
    agreement in seven (hb16_c1: 0.493 against 0.407, 0.497 against 0.406; on the small particle by
    0.003-0.028, and hb_c1_36 seed 9 lost by 0.0004), the lower ring misfit in five
    (benchmarks/results/2026-12-08-s66-undecided-choice.md)."""
    new, old = race_agreement(attempt), race_agreement(kept)
    ring = _ring(attempt)
    if new is None or old is None or (ring and ring["flagged"]):
        return fits_better(attempt, kept, trial=True)
    return new > old


def retry_due(result: JobResult, config: VdamConfig) -> bool:
    """Whether a new attempt could replace the run's map: the evidence flags it as a likely wrong fold,
    vdam.convergence measured the map (a run too short for that is a test, not an initial model), and
    it had settled (a map still changing needs more iterations, not a new start), which a run with
    several classes is not required to have: it is never extended until its class maps settle.

    With several classes the check reads the largest class, whose map is initial_model.mrc: K=3 runs on
    the real tutorial's 2,374 particles ended in wrong folds flagged so (seed 3: 35 Å to betaGal.mrc,
    settled; seed 4: 51 Å, agreement 0.94 < 0.95), while seeds 1-2 were right and not flagged
    (benchmarks/results/2026-12-03-s27-classes.md)."""
    ring = _ring(result)
    if not ring or not ring["flagged"] or result.evidence.map_agreement is None:
        return False
    return config.n_classes > 1 or result.evidence.settled()


def race_undecided(result: JobResult, config: VdamConfig) -> bool:
    """Whether a one-class run's race of random starts left its map undecided, so that new random starts
    may find the right one: its two finalists ended in different maps that the particles hardly tell
    apart (analysis.confidence.CLOSE_FINALISTS), or its map was still changing after the most
    iterations past --iter allowed, while it did not look symmetric (a symmetric particle's C1 map
    keeps changing whatever the start: initial_model.stops_as_symmetric).

    Either is what the evidence's warning asks a user to try another --seed for. On hb16_c1 (a ~1 MDa
    aggregate of 16 haemoglobins, C1) seed 8 ended so (finalists 0.407 and 0.405, 1.16x the true-pose
    bound) and seed 10 in a wrong fold still changing after 100 extra iterations (1.63x), while
    seeds 6, 7 and 9 settled right (benchmarks/results/2026-12-08-s65-undecided-race.md)."""
    evidence = result.evidence
    if config.n_classes != 1 or evidence is None or evidence.map_agreement is None:
        return False
    if close_finalists(evidence):
        return True
    at_cap = 0 < config.extra_iterations_cap() <= evidence.extra_iterations
    return at_cap and not evidence.settled() and not evidence.stopped_as_symmetric and not evidence.c1_map_looks


def undecided_phrase(result: JobResult) -> str:
    """Why race_undecided holds, in a few words."""
    evidence = result.evidence
    if close_finalists(evidence):
        a, b = evidence.finalists["pose_agreement"]
        return f"two random starts ended in different maps that the particles hardly tell apart, half-set agreement {a:.3f} and {b:.3f}"
    return f"the map was still changing after {evidence.extra_iterations} iterations past --iter"


def _attempt_record(result: JobResult, seed: int, n_classes: int, symmetry: str | None = None) -> dict:
    """An attempt's seed, classes, ring misfit, flag, race agreement (race_agreement) and folder; `symmetry`: the group it was run with when
    that was not the job's --sym (a symmetry.group_trial attempt)."""
    ring = _ring(result)
    record = {
        "seed": int(seed), "classes": int(n_classes), "ring_misfit": ring["misfit"] if ring else None, "flagged": bool(ring and ring["flagged"]),
        "race_agreement": race_agreement(result), "folder": ".",
    }  # fmt: skip
    if symmetry is not None:
        record["symmetry"] = symmetry
    return record


def with_symmetry(fingerprint: dict | None, group: str) -> dict | None:
    """The job's checkpoint fingerprint for an attempt run with `group`: a --continue from its checkpoints
    restores that --sym (the command's restored options), not the job's `auto`."""
    if fingerprint is None or "arguments" not in fingerprint:
        return fingerprint
    return {**fingerprint, "arguments": {**fingerprint["arguments"], "sym": group}}


def polyhedral_trials(result: JobResult, symmetry: str, config: VdamConfig) -> list[str]:
    """The groups a `--sym auto` run is run again with, imposed, one attempt each (symmetry.group_trial):
    the polyhedral groups containing the group it chose, when it has one class, its evidence is weak and
    new attempts are allowed (config.retries); when its evidence holds but its map changed fold after the
    race (group_trial.fold_changed), only the one of them the particles scored best; else none."""
    if requested_group(symmetry) is not None or config.n_classes != 1 or config.retries < 1 or result.evidence is None:
        return []
    if result.evidence.weak:
        return trial_groups(result.symmetry)
    if fold_changed(result.symmetry_record):  # evidence that holds: one trial, the group the particles scored best
        return best_scored(trial_groups(result.symmetry), result.symmetry_record)[:1]
    return []


def retry_attempt_config(config: VdamConfig, attempt: int) -> VdamConfig:
    """The config of the attempt-th retry: its own seed, retry_classes classes, and as many random starts
    as that many classes race by default (starts_for_classes) unless the job asked for another number."""
    n_classes = retry_classes(config)
    n_starts = config.n_starts
    if n_classes != config.n_classes and config.n_starts in (-1, starts_for_classes(config.n_classes)):
        n_starts = starts_for_classes(n_classes)
    return dataclasses.replace(config, seed=retry_seed(config.seed, attempt), n_classes=n_classes, n_starts=n_starts)


def retry_classes(config: VdamConfig) -> int:
    """Classes of a retry: a one-class run's retries run with config.retry_classes, where junk can take a
    class of its own; runs of several classes keep theirs.

    On data with junk a one-class map that fails the ring check is mostly a blend of the particle and
    what the junk pulls it towards, and a new one-class start tends to blend again: all 2,374 real
    tutorial particles (39 % outside the good 2D classes), seed 3, failed twice with one class, while
    two classes gave 9.2 Å to betaGal.mrc on seeds 3 and 5 (benchmarks/results/2026-12-04-s30-race-ties.md)."""
    if config.n_classes == 1 and config.retry_classes > 1:
        return config.retry_classes
    return config.n_classes
