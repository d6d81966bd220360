"""One VDAM iteration, in the order of vdam-spec 4.7."""

from __future__ import annotations

import math
import time

import torch

from novomap.estep.accumulate import Sums, accumulate, flush_slices
from novomap.estep.cache import ProjectionCache
from novomap.estep.prepare import prepare_batch
from novomap.estep.search import SearchSettings, coarse_pass, fine_pass, project_references
from novomap.io.particles import ParticleSet
from novomap.model.params import image_sizes, reference_power, resolution_shell, spectral_snr, update_sigma2, update_with_momentum
from novomap.physics.euler import euler_to_matrix, matrix_to_euler
from novomap.physics.fourier import centred_ft_to_volume, centred_radius, rfft_shells, volume_to_centred_ft
from novomap.physics.masks import mask_volume_with_background, soft_edge_mask
from novomap.physics.projection import gridding_correction, hermitian_symmetrise
from novomap.physics.window import fourier_window
from novomap.reconstruct import particle_ctf
from novomap.sampling.accuracy import expected_errors
from novomap.sampling.grid import SearchGrid, build_search_grid
from novomap.sampling.healpix import angular_step_deg
from novomap.vdam import schedules
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState
from novomap.vdam.update import vdam_update

PAD = 1  # the job uses --pad 1


def projector_transforms(maps: torch.Tensor) -> torch.Tensor:
    """Gridding-corrected centred transforms of the references for projection: (K, N, N, N) -> (K, M, M, M)."""
    n = maps.shape[-1]
    correction = gridding_correction(n, PAD, maps.device)
    return torch.stack([volume_to_centred_ft(m / correction, PAD) for m in maps])


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


def _chunk_size(config: VdamConfig, grid: SearchGrid, n_classes: int) -> int:
    if config.chunk_size > 0:
        return config.chunk_size
    per_particle = grid.n_coarse_translations * grid.n_coarse_orientations * n_classes
    return int(max(8, min(512, 12_000_000 // per_particle)))


def expectation(
    state: RunState,
    particles: ParticleSet,
    batch_index: torch.Tensor,
    half: torch.Tensor,
    grid: SearchGrid,
    current_size: int,
    coarse_size: int,
    config: VdamConfig,
    device: torch.device,
    timings: dict,
    with_sums: bool = True,
) -> Sums:
    """The E-step over a mini-batch: coarse pass, fine pass and sums, chunk by chunk.

    Every visited particle's best pose, class and statistics are stored in `state`; with
    with_sums=False only that is done (the final assignment pass).
    """
    n = particles.box_size
    window = fourier_window(n, current_size, device)
    coarse_window = fourier_window(n, coarse_size, device)
    coarse_pixels = torch.nonzero(window.shell < coarse_size // 2).squeeze(1)
    # single precision for the search: projections feed float32 matrix products anyway
    references = projector_transforms(state.maps).to(device=device, dtype=torch.complex64)
    t0 = time.perf_counter()
    coarse_projections = project_references(references, grid.coarse_rotations.to(device), coarse_window, PAD)
    timings["project"] = timings.get("project", 0.0) + time.perf_counter() - t0
    log_prior = torch.log(state.direction_prior.clamp(min=1e-30)).to(device)
    settings = SearchSettings(config.adaptive_fraction, config.significant_cap(), particles.pixel_size_a, state.sigma_offset_a)
    fine_rotations = grid.fine_rotations.reshape(-1, 3, 3)
    sums = Sums.zeros(state.n_classes, n * PAD, n, state.sigma2.shape[0], grid.n_directions, _pixels_per_shell(n), fine_rotations.shape[0], window.n_pixels, device)
    projection_cache = ProjectionCache(references, fine_rotations, window, PAD)
    sigma2 = state.sigma2.to(device)
    diameter_px = config.particle_diameter_a / particles.pixel_size_a
    for chunk in torch.split(batch_index, _chunk_size(config, grid, state.n_classes)):
        t0 = time.perf_counter()
        origins = torch.stack([state.origin_x_a[chunk], state.origin_y_a[chunk]], -1) / particles.pixel_size_a
        batch = prepare_batch(
            particles.images(chunk).to(device=device, dtype=torch.float64),
            chunk,
            half[chunk].to(device),
            particles.optics_group[chunk].to(device),
            origins.to(device),
            window,
            particle_ctf(particles, chunk, window.to("cpu")).to(device),
            sigma2,
            diameter_px / 2,
        )
        t1 = time.perf_counter()
        significant = coarse_pass(batch, coarse_pixels, coarse_window, coarse_projections, grid, log_prior, settings)
        t2 = time.perf_counter()
        result = fine_pass(batch, window, significant, projection_cache, grid, log_prior, settings)
        t3 = time.perf_counter()
        if with_sums:
            accumulate(sums, batch, result, window, grid, PAD, particles.pixel_size_a)
        t4 = time.perf_counter()
        for key, value in (("prepare", t1 - t0), ("coarse", t2 - t1), ("fine", t3 - t2), ("backproject", t4 - t3)):
            timings[key] = timings.get(key, 0.0) + value
        _store_assignments(state, chunk, batch.origin_px.cpu(), result, fine_rotations, particles.pixel_size_a)
    if with_sums:
        t0 = time.perf_counter()
        flush_slices(sums, grid, window, PAD)
        timings["backproject"] = timings.get("backproject", 0.0) + time.perf_counter() - t0
    return sums


def _pixels_per_shell(n: int) -> torch.Tensor:
    shells = rfft_shells(n)
    keep = (shells >= 0) & (shells <= n // 2)
    return torch.zeros(n // 2 + 1, dtype=torch.float64).index_add_(0, shells[keep], torch.ones(int(keep.sum()), dtype=torch.float64))


def _store_assignments(state: RunState, chunk: torch.Tensor, origin_px: torch.Tensor, result, fine_rotations: torch.Tensor, pixel_size_a: float) -> None:
    rot, tilt, psi = matrix_to_euler(fine_rotations[result.best_orientation.cpu()])
    state.rot_deg[chunk], state.tilt_deg[chunk], state.psi_deg[chunk] = rot, tilt, psi
    new_origin = (origin_px + result.best_translation_px.cpu()) * pixel_size_a
    state.origin_x_a[chunk], state.origin_y_a[chunk] = new_origin[:, 0], new_origin[:, 1]
    state.class_number[chunk] = result.best_class.cpu() + 1
    state.max_probability[chunk] = result.max_probability.cpu()
    state.n_significant[chunk] = result.n_significant.cpu()
    state.log_likelihood[chunk] = result.log_likelihood.cpu()


def maximization(state: RunState, sums: Sums, current_size: int, step: float, tau2_fudge: float, config: VdamConfig, pixel_size_a: float) -> None:
    """The M-step: VDAM update of every class, then noise, class, direction and offset priors."""
    n = state.maps.shape[-1]
    m = n * PAD
    device = sums.gradient.device
    radius = centred_radius(m, PAD, device)
    shells = torch.round(radius).long()
    inside = radius < current_size / 2
    n_shells = n // 2 + 1
    projector = projector_transforms(state.maps.to(device))
    new_maps = []
    for k in range(state.n_classes):
        gradient, weight = [], []
        for h in (0, 1):
            g, w = hermitian_symmetrise(sums.gradient[h, k], sums.weight[h, k])
            gradient.append(g)
            weight.append(w)
        gradient, weight = torch.stack(gradient), torch.stack(weight)
        tau2 = reference_power(projector[k], shells, n_shells)
        state.tau2[k] = tau2.cpu()
        state.ssnr[k] = spectral_snr(weight[0], tau2, shells, tau2_fudge, PAD).cpu()
        class_step = step * (1 - math.exp(-(3 * state.n_classes + 10) * float(state.class_fraction[k])))
        reference = volume_to_centred_ft(state.maps[k].to(device), PAD)
        moment1, moment2 = state.moment1[k].to(device), state.moment2[k].to(device)
        updated = vdam_update(reference, gradient, weight, moment1, moment2, shells, inside, class_step, tau2_fudge)
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


def search_setup(state: RunState, particles: ParticleSet, config: VdamConfig, advance: bool = True) -> tuple[SearchGrid, int, int]:
    """This iteration's perturbed grid and (current_size, coarse_size).

    advance: draw the next perturbation (every iteration); False reuses the current one, so a
    pass outside the iteration sequence leaves the RNG, hence --continue, untouched.
    """
    if advance:
        generator = torch.Generator()
        generator.set_state(state.rng_state)
        state.perturbation = next_perturbation(state.perturbation, generator, config.perturb)
        state.rng_state = generator.get_state()
    grid = build_search_grid(state.healpix_order, state.offset_range_px, state.offset_step_px, state.perturbation)
    current_size, coarse_size = image_sizes(state.resolution_shell, particles.box_size, grid.coarse_step_deg, config.particle_diameter_a, particles.pixel_size_a)
    return grid, current_size, coarse_size


def assign_all(state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, device: torch.device) -> dict:
    """One E-step over every particle with the final maps: fresh poses for the whole data set.

    RELION leaves stale values for particles the last mini-batches did not visit; this pass
    gives every row of data.star an assignment from the final model.
    """
    grid, current_size, coarse_size = search_setup(state, particles, config, advance=False)
    timings: dict = {}
    expectation(state, particles, torch.arange(particles.n), half, grid, current_size, coarse_size, config, device, timings, with_sums=False)
    return timings


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


def run_iteration(state: RunState, particles: ParticleSet, half: torch.Tensor, config: VdamConfig, device: torch.device) -> dict:
    """Advance `state` by one mini-batch; returns this iteration's figures."""
    started = time.perf_counter()
    iteration = state.iteration + 1
    phases = schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction)
    step = schedules.step_size(iteration, phases, config.step_size)
    tau2_fudge = schedules.tau2_fudge(iteration, phases, config.tau2_fudge)
    initial_subset, final_subset = schedules.default_subset_sizes(particles.n)
    initial_subset = config.initial_subset if config.initial_subset > 0 else initial_subset
    final_subset = config.final_subset if config.final_subset > 0 else final_subset
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
        estimate_accuracy(state, particles, batch_index, accuracy_size, device)
        timings["accuracy"] = time.perf_counter() - t0
    if config.auto_sampling and iteration > 1 and iteration % 10 == 0:
        refine_sampling(state, config)
    grid, current_size, coarse_size = search_setup(state, particles, config)
    sums = expectation(state, particles, batch_index, half, grid, current_size, coarse_size, config, device, timings)
    t0 = time.perf_counter()
    maximization(state, sums, current_size, step, tau2_fudge, config, particles.pixel_size_a)
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
        "resolution_a": particles.box_size * particles.pixel_size_a / max(state.resolution_shell, 1),
        "healpix_order": state.healpix_order,
        "fine_step_deg": grid.fine_step_deg,
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
    return figures
