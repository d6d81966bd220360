"""Where the symmetry axes cross (novomap.symmetry.centre): a symmetric map moved off its axes is found again."""

from __future__ import annotations

import pytest
import torch

from _synthetic_maps import PIXEL_SIZE_A, add_noise, blob_map, correlation, random_rotation
from novomap.maps.transform import rotate_volume, shift_volume
from novomap.symmetry.align import align_to_symmetry
from novomap.symmetry.centre import refine_centre, symmetry_residual_fn
from novomap.symmetry.groups import point_group
from novomap.symmetry.symmetrise import symmetrise, symmetrise_in_place

MOVE_XYZ_PX = (0.6, -0.4, 0.3)


def test_a_dihedral_map_moved_off_its_centre_is_moved_back():
    group = point_group("D2")
    moved = shift_volume(blob_map("D2"), tuple(reversed(MOVE_XYZ_PX)))  # shift_volume takes zyx
    found = refine_centre(moved, group)
    assert torch.allclose(found, -torch.tensor(MOVE_XYZ_PX, dtype=torch.float64), atol=0.13), found
    residual = symmetry_residual_fn(moved, group)
    assert residual(found) < 0.05 * residual(torch.zeros(3, dtype=torch.float64))


def test_a_cyclic_map_is_not_moved_along_its_axis():
    """Along a Cn axis every position is as symmetric as any other: only x and y are corrected."""
    moved = shift_volume(blob_map("C4"), tuple(reversed(MOVE_XYZ_PX)))
    found = refine_centre(moved, point_group("C4"))
    assert torch.allclose(found[:2], -torch.tensor(MOVE_XYZ_PX[:2], dtype=torch.float64), atol=0.13), found
    assert found[2] == 0.0


def test_c1_needs_no_centre():
    assert torch.equal(refine_centre(blob_map("C1"), point_group("C1")), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("name", ["C7", "D2"])
def test_alignment_with_a_refined_centre_symmetrises_a_noisy_off_centre_map_better(name, monkeypatch):
    """A turned, moved, noisy copy of a symmetric map: imposing the group about the refined centre gets
    closer to the clean map than about the centre of mass alone."""
    import novomap.symmetry.align as align

    group = point_group(name)
    clean = blob_map(name)
    noisy = add_noise(shift_volume(rotate_volume(clean, random_rotation(11)), (0.7, -1.2, 0.9)), 0.6, seed=3)
    truth = shift_volume(rotate_volume(clean, random_rotation(11)), (0.7, -1.2, 0.9))

    def in_place(refine: bool) -> float:
        monkeypatch.setattr(align, "REFINE_CENTRE", refine)
        alignment = align_to_symmetry(noisy, PIXEL_SIZE_A, group)
        return correlation(symmetrise_in_place(noisy, group, alignment.rotation, alignment.shift_zyx_px), truth)

    assert in_place(True) >= in_place(False) - 1e-3
    assert in_place(True) > 0.97
    assert correlation(symmetrise(clean, group), clean) > 0.999  # the synthetic map has the group
