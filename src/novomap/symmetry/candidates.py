"""Which rotations the global search must try for a group: an SO(3) grid without the group's redundancy.

The score of a rotation A is unchanged by A -> h A for every proper rotation h that normalises the
group G (h G h^T = G), because conjugation by h only permutes G. So one cell of that equivalence is
enough; for "Cn-like" groups only the direction that A sends to z matters at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from novomap.maps import so3_search
from novomap.physics.euler import axis_angle_to_matrix
from novomap.symmetry.groups import PointGroup, close_group, point_group
from novomap.symmetry.score import TOLERANCE, contains

SPACINGS_DEG = (7.5, 15.0)  # finest first: the finest grid whose candidates fit the budget is used
MAX_CANDIDATES = 1000


def _rz(angle_deg: float) -> torch.Tensor:
    return axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), angle_deg)


def _normalises(h: torch.Tensor, operators: torch.Tensor) -> bool:
    """Whether h G h^T = G (then the score is unchanged by A -> h A)."""
    conjugated = h @ operators @ h.T
    return all(contains(operators, g) for g in conjugated)


def _z_order(operators: torch.Tensor) -> int:
    """Order of the group's proper rotations about z (1 if none)."""
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    proper = operators[torch.linalg.det(operators) > 0]
    return int(((proper @ z - z).norm(dim=-1) < TOLERANCE).sum())


def _axial(operators: torch.Tensor) -> bool:
    """Whether the group's proper part only has z-rotations and z-flips (cyclic/dihedral about z)."""
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    proper = operators[torch.linalg.det(operators) > 0]
    return bool(((proper @ z).abs()[:, 2] > 1 - TOLERANCE).all())


@dataclass(frozen=True)
class Candidates:
    """Coarse-grid rotations for a group, with the equivalences used to tell minima apart."""

    rotations: torch.Tensor
    equivalences: torch.Tensor | None
    directions_only: bool
    spacing_deg: float


def _proper_normaliser(operators: torch.Tensor) -> torch.Tensor:
    """Proper rotations h with h G h^T = G that are easy to find, as a group (H, 3, 3).

    Tried beyond G+: rotations by half the smallest angle about each rotation axis of G (180/n about
    the n-fold of Dn, 90 deg about the 2-folds of T, which give O) and the octahedral group O in the
    standard frame (which normalises D2 with its 2-folds on x, y, z).
    """
    proper = operators[torch.linalg.det(operators) > 0]
    pool = list(point_group("O").operators[1:])
    for g in proper[1:]:
        angle = float(torch.rad2deg(torch.arccos(((torch.trace(g) - 1) / 2).clamp(-1, 1))))
        axis = torch.stack([g[2, 1] - g[1, 2], g[0, 2] - g[2, 0], g[1, 0] - g[0, 1]])
        if axis.norm() < 1e-6:  # a half-turn: its axis is a column of g + I
            columns = g + torch.eye(3, dtype=g.dtype)
            axis = columns[:, int(columns.norm(dim=0).argmax())]
        pool.append(axis_angle_to_matrix(axis / axis.norm(), angle / 2))
    extra = [h for h in pool if not contains(proper, h) and _normalises(h, operators)]
    return close_group(list(proper[1:]) + extra) if extra else proper


_CANDIDATE_CACHE: dict[tuple[str, int, float | None], Candidates] = {}


def coarse_candidates(group: PointGroup, spacing_deg: float | None = None) -> Candidates:
    """Grid candidates for a group; by default on the finest of SPACINGS_DEG within MAX_CANDIDATES.

    Groups with a small fundamental domain (I: 1/60 of SO(3)) thus get a 7.5-deg grid at the cost
    of a 15-deg one for D2; maps with sharp features far from the centre have narrow score minima.
    Cached per canonical name and order.
    """
    key = (group.name, group.order, spacing_deg)
    if key not in _CANDIDATE_CACHE:
        if spacing_deg is not None:
            _CANDIDATE_CACHE[key] = _coarse_candidates(group, spacing_deg)
        else:
            for spacing in SPACINGS_DEG:
                candidates = _coarse_candidates(group, spacing)
                if candidates.rotations.shape[0] <= MAX_CANDIDATES:
                    break
            _CANDIDATE_CACHE[key] = candidates
    return _CANDIDATE_CACHE[key]


def _coarse_candidates(group: PointGroup, spacing_deg: float) -> Candidates:
    """SO(3) grid points covering every distinct alignment of the group once (up to a margin).

    The score of A is unchanged by A -> h A for any h that normalises G. Hence:
    - groups whose operators all commute with z-rotations (Cn, Cnh, Sn, Cs, Ci): only the direction
      sent to z matters (psi = 0), on a hemisphere if the 180-deg turn about x normalises G;
    - other groups whose proper rotations and normaliser keep the z axis (Dn for n > 2, Cnv, ...):
      psi over one period (180/n or 360/n deg), directions on a hemisphere when possible;
    - T, O, I, D2 (normalised by O) and variants: the full grid kept near one Dirichlet cell of the
      normaliser.
    """
    ops = group.operators
    rx = axis_angle_to_matrix(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 180.0)
    hemisphere = _normalises(rx, ops)
    generic = _rz(37.0)
    if all(torch.allclose(generic @ g @ generic.T, g, atol=TOLERANCE) for g in ops):
        directions = so3_search.direction_grid(spacing_deg, hemisphere)
        return Candidates(so3_search.rotations_for_directions(directions), None, True, spacing_deg)
    proper = ops[torch.linalg.det(ops) > 0]
    normaliser = _proper_normaliser(ops)
    if _axial(ops) and _axial(normaliser):
        n = _z_order(ops)
        period = 180.0 / n if _normalises(_rz(180.0 / n), ops) else 360.0 / n
        grid = so3_search.so3_grid(spacing_deg, period, hemisphere)
        extra = [_rz(period)] + ([rx] if hemisphere else [])
        return Candidates(grid, close_group(list(proper) + extra), False, spacing_deg)
    grid = so3_search.so3_grid(spacing_deg)
    kept = so3_search.soft_fundamental_domain(grid, normaliser, margin_deg=spacing_deg)
    return Candidates(kept, normaliser, False, spacing_deg)
