"""Superpose one map onto another: rotation, translation and hand (mirror image or not).

Both maps are re-centred by their positive centre of mass and reduced to small scoring copies
(novomap.maps.so3_search.working_copy). For each hand (the moving map and its mirror image through
z = 0), every rotation of a ~15 deg SO(3) grid (plus the rotations that map a coordinate axis onto
+-z) is scored on the coarse copy by the best normalised cross-correlation over translations (one
batched FFT per rotation); the best distinct rotations of both hands are refined locally on the
coarse copy, ranked on a finer copy, the best ones refined again there, the winner's rotation
refined once more at the maps' own sampling, and the translation is finally found with sub-pixel
precision at full size.

Why the ranking on the finer copy and the axis rotations: maps compared here are often both in a
point group's standard frame (an initial model against its truth or a reference), so the answer
sits exactly where HEALPix has no pixel (its nearest centre is ~12 deg from a pole at this
spacing), and at the coarse copy's resolution the other way up of a ring scores nearly as well as
the right way, once per copy under the map's own symmetry. A C7 ring against its truth was superposed
the wrong way up (FSC 0.5 at 9.4 instead of 8.1 Å; benchmarks/results/2026-11-30-compare-align.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from novomap.maps import centring, so3_search
from novomap.maps.transform import mirror_volume, rotate_volume, shift_volume
from novomap.physics.euler import matrix_to_euler

COARSE_SIZE = 16
FINE_SIZE = 32
GRID_SPACING_DEG = 15.0
CANDIDATES_PER_HAND = 8  # distinct coarse minima refined per hand
FINE_STARTS = 3  # of those (both hands), the best on the finer copy, refined again there, judged at full size
COARSE_RANKED_STARTS = 2  # and the best on the coarse copy, likewise
# the winner's rotation is refined last on a copy at the map's own sampling, up to this many px
# across the particle, from REFINE_STEP_DEG down to REFINE_MIN_STEP_DEG
FULL_SIZE = 96
REFINE_STEP_DEG = 2.0
REFINE_MIN_STEP_DEG = 0.1


@dataclass
class MapAlignment:
    """Result of align_maps: volume = shift_volume(rotate_volume(M(moving), rotation), shift_zyx_px).

    M is the mirror through z = 0 (transform.mirror_volume) when hand_flipped, else the identity.
    rotation (3, 3) float64 proper; rot/tilt/psi its RELION Euler angles (deg); shift_zyx_px (3,) px;
    cc: Pearson correlation of the aligned map with the reference over the whole box.
    """

    rotation: torch.Tensor
    rot: float
    tilt: float
    psi: float
    shift_zyx_px: torch.Tensor
    hand_flipped: bool
    cc: float
    volume: torch.Tensor


def _allowed_shifts(size: int, max_shift: float) -> torch.Tensor:
    """Mask (size, size, size) of circular cross-correlation lags with |t| <= max_shift."""
    lag = torch.fft.fftfreq(size, dtype=torch.float64) * size
    distance = torch.sqrt(lag[:, None, None] ** 2 + lag[None, :, None] ** 2 + lag[None, None, :] ** 2)
    return distance <= max_shift


def cross_correlation(reference: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """Circular c(t) = sum_r ref(r) moved(r - t) for moved (B, N, N, N) -> (B, N, N, N), lag t at index t mod N.

    Shifting `moved` by +t (content moves by +t) makes it match the reference best at the peak.
    """
    dims = (-3, -2, -1)
    spectrum = torch.fft.rfftn(reference, dim=dims) * torch.fft.rfftn(moved, dim=dims).conj()
    return torch.fft.irfftn(spectrum, s=reference.shape[-3:], dim=dims)


def translation_score_fn(reference: torch.Tensor, moving: torch.Tensor, max_shift: float) -> so3_search.ScoreFn:
    """Score of rotations A (B, 3, 3): -max_t cc(reference, shift(A.moving, t)) (B,), unit-norm copies."""
    allowed = _allowed_shifts(reference.shape[-1], max_shift).flatten()
    reference_norm = float(reference.norm())

    def score(rotations: torch.Tensor) -> torch.Tensor:
        rotated = rotate_volume(moving, rotations)
        correlation = cross_correlation(reference, rotated)
        best = correlation.reshape(rotations.shape[0], -1)[:, allowed].amax(dim=1)
        # normalised by the rotated copy's own norm: trilinear interpolation blurs (and shrinks) a copy
        # by an amount that depends on the rotation, least near multiples of 90 deg about the axes, and a
        # fixed norm would reward those rotations (a D7 map came out 1.6 deg off the truth)
        norms = rotated.reshape(rotations.shape[0], -1).norm(dim=1) * reference_norm
        return -best.double() / norms.double().clamp(min=1e-30)

    return score


def best_translation(reference: torch.Tensor, moved: torch.Tensor, max_shift: float) -> torch.Tensor:
    """Shift (3,) zyx px, sub-pixel (parabola through the peak), that best maps `moved` onto reference."""
    n = reference.shape[-1]
    correlation = cross_correlation(reference.double(), moved.double()[None])[0]
    correlation = torch.where(_allowed_shifts(n, max_shift), correlation, torch.full_like(correlation, -torch.inf))
    peak = torch.tensor(np.unravel_index(int(torch.argmax(correlation)), correlation.shape))
    shift = torch.zeros(3, dtype=torch.float64)
    for axis in range(3):
        values = []
        for step in (-1, 0, 1):
            index = peak.clone()
            index[axis] = (index[axis] + step) % n
            values.append(float(correlation[tuple(index.tolist())]))
        minus, centre, plus = values
        curvature = minus - 2 * centre + plus
        offset = 0.5 * (minus - plus) / curvature if curvature < 0 and np.isfinite(curvature) else 0.0
        lag = int(peak[axis]) if peak[axis] <= n // 2 else int(peak[axis]) - n
        shift[axis] = lag + max(-0.5, min(0.5, offset))
    return shift


def subpixel_score_fn(reference: torch.Tensor, moving: torch.Tensor, max_shift: float) -> so3_search.ScoreFn:
    """Score of rotations A (B, 3, 3): minus the Pearson correlation of the reference with A.moving
    moved by its sub-pixel best_translation (B,). One rotation at a time: for the last refinement,
    where an integer-lag score is too coarse to tell rotations a fraction of a degree apart."""

    def score(rotations: torch.Tensor) -> torch.Tensor:
        values = []
        for rotation in rotations:
            rotated = rotate_volume(moving, rotation.to(moving.dtype))
            shifted = shift_volume(rotated, best_translation(reference, rotated, max_shift))
            values.append(-_pearson(reference, shifted))
        return torch.tensor(values, dtype=torch.float64)

    return score


def search_grid(spacing_deg: float) -> torch.Tensor:
    """The global search's rotations (M, 3, 3): an SO(3) grid, and every rotation (psi at the grid's
    step) that maps one of +-x, +-y, +-z onto +z, where maps in standard frames meet."""
    axes = torch.cat([torch.eye(3, dtype=torch.float64), -torch.eye(3, dtype=torch.float64)])
    n_psi = max(1, math.ceil(360.0 / spacing_deg - 1e-9))
    on_axes = [so3_search.rotations_for_directions(axes, psi) for psi in torch.arange(n_psi, dtype=torch.float64) * (360.0 / n_psi)]
    return torch.cat([so3_search.so3_grid(spacing_deg), torch.cat(on_axes)])


def _search_hand(
    coarse_ref: torch.Tensor, coarse_moving: torch.Tensor, max_shift: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global grid search for one hand, then local refinement of its best distinct rotations (K, 3, 3)."""
    score_fn = translation_score_fn(coarse_ref, coarse_moving, max_shift)
    grid = search_grid(GRID_SPACING_DEG)
    scores = so3_search.evaluate(score_fn, grid, batch=128)
    picks = so3_search.select_distinct(grid, scores, CANDIDATES_PER_HAND, 2 * GRID_SPACING_DEG)
    return so3_search.local_refine(score_fn, grid[picks], GRID_SPACING_DEG / 2, 1.0, scores[picks])


def align_maps(
    reference: torch.Tensor | np.ndarray, moving: torch.Tensor | np.ndarray, pixel_size_a: float
) -> MapAlignment:
    """Best rotation, translation and hand that superpose `moving` (N, N, N) onto `reference` (N, N, N).

    pixel_size_a (Å/px, shared by both maps) is not needed by the search, which works in pixels.
    Runs on the CPU (GPU tensors are copied); the aligned map is a CPU float32 tensor.
    """
    del pixel_size_a
    reference = torch.as_tensor(reference, dtype=torch.float32).cpu()  # the search runs on the CPU
    moving = torch.as_tensor(moving, dtype=torch.float32).cpu()
    if reference.shape != moving.shape:
        raise ValueError(f"maps differ in shape: {tuple(reference.shape)} and {tuple(moving.shape)}")
    ref_centred, ref_shift = centring.centre_by_mass(reference)
    mov_centred, mov_shift = centring.centre_by_mass(moving)
    crop = max(centring.search_box(ref_centred), centring.search_box(mov_centred))
    hands = [mov_centred, mirror_volume(mov_centred)]
    coarse_size, fine_size = min(crop, COARSE_SIZE), min(crop, FINE_SIZE)
    coarse_ref = so3_search.working_copy(ref_centred, crop, coarse_size, resolution_px=3.0)
    fine_ref = so3_search.working_copy(ref_centred, crop, fine_size, resolution_px=2.0)
    starts = []
    for flipped, hand in enumerate(hands):
        coarse = so3_search.working_copy(hand, crop, coarse_size, resolution_px=3.0)
        rotations, coarse_scores = _search_hand(coarse_ref, coarse, coarse_size / 4)
        fine = so3_search.working_copy(hand, crop, fine_size, resolution_px=2.0)
        score_fn = translation_score_fn(fine_ref, fine, fine_size / 4)
        fine_scores = score_fn(rotations)
        starts += [(float(c), float(f), flipped, r, score_fn) for r, c, f in zip(rotations, coarse_scores, fine_scores)]
    # the coarse copy finds the basins but can rank them poorly (a ring the other way up scores
    # nearly as well, once per copy under the map's own symmetry); the finer copy, scored at the
    # coarse optimum, can misrank a basin whose optimum it has not reached: refine the best of both
    by_coarse = sorted(range(len(starts)), key=lambda i: starts[i][0])[:COARSE_RANKED_STARTS]
    by_fine = sorted(range(len(starts)), key=lambda i: starts[i][1])[:FINE_STARTS]
    finals = []
    for i in dict.fromkeys(by_fine + by_coarse):
        _, score, flipped, rotation, score_fn = starts[i]
        score = torch.tensor([score], dtype=torch.float64)
        refined, _ = so3_search.local_refine(score_fn, rotation[None], 1.5, 0.15, score)
        finals.append(_finish(reference, ref_centred, ref_shift, hands, mov_shift, bool(flipped), refined[0]))
    # the small copies can prefer a wrong basin by a few hundredths (a tight ring the other way up,
    # a degree off): the full-size correlation decides
    best = max(finals, key=lambda alignment: alignment.cc)
    return _refine_at_full_size(reference, ref_centred, ref_shift, hands, mov_shift, crop, best)


def _refine_at_full_size(
    reference: torch.Tensor,
    ref_centred: torch.Tensor,
    ref_shift: torch.Tensor,
    hands: list[torch.Tensor],
    mov_shift: torch.Tensor,
    crop: int,
    best: MapAlignment,
) -> MapAlignment:
    """The best alignment's rotation refined on copies at the maps' own sampling (up to FULL_SIZE).

    The finer copy resolves ~4 of its pixels, so its optimum can be a degree off, which costs the
    FSC where the maps agree near Nyquist: a 120 kDa map at 2.7 Å/px scored 7.98 Å against its truth
    (cc 0.904) where the rotation 1 deg away gives 7.49 Å (cc 0.926)
    (benchmarks/results/2026-12-02-compare-precision.md). Kept only if the full-size correlation rises.
    """
    size = min(crop, FULL_SIZE)
    flipped = int(best.hand_flipped)
    ref_copy = so3_search.working_copy(ref_centred, crop, size, resolution_px=2.0)
    moving_copy = so3_search.working_copy(hands[flipped], crop, size, resolution_px=2.0)
    score_fn = subpixel_score_fn(ref_copy, moving_copy, size / 4)
    refined, _ = so3_search.local_refine(score_fn, best.rotation[None].to(torch.float64), REFINE_STEP_DEG, REFINE_MIN_STEP_DEG)
    candidate = _finish(reference, ref_centred, ref_shift, hands, mov_shift, bool(flipped), refined[0])
    return candidate if candidate.cc > best.cc else best


def _finish(
    reference: torch.Tensor,
    ref_centred: torch.Tensor,
    ref_shift: torch.Tensor,
    hands: list[torch.Tensor],
    mov_shift: torch.Tensor,
    flipped: bool,
    rotation: torch.Tensor,
) -> MapAlignment:
    """Full-size translation, aligned map, total shift and correlation for the chosen rotation of
    hands[flipped]: hands = [moving centred by mov_shift, its mirror image M(centred)]."""
    hand_centred = hands[int(flipped)]
    # the mirror image of the centred map is the mirror image of the input centred by the mirrored shift
    source_shift = mov_shift * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64) if flipped else mov_shift
    n = reference.shape[-1]
    rotated = rotate_volume(hand_centred, rotation.to(torch.float32))
    translation = best_translation(ref_centred, rotated, n / 4)
    # undo the reference's re-centring so the result overlays the reference as given
    post_shift = translation - ref_shift
    aligned = shift_volume(rotated, post_shift)
    # express everything as one shift after rotating the (mirrored) input map
    total = _rotate_shift(rotation, source_shift) + post_shift
    rot, tilt, psi = (float(a) for a in matrix_to_euler(rotation))
    cc = _pearson(reference, aligned)
    return MapAlignment(rotation, rot, tilt, psi, total, flipped, cc, aligned)


def _rotate_shift(rotation: torch.Tensor, shift_zyx: torch.Tensor) -> torch.Tensor:
    """R s for a shift given in zyx order (rotation acts on xyz), returned in zyx order."""
    return (rotation @ shift_zyx.flip(0)).flip(0)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double().flatten() - a.double().mean()
    b = b.double().flatten() - b.double().mean()
    denominator = float(torch.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / denominator if denominator > 0 else 0.0
