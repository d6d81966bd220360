"""initial_model.mrc's map: the largest class reconstructed at the final poses, combined with its last VDAM maps.

final_reconstruction gives the class's particles one pose each (the final pass's) and reconstructs
them; final_map combines that reconstruction with the mean of the last VDAM maps (each estimate has
errors the other lacks); fine_final_map carries the result onto a grid finer than the working grid
where the particles allow it. The symmetry step (symmetry.choice) sits between final_map and
fine_final_map; initial_model runs the sequence.
"""

from __future__ import annotations

import torch

from novomap.analysis.confidence import MAX_SHIFT_PX
from novomap.io.particles import ParticleSet
from novomap.maps.align import best_translation
from novomap.maps.combine import equal_variance_sum, match_shell_amplitudes, splice_shells
from novomap.maps.transform import resample_map, shift_volume
from novomap.physics.masks import soft_edge_mask
from novomap.reconstruct import Poses, reconstruct_with_poses
from novomap.symmetry.choice import AppliedSymmetry, symmetrise_on_axes
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState


def final_reconstruction(state: RunState, particles: ParticleSet, class_index: int, config: VdamConfig) -> torch.Tensor:
    """The class's map reconstructed from its particles at the final pass's poses -> (N, N, N) float32.

    Better than RELION, which hands on the last VDAM map: that map is a running average over
    100 noisy mini-batch steps, while the final pass has just given every particle a pose from
    the final map. One CTF-weighted reconstruction from those poses (one more EM step over all
    the data) gave FSC 0.5 of 13-14 Å instead of 20 Å on the real beta-gal seeds where VDAM ended
    poorly, and about the same (9.9 vs 9.2 Å) where it ended well
    (benchmarks/results/2026-11-25-speed.md). Not masked here: the particle can sit a few pixels
    off the box centre, and a mask there cut it and misled the symmetry search (seed 5: 40 Å).
    """
    members = torch.nonzero(state.class_number == class_index + 1).squeeze(1)
    if members.numel() == 0:  # no particle chose the class: keep its VDAM map
        return state.maps[class_index].float()
    if members.numel() > config.final_reconstruction_max:
        # plenty for a low-resolution map, and it keeps the step to a few minutes on a CPU at 200k particles
        chosen = torch.randperm(members.numel(), generator=torch.Generator().manual_seed(config.seed))[: config.final_reconstruction_max]
        members = members[chosen.sort().values]
    poses = Poses(state.rot_deg, state.tilt_deg, state.psi_deg, state.origin_x_a, state.origin_y_a)
    # single precision and ~4 MB of pixels per batch: 1.5x faster than double precision in 256-particle
    # batches, the same map to 4e-6 (benchmarks/results/2026-11-30-fixed-cost.md)
    batch = max(256, (1 << 22) // particles.box_size**2)
    return reconstruct_with_poses(particles, members, poses, batch_size=batch, single_precision=True).float()


def final_map(
    state: RunState, reconstruction: torch.Tensor, class_index: int, config: VdamConfig, pixel_size_a: float, onto_vdam_px: torch.Tensor | None = None
) -> torch.Tensor:
    """initial_model's map before the symmetry step: the final reconstruction and the last VDAM maps combined.

    Neither alone is the best estimate. The reconstruction gives each particle one pose; the VDAM map
    sums soft poses over many mini-batches, and its final-phase iterates fluctuate about the optimum
    (their mean is Polyak averaging). The mean of the VDAM maps of the compared iterations
    (vdam.convergence: the last one and those 10 and 20 before, all in the same frame) and the
    reconstruction, moved onto it (best shift), are summed with equal variance inside the particle
    mask (maps.combine), then given the reconstruction's amplitude in every shell and its mean. Against
    the truth (benchmarks/results/2026-12-01-final-map.md) a large asymmetric particle's five seeds went
    from 1.22-1.25x to 1.03-1.14x their true-pose limit; symmetric specimens and real beta-gal stayed
    within 2 % of the reconstruction's figure. onto_vdam_px: reconstruction_onto_vdam's shift, when the
    caller has it already.
    """
    vdam_mean = last_vdam_mean(state, class_index, config)
    if onto_vdam_px is None:
        onto_vdam_px = best_translation(vdam_mean, reconstruction.double(), MAX_SHIFT_PX)
    moved = shift_volume(reconstruction.double(), onto_vdam_px)
    n = vdam_mean.shape[-1]
    mask = soft_edge_mask((n, n, n), config.particle_diameter_a / (2 * pixel_size_a), config.mask_edge_px) if config.flatten_solvent else None
    combined = equal_variance_sum([vdam_mean, moved], mask)
    # on the reconstruction's greyscale and spectrum, as initial_model was before: a map given the
    # VDAM map's damped high frequencies scores lower against a truth after real-space masking
    # (7.5 -> 8.5 Å for the same map of a D7 particle), whatever its content
    return match_shell_amplitudes(combined, moved if mask is None else moved * mask.double()).float()


def last_vdam_mean(state: RunState, class_index: int, config: VdamConfig) -> torch.Tensor:
    """Mean of the class's VDAM maps of the iterations vdam.convergence compares (the last one and
    those 10 and 20 before, all in the same frame) -> (N, N, N) float64."""
    vdam = state.maps[class_index].double()
    lag = max(0, config.convergence_lag)
    earlier = [snapshot[class_index].double() for iteration, snapshot in sorted(state.map_snapshots.items())
               if state.iteration - lag <= iteration < state.iteration and snapshot.shape == state.maps.shape]
    return torch.stack([*earlier, vdam]).mean(0)


def reconstruction_onto_vdam(state: RunState, reconstruction: torch.Tensor, class_index: int, config: VdamConfig) -> torch.Tensor:
    """The shift (3,) zyx px that moves the class's final reconstruction onto its last VDAM maps (last_vdam_mean)."""
    return best_translation(last_vdam_mean(state, class_index, config), reconstruction.double(), MAX_SHIFT_PX)


#: initial_model.mrc takes the working grid's map up to this fraction of its Nyquist frequency and the
#: finer grid's reconstruction beyond the end of a cosine cross-fade at FINE_FADE_TO
FINE_FADE_FROM, FINE_FADE_TO = 0.8, 0.95


def fine_final_map(
    coarse_final: torch.Tensor,
    onto_vdam_px: torch.Tensor,
    state: RunState,
    particles: ParticleSet,
    fine_particles: ParticleSet,
    class_index: int,
    config: VdamConfig,
    applied: AppliedSymmetry,
) -> torch.Tensor:
    """initial_model's map on fine_particles' finer grid -> (n, n, n) float64.

    coarse_final: the working grid's final map (final_map, aligned and symmetrised: applied)
    (N, N, N); onto_vdam_px: the shift final_map gave the working grid's reconstruction
    (reconstruction_onto_vdam), in working pixels. The class is reconstructed on the finer grid from
    the same particles at the same poses, moved into coarse_final's frame by the same shifts and
    rotation, symmetrised and masked alike, and takes over from coarse_final across the top of the
    working grid's band (FINE_FADE_FROM..FINE_FADE_TO of its Nyquist), where the working map ends.
    """
    fine = final_reconstruction(state, fine_particles, class_index, config).double()
    shift_px = (onto_vdam_px + applied.alignment.shift_zyx_px.to(torch.float64)) * (particles.pixel_size_a / fine_particles.pixel_size_a)
    moved = symmetrise_on_axes(fine, fine_particles.pixel_size_a, applied.group, applied.alignment.rotation, shift_px, config).double()
    n = moved.shape[-1]
    upsampled = resample_map(coarse_final.double(), particles.pixel_size_a, n, fine_particles.pixel_size_a, tolerance=5e-3)
    working_nyquist = coarse_final.shape[-1] / 2  # in shells of the working box = of the fine box (same field of view)
    return splice_shells(upsampled, moved, FINE_FADE_FROM * working_nyquist, FINE_FADE_TO * working_nyquist)
