"""Rotate a map so that a point group's axes lie where RELION puts them (relion_align_symmetry, spec 5.2).

Algorithm (deterministic, unlike RELION's 400 clock-seeded random orientations):
1. re-centre by the centre of mass of the positive voxels;
2. score on small working copies (particle cropped with a margin, Fourier-resized to <= 24 px for
   the global search and <= 32 px for refinement, masked by a soft sphere);
3. global search over an SO(3) grid (HEALPix directions x psi, ~15 deg) from which the group's own
   redundancy is removed (see `coarse_candidates`), scored in batches;
4. the best few distinct candidates are refined locally (pattern search with parabolic steps) on
   the coarse copy, the best two again on the finer copy, to ~0.1 deg.

Score of a rotation A (spec 5.2): R = A.V, S = (1/|G|) sum_g g.R, score = ||R - S||^2 / ||R||^2
(0 = perfectly symmetric). g.R is computed as (g A).V, one interpolation. The search uses a cheap
proxy: mean over a few operators g (a generating set plus the ones that move the map most) of
||g.R - R||^2 / (2 ||R||^2); it is zero exactly when the full score is, and the reported score is
the full one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from novomap.maps import centring, so3_search
from novomap.maps.transform import rotate_volume
from novomap.physics.euler import axis_angle_to_matrix, matrix_to_euler
from novomap.symmetry.groups import PointGroup, close_group, point_group

COARSE_SIZE = 20  # px, global search copy
FINE_SIZE = 32  # px, refinement copy
GRID_SPACING_DEG = 15.0
CANDIDATES = 6  # distinct coarse minima refined
FINE_STARTS = 2  # of those, refined again on the fine copy
MAX_SEARCH_OPS = 8
COARSE_OPS = 4  # operators scored per candidate in the global search
FINE_OPS = 6  # and in the final refinement
_TOL = 1e-4


@dataclass
class SymmetryAlignment:
    """Result of align_to_symmetry.

    rotation (3, 3) float64: rotate_volume(centred input, rotation) puts the group's axes in RELION's
    standard frame; rot/tilt/psi are its RELION Euler angles (deg). shift_zyx_px (3,): the re-centring
    shift applied to the input before the rotation (content moved by +shift). score: spec 5.2 score on
    the refinement copy (0 = symmetric). volume: the aligned, not symmetrised, full-size map.
    """

    group: str
    rotation: torch.Tensor
    rot: float
    tilt: float
    psi: float
    shift_zyx_px: torch.Tensor
    score: float
    volume: torch.Tensor


@dataclass(frozen=True)
class WorkingMaps:
    """The centred full-size map, its re-centring shift, the particle box and two small scoring copies."""

    centred: torch.Tensor
    shift_zyx_px: torch.Tensor
    crop: int
    coarse: torch.Tensor
    fine: torch.Tensor


def prepare(volume: torch.Tensor, fine_size: int = FINE_SIZE) -> WorkingMaps:
    """Re-centre a map (N, N, N) on its particle (novomap.maps.centring) and make the scoring copies."""
    centred, shift = centring.centre_by_mass(volume.to(torch.float32))
    crop = centring.search_box(centred)
    coarse = so3_search.working_copy(centred, crop, min(crop, COARSE_SIZE), resolution_px=3.0)
    fine = so3_search.working_copy(centred, crop, min(crop, fine_size), resolution_px=2.0)
    return WorkingMaps(centred, shift, crop, coarse, fine)


def _contains(stack: torch.Tensor, matrix: torch.Tensor) -> bool:
    return bool(((stack - matrix).abs().amax(dim=(-2, -1)) < _TOL).any())


def search_operators(group: PointGroup, max_ops: int = MAX_SEARCH_OPS) -> torch.Tensor:
    """A few non-identity operators (k, 3, 3) that generate the group, preferring those that move most.

    One of each inverse pair is kept (||g.R - R|| = ||g^-1.R - R||). Operators are taken in order of
    decreasing ||g - I|| (small rotations barely change a low-resolution map, so they discriminate
    poorly); one is added whenever it is not yet generated, then the list is filled up to max_ops.
    """
    unique: list[torch.Tensor] = []
    for g in group.operators[1:]:
        if not unique or not _contains(torch.stack(unique), g.T):
            unique.append(g)
    eye = torch.eye(3, dtype=torch.float64)
    unique.sort(key=lambda g: -float((g - eye).norm()))
    chosen: list[torch.Tensor] = []
    generated = eye[None]
    for g in unique:
        if not _contains(generated, g):
            chosen.append(g)
            generated = close_group(chosen)
    for g in unique:
        if len(chosen) >= max_ops:
            break
        if not _contains(torch.stack(chosen), g):
            chosen.append(g)
    return torch.stack(chosen) if chosen else eye[None]


def proxy_score_fn(work: torch.Tensor, operators: torch.Tensor) -> so3_search.ScoreFn:
    """Score function: rotations A (B, 3, 3) -> mean_g ||(g A).V - A.V||^2 / (2 ||A.V||^2) (B,)."""
    k = operators.shape[0]

    def score(rotations: torch.Tensor) -> torch.Tensor:
        b = rotations.shape[0]
        mats = torch.cat([rotations, (operators[None] @ rotations[:, None]).reshape(-1, 3, 3)])
        volumes = rotate_volume(work, mats).reshape(b * (k + 1), -1)
        reference, moved = volumes[:b], volumes[b:].reshape(b, k, -1)
        # ||gR - R||^2 = ||gR||^2 + ||R||^2 - 2 <gR, R>, the dot products as one batched matmul
        reference_sq = torch.linalg.vector_norm(reference, dim=-1).double() ** 2
        moved_sq = torch.linalg.vector_norm(moved, dim=-1).double() ** 2
        dots = torch.bmm(moved, reference[:, :, None])[..., 0].double()
        difference = (moved_sq + reference_sq[:, None] - 2 * dots).mean(dim=1)
        return difference / (2 * reference_sq.clamp(min=1e-30))

    return score


def conjugate_score_fn(work: torch.Tensor, operators: torch.Tensor) -> so3_search.ScoreFn:
    """Cheaper proxy for the global search: mean_g (1 - <V, (A^T g A).V> / ||V||^2) (B,).

    <A.V, (g A).V> = <V, (A^T g A).V> (substitute r = A s), so one interpolation per operator
    suffices; it ignores the slight smoothing of the interpolated copy, fine for ranking candidates.
    """
    flat = work.reshape(-1)
    norm_sq = float(flat.double() @ flat.double())
    k = operators.shape[0]

    def score(rotations: torch.Tensor) -> torch.Tensor:
        b = rotations.shape[0]
        conjugated = (rotations.transpose(1, 2)[:, None] @ operators[None] @ rotations[:, None]).reshape(-1, 3, 3)
        dots = rotate_volume(work, conjugated).reshape(b * k, -1) @ flat
        return 1.0 - dots.double().reshape(b, k).mean(dim=1) / max(norm_sq, 1e-30)

    return score


def symmetry_residual(work: torch.Tensor, group: PointGroup, rotation: torch.Tensor) -> tuple[float, float]:
    """(||R - S||^2, ||R||^2) for R = rotation.work and S = (1/|G|) sum_g g.R, each g.R = (g rotation).work."""
    rotated = rotate_volume(work, rotation).double()
    total = torch.zeros_like(rotated)
    operators = group.operators @ rotation
    for start in range(0, operators.shape[0], 16):
        total += rotate_volume(work, operators[start : start + 16]).double().sum(dim=0)
    symmetrised = total / operators.shape[0]
    return float(((rotated - symmetrised) ** 2).sum()), float((rotated**2).sum())


def symmetry_score(work: torch.Tensor, group: PointGroup, rotation: torch.Tensor) -> float:
    """Spec 5.2 score ||R - S||^2 / ||R||^2 of a map (N, N, N) rotated by `rotation` (3, 3)."""
    residual, power = symmetry_residual(work, group, rotation)
    return residual / max(power, 1e-30)


def _rz(angle_deg: float) -> torch.Tensor:
    return axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), angle_deg)


def _normalises(h: torch.Tensor, operators: torch.Tensor) -> bool:
    """Whether h G h^T = G (then the score is unchanged by A -> h A)."""
    conjugated = h @ operators @ h.T
    return all(_contains(operators, g) for g in conjugated)


def _z_order(operators: torch.Tensor) -> int:
    """Order of the group's proper rotations about z (1 if none)."""
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    proper = operators[torch.linalg.det(operators) > 0]
    return int(((proper @ z - z).norm(dim=-1) < _TOL).sum())


def _axial(operators: torch.Tensor) -> bool:
    """Whether the group's proper part only has z-rotations and z-flips (cyclic/dihedral about z)."""
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    proper = operators[torch.linalg.det(operators) > 0]
    return bool(((proper @ z).abs()[:, 2] > 1 - _TOL).all())


@dataclass(frozen=True)
class Candidates:
    """Coarse-grid rotations for a group, with the equivalences used to tell minima apart."""

    rotations: torch.Tensor
    equivalences: torch.Tensor | None
    directions_only: bool


def _proper_normaliser(operators: torch.Tensor) -> torch.Tensor:
    """Proper rotations h with h G h^T = G (G+ and the half-turns of its axes that keep G), (H, 3, 3).

    Candidates beyond G+ are the rotations by half the smallest angle about each rotation axis of G
    (e.g. 180/n about the n-fold of Dn, 90 deg about the 2-folds of T, which give O).
    """
    proper = operators[torch.linalg.det(operators) > 0]
    extra = []
    for g in proper[1:]:
        angle = float(torch.rad2deg(torch.arccos(((torch.trace(g) - 1) / 2).clamp(-1, 1))))
        axis = torch.stack([g[2, 1] - g[1, 2], g[0, 2] - g[2, 0], g[1, 0] - g[0, 1]])
        if axis.norm() < 1e-6:  # a half-turn: its axis is the eigenvector with eigenvalue +1
            axis = (g + torch.eye(3, dtype=g.dtype)).norm(dim=0).argmax()
            axis = (g + torch.eye(3, dtype=g.dtype))[:, int(axis)]
        h = axis_angle_to_matrix(axis / axis.norm(), angle / 2)
        if not _contains(proper, h) and _normalises(h, operators):
            extra.append(h)
    return close_group(list(proper[1:]) + extra[:2]) if extra else proper


def coarse_candidates(group: PointGroup, spacing_deg: float = GRID_SPACING_DEG) -> Candidates:
    """SO(3) grid points covering every distinct alignment of the group once (up to a margin).

    The score of A is unchanged by A -> h A for any h that normalises G. Hence:
    - groups whose operators all commute with z-rotations (Cn, Cnh, Sn, Cs, Ci): only the direction
      sent to z matters (psi = 0), on a hemisphere if the 180-deg turn about x normalises G;
    - other groups whose proper rotations keep the z axis (Dn, Cnv, Dnh, ...): psi over one period
      (180/n or 360/n deg), directions on a hemisphere when possible;
    - T, O, I and variants: the full grid kept near one Dirichlet cell of the normaliser.
    """
    ops = group.operators
    rx = axis_angle_to_matrix(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 180.0)
    hemisphere = _normalises(rx, ops)
    generic = _rz(37.0)
    if all(torch.allclose(generic @ g @ generic.T, g, atol=_TOL) for g in ops):
        directions = so3_search.direction_grid(spacing_deg, hemisphere)
        return Candidates(so3_search.rotations_for_directions(directions), None, True)
    proper = ops[torch.linalg.det(ops) > 0]
    if _axial(ops):
        n = _z_order(ops)
        period = 180.0 / n if _normalises(_rz(180.0 / n), ops) else 360.0 / n
        grid = so3_search.so3_grid(spacing_deg, period, hemisphere)
        extra = [_rz(period)] + ([rx] if hemisphere else [])
        return Candidates(grid, close_group(list(proper) + extra), False)
    normaliser = _proper_normaliser(ops)
    grid = so3_search.so3_grid(spacing_deg)
    kept = so3_search.soft_fundamental_domain(grid, normaliser, margin_deg=spacing_deg)
    return Candidates(kept, normaliser, False)


def coarse_alignments(maps: WorkingMaps, group: PointGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """Global grid search on the coarse copy, then local refinement of the best distinct minima.

    Returns rotations (K, 3, 3) and their coarse proxy scores (K,), best first.
    """
    candidates = coarse_candidates(group)
    coarse_fn = conjugate_score_fn(maps.coarse, search_operators(group, COARSE_OPS))
    scores = so3_search.evaluate(coarse_fn, candidates.rotations)
    picks = so3_search.select_distinct(
        candidates.rotations, scores, CANDIDATES, 2 * GRID_SPACING_DEG, candidates.equivalences,
        candidates.directions_only,
    )
    # refine with the unbiased proxy: the conjugate one's interpolation loss shifts minima slightly
    refine_fn = proxy_score_fn(maps.coarse, search_operators(group, COARSE_OPS))
    refined, refined_scores = so3_search.local_refine(refine_fn, candidates.rotations[picks], GRID_SPACING_DEG / 2, 0.5)
    order = torch.argsort(refined_scores, stable=True)
    return refined[order], refined_scores[order]


def fine_alignment(
    maps: WorkingMaps,
    group: PointGroup,
    rotations: torch.Tensor,
    scores: torch.Tensor,
    step_deg: float = 1.5,
    min_step_deg: float = 0.15,
) -> tuple[torch.Tensor, float]:
    """Refine the best coarse rotations (K, 3, 3) (scores (K,), best first) on the fine copy.

    Only starts nearly as good as the best are worth the expensive fine refinement. Returns the best
    rotation (3, 3) and its fine proxy score.
    """
    close = scores <= 1.25 * scores[0] + 0.005
    starts = rotations[close][:FINE_STARTS]
    fine_fn = proxy_score_fn(maps.fine, search_operators(group, FINE_OPS))
    finals, final_scores = so3_search.local_refine(fine_fn, starts, step_deg, min_step_deg)
    best = int(torch.argmin(final_scores))
    return finals[best], float(final_scores[best])


def find_alignment(maps: WorkingMaps, group: PointGroup) -> tuple[torch.Tensor, float]:
    """Best rotation (3, 3) for the group and its proxy score on the fine copy."""
    return fine_alignment(maps, group, *coarse_alignments(maps, group))


def align_to_symmetry(
    volume: torch.Tensor | np.ndarray, pixel_size_a: float, group: PointGroup | str
) -> SymmetryAlignment:
    """Align a map (N, N, N) to a point group's standard frame (RELION's conventions, spec 5.3).

    pixel_size_a is the map's Å/px; the search works in pixels, so it only matters to callers that
    write the result. For C1 the input is returned unchanged (identity, no re-centring), as in RELION.
    """
    del pixel_size_a  # the search is in pixels; kept for a uniform interface with the commands
    group = point_group(group) if isinstance(group, str) else group
    volume = torch.as_tensor(volume, dtype=torch.float32)
    if group.order == 1:
        eye = torch.eye(3, dtype=torch.float64)
        return SymmetryAlignment(group.name, eye, 0.0, 0.0, 0.0, torch.zeros(3, dtype=torch.float64), 0.0,
                                 volume.clone())
    maps = prepare(volume)
    rotation, _ = find_alignment(maps, group)
    score = symmetry_score(maps.fine, group, rotation)
    rot, tilt, psi = (float(angle) for angle in matrix_to_euler(rotation))
    aligned = rotate_volume(maps.centred, rotation)
    return SymmetryAlignment(group.name, rotation, rot, tilt, psi, maps.shift_zyx_px, score, aligned)
