"""Settings of a VDAM initial-model run, with RELION's defaults for the 3D initial model job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VdamConfig:
    n_iter: int = 100
    n_classes: int = 1
    particle_diameter_a: float = 200.0
    flatten_solvent: bool = True
    healpix_order: int = 1  # coarse 30 deg, fine 15 deg ("initial angular sampling" 15)
    offset_range_px: float = 6.0
    offset_step_px: float = 2.0
    tau2_fudge: float = 4.0
    step_size: float = 0.5
    initial_fraction: float = 0.3
    final_fraction: float = 0.2
    initial_subset: int = -1  # -1: RELION's automatic size
    final_subset: int = -1
    mu: float = 0.9
    max_significant: int = -1  # -1: 100 * K
    adaptive_fraction: float = 0.999
    perturb: float = 0.5
    sigma_offset_a: float = 10.0
    auto_sampling: bool = True
    max_healpix_order: int = 2  # RELION allows coarse order 3 (7.5 / 3.75 deg): 8x the coarse search, see README
    n_particles_sigma2: int = 1000
    mask_edge_px: float = 5.0
    seed: int = 1
    write_every: int = 10
    chunk_size: int = 0  # particles per E-step chunk; 0: chosen from memory
    pool: int = 0  # at least this many particles per chunk (RELION's --pool)
    final_reconstruction_max: int = 50_000  # particles in initial_model's reconstruction (a random subset beyond)

    def significant_cap(self) -> int:
        return self.max_significant if self.max_significant > 0 else 100 * self.n_classes
