"""Deterministic search over rotations: SO(3) grids, batched scoring, distinct minima, local refinement.

Shared by the symmetry alignment (novomap.symmetry.align), point-group detection and map-to-map
alignment (novomap.maps.align). A score function maps rotations (B, 3, 3) float64 to scores (B,)
float64, lower is better; rotations are applied to volumes as in novomap.maps.transform
(V'(r) = V(A^T r)). Everything here is deterministic: no random numbers, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from novomap.maps.transform import centred_coordinates, crop_or_pad, fourier_resize, lowpass, spherical_mask
from novomap.physics.euler import axis_angle_to_matrix, euler_to_matrix
from novomap.sampling.healpix import mean_spacing_deg, pixel_vectors

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def _nside_for(spacing_deg: float) -> int:
    """Smallest HEALPix nside whose mean pixel spacing is at most spacing_deg."""
    nside = 1
    while mean_spacing_deg(nside) > spacing_deg:
        nside *= 2
    return nside


def direction_grid(spacing_deg: float, hemisphere: bool = False) -> torch.Tensor:
    """HEALPix pixel centres (M, 3) float64 with spacing <= spacing_deg; z >= 0 only with hemisphere.

    HEALPix is antipodally symmetric, so the hemisphere (equator ring included) still covers every
    line through the origin.
    """
    nside = _nside_for(spacing_deg)
    vectors = pixel_vectors(nside, nest=False)  # RING order, as healpy.pix2vec's default
    directions = torch.as_tensor(vectors, dtype=torch.float64)
    if hemisphere:
        directions = directions[directions[:, 2] > -1e-9]
    return directions


def rotations_for_directions(directions: torch.Tensor, psi_deg: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Rotations (M, 3, 3) whose third row (the direction that A maps onto +z) is each direction.

    rot = longitude, tilt = colatitude (RELION's viewing direction); psi is an in-plane angle.
    """
    tilt = torch.rad2deg(torch.arccos(directions[:, 2].clamp(-1.0, 1.0)))
    rot = torch.rad2deg(torch.atan2(directions[:, 1], directions[:, 0]))
    psi = torch.as_tensor(psi_deg, dtype=torch.float64).expand_as(rot)
    return euler_to_matrix(rot, tilt, psi)


def so3_grid(spacing_deg: float, psi_range_deg: float = 360.0, hemisphere: bool = False) -> torch.Tensor:
    """A near-uniform SO(3) grid (M, 3, 3): HEALPix directions x psi in [0, psi_range).

    The psi step divides psi_range, so a grid restricted to one psi period is still invariant under
    left-multiplication by Rz(psi_range) (which only adds psi_range to psi).
    """
    directions = direction_grid(spacing_deg, hemisphere)
    n_psi = max(1, math.ceil(psi_range_deg / spacing_deg - 1e-9))
    psi = torch.arange(n_psi, dtype=torch.float64) * (psi_range_deg / n_psi)
    rotations = [rotations_for_directions(directions, p) for p in psi]
    return torch.stack(rotations, dim=1).reshape(-1, 3, 3)


def rotation_angles_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angles (deg) of a_i^T b_j for rotations a (P, 3, 3) and b (Q, 3, 3) -> (P, Q)."""
    trace = torch.einsum("pij,qij->pq", a, b)
    return torch.rad2deg(torch.arccos(((trace - 1) / 2).clamp(-1.0, 1.0)))


def soft_fundamental_domain(rotations: torch.Tensor, equivalences: torch.Tensor, margin_deg: float) -> torch.Tensor:
    """Keep the rotations A (M, 3, 3) within margin_deg of the Dirichlet cell of the identity.

    When the score is invariant under A -> h A for every h in `equivalences` (H, 3, 3, proper, a
    group), only one cell is needed: A is kept if angle(A) <= min_h angle(h A) + margin. A margin of
    about twice the grid's covering radius keeps every orbit within that radius of a kept point.
    """
    own = rotation_angles_deg(torch.eye(3, dtype=torch.float64)[None], rotations)[0]
    # angle(h A) for all h: trace(h A) = sum_ij h_ij A_ji
    trace = torch.einsum("hij,mji->hm", equivalences, rotations)
    others = torch.rad2deg(torch.arccos(((trace - 1) / 2).clamp(-1.0, 1.0))).amin(dim=0)
    return rotations[own <= others + margin_deg]


def evaluate(score_fn: ScoreFn, rotations: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Scores (M,) of rotations (M, 3, 3), evaluated in batches to bound memory."""
    chunks = [score_fn(rotations[i : i + batch]) for i in range(0, rotations.shape[0], batch)]
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64)


def select_distinct(
    rotations: torch.Tensor,
    scores: torch.Tensor,
    count: int,
    min_separation_deg: float,
    equivalences: torch.Tensor | None = None,
    directions_only: bool = False,
) -> torch.Tensor:
    """Indices of up to `count` lowest-scoring rotations that are pairwise >= min_separation_deg apart.

    Distances are taken modulo left-multiplication by `equivalences` (H, 3, 3); with directions_only,
    only the third rows (the directions mapped onto z) are compared, as lines (sign ignored).
    """
    order = torch.argsort(scores, stable=True)
    chosen: list[int] = []
    for index in order.tolist():
        if len(chosen) >= count:
            break
        if chosen and _min_distance(rotations, index, chosen, equivalences, directions_only) < min_separation_deg:
            continue
        chosen.append(index)
    return torch.tensor(chosen, dtype=torch.long)


def _min_distance(rotations, index, chosen, equivalences, directions_only) -> float:
    picked = rotations[chosen]
    if directions_only:
        cosine = (picked[:, 2] @ rotations[index, 2]).abs().clamp(max=1.0)
        return float(torch.rad2deg(torch.arccos(cosine)).min())
    variants = rotations[index][None] if equivalences is None else equivalences @ rotations[index]
    return float(rotation_angles_deg(variants, picked).min())


def _small_rotations(step_deg: float) -> torch.Tensor:
    """The six rotations by +-step about x, y and z (6, 3, 3)."""
    axes = torch.cat([torch.eye(3, dtype=torch.float64), -torch.eye(3, dtype=torch.float64)])
    return axis_angle_to_matrix(axes, step_deg)


def _rotation_vector(vector: torch.Tensor) -> torch.Tensor:
    """Rotation (3, 3) for an axis-angle vector in degrees (zero vector -> identity)."""
    angle = float(vector.norm())
    if angle < 1e-12:
        return torch.eye(3, dtype=torch.float64)
    return axis_angle_to_matrix(vector / angle, angle)


def local_refine(
    score_fn: ScoreFn,
    rotations: torch.Tensor,
    step_deg: float,
    min_step_deg: float,
    scores: torch.Tensor | None = None,
    max_iterations: int = 40,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pattern search from each start rotation (K, 3, 3): returns (refined (K, 3, 3), scores (K,)).

    Each iteration scores the six neighbours exp(+-step e_i) A and, from a parabola through each
    pair, a Newton-like proposal; a start moves to its best point and halves its step when the centre
    (or the proposal, which is already near the bottom) wins, until the step is below min_step_deg.
    All starts are scored together, so batches stay large.
    """
    current = rotations.to(torch.float64).clone()
    best = score_fn(current) if scores is None else scores.to(torch.float64).clone()
    steps = torch.full((current.shape[0],), float(step_deg), dtype=torch.float64)
    for _ in range(max_iterations):
        active = torch.nonzero(steps >= min_step_deg).flatten()
        if active.numel() == 0:
            break
        neighbours = torch.cat([_small_rotations(float(steps[i])) @ current[i] for i in active])
        values = score_fn(neighbours).reshape(-1, 6)
        proposals = torch.stack(
            [_rotation_vector(_parabola_step(values[j], float(best[i]), float(steps[i]))) @ current[i]
             for j, i in enumerate(active.tolist())]
        )
        proposal_values = score_fn(proposals)
        for j, i in enumerate(active.tolist()):
            k = int(torch.argmin(values[j]))
            if proposal_values[j] <= min(best[i], values[j, k]):
                current[i], best[i] = proposals[j], proposal_values[j]
                steps[i] /= 2
            elif values[j, k] < best[i]:
                current[i], best[i] = neighbours[6 * j + k], values[j, k]
            else:
                steps[i] /= 2
    return current, best


def _parabola_step(values: torch.Tensor, centre: float, step: float) -> torch.Tensor:
    """Per-axis minimum of the parabola through (-step, +step, 0) samples, clamped to +-step (3,)."""
    plus, minus = values[:3], values[3:]
    curvature = plus + minus - 2 * centre
    offset = torch.where(curvature > 1e-12, step * (minus - plus) / (2 * curvature.clamp(min=1e-12)), 0.0)
    return offset.clamp(-step, step)


def working_copy(
    volume: torch.Tensor, crop: int, size: int, resolution_px: float = 2.0, normalise: bool = True
) -> torch.Tensor:
    """A small, rotation-safe copy of a centred map for scoring: (size, size, size) float32.

    Central crop to `crop` px (the particle with a margin), Fourier resize to `size`, low-pass at
    resolution_px working pixels (2 = Nyquist), solvent level (mean of the corners beyond 0.45 box)
    subtracted, soft spherical mask (so that rotation never moves density across the box edge), and
    scaled to unit norm if `normalise`.
    """
    small = fourier_resize(crop_or_pad(volume.to(torch.float32), crop).double(), size).float()
    if resolution_px > 2.0:
        small = lowpass(small, 1.0, resolution_px)
    r = centred_coordinates(size).norm(dim=-1)
    solvent = small[r > 0.45 * size]
    if solvent.numel():
        small = small - solvent.mean()
    small = small * spherical_mask(size, size / 2 - 3, 2.0)
    norm = small.norm()
    return small / norm if normalise and norm > 0 else small
