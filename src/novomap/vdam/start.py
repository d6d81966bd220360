"""Build iteration 0 of a de novo run from the particles (vdam-spec 4.6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from novomap.io.particles import ParticleSet
from novomap.physics.fourier import rfft_image
from novomap.physics.masks import soft_edge_mask
from novomap.physics.window import FourierWindow
from novomap.reconstruct import particle_ctf
from novomap.vdam.config import VdamConfig
from novomap.vdam.initialise import initial_noise_spectrum, initial_references, initial_window
from novomap.vdam.state import RunState


def micrograph_order(particles: ParticleSet) -> list[int]:
    """Particle indices sorted by micrograph name (stable: table order within a micrograph)."""
    names = particles.micrograph_names
    return sorted(range(particles.n), key=lambda i: names[i])


def sigma2_particles(particles: ParticleSet, n_max: int, n_classes: int) -> torch.Tensor:
    """Indices of the particles used for each optics group's initial noise spectrum: the first
    n_max per group in micrograph-sorted order (at least 5 K), as RELION's --nr_parts_sigma2noise."""
    order = micrograph_order(particles)
    n_take = max(n_max, 5 * n_classes)
    chosen: list[int] = []
    for group in torch.unique(particles.optics_group).tolist():
        members = [i for i in order if int(particles.optics_group[i]) == group]
        chosen.extend(members[:n_take])
    return torch.tensor(sorted(chosen), dtype=torch.long)


def start_particles(particles: ParticleSet, n_max: int, n_classes: int) -> torch.Tensor:
    """Indices of the particles of the random-orientation start: the first n_max (at least 5 K) in
    micrograph-sorted order, whatever their optics group, so that splitting the same particles
    into optics groups does not change the start (RELION takes n_max per group for both)."""
    order = micrograph_order(particles)
    return torch.tensor(sorted(order[: max(n_max, 5 * n_classes)]), dtype=torch.long)


@dataclass(frozen=True)
class StartData:
    """What every random start of a run derives from the particles alone (no seed): the initial noise
    spectra and the random-orientation reconstruction's images."""

    sigma2: torch.Tensor  # (n_groups, N//2+1) float64
    spectra: torch.Tensor  # (B, P) complex128 on initial_window
    ctf: torch.Tensor  # (B, P) on initial_window
    window: FourierWindow


def start_data(particles: ParticleSet, config: VdamConfig) -> StartData:
    """The seed-independent part of initial_state (a race of starts makes it once: ~0.3 s per start
    on the real tutorial particles)."""
    n, k = particles.box_size, config.n_classes
    diameter_px = config.particle_diameter_a / particles.pixel_size_a
    noise_set = sigma2_particles(particles, config.n_particles_sigma2, k)
    n_groups = len(particles.table.optics)
    sigma2 = torch.zeros((n_groups, n // 2 + 1), dtype=torch.float64)
    for group in range(n_groups):
        rows = noise_set[particles.optics_group[noise_set] == group]
        if rows.numel():
            sigma2[group] = initial_noise_spectrum(particles.images(rows).double(), diameter_px / 2)
    chosen = start_particles(particles, config.n_particles_sigma2, k)
    window = initial_window(n)
    spectra = window.take(rfft_image(particles.images(chosen).double()))
    return StartData(sigma2, spectra, particle_ctf(particles, chosen, window), window)


def initial_state(particles: ParticleSet, config: VdamConfig, data: StartData | None = None) -> RunState:
    """Iteration 0 of a run: random-orientation reconstruction, random blobs (config.seed), flat priors.
    data: start_data(particles, config), when already made for another start of the same run."""
    n, k = particles.box_size, config.n_classes
    generator = torch.Generator().manual_seed(config.seed)
    diameter_px = config.particle_diameter_a / particles.pixel_size_a
    if data is None:
        data = start_data(particles, config)
    sigma2 = data.sigma2.clone()
    ini_high_shells = max(1, round(0.07 * n))
    maps = initial_references(data.spectra, data.ctf, data.window, k, diameter_px, ini_high_shells, generator)
    if config.flatten_solvent:
        maps = maps * soft_edge_mask((n, n, n), diameter_px / 2, config.mask_edge_px)
    m = n  # pad 1
    n_dir = 12 * 4**config.healpix_order
    zeros = torch.zeros(particles.n, dtype=torch.float64)
    return RunState(
        iteration=0,
        maps=maps,
        moment1=torch.zeros((k, 2, m, m, m), dtype=torch.complex128),
        moment2=torch.ones((k, m, m, m), dtype=torch.float64),
        sigma2=sigma2,
        class_fraction=torch.full((k,), 1.0 / k, dtype=torch.float64),
        direction_prior=torch.full((k, n_dir), 1.0 / (k * n_dir), dtype=torch.float64),
        sigma_offset_a=config.sigma_offset_a,
        # iteration 1 runs at ini_high (maxres = round(0.07 N)); minres_map = 5 applies only to
        # the SSNR-derived resolution of later iterations (vdam-spec 3.1, Appendix A: 28 px at N = 64)
        resolution_shell=ini_high_shells,
        healpix_order=config.healpix_order,
        offset_range_px=config.offset_range_px,
        offset_step_px=config.offset_step_px,
        perturbation=0.0,
        rng_state=generator.get_state(),
        rot_deg=particles.rot_deg.clone(),
        tilt_deg=particles.tilt_deg.clone(),
        psi_deg=particles.psi_deg.clone(),
        origin_x_a=particles.origin_x_a.clone(),
        origin_y_a=particles.origin_y_a.clone(),
        class_number=torch.zeros(particles.n, dtype=torch.long),
        max_probability=zeros.clone(),
        n_significant=torch.zeros(particles.n, dtype=torch.long),
        log_likelihood=zeros.clone(),
        tau2=torch.zeros((k, n // 2 + 1), dtype=torch.float64),
        ssnr=torch.zeros((k, n // 2 + 1), dtype=torch.float64),
    )
