"""Impose a point group on a map: the average of the map under every operator of the group."""

from __future__ import annotations

import torch

from novomap.maps.transform import rotate_volume, shift_volume
from novomap.symmetry.groups import PointGroup

# operators resampled per batch (bounds memory for large boxes and groups)
_OPS_PER_BATCH = 8


def symmetrise(volume: torch.Tensor, group: PointGroup, rotation: torch.Tensor | None = None) -> torch.Tensor:
    """(1/|G|) sum_g g.V for a volume (N, N, N) -> (N, N, N), in real space.

    Real space, with trilinear interpolation and zeros outside the box, as RELION's align_symmetry
    does: operators that permute the grid (2- and 4-folds about x, y, z, mirrors, inversion) are then
    exact, nothing wraps around the box, and no padding or gridding correction is needed, which a
    Fourier-space average would require to interpolate as accurately.

    `rotation` (3, 3), if given, is applied first and composed into each operator (g @ rotation),
    so the map is interpolated once instead of twice (rotate-then-symmetrise in one step).
    """
    operators = group.operators
    if rotation is not None:
        operators = operators @ rotation.to(operators.dtype)
    total = torch.zeros_like(volume, dtype=torch.float64)
    for start in range(0, operators.shape[0], _OPS_PER_BATCH):
        total += rotate_volume(volume, operators[start : start + _OPS_PER_BATCH]).to(torch.float64).sum(dim=0)
    return (total / operators.shape[0]).to(volume.dtype)


def symmetrise_in_place(volume: torch.Tensor, group: PointGroup, rotation: torch.Tensor, shift_zyx_px: torch.Tensor) -> torch.Tensor:
    """Impose a group about the axes an alignment found, leaving the map where it is -> (N, N, N).

    rotation and shift_zyx_px as in symmetry.align.SymmetryAlignment (the group's axes of the map,
    re-centred by the shift, lie along the standard axes after the rotation). The operators are
    carried into the map's own frame (R^T g R) and the map is moved back after averaging, so
    particle poses found against the input stay valid against the result.
    """
    in_frame = group.in_frame(rotation)
    shift = torch.as_tensor(shift_zyx_px, dtype=torch.float64)
    centred = shift_volume(volume, shift)
    return shift_volume(symmetrise(centred, in_frame), -shift)
