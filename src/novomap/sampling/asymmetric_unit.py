"""Orientations of one asymmetric unit of a point group, for searches against a symmetric map.

A map with point group G (operators g, in the map's own frame) projects the same at A and at A g
(the slice at A g samples the transform at g^T A^T k, where it equals the transform at A^T k), so a
search needs only the orientations whose beam direction d = A^T e_z (the third row of A) lies in
one asymmetric unit of the sphere under G. The unit used here is the Dirichlet cell of a generic
reference direction c, the directions nearer c than any of their images (d.c >= (g d).c for all g).
Every orbit has a point in the cell; the directions within one grid spacing of its edge are kept
too, so that the grid direction nearest to any pose's equivalent in the cell is searched (the
orientations kept twice, A and A g near the edge, split a particle's posterior between two
equivalent poses).

The sums of such a search are made those of a full search by averaging the back-projected sums
over the group, as if every slice had been inserted at all |G| equivalent orientations with 1/|G| of
its weight (estep.accumulate.symmetrise_sums), and the direction weights over each orbit
(orbit_average_directions).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from novomap.physics.euler import euler_to_matrix
from novomap.sampling.healpix import healpix_directions

# generic: on no rotation axis of any group in any frame a run is likely to meet
REFERENCE_DIRECTION = torch.nn.functional.normalize(torch.tensor([0.3141, 0.4728, 0.8237], dtype=torch.float64), dim=0)


def pixel_directions(healpix_order: int) -> torch.Tensor:
    """Unit beam directions of the HEALPix pixel centres of an order -> (12 * 4^order, 3) float64."""
    rot, tilt = healpix_directions(healpix_order)
    return euler_to_matrix(rot, tilt, torch.zeros_like(rot))[:, 2, :]


@lru_cache(maxsize=8)
def grid_spacing(healpix_order: int) -> float:
    """The largest distance (chord) from a direction on the sphere to the nearest pixel centre of an
    order, measured on a fixed sample of 20,000 directions (slightly above the sample's maximum)."""
    sample = torch.nn.functional.normalize(torch.randn(20_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1)
    nearest = (sample @ pixel_directions(healpix_order).T).max(dim=1).values.clamp(max=1.0)
    return 1.1 * float(torch.sqrt(2 - 2 * nearest).max())


def in_asymmetric_unit(directions: torch.Tensor, operators: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Which unit directions (n, 3) lie in the unit or within `margin` (radians, small) of it -> (n,) bool.

    The Dirichlet cell of c is bounded by the planes d.n_g = 0, n_g = (c - g^T c) / |c - g^T c|
    (d is nearer c than g d is); a direction within angle a of the cell has d.n_g >= -sin(a) for all g.
    """
    directions = directions.to(torch.float64)
    ops = operators.to(torch.float64)
    normals = REFERENCE_DIRECTION[None, :] - ops.transpose(1, 2) @ REFERENCE_DIRECTION  # (G, 3)
    length = normals.norm(dim=1)
    normals = normals[length > 1e-9] / length[length > 1e-9, None]  # the identity bounds nothing
    if normals.shape[0] == 0:
        return torch.ones(directions.shape[0], dtype=torch.bool)
    return (directions @ normals.T).min(dim=1).values >= -math.sin(min(margin, math.pi / 2)) - 1e-12


def orientations_in_unit(rotations: torch.Tensor, operators: torch.Tensor, healpix_order: int) -> torch.Tensor:
    """Which rotations (O, 3, 3) of a search grid of coarse HEALPix order `healpix_order` to search
    against a map of group `operators` (map frame) -> (O,) bool: those whose direction lies within one
    grid spacing of the cell, so that the grid direction nearest to any pose's equivalent in the
    cell is among them."""
    spacing = grid_spacing(healpix_order)
    return in_asymmetric_unit(rotations[:, 2, :], operators, 2 * math.asin(min(1.0, spacing / 2)))


def orbit_average_directions(weights: torch.Tensor, operators: torch.Tensor, healpix_order: int) -> torch.Tensor:
    """Direction weights (K, n_dir) averaged over each orbit of the group: the weight of pixel i is
    shared equally by the pixels nearest to its |G| images g d_i -> (K, n_dir), same total."""
    directions = pixel_directions(healpix_order)
    images = torch.einsum("gij,nj->gni", operators.to(torch.float64), directions)  # (G, n_dir, 3)
    nearest = torch.argmax(images @ directions.T, dim=-1)  # (G, n_dir)
    out = torch.zeros_like(weights)
    share = weights / operators.shape[0]
    for g in range(operators.shape[0]):
        out.index_add_(1, nearest[g], share)
    return out

