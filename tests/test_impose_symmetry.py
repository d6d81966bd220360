"""symmetry.impose and its schedule: an explicit group imposed on the class maps during the run."""

from __future__ import annotations

import torch

from _synthetic_maps import blob_map, correlation, random_rotation
from novomap.vdam.imposition import imposing_due
from novomap.maps.transform import rotate_volume, shift_volume
from novomap.symmetry.align import align_to_symmetry
from novomap.symmetry.groups import point_group
from novomap.symmetry.impose import impose_group
from novomap.symmetry.symmetrise import symmetrise, symmetrise_in_place
from novomap.vdam.config import VdamConfig


def _turned_c4_with_a_flaw() -> tuple[torch.Tensor, torch.Tensor]:
    """(a C4 map turned and shifted off the standard frame with one subunit's blob missing, the
    same map without the flaw)."""
    symmetric = blob_map("C4", seed=3)
    flawed = symmetric.clone()
    n = symmetric.shape[-1]
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) - n // 2,) * 3, indexing="ij")
    brightest = torch.nonzero(symmetric == symmetric.max())[0].float() - n // 2
    flawed -= symmetric * (((z - brightest[0]) ** 2 + (y - brightest[1]) ** 2 + (x - brightest[2]) ** 2) < 16).float()
    turn = random_rotation(5).float()
    move = (1.5, -2.0, 1.0)
    return shift_volume(rotate_volume(flawed, turn), move), shift_volume(rotate_volume(symmetric, turn), move)


def test_the_group_is_imposed_where_the_map_is():
    flawed, symmetric = _turned_c4_with_a_flaw()
    group = point_group("C4")
    maps, axes = impose_group(flawed[None].double(), group, 3.0)
    assert maps.shape == (1, *flawed.shape) and maps.dtype == torch.float64 and len(axes) == 1
    imposed = maps[0].float()
    # symmetric about its own axes, and not moved: closer to the unflawed map than the flawed input is
    assert align_to_symmetry(imposed, 3.0, group).score < 0.02
    assert correlation(imposed, symmetric) > correlation(flawed, symmetric)
    assert correlation(imposed, symmetric) > 0.98


def test_a_later_call_refines_from_the_previous_axes():
    flawed, _ = _turned_c4_with_a_flaw()
    group = point_group("C4")
    maps, axes = impose_group(flawed[None].double(), group, 3.0)
    again, axes_again = impose_group(maps, group, 3.0, axes)
    # the local refinement from the previous axes finds the same axes (a C4 axis: third rows agree)
    assert float((axes_again[0][0][2] @ axes[0][0][2]).abs()) > 0.9995
    assert torch.equal(axes_again[0][1], axes[0][1])  # the centre is kept
    assert correlation(again[0], maps[0]) > 0.999


def test_a_centre_too_far_off_is_replaced_by_the_box_centre():
    """max_shift_px: a map whose D2 centre lies 6 px off gets the group imposed about the box centre
    (shift 0, symmetric there), where a looser bound keeps its own centre."""
    symmetric = blob_map("D2", seed=3)
    far = shift_volume(symmetric, (0.0, 6.0, 0.0))
    group = point_group("D2")
    kept, kept_axes = impose_group(far[None].double(), group, 3.0, max_shift_px=8.0)
    assert float(kept_axes[0][1].norm()) > 5.0
    assert correlation(kept[0].float(), far) > 0.98
    pinned, pinned_axes = impose_group(far[None].double(), group, 3.0, max_shift_px=4.0)
    assert torch.equal(pinned_axes[0][1], torch.zeros(3, dtype=torch.float64))
    centred = pinned[0].float()
    # symmetric about the box centre: its own centre found there, and a C4 turn about it leaves it
    assert float(torch.as_tensor(align_to_symmetry(centred, 3.0, group).shift_zyx_px).norm()) < 1.0
    assert correlation(symmetrise(centred, group.in_frame(pinned_axes[0][0])), centred) > 0.999
    # a later call keeps the box centre
    _, again = impose_group(pinned, group, 3.0, pinned_axes, max_shift_px=4.0)
    assert torch.equal(again[0][1], torch.zeros(3, dtype=torch.float64))


def test_near_gives_the_global_answer():
    volume = rotate_volume(blob_map("D2", seed=1), random_rotation(8).float())
    found = align_to_symmetry(volume, 3.0, "D2")
    nudge = random_rotation(9)
    # a start a few degrees off: the rotation by a small angle about a random axis
    small = torch.linalg.matrix_exp(0.05 * (nudge - nudge.T) / 2)
    local = align_to_symmetry(volume, 3.0, "D2", near=(small @ found.rotation, found.shift_zyx_px))
    assert local.score <= found.score + 0.005
    assert correlation(symmetrise(local.volume, point_group("D2")), local.volume) > 0.97


def test_the_schedule_starts_after_the_initial_phase_and_skips_the_last_iteration():
    config = VdamConfig(n_iter=100)
    # nor at 70, 80 and 90: vdam.convergence compares their maps with those of 90, 100 and 110, all left free
    assert [i for i in range(1, 101) if imposing_due(i, config)] == [i for i in range(35, 100, 5) if i not in (70, 80, 90)]
    assert not any(imposing_due(i, VdamConfig(n_iter=100, impose_symmetry_every=0)) for i in range(1, 101))
    assert [i for i in range(1, 13) if imposing_due(i, VdamConfig(n_iter=12))] == [8]


def test_kept_axes_are_imposed_as_they_are():
    """keep_axes: the map is made symmetric about the given axes, which come back unchanged (no
    refinement), whereas a refining call moves axes given a few degrees off."""
    volume = rotate_volume(blob_map("D2", seed=1), random_rotation(8).float())
    group = point_group("D2")
    found = align_to_symmetry(volume, 3.0, group)
    nudge = random_rotation(9)
    off = torch.linalg.matrix_exp(0.05 * (nudge - nudge.T) / 2) @ found.rotation  # ~2 degrees off
    axes = [(off, found.shift_zyx_px)]
    kept, kept_axes = impose_group(volume[None].double(), group, 3.0, axes, keep_axes=[True])
    assert torch.equal(kept_axes[0][0], off)
    assert torch.allclose(kept[0].float(), symmetrise_in_place(volume, group, off, found.shift_zyx_px), atol=1e-5)
    _, refined_axes = impose_group(volume[None].double(), group, 3.0, axes, keep_axes=[False])
    assert not torch.allclose(refined_axes[0][0], off, atol=1e-3)


def test_a_map_searched_again_reuses_its_axes(monkeypatch):
    """The race scores its starts' maps symmetrised, and the winner's very maps then have the group
    imposed: the second global search of the same map is the first one's result, not searched again,
    and axes changed in place by a caller do not change what a later call gets."""
    import novomap.symmetry.impose as impose

    group = point_group("C4")
    volume = blob_map("C4", size=32, seed=5)[None]
    calls = []
    real = impose.align_to_symmetry
    monkeypatch.setattr(impose, "align_to_symmetry", lambda *a, **k: calls.append(k.get("near")) or real(*a, **k))
    first_maps, first_axes = impose_group(volume.clone(), group, 2.0)
    first_axes[0][1].add_(100.0)  # a caller's later step moving the centre in place
    again_maps, again_axes = impose_group(volume.clone(), group, 2.0)
    assert len(calls) == 1
    assert torch.equal(first_maps, again_maps)
    assert float(again_axes[0][1].abs().max()) < 50
    other_maps, _ = impose_group(volume.clone() * 1.5, group, 2.0)  # another map: searched
    assert len(calls) == 2
