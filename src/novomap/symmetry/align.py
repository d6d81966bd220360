"""Rotate a map so that a point group's axes lie where RELION puts them (relion_align_symmetry, spec 5.2).

Algorithm (deterministic, unlike RELION's 400 clock-seeded random orientations):
1. re-centre on the particle (novomap.maps.centring: the centre of mass of the positive density);
2. score on small working copies: the particle cropped with a margin, Fourier-resized to <= 20 px
   (low-passed to 3 px) for the global search and to <= 32 px for refinement, soft-masked;
3. global search over an SO(3) grid (HEALPix directions x psi, 7.5 or 15 deg) without the group's
   own redundancy (novomap.symmetry.candidates), scored in batches with a cheap proxy;
4. the best CANDIDATES distinct minima are refined locally on the coarse copy (pattern search with
   parabolic steps: all to 3 deg, the best 3 to 1.5 deg), the best one or two again on the fine
   copy, to 0.2 deg.
The reported score is the full spec-5.2 score (novomap.symmetry.score) on the fine copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from novomap.maps import centring, so3_search
from novomap.maps.transform import rotate_volume, shift_volume
from novomap.physics.euler import matrix_to_euler
from novomap.symmetry.candidates import coarse_candidates
from novomap.symmetry.centre import refine_centre
from novomap.symmetry.groups import PointGroup, point_group
from novomap.symmetry.score import conjugate_score_fn, proxy_score_fn, search_operators, symmetry_score

COARSE_SIZE = 20  # px, global search copy
FINE_SIZE = 32  # px, refinement copy
CANDIDATES = 8  # distinct coarse minima (>= one grid step apart) refined to 3 deg
FINE_CANDIDATES = 3  # of those, refined to COARSE_MIN_STEP_DEG
MIN_SEPARATION_DEG = 15.0  # closer grid minima usually share one basin
COARSE_MIN_STEP_DEG = 1.5  # coarse refinement stops here; the fine one starts at this step
FINE_STARTS = 2  # of those, refined again on the fine copy
COARSE_OPS = 6  # operators scored per candidate in the global search
FINE_OPS = 6  # and in the final refinement
REFINE_CENTRE = True  # refine where the axes cross after the rotation (symmetry.centre)


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


def prepare(volume: torch.Tensor, fine_size: int = FINE_SIZE, shift_zyx_px: torch.Tensor | None = None) -> WorkingMaps:
    """Re-centre a map (N, N, N) on its particle (novomap.maps.centring; or by shift_zyx_px, px, when
    given) and make the scoring copies."""
    if shift_zyx_px is None:
        centred, shift = centring.centre_by_mass(volume.to(torch.float32))
    else:
        centred, shift = shift_volume(volume.to(torch.float32), shift_zyx_px), shift_zyx_px
    crop = centring.search_box(centred)
    coarse = so3_search.working_copy(centred, crop, min(crop, COARSE_SIZE), resolution_px=3.0)
    fine = so3_search.working_copy(centred, crop, min(crop, fine_size), resolution_px=2.0)
    return WorkingMaps(centred, shift, crop, coarse, fine)


def coarse_alignments(maps: WorkingMaps, group: PointGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """Global grid search on the coarse copy, then local refinement of the best distinct minima.

    Returns rotations (K, 3, 3) and their coarse proxy scores (K,), best first.
    """
    candidates = coarse_candidates(group)
    coarse_fn = conjugate_score_fn(maps.coarse, search_operators(group, COARSE_OPS))
    scores = so3_search.evaluate(coarse_fn, candidates.rotations)
    separation = max(candidates.spacing_deg, MIN_SEPARATION_DEG)
    picks = so3_search.select_distinct(
        candidates.rotations, scores, CANDIDATES, separation, candidates.equivalences, candidates.directions_only
    )
    # refine with the unbiased proxy: the conjugate one's interpolation loss shifts minima slightly;
    # all minima to a few degrees first, then only the best few further
    refine_fn = proxy_score_fn(maps.coarse, search_operators(group, COARSE_OPS))
    refined, refined_scores = so3_search.local_refine(
        refine_fn, candidates.rotations[picks], candidates.spacing_deg / 2, 2 * COARSE_MIN_STEP_DEG
    )
    order = torch.argsort(refined_scores, stable=True)
    best = order[:FINE_CANDIDATES]
    polished, polished_scores = so3_search.local_refine(
        refine_fn, refined[best], 2 * COARSE_MIN_STEP_DEG, COARSE_MIN_STEP_DEG, refined_scores[best]
    )
    rotations = torch.cat([polished, refined[order[FINE_CANDIDATES:]]])
    scores = torch.cat([polished_scores, refined_scores[order[FINE_CANDIDATES:]]])
    order = torch.argsort(scores, stable=True)
    return rotations[order], scores[order]


def fine_alignment(
    maps: WorkingMaps,
    group: PointGroup,
    rotations: torch.Tensor,
    scores: torch.Tensor,
    step_deg: float = 1.5,
    min_step_deg: float = 0.2,
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
    volume: torch.Tensor | np.ndarray,
    pixel_size_a: float,
    group: PointGroup | str,
    near: tuple[torch.Tensor, torch.Tensor] | None = None,
    refine_near_centre: bool = False,
) -> SymmetryAlignment:
    """Align a map (N, N, N) to a point group's standard frame (RELION's conventions, spec 5.3).

    pixel_size_a is the map's Å/px; the search works in pixels, so it only matters to callers that
    write the result. For C1 the input is returned unchanged (identity, no re-centring), as in RELION.
    Runs on the CPU (a GPU tensor is copied); the aligned map is a CPU float32 tensor.
    near: (rotation (3, 3), shift_zyx_px (3,)) of an earlier alignment of a map that has changed
    little since: the map is re-centred by that shift (already refined, so not again) and the rotation
    refined locally instead of searched globally; ~10x cheaper (20x for I). refine_near_centre: refine
    the centre after a `near` alignment too (symmetry.centre; a global one always does).
    """
    del pixel_size_a  # the search is in pixels; kept for a uniform interface with the commands
    group = point_group(group) if isinstance(group, str) else group
    volume = torch.as_tensor(volume, dtype=torch.float32).cpu()  # the search runs on the CPU
    if group.order == 1:
        eye = torch.eye(3, dtype=torch.float64)
        return SymmetryAlignment(group.name, eye, 0.0, 0.0, 0.0, torch.zeros(3, dtype=torch.float64), 0.0,
                                 volume.clone())
    if near is None:
        maps = prepare(volume)
        rotation, _ = find_alignment(maps, group)
    else:
        maps = prepare(volume, shift_zyx_px=torch.as_tensor(near[1], dtype=torch.float64))
        start = torch.as_tensor(near[0], dtype=torch.float64)[None]
        rotation, _ = fine_alignment(maps, group, start, torch.zeros(1, dtype=torch.float64))
    score = symmetry_score(maps.fine, group, rotation)
    rot, tilt, psi = (float(angle) for angle in matrix_to_euler(rotation))
    aligned = rotate_volume(maps.centred, rotation)
    shift_zyx_px = maps.shift_zyx_px
    if REFINE_CENTRE and (near is None or refine_near_centre):
        # the centre of mass need not lie on the axes (symmetry.centre): a shift d after the rotation
        # is the shift R^T d before it, so the map is still interpolated once
        d = refine_centre(aligned, group)
        if bool(d.any()):
            shift_zyx_px = shift_zyx_px + (rotation.to(torch.float64).T @ d).flip(0)
            aligned = rotate_volume(shift_volume(volume, shift_zyx_px), rotation)
    return SymmetryAlignment(group.name, rotation, rot, tilt, psi, shift_zyx_px, score, aligned)
