"""The VDAM update of one class's Fourier reference (vdam-spec 4.2).

Variable metric: each pseudo half-set's gradient is divided by its accumulated Fisher weight
(a diagonal Newton step); first moments smooth it across mini-batches; the second moment tracks
the per-voxel noise-to-signal ratio between the two pseudo halves and scales the step; a
shell-wise f = SNR/(1+SNR) from the half-set disagreement weighs the step against shrinking F.
"""

from __future__ import annotations

import math

import torch

from novomap.physics.fourier import power, shell_average

BETA1 = 0.9
BETA2 = 0.999


def map_memory_halves(batch_size: int, n_particles: int) -> float:
    """How many pseudo half mini-batches of independent particles the VDAM map holds, once poses are stable.

    The map follows the first moments, exponential averages with weight (1 - BETA1) per mini-batch:
    such an average of independent terms has (1 - BETA1) / (1 + BETA1) of one term's variance, so it
    holds (1 + BETA1) / (1 - BETA1) = 19 mini-batches' worth, but never more particles than the data
    set has (a particle seen again brings its same noise). The map averages both pseudo halves: x 2.
    """
    held = min(float(n_particles), (1 + BETA1) / (1 - BETA1) * batch_size)
    return 2.0 * held / max(batch_size, 1)


def fisher_weight_floor(background_std: float) -> float:
    """The accumulated Fisher weight below which a voxel's gradient is not enlarged (d = g / max(floor, W)).

    RELION divides by max(1, W) (vdam-spec 4.2), which assumes RELION-normalised images (background
    std 1): one particle then gives a voxel a weight of ~N^2 (transforms are scaled by 1/N^2), far
    above 1. Images scaled by s give weights 1/s^2 as large and gradients 1/s: with the floor kept at
    1, images x1000 took steps ~1000 times too short and a run stalled at 45 Å where the same
    particles at x1 reach 17 Å. A floor of 1/s^2 makes the update the same in the data's units.
    Within a factor of 2 of normalised the floor stays 1, RELION's behaviour to the bit.
    """
    if not math.isfinite(background_std) or background_std <= 0 or 0.5 <= background_std <= 2.0:
        return 1.0
    return 1.0 / background_std**2


def vdam_update(
    reference: torch.Tensor,
    gradient: torch.Tensor,
    weight: torch.Tensor,
    moment1: torch.Tensor,
    moment2: torch.Tensor,
    shells: torch.Tensor,
    inside: torch.Tensor,
    step: float,
    tau2_fudge: float,
    weight_floor: float = 1.0,
) -> torch.Tensor:
    """One update; returns the new reference and updates the moments in place.

    reference (M, M, M) complex: F of the current map (no gridding correction), centred grid.
    gradient (2, M, M, M) complex, weight (2, M, M, M) real: the two pseudo halves' sums.
    moment1 (2, M, M, M) complex and moment2 (M, M, M) real (initialised to 0 and 1).
    shells (M, M, M) int64: round(|k|/pad); inside (M, M, M) bool: |k| < current_size/2.
    step: eta for this class (schedule times class-size factor); tau2_fudge: T.
    weight_floor: fisher_weight_floor of the images (1 for RELION-normalised ones).
    """
    index = inside_index(inside)
    gradient_inside = gradient.reshape(2, -1).index_select(1, index)
    weight_inside = weight.reshape(2, -1).index_select(1, index)
    return vdam_update_at(reference, gradient_inside, weight_inside, moment1, moment2, shells, index, step, tau2_fudge, weight_floor)


def inside_index(inside: torch.Tensor) -> torch.Tensor:
    """(V,) flat indices of the voxels of a boolean grid (M, M, M) that are set: those an update changes."""
    return torch.nonzero(inside.reshape(-1)).squeeze(1)


def vdam_update_at(
    reference: torch.Tensor,
    gradient_inside: torch.Tensor,
    weight_inside: torch.Tensor,
    moment1: torch.Tensor,
    moment2: torch.Tensor,
    shells: torch.Tensor,
    index: torch.Tensor,
    step: float,
    tau2_fudge: float,
    weight_floor: float = 1.0,
) -> torch.Tensor:
    """vdam_update given the sums at the voxels it changes alone: gradient_inside (2, V) complex and
    weight_inside (2, V) real at the flat indices index (V,) (inside_index). The caller forms them only
    there (early in a run a few per cent of the grid); weight_inside is overwritten.

    Only the voxels inside the current window change: the moments outside stay as they are and the
    update is zero there. One flat index serves every tensor: boolean indexing would find the voxels
    again for each of them."""
    moment1_flat, moment2_flat = moment1.view(2, -1), moment2.view(-1)  # in place: contiguous
    d = gradient_inside / weight_inside.clamp_(min=weight_floor)  # (2, V)
    previous = moment1_flat.index_select(1, index)
    # the moments start at 0: the first update takes d itself (the voxels inside were updated before, if any were)
    m = d if not bool(torch.view_as_real(previous).any()) else previous.mul_(BETA1).add_(d, alpha=1 - BETA1)
    moment1_flat.index_copy_(1, index, m)
    disagreement = power(d[1] - d[0]).div_(power((d[0] + d[1]) / 2).add_(1e-12))
    second = moment2_flat.index_select(0, index).mul_(BETA2).add_(disagreement, alpha=1 - BETA2)
    moment2_flat.index_copy_(0, index, second)
    direction = ((m[0] + m[1]) / 2).div_(second.sqrt().add_(1e-12))

    inside_shells = shells.reshape(-1).index_select(0, index)
    n_shells = int(inside_shells.max()) + 1
    current = reference.reshape(-1).index_select(0, index)
    signal = shell_average(current.abs(), inside_shells, n_shells)
    noise = shell_average((m[1] - m[0]).abs(), inside_shells, n_shells)
    snr = 2 * tau2_fudge * signal / noise.clamp(min=1e-30)
    f = (snr / (1 + snr)).clamp(max=1.0)[inside_shells]

    updated = torch.zeros_like(reference)
    updated.view(-1).index_copy_(0, index, current + step * (f * direction - (1 - f) * current))
    return updated
