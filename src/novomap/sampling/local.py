"""Local angular searches: finer HEALPix orders around each particle's previous pose.

Once the model determines orientations better than the global grid samples them (the expected
angular error state.acc_rot_deg is below the fine step) and a particle's posterior is sharp, a
global search at a finer order would cost ~10x per order. A local search instead evaluates, per
particle, only the coarse orientations of a finer order that lie within `radius` of its previous
orientation (the full rotation angle between the two, so direction and psi windows at once),
with a Gaussian prior exp(-angle^2 / (2 sigma^2)) on that angle, and a finer translation grid
around its previous offset (as RELION's auto-refine does once it switches to local searches).

The hypotheses of a mini-batch form a SearchGrid like the global one, restricted to the union of
the particles' windows: the coarse orientations are that union (their fine children as usual),
and each particle carries the list of its own candidates into that grid. So the fine pass and the
weighted sums run unchanged; only the coarse pass is restricted (estep.local).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from novomap.physics.euler import euler_to_matrix
from novomap.sampling.grid import SearchGrid, perturbation_matrix
from novomap.sampling.healpix import angular_step_deg, child_psi_angles, healpix_directions, psi_angles
from novomap.sampling.translations import child_translations, translation_grid

# window radius and prior width in coarse steps of the local order
RADIUS_STEPS = 2.0


@dataclass
class LocalCandidates:
    """The local hypotheses of a mini-batch: a restricted grid and each particle's part of it."""

    grid: SearchGrid  # coarse orientations = union of the particles' windows
    candidates: torch.Tensor  # (B, L) int64 index into grid's coarse orientations, -1 = none
    previous: torch.Tensor  # (B, 3, 3) float64 previous rotations (centres of the windows)
    sigma_deg: float  # width of the Gaussian prior on the angle to the previous pose
    radius_deg: float
    # (B,) int64 0-based: the one class each particle is searched in; None: every class
    classes: torch.Tensor | None = None


def coarse_orientations(order: int, perturbation: float = 0.0) -> torch.Tensor:
    """Every coarse rotation of HEALPix order n, perturbed as build_search_grid does -> (O, 3, 3) float64.

    Index o = direction * n_psi + psi index, the numbering of the global grid.
    """
    rot, tilt = healpix_directions(order)
    psi = psi_angles(order)
    n_dir, n_psi = rot.numel(), psi.numel()
    rotations = euler_to_matrix(rot[:, None].expand(n_dir, n_psi), tilt[:, None].expand(n_dir, n_psi), psi[None, :].expand(n_dir, n_psi)).reshape(-1, 3, 3)
    e = perturbation_matrix(order, perturbation)
    return rotations if e is None else rotations @ e


def max_candidates(order: int, radius_deg: float) -> int:
    """An upper bound on the coarse orientations of order n within radius_deg of any rotation.

    The rotations within angle r of a given one fill a fraction (r - sin r) / pi of SO(3); the
    HEALPix x psi grid is close to uniform, so 2x that share of the grid plus a margin bounds it.
    """
    r = math.radians(radius_deg)
    n_total = 12 * 4**order * 6 * 2**order
    return int(min(n_total, 2.0 * n_total * (r - math.sin(r)) / math.pi + 16))


def nearest_candidates(previous: torch.Tensor, order: int, perturbation: float, radius_deg: float, n_max: int) -> torch.Tensor:
    """Per rotation of `previous` (B, 3, 3), the coarse orientations of order n (global numbering
    direction * n_psi + psi index) within radius_deg of it, nearest first -> (B, n_max) int64,
    -1 where there are fewer; the nearest one is always kept.

    Two steps, never the whole grid: the directions whose viewing vector lies within the radius
    (a rotation by r moves the viewing direction by at most r), then, per direction, the psi
    angles near the best one. With A(d, psi) = Rz(psi) A_d (A_d: psi = 0, perturbation included),
    trace(A0^T A) = a cos(psi - psi*) + M_22 for M = A_d A0^T, so psi* and the psi window follow
    in closed form.
    """
    rot, tilt = healpix_directions(order)
    step = angular_step_deg(order)
    n_psi = 6 * 2**order
    base = euler_to_matrix(rot, tilt, torch.zeros_like(rot))  # (n_dir, 3, 3)
    e = perturbation_matrix(order, perturbation)
    if e is not None:
        base = base @ e
    previous = previous.to(torch.float64)
    cos_r = math.cos(math.radians(radius_deg))
    n_dir_max = min(base.shape[0], int(2.0 * base.shape[0] * (1 - cos_r) / 2 + 8))
    views = base[:, 2, :]  # (n_dir, 3) viewing directions
    m_max = int(math.ceil(radius_deg / step)) + 1
    offsets = torch.arange(-m_max, m_max + 1, dtype=torch.float64)
    threshold = 1.0 + 2.0 * cos_r - 1e-9
    out = []
    for start in range(0, previous.shape[0], 256):
        a0 = previous[start : start + 256]  # (b, 3, 3)
        cos_view = a0[:, 2, :] @ views.T  # (b, n_dir)
        _, dirs = torch.topk(cos_view, n_dir_max, dim=-1)  # (b, k)
        m = base[dirs] @ a0.transpose(1, 2)[:, None]  # (b, k, 3, 3)
        # RELION's Rz(psi) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]: trace(Rz M) = c (M00 + M11) + s (M10 - M01) + M22
        c_part, s_part = m[..., 0, 0] + m[..., 1, 1], m[..., 1, 0] - m[..., 0, 1]
        best_psi = torch.rad2deg(torch.atan2(s_part, c_part))  # (b, k)
        j = torch.round(best_psi / step)[..., None] + offsets  # (b, k, 2m+1) psi indices (unwrapped)
        psi = torch.deg2rad(j * step)
        trace = psi.cos() * c_part[..., None] + psi.sin() * s_part[..., None] + m[..., 2, 2][..., None]
        index = dirs[..., None] * n_psi + torch.remainder(j, n_psi).long()
        trace, index = trace.reshape(trace.shape[0], -1), index.reshape(index.shape[0], -1)
        best, order_ = torch.topk(trace, min(n_max, trace.shape[1]), dim=-1, sorted=True)
        chosen = torch.gather(index, 1, order_)
        inside = best >= threshold
        inside[:, 0] = True
        out.append(torch.where(inside, chosen, torch.full_like(chosen, -1)))
    return torch.cat(out) if out else torch.empty((0, n_max), dtype=torch.long)


def restricted_grid(order: int, direction_order: int, coarse_index: torch.Tensor, offset_range_px: float, offset_step_px: float, perturbation: float) -> SearchGrid:
    """The grid of order n restricted to the coarse orientations `coarse_index` (U,) (global numbering).

    Directions are reported at `direction_order` (the parent HEALPix pixel of the global grid), so
    the learned direction prior and its sums keep their size. Translations: range and step as
    given, perturbed like the global grid's.
    """
    rot, tilt = healpix_directions(order)
    psi = psi_angles(order)
    n_psi = psi.numel()
    direction = coarse_index // n_psi
    psi_index = coarse_index % n_psi
    coarse = euler_to_matrix(rot[direction], tilt[direction], psi[psi_index])
    child_rot, child_tilt = healpix_directions(order + 1)
    children = direction[:, None] * 4 + torch.arange(4)  # NEST: the children of pixel p are 4p .. 4p+3
    child_psi = child_psi_angles(order)[psi_index]  # (U, 2)
    fine = euler_to_matrix(
        child_rot[children][:, :, None].expand(-1, 4, 2),
        child_tilt[children][:, :, None].expand(-1, 4, 2),
        child_psi[:, None, :].expand(-1, 4, 2),
    ).reshape(-1, 8, 3, 3)
    e = perturbation_matrix(order, perturbation)
    if e is not None:
        coarse, fine = coarse @ e, fine @ e
    translations = translation_grid(offset_range_px, offset_step_px) + perturbation * offset_step_px
    return SearchGrid(
        healpix_order=order,
        offset_range_px=offset_range_px,
        offset_step_px=offset_step_px,
        coarse_rotations=coarse,
        coarse_direction=direction >> (2 * (order - direction_order)),
        fine_rotations=fine,
        coarse_translations=translations,
        fine_translations=child_translations(translations, offset_step_px),
        direction_order=direction_order,
    )


def local_candidates(
    previous: torch.Tensor,
    order: int,
    direction_order: int,
    offset_range_px: float,
    offset_step_px: float,
    perturbation: float,
    sigma_deg: float,
    radius_deg: float | None = None,
) -> LocalCandidates:
    """The local hypotheses of a batch whose previous rotations are `previous` (B, 3, 3)."""
    radius = radius_deg if radius_deg is not None else RADIUS_STEPS * angular_step_deg(order)
    near = nearest_candidates(previous, order, perturbation, radius, max_candidates(order, radius))
    union, inverse = torch.unique(near[near >= 0], return_inverse=True)
    candidates = torch.full_like(near, -1)
    candidates[near >= 0] = inverse
    # drop the all-empty columns at the end (every row is nearest-first)
    width = int((candidates >= 0).sum(-1).max()) if candidates.numel() else 1
    grid = restricted_grid(order, direction_order, union, offset_range_px, offset_step_px, perturbation)
    return LocalCandidates(grid=grid, candidates=candidates[:, :width].contiguous(), previous=previous.to(torch.float64), sigma_deg=sigma_deg, radius_deg=radius)
