"""Impose the requested point group on the class maps while VDAM runs.

RELION's job runs in C1 and symmetrises only the final map. A C1 run of a symmetric particle can
then settle in a wrong, asymmetric map that the final symmetrisation cannot mend: a C4 tetramer (suite
specimen adk_c4, seed 4) ended at 12.3 Å (2.1x its true-pose limit), its C1 map's C4 score rising from
0.19 at iteration 30 to 0.37. Averaging each class map over the group about its own axes every few
iterations from the end of the race of starts on brings that run to 6.5 Å, the other seeds' figure
(benchmarks/results/2026-11-30-impose-symmetry.md). The map is not moved, so the poses and the
moments of the VDAM update stay valid.
"""

from __future__ import annotations

import torch

from novomap.symmetry.align import align_to_symmetry
from novomap.symmetry.groups import PointGroup
from novomap.symmetry.symmetrise import symmetrise_in_place


def impose_group(
    maps: torch.Tensor, group: PointGroup, pixel_size_a: float, axes: list | None = None, max_shift_px: float | None = None,
    keep_axes: list[bool] | None = None,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Each class map (K, N, N, N) averaged over the group about its own axes -> (maps, axes).

    axes: per class, the (rotation (3, 3), shift_zyx_px (3,)) of an earlier call: the centre is kept
    and the rotation refined locally from there (None: searched globally, centre refined). The
    returned axes go to the next call.
    max_shift_px: a class whose symmetry centre lies further than this from the box centre has the
    group imposed about the box centre instead (its rotation refined there; shift 0 in the returned
    axes, kept by later calls). Such a centre is not trusted (vdam.recentre): with several classes it
    is a junk class's, whose map loses nothing real by being made symmetric about the centre, and
    which can then be searched over one asymmetric unit like the others (vdam.unit_search).
    keep_axes: per class, True to impose about its axes in `axes` as they are, without refining them
    (vdam.unit_search.settled_axes: a map kept symmetric about them since, whose axes do not move).
    """
    imposed, found = [], []
    for k in range(maps.shape[0]):
        volume = maps[k].float()
        near = axes[k] if axes is not None and k < len(axes) else None
        if near is not None and keep_axes is not None and keep_axes[k]:
            rotation, shift = near
        else:
            rotation, shift = _found_axes(volume, group, pixel_size_a, near, max_shift_px)
        imposed.append(symmetrise_in_place(volume, group, rotation, shift).to(maps.dtype))
        found.append((rotation, torch.as_tensor(shift, dtype=torch.float64)))
    return torch.stack(imposed), found


def _found_axes(volume: torch.Tensor, group: PointGroup, pixel_size_a: float, near, max_shift_px: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (rotation, shift_zyx_px) of the group's axes in volume (N, N, N), refined from `near`; a centre
    further than max_shift_px from the box centre is replaced by the box centre (impose_group)."""
    if near is None:
        rotation, shift = _searched_axes(volume, group)
    else:
        alignment = align_to_symmetry(volume, pixel_size_a, group, near=near)
        rotation, shift = alignment.rotation, alignment.shift_zyx_px
    if max_shift_px is not None and float(torch.as_tensor(shift).norm()) > max_shift_px:
        alignment = align_to_symmetry(volume, pixel_size_a, group, near=(rotation, torch.zeros(3, dtype=torch.float64)))
        rotation, shift = alignment.rotation, alignment.shift_zyx_px
    return rotation, shift


# the last global searches: (map searched, group name, rotation, shift). The race of starts scores each
# start's maps symmetrised about their own axes (vdam.restarts.score_starts), and the winner's very maps
# then have the group imposed at the same iteration: a search of 0.3 s on the real tutorial job, made again
_RECENT_SEARCHES: list[tuple[torch.Tensor, str, torch.Tensor, torch.Tensor]] = []
_RECENT_KEPT = 4


def _searched_axes(volume: torch.Tensor, group: PointGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation, shift_zyx_px) of align_to_symmetry(volume, group) searched globally, or of the very
    same map and group searched by one of the last _RECENT_KEPT calls (the search is deterministic).
    Copies: the axes go into run states, whose later steps may change them in place."""
    for searched, name, rotation, shift in _RECENT_SEARCHES:
        if name == group.name and searched.shape == volume.shape and searched.device == volume.device and torch.equal(searched, volume):
            return rotation.clone(), shift.clone()
    alignment = align_to_symmetry(volume, 1.0, group)  # the pixel size does not enter the search
    rotation, shift = alignment.rotation, torch.as_tensor(alignment.shift_zyx_px, dtype=torch.float64)
    _RECENT_SEARCHES.append((volume.detach().clone(), group.name, rotation.clone(), shift.clone()))
    del _RECENT_SEARCHES[:-_RECENT_KEPT]
    return rotation, shift
