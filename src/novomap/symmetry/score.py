"""Symmetry scores of a rotated map: the spec-5.2 score and the cheap proxies used while searching.

For a map V and a rotation A, R = A.V (rotate_volume), g.R = (g A).V (one interpolation each), and
the spec-5.2 score is ||R - S||^2 / ||R||^2 with S = (1/|G|) sum_g g.R (0 = perfectly symmetric).
A search only needs a few operators g: the proxies average ||g.R - R||^2 / (2 ||R||^2) over a
generating set, which is zero exactly when the full score is.
"""

from __future__ import annotations

import torch

from novomap.maps.so3_search import ScoreFn
from novomap.maps.transform import rotate_volume
from novomap.symmetry.groups import PointGroup, close_group

MAX_SEARCH_OPS = 8
TOLERANCE = 1e-4  # max element difference of two matrices that are the same operator
_OPERATOR_CACHE: dict[tuple[str, int, int], torch.Tensor] = {}


def contains(stack: torch.Tensor, matrix: torch.Tensor) -> bool:
    """Whether a stack of matrices (G, 3, 3) holds `matrix` (3, 3) up to TOLERANCE."""
    return bool(((stack - matrix).abs().amax(dim=(-2, -1)) < TOLERANCE).any())


def search_operators(group: PointGroup, max_ops: int = MAX_SEARCH_OPS) -> torch.Tensor:
    """Cached `_search_operators` (groups are identified by their canonical name and order)."""
    key = (group.name, group.order, max_ops)
    if key not in _OPERATOR_CACHE:
        _OPERATOR_CACHE[key] = _search_operators(group, max_ops)
    return _OPERATOR_CACHE[key]


def _search_operators(group: PointGroup, max_ops: int) -> torch.Tensor:
    """Up to max_ops non-identity operators (k, 3, 3), spread over the group, that generate it.

    One of each inverse pair is kept (||g.R - R|| = ||g^-1.R - R||). Operators are taken in turn
    from each class (proper or not, and rotation angle), largest angle first, and within a class the
    one farthest (Frobenius) from those already chosen. Spreading them matters: a wrong alignment
    that still satisfies a subgroup (e.g. a T inside I, or a 4-fold of O turned by 45 deg) then
    fails on many of them. Operators are added if the choice does not generate the group.
    """
    unique: list[torch.Tensor] = []
    for g in group.operators[1:]:
        if not unique or not contains(torch.stack(unique), g.T):
            unique.append(g)
    eye = torch.eye(3, dtype=torch.float64)
    if not unique:
        return eye[None]
    candidates = torch.stack(unique)
    classes = _classes(candidates)
    chosen: list[int] = []
    distance = torch.full((len(unique),), float("inf"), dtype=torch.float64)
    while len(chosen) < min(max_ops, len(unique)):
        for members in classes:
            free = [i for i in members if i not in chosen]
            if not free or len(chosen) >= max_ops:
                continue
            pick = max(free, key=lambda i: (float(distance[i]), -i))
            chosen.append(pick)
            distance = torch.minimum(distance, _operator_distance(candidates, candidates[pick]))
    selected = [candidates[i] for i in chosen]
    displacement = (candidates - eye).flatten(1).norm(dim=1)
    for index in torch.argsort(displacement, descending=True, stable=True).tolist():
        generated = close_group(selected)
        if generated.shape[0] == group.order:
            break
        if not contains(generated, candidates[index]):
            selected.append(candidates[index])
    return torch.stack(selected)


def _classes(operators: torch.Tensor) -> list[list[int]]:
    """Indices of operators grouped by (proper?, rotation angle of g or -g), largest angle first."""
    keys = {}
    for index, g in enumerate(operators):
        proper = bool(torch.linalg.det(g) > 0)
        rotation = g if proper else -g
        angle = round(float(torch.rad2deg(torch.arccos(((torch.trace(rotation) - 1) / 2).clamp(-1, 1)))))
        keys.setdefault((proper, angle), []).append(index)
    return [keys[key] for key in sorted(keys, key=lambda key: (-key[1], not key[0]))]


def _operator_distance(candidates: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Frobenius distance (K,) of each candidate to g or to g^-1, whichever is closer."""
    direct = (candidates - g).flatten(1).norm(dim=1)
    inverse = (candidates - g.T).flatten(1).norm(dim=1)
    return torch.minimum(direct, inverse)


def proxy_score_fn(work: torch.Tensor, operators: torch.Tensor) -> ScoreFn:
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


def conjugate_score_fn(work: torch.Tensor, operators: torch.Tensor) -> ScoreFn:
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
