"""One VDAM iteration, in the order of vdam-spec 4.7."""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from novomap.estep.accumulate import Sums, symmetrise_sums
from novomap.estep.driver import PAD, projector_transforms, run_estep
from novomap.estep.local import expected_prior_width
from novomap.estep.search import SearchSettings
from novomap.io.particles import ParticleSet
from novomap.model.params import class_image_sizes, image_sizes, reference_power, resolution_shell, spectral_snr, update_sigma2, update_with_momentum
from novomap.physics.euler import euler_to_matrix
from novomap.physics.fourier import centred_ft_to_volume, centred_radius, hermitian_sum_at, volume_to_centred_ft
from novomap.physics.masks import mask_volume_with_background, soft_edge_mask
from novomap.physics.projection import hermitian_symmetrise
from novomap.physics.window import fourier_window
from novomap.reconstruct import particle_ctf
from novomap.sampling.accuracy import expected_errors
from novomap.sampling.asymmetric_unit import orbit_average_directions, orientations_in_unit
from novomap.sampling.grid import SearchGrid, build_search_grid, narrowed, sub_translations_needed, without_sub_translations
from novomap.sampling.healpix import angular_step_deg
from novomap.sampling.local import local_candidates
from novomap.symmetry.groups import PointGroup
from novomap.vdam import schedules
from novomap.vdam.config import VdamConfig
from novomap.vdam.recentre import centred_classes
from novomap.vdam.restarts import compete, competition_iteration
from novomap.vdam.unit_search import unit_operators
from novomap.vdam.state import RunState
from novomap.vdam.update import inside_index, map_memory_halves, vdam_update_at

def pseudo_halves(particles: ParticleSet) -> torch.Tensor:
    """Half-set 0/1 of each particle: parity of its position in the micrograph-sorted table."""
    names = particles.micrograph_names
    order = sorted(range(particles.n), key=lambda i: names[i])  # Python's sort is stable
    half = torch.empty(particles.n, dtype=torch.long)
    half[torch.tensor(order)] = torch.arange(particles.n) % 2
    return half


def next_perturbation(current: float, generator: torch.Generator, factor: float) -> float:
    """r += U(factor/2, factor), wrapped into [-0.5, 0.5]."""
    if factor <= 0:
        return 0.0
    r = current + factor * (0.5 + 0.5 * float(torch.rand((), generator=generator, dtype=torch.float64)))
    return r - 1.0 if r > 0.5 else r


def class_sizes(state: RunState, current_size: int, config: VdamConfig) -> list[int] | None:
    """Each class's window this iteration (model.params.class_image_sizes), or None where every class
    has current_size (one class, config.class_windows off, or classes of one resolution). The M-step
    updates a class inside its window only, and the fine pass and the back-projection stop at its pixels;
    the coarse pass keeps one window for all classes (its own, mostly narrower than any class's)."""
    if not config.class_windows or state.n_classes < 2:
        return None
    sizes = class_image_sizes(state.resolution_shell, class_shells(state), current_size)
    return sizes if min(sizes) < current_size else None


def class_shells(state: RunState) -> list[int]:
    """Each class's resolution shell (the last with SSNR >= 1), from its SSNR of the last M-step."""
    return [resolution_shell(state.ssnr[k]) for k in range(state.n_classes)]


def particle_caps(state: RunState, config: VdamConfig) -> torch.Tensor | None:
    """(n_particles,) int64 coarse significance cap of each particle, or None (significant_cap for all):
    config.lesser_class_max_significant for the particles last placed in a class whose resolution
    shell trails the best class's by at least config.lesser_class_trail_shells (one class, or the
    option at 0: None)."""
    if state.n_classes < 2 or config.lesser_class_max_significant <= 0:
        return None
    shells = torch.tensor(class_shells(state))
    lesser = shells <= int(shells.max()) - config.lesser_class_trail_shells  # (K,)
    if not bool(lesser.any()):
        return None
    placed = state.class_number > 0
    in_lesser = placed & lesser[(state.class_number - 1).clamp(min=0)]
    caps = torch.full(state.class_number.shape, config.significant_cap(), dtype=torch.int64)
    caps[in_lesser] = min(config.lesser_class_max_significant, config.significant_cap())
    return caps


def expectation(
    state: RunState,
    particles: ParticleSet,
    batch_index: torch.Tensor,
    half: torch.Tensor,
    grid: SearchGrid,
    current_size: int,
    coarse_size: int,
    config: VdamConfig,
    devices: list[torch.device],
    timings: dict,
    with_sums: bool = True,
    group: PointGroup | None = None,
) -> Sums | None:
    """The E-step of the batch (estep.driver), with this run's search settings; timings added to `timings`.

    When local searches are on (local_order > 0), the batch's sharp particles are searched around
    their previous poses (sampling.local) and the others globally on `grid`; the sums are added.
    group: the point group the job imposes (None: none); where unit_operators allows, the global
    search covers one asymmetric unit of each class's map (unit_columns) and the sums are made those
    of a full search.
    """
    settings = SearchSettings(
        adaptive_fraction=config.adaptive_fraction,
        max_significant=config.significant_cap(),
        pixel_size_a=particles.pixel_size_a,
        sigma_offset_a=state.sigma_offset_a,
        mask_radius_px=config.particle_diameter_a / (2 * particles.pixel_size_a),
        particle_cap=particle_caps(state, config) if with_sums else None,
    )
    order = local_order(state, config, final=not with_sums)
    local_index, global_index = split_local(state, batch_index, config) if order > 0 else (batch_index[:0], batch_index)
    operators = unit_operators(state, config, group, with_sums)
    columns = None
    if operators is not None:
        columns = unit_columns(grid, operators)
        timings["n_grid_orientations"] = grid.n_coarse_orientations * state.n_classes
        timings["n_unit_orientations"] = columns.numel()
    total = None
    sizes = class_sizes(state, current_size, config)
    if global_index.numel():
        narrow = narrow_translations(state, global_index, grid, config, with_sums)
        total, spent = run_estep(
            state, particles, global_index, half, grid, current_size, coarse_size, settings, devices, with_sums, config.chunk_size, config.pool, narrow=narrow,
            coarse_columns=columns, class_sizes=sizes,
        )
        _add_timings(timings, spent)
        timings["n_narrow"] = timings.get("n_narrow", 0) + (int(narrow[0].sum()) if narrow is not None else 0)
    if local_index.numel():
        previous = euler_to_matrix(state.rot_deg[local_index], state.tilt_deg[local_index], state.psi_deg[local_index])
        sigma = expected_prior_width(state.acc_rot_deg, angular_step_deg(order))
        t0 = time.perf_counter()
        local = local_candidates(previous, order, state.healpix_order, config.local_offset_range_px, config.local_offset_step_px, state.perturbation, sigma)
        if config.local_in_own_class and state.n_classes > 1:
            local = dataclasses.replace(local, classes=state.class_number[local_index] - 1)
        timings["local_setup"] = timings.get("local_setup", 0.0) + time.perf_counter() - t0
        # the coarse image resolves the local coarse step, but is never larger than one resolving
        # config.local_coarse_step_deg: finer orders lean on the prior and the full-size fine pass
        coarse_step = max(local.grid.coarse_step_deg, config.local_coarse_step_deg)
        _, local_coarse = image_sizes(state.resolution_shell, particles.box_size, coarse_step, config.particle_diameter_a, particles.pixel_size_a)
        sums, spent = run_estep(
            state, particles, local_index, half, local.grid, current_size, local_coarse, settings, devices, with_sums, 0, config.pool, local=local,
            class_sizes=sizes, posterior_mean=config.local_posterior_mean,
        )
        _add_timings(timings, {f"local_{name}": seconds for name, seconds in spent.items()})
        if total is None:
            total = sums
        elif sums is not None:
            total.add_(sums)
    timings["n_local"] = timings.get("n_local", 0) + int(local_index.numel())
    if operators is not None and total is not None:
        t0 = time.perf_counter()
        # the window's slices reach current_size/2 (times the padding) and their interpolation ~sqrt(3) voxels further
        symmetrise_sums(total, operators, current_size * PAD / 2 + 2)
        timings["symmetrise"] = timings.get("symmetrise", 0.0) + time.perf_counter() - t0
        device = total.direction_weight.device
        weights = total.direction_weight.cpu()
        averaged = [weights[k : k + 1] if ops is None else orbit_average_directions(weights[k : k + 1], ops, state.healpix_order) for k, ops in enumerate(operators)]
        total.direction_weight = torch.cat(averaged).to(device)
    return total


def unit_columns(grid: SearchGrid, operators: list[torch.Tensor | None]) -> torch.Tensor:
    """The (class, coarse orientation) hypotheses of a search over one asymmetric unit per class:
    operators per class, its group in its own frame (G, 3, 3) or None (the class searched whole)
    -> (C,) ascending keys class * O + o."""
    n_orient = grid.n_coarse_orientations
    keys = []
    for k, ops in enumerate(operators):
        kept = torch.arange(n_orient) if ops is None else torch.nonzero(orientations_in_unit(grid.coarse_rotations, ops, grid.healpix_order)).squeeze(1)
        keys.append(k * n_orient + kept)
    return torch.cat(keys)


def _add_timings(timings: dict, spent: dict) -> None:
    for name, seconds in spent.items():
        timings[name] = timings.get(name, 0.0) + seconds


def local_order(state: RunState, config: VdamConfig, final: bool = False) -> int:
    """Coarse HEALPix order of this iteration's local searches; 0 = global searches only.

    Local searches start after VDAM's initial phase, once the global search is at its finest order
    (config.max_healpix_order), and go one order finer each time that order's step is >= 0.75 x the expected angular error
    (the auto-sampling rule, vdam-spec 3.7), up to config.max_local_order_iterations in the
    mini-batch iterations and config.max_local_order in the final pass (final=True: poses only,
    nothing back-projected, so the finest grid costs little there).
    """
    if not config.local_searches or not config.auto_sampling or state.healpix_order < config.max_healpix_order:
        return 0
    # not in VDAM's initial phase, where poses still move far between mini-batches
    if state.iteration < schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction).initial:
        return 0
    cap = config.max_local_order if final else min(config.max_local_order, config.max_local_order_iterations)
    order = 0
    while state.healpix_order + order + 1 <= cap and angular_step_deg(state.healpix_order + order + 1) >= 0.75 * state.acc_rot_deg:
        order += 1
    if order:
        return state.healpix_order + order
    # nothing finer is worth it: once the model places poses more finely than the global fine step,
    # the mini-batch iterations may still search locally at the global order itself
    # (config.local_same_order): the same hypotheses, near the previous pose only
    same_order = config.local_same_order and not final and cap >= state.healpix_order
    return state.healpix_order if same_order and state.acc_rot_deg <= angular_step_deg(state.healpix_order + 1) else 0


def narrow_translations(state: RunState, batch_index: torch.Tensor, grid: SearchGrid, config: VdamConfig, with_sums: bool) -> tuple[torch.Tensor, SearchGrid] | None:
    """(rows of batch_index, narrowed grid) for the particles whose translations are searched only near
    their previous origin, or None: in the mini-batch iterations after VDAM's initial phase, particles
    whose last posterior was sharp (as split_local) search config.narrow_offset_steps offset steps
    around it (2: 13 of RELION's 29 translations) over every orientation, so that flips between
    distant orientations stay possible.

    Only where the maps' frames are pinned: a class whose symmetry centre was brought to the box
    centre (vdam.recentre, at the group's imposition), where a particle's origin means the same as in
    every other such class. So only particles placed in a centred class, and, unless
    config.narrow_in_centred_classes, only when every class is centred. There the origins move
    little: on real beta-gal 90 % of the sharp particles by <= 1.5 px between visits, 97 % by <= 3 px
    (48 % by > 3 px before the map was centred). A C1 map
    drifts (a large asymmetric particle: its centre of mass 1-2.5 px off, 18-21 % of its sharp
    particles moving > 3 px between visits, and two of three seeds ending worse with narrowed
    translations); so do the class maps of a C1 run with several classes, each in its own frame."""
    if not with_sums or config.narrow_offset_steps <= 0:
        return None
    if not config.recentre_on_symmetry:
        return None
    centred = torch.tensor(centred_classes(state), dtype=torch.bool)
    if not bool(centred.all()) and not (config.narrow_in_centred_classes and bool(centred.any())):
        return None
    if state.iteration < schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction).initial:
        return None
    narrow_grid = narrowed(grid, config.narrow_offset_steps * grid.offset_step_px)
    if narrow_grid is grid:
        return None
    sharp = sharp_particles(state, batch_index, config)
    # a particle placed in a centred class keeps its origin's meaning there
    sharp &= centred[(state.class_number[batch_index] - 1).clamp(min=0)]
    return (sharp, narrow_grid) if bool(sharp.any()) else None


def sharp_particles(state: RunState, batch_index: torch.Tensor, config: VdamConfig) -> torch.Tensor:
    """(len(batch_index),) bool: the particle has a pose from this run and its last posterior was
    sharp (pmax >= config.local_min_pmax)."""
    return (state.class_number[batch_index] > 0) & (state.max_probability[batch_index] >= config.local_min_pmax)


def split_local(state: RunState, batch_index: torch.Tensor, config: VdamConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(particles searched locally, particles searched globally) of a batch: local where the
    particle has a pose from this run and its last posterior was sharp (pmax >= local_min_pmax)."""
    sharp = sharp_particles(state, batch_index, config)
    return batch_index[sharp], batch_index[~sharp]


def maximization(
    state: RunState, sums: Sums, current_size: int, step: float, tau2_fudge: float, config: VdamConfig, pixel_size_a: float, map_halves: float = 1.0
) -> None:
    """The M-step: VDAM update of every class, then noise, class, direction and offset priors.

    map_halves: how many pseudo half mini-batches the map holds (update.map_memory_halves); the SSNR,
    hence the resolution estimate that sets the next window, is the mini-batch half-set's times this.
    """
    n = state.maps.shape[-1]
    m = n * PAD
    device = sums.gradient.device
    radius = centred_radius(m, PAD, device)
    shells = torch.round(radius).long()
    sizes = class_sizes(state, current_size, config) or [current_size] * state.n_classes  # before the SSNR below changes
    n_shells = n // 2 + 1
    projector = projector_transforms(state.maps.to(device))
    new_maps = []
    for k in range(state.n_classes):
        # the half-sets' sums symmetrised (physics.projection.hermitian_symmetrise) only where the update
        # reads them, the voxels inside the window; the SSNR reads half-set 0's whole weight grid
        _, weight0 = hermitian_symmetrise(None, sums.weight[0, k])
        index = inside_index(radius < sizes[k] / 2)
        gradient = torch.stack([hermitian_sum_at(sums.gradient[h, k], index) for h in (0, 1)])
        weight = torch.stack([weight0.reshape(-1).index_select(0, index), hermitian_sum_at(sums.weight[1, k], index)])
        tau2 = reference_power(projector[k], shells, n_shells)
        state.tau2[k] = tau2.cpu()
        state.ssnr[k] = map_halves * spectral_snr(weight0, tau2, shells, tau2_fudge, PAD).cpu()
        class_step = step * (1 - math.exp(-(3 * state.n_classes + 10) * float(state.class_fraction[k])))
        reference = volume_to_centred_ft(state.maps[k].to(device), PAD)
        moment1, moment2 = state.moment1[k].to(device), state.moment2[k].to(device)
        updated = vdam_update_at(reference, gradient, weight, moment1, moment2, shells, index, class_step, tau2_fudge, config.weight_floor)
        state.moment1[k], state.moment2[k] = moment1.cpu(), moment2.cpu()
        new_map = mask_volume_with_background(centred_ft_to_volume(updated, n), n / 2, 3.0)
        new_maps.append(new_map.cpu())
    state.maps = torch.stack(new_maps)
    if config.flatten_solvent:
        mask = soft_edge_mask((n, n, n), config.particle_diameter_a / (2 * pixel_size_a), config.mask_edge_px)
        state.maps = state.maps * mask

    total = sums.class_weight.sum().clamp(min=1e-30).cpu()
    mu = config.mu
    state.sigma2 = update_sigma2(state.sigma2, sums.noise.cpu(), sums.particles_per_group.cpu(), sums.noise_pixels.cpu(), mu)
    fraction = update_with_momentum(state.class_fraction, sums.class_weight.cpu() / total, mu)
    state.class_fraction = fraction / fraction.sum()
    state.direction_prior = update_with_momentum(state.direction_prior, sums.direction_weight.cpu() / total, mu)
    offset_var = float(sums.offset_sq_a2.cpu()) / (2 * float(total))
    state.sigma_offset_a = math.sqrt(update_with_momentum(torch.tensor(state.sigma_offset_a**2), torch.tensor(offset_var), mu).item())
    new_shell = max(resolution_shell(state.ssnr[k]) for k in range(state.n_classes))
    state.iterations_without_gain = 0 if new_shell > state.resolution_shell else state.iterations_without_gain + 1
    state.resolution_shell = new_shell


def map_information(iteration: int, batch_size: int, n_particles: int, config: VdamConfig) -> float:
    """The SSNR multiplier of this iteration's resolution estimate (maximization's map_halves).

    Before VDAM's final phase, as RELION, one pseudo half mini-batch: poses still move between
    mini-batches and the batch size, step and T still change, so the map's memory does not add up.
    In the final phase (config.accumulated_ssnr) the schedules hold still and the map holds what
    update.map_memory_halves counts: a window set by one half mini-batch's SSNR stays behind what
    the map resolves (hb_c2_tight's window held at 9.2 Å while its poses support ~6 Å).
    """
    if not config.accumulated_ssnr:
        return 1.0
    p = schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction)
    if iteration <= p.initial + p.in_between:
        return 1.0
    return map_memory_halves(batch_size, n_particles)


def current_resolution_a(state: RunState, particles: ParticleSet) -> float:
    """The maps' current resolution (Å): the box over the last shell with SSNR >= 1."""
    return particles.box_size * particles.pixel_size_a / max(state.resolution_shell, 1)


def search_setup(state: RunState, particles: ParticleSet, config: VdamConfig, advance: bool = True) -> tuple[SearchGrid, int, int]:
    """This iteration's perturbed grid and (current_size, coarse_size).

    advance: draw the next perturbation (every iteration); False reuses the current one, so a
    pass outside the iteration sequence leaves the RNG, hence --continue, untouched. Only an
    iteration's grid drops the translations' children where they add nothing (config.auto_sub_translations):
    passes outside the sequence (the race's scores, the final pass) compare or place with them.
    """
    if advance:
        generator = torch.Generator()
        generator.set_state(state.rng_state)
        state.perturbation = next_perturbation(state.perturbation, generator, config.perturb)
        state.rng_state = generator.get_state()
    grid = build_search_grid(state.healpix_order, state.offset_range_px, state.offset_step_px, state.perturbation)
    if advance and config.auto_sub_translations and not sub_translations_needed(state.offset_step_px * particles.pixel_size_a, current_resolution_a(state, particles)):
        grid = without_sub_translations(grid)
    current_size, coarse_size = image_sizes(state.resolution_shell, particles.box_size, grid.coarse_step_deg, config.particle_diameter_a, particles.pixel_size_a)
    return grid, current_size, coarse_size


def as_devices(device: torch.device | str | list) -> list[torch.device]:
    """One device or several -> a list of torch.device (the first also runs the M-step)."""
    return [torch.device(d) for d in device] if isinstance(device, (list, tuple)) else [torch.device(device)]


def assign_all(
    state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, device: torch.device | list, group: PointGroup | None = None
) -> dict:
    """One E-step over every particle with the final maps: fresh poses for the whole data set (with one
    class, for at most config.final_pass_max particles: final_pass_subset).

    group: the point group the job imposes (None: none); with config.final_unit_search the particles
    searched globally search one asymmetric unit of each class the iterations searched by unit
    (unit_search.unit_operators), and unit_search.spread_equivalent_poses spreads the poses afterwards.

    RELION leaves stale values for particles the last mini-batches did not visit; this pass
    gives every row of data.star an assignment from the final model. Particles of the last
    mini-batch whose posterior was sharp (pmax >= config.final_reuse_min_pmax) keep the pose it
    gave them: one small VDAM step later their best pose is the same, and on a small data set the
    last mini-batch holds every particle, so this pass cost as much as a whole iteration.
    """
    grid, current_size, coarse_size = search_setup(state, particles, config, advance=False)
    timings: dict = {}
    fresh = recently_assigned(state, particles.n, config)
    chosen = final_pass_subset(fresh, config)
    if chosen is not None:  # the rest stay unassigned: nothing downstream reads their stale poses
        state.class_number[~chosen] = 0
        timings["assigned_fraction"] = float(chosen.float().mean())
        fresh = fresh & chosen
    todo = torch.nonzero(~fresh if chosen is None else chosen & ~fresh).squeeze(1)
    timings["reused_fraction"] = float(fresh.sum()) / max(1, particles.n)
    if todo.numel():
        first_stage = dataclasses.replace(config, local_in_own_class=config.final_local_in_own_class)
        expectation(state, particles, todo, half, grid, current_size, coarse_size, first_stage, as_devices(device), timings, with_sums=False, group=group)
    timings["local_fraction"] = timings.pop("n_local", 0) / max(1, particles.n)
    timings.pop("n_narrow", None)
    if config.final_polish_passes > 0 and local_order(state, config, final=True) > 0:
        started = time.perf_counter()
        placed = torch.nonzero(state.class_number > 0).squeeze(1)
        polish, devices = polish_config(config), as_devices(device)
        for _ in range(config.final_polish_passes):
            expectation(state, particles, placed, half, grid, current_size, coarse_size, polish, devices, {}, with_sums=False)
        timings["polish_seconds"] = time.perf_counter() - started
    return timings


def polish_config(config: VdamConfig) -> VdamConfig:
    """The final pass's second, local-only stage: every particle with a pose is searched around it
    (pmax no longer matters: the first stage's finer sampling spreads it), one HEALPix order finer
    than the first stage could go, where the expected angular error allows (local_order), and with
    translations at half the local step over half the range (the first stage placed each particle
    within half a step). A repeat of the first stage's own settings gains about a quarter as much; a
    particle searched globally in the first stage would lose its pose again in a global repeat. With
    several classes each particle is searched in the class the first stage chose
    (config.polish_in_own_class): this stage refines poses, the class is chosen. Each particle then
    takes its posterior-mean pose (config.final_posterior_mean), not its best sample. assign_all runs
    it config.final_polish_passes times: each later pass centres its search on the previous pass's
    posterior-mean poses, which lie between the grid's samples."""
    return dataclasses.replace(
        config,
        max_local_order=config.max_local_order + 1,
        local_offset_range_px=config.local_offset_range_px / 2,
        local_offset_step_px=config.local_offset_step_px / 2,
        local_min_pmax=0.0,
        local_in_own_class=config.polish_in_own_class,
        local_posterior_mean=config.final_posterior_mean,
    )


def final_pass_size(n_particles: int, config: VdamConfig) -> int:
    """How many particles the final pass gives poses to (final_pass_subset)."""
    return n_particles if config.n_classes > 1 else min(n_particles, config.final_pass_max)


def final_pass_subset(fresh: torch.Tensor, config: VdamConfig) -> torch.Tensor | None:
    """(n,) bool: the particles the final pass gives poses to, or None for all of them. With one class
    and more than config.final_pass_max particles: every recently assigned one (`fresh`) and a random
    sample of the others (fixed by the seed), config.final_pass_max in all."""
    n = fresh.numel()
    if final_pass_size(n, config) == n:
        return None
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=generator)
    # the recently assigned first (in random order), then the others: the first final_pass_max are kept
    order = order[torch.argsort((~fresh[order]).to(torch.int8), stable=True)]
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[order[: config.final_pass_max]] = True
    return chosen


def recently_assigned(state: RunState, n_particles: int, config: VdamConfig) -> torch.Tensor:
    """(n,) bool: particles whose pose the last mini-batch gave from a sharp posterior (pmax >= config.final_reuse_min_pmax)."""
    fresh = torch.zeros(n_particles, dtype=torch.bool)
    if state.last_batch is None or config.final_reuse_min_pmax > 1:
        return fresh
    if config.local_searches and config.max_local_order > max(state.healpix_order, config.max_local_order_iterations):
        # the final pass searches finer than the last mini-batch did (local refinement): its poses
        # are what initial_model.mrc gains from, so none is reused (16.2 vs 20.2 Å on a large particle)
        return fresh
    last = state.last_batch
    fresh[last] = (state.max_probability[last] >= config.final_reuse_min_pmax) & (state.class_number[last] > 0)
    return fresh


def estimate_accuracy(state: RunState, particles: ParticleSet, sample: torch.Tensor, current_size: int, device: torch.device) -> None:
    """Expected angular/translational errors on up to 100 particles at their current poses (vdam-spec 3.7)."""
    sample = sample[:100]
    window = fourier_window(particles.box_size, current_size, device)
    references = projector_transforms(state.maps).to(device)
    rotations = euler_to_matrix(state.rot_deg[sample], state.tilt_deg[sample], state.psi_deg[sample])
    classes = (state.class_number[sample] - 1).clamp(min=0)
    ctf = particle_ctf(particles, sample, window.to("cpu")).to(device)
    sigma2 = state.sigma2.to(device)[particles.optics_group[sample].to(device)][:, window.shell]
    inv_sigma2 = torch.where(window.shell[None, :] > 0, 1.0 / sigma2.clamp(min=1e-30), torch.zeros_like(sigma2))
    angular, translational = [], []
    for k in torch.unique(classes).tolist():
        rows = classes == k
        a, t = expected_errors(references[k], rotations[rows], ctf[rows], inv_sigma2[rows], window, PAD)
        angular.append(a * int(rows.sum()))
        translational.append(t * int(rows.sum()))
    state.acc_rot_deg = sum(angular) / len(sample)
    state.acc_trans_px = sum(translational) / len(sample)


def refine_sampling(state: RunState, config: VdamConfig) -> bool:
    """Make the angular sampling finer when the model has outgrown it (vdam-spec 3.7); True if changed.

    Only when the resolution has stalled, the fine step is coarser than 0.75 x the expected
    angular error, and the coarse HEALPix order stays <= config.max_healpix_order.
    """
    fine_step = angular_step_deg(state.healpix_order + 1)
    if state.iterations_without_gain < 1 or fine_step < 0.75 * state.acc_rot_deg:
        return False
    if state.healpix_order + 1 > config.max_healpix_order:
        return False
    state.healpix_order += 1
    n_dir = 12 * 4**state.healpix_order
    state.direction_prior = torch.full((state.n_classes, n_dir), 1.0 / (state.n_classes * n_dir), dtype=torch.float64)
    return True


def run_iteration(
    state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, device: torch.device | list,
    group: PointGroup | None = None,
) -> dict:
    """Advance `state` by one mini-batch; returns this iteration's figures. group: the point group the
    job imposes (None: none), for the race of starts (vdam.restarts.compete)."""
    started = time.perf_counter()
    iteration = state.iteration + 1
    phases = schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction)
    step = schedules.step_size(iteration, phases, config.step_size)
    tau2_fudge = schedules.tau2_fudge(iteration, phases, config.tau2_fudge)
    initial_subset, final_subset = schedules.subset_sizes(particles.n, config.initial_subset, config.final_subset, config.final_subset_max_fraction)
    batch_size = schedules.subset_size(iteration, phases, initial_subset, final_subset, particles.n)
    order = torch.randperm(particles.n, generator=torch.Generator().manual_seed(config.seed + iteration))
    batch_index = order[:batch_size]

    timings: dict = {}
    # spec 4.7: estimate the accuracy first, then let auto-sampling decide from this iteration's estimate
    # (current_size does not depend on the angular sampling)
    if iteration == 1 or iteration % 10 == 0 or iteration == config.n_iter:
        t0 = time.perf_counter()
        accuracy_size, _ = image_sizes(
            state.resolution_shell, particles.box_size, angular_step_deg(state.healpix_order), config.particle_diameter_a, particles.pixel_size_a
        )
        estimate_accuracy(state, particles, batch_index, accuracy_size, as_devices(device)[0])
        timings["accuracy"] = time.perf_counter() - t0
    if config.auto_sampling and iteration > 1 and iteration % 10 == 0:
        refine_sampling(state, config)
    grid, current_size, coarse_size = search_setup(state, particles, config)
    sums = expectation(state, particles, batch_index, half, grid, current_size, coarse_size, config, as_devices(device), timings, group=group)
    state.last_batch = batch_index.clone()
    n_local = timings.pop("n_local", 0)
    n_narrow = timings.pop("n_narrow", 0)
    unit_fraction = timings.pop("n_unit_orientations", 1) / timings.pop("n_grid_orientations", 1)
    t0 = time.perf_counter()
    maximization(state, sums, current_size, step, tau2_fudge, config, particles.pixel_size_a, map_information(iteration, batch_size, particles.n, config))
    timings["mstep"] = time.perf_counter() - t0
    state.iteration = iteration
    if iteration < 10:
        state.iterations_without_gain = 0
    figures = {
        "iteration": iteration,
        "batch_size": batch_size,
        "step_size": step,
        "tau2_fudge": tau2_fudge,
        "current_size": current_size,
        "coarse_size": coarse_size,
        "sub_translations": grid.n_sub_translations,
        "resolution_a": current_resolution_a(state, particles),
        "healpix_order": state.healpix_order,
        "fine_step_deg": angular_step_deg(local_order(state, config) + 1) if local_order(state, config) else grid.fine_step_deg,
        "local_fraction": n_local / batch_size,
        "narrow_fraction": n_narrow / batch_size,
        "unit_fraction": unit_fraction,
        "acc_rot_deg": state.acc_rot_deg,
        "acc_trans_a": state.acc_trans_px * particles.pixel_size_a,
        "log_likelihood": float(sums.log_likelihood) / batch_size,
        "average_pmax": float(sums.max_probability) / batch_size,
        "class_fraction": state.class_fraction.tolist(),
        "sigma_offset_a": state.sigma_offset_a,
        "seconds": time.perf_counter() - started,
        "timings": timings,
    }
    state.history.append(figures)
    if iteration == competition_iteration(config):
        t0 = time.perf_counter()
        outcome = compete(state, particles, half, config, device, group)
        figures = state.history[-1]  # the winner's figures of its latest iteration (the race may advance the run)
        figures.update(outcome)
        figures["timings"] = {**figures.get("timings", {}), "starts": time.perf_counter() - t0}
    return figures
