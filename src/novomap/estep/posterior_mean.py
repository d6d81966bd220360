"""Each particle's posterior-mean pose: the estimate of least expected squared error.

The fine pass's best hypothesis (the posterior's largest sample) is a noisy estimate: where the
posterior spreads over many samples (a small particle at low SNR: pmax ~0.1 in a local search), which
of its neighbouring samples happens to be largest is decided by the noise, and the grid's step adds
its own rounding. The posterior mean averages both away. Rotations are averaged as matrices (the
chordal mean) and projected back onto SO(3); translations are averaged as vectors.

Only meaningful where the posterior has one mode, as around a local search's previous pose; a
global posterior can hold a particle's symmetry mates or a mirror pose, whose mean is no pose at all.
"""

from __future__ import annotations

import torch

from novomap.physics.euler import nearest_rotations


def posterior_mean_poses(
    weights: torch.Tensor,
    row_particle: torch.Tensor,
    row_rotations: torch.Tensor,
    row_translations_px: torch.Tensor,
    n_particles: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior-mean rotation and translation of each particle.

    weights: (H, J) posterior weights (each particle's sum to 1 over the rows it has; 0 where not
    retained); row_particle: (H,) int64 particle of each row; row_rotations: (H, 3, 3) each row's
    orientation; row_translations_px: (H, J, 2) each row's J translations (x, y) px.
    Returns (n_particles, 3, 3) rotations and (n_particles, 2) translations, float64; a particle
    without any weight gets the identity and zero.
    """
    weights = weights.double()
    row_weight = weights.sum(1)  # (H,) the orientation's marginal
    mean_matrix = torch.zeros((n_particles, 3, 3), dtype=torch.float64, device=weights.device)
    mean_matrix.index_add_(0, row_particle, row_weight[:, None, None] * row_rotations.double())
    total = torch.zeros(n_particles, dtype=torch.float64, device=weights.device).index_add_(0, row_particle, row_weight)
    weighted_shift = (weights[..., None] * row_translations_px.double()).sum(1)  # (H, 2)
    shift = torch.zeros((n_particles, 2), dtype=torch.float64, device=weights.device).index_add_(0, row_particle, weighted_shift)
    empty = total <= 0
    mean_matrix[empty] = torch.eye(3, dtype=torch.float64, device=weights.device)
    shift = shift / torch.where(empty, torch.ones_like(total), total)[:, None]
    return nearest_rotations(mean_matrix), shift
