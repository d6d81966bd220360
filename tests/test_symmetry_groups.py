"""Point groups: RELION names, orders, where the axes lie, closure."""

from __future__ import annotations

import math

import pytest
import torch

from novomap.errors import NovomapError
from novomap.physics.euler import axis_angle_to_matrix
from novomap.symmetry.groups import point_group

X, Y, Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def has_rotation(name: str, axis: tuple[float, float, float], fold: int) -> bool:
    """Whether the group contains the rotation by 360/fold about the axis."""
    target = axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float64), 360.0 / fold)
    ops = point_group(name).operators
    return bool(((ops - target).abs().amax(dim=(-2, -1)) < 1e-4).any())


def axis_order(name: str, axis: tuple[float, float, float]) -> int:
    """Largest n such that the group has an n-fold rotation about the axis (1 if none)."""
    return max([n for n in range(1, 7) if has_rotation(name, axis, n)])


@pytest.mark.parametrize(
    "name, order",
    [("C1", 1), ("C4", 4), ("C7", 7), ("c24", 24), ("D2", 4), ("d7", 14), ("T", 12), ("O", 24), ("I", 60),
     ("I1", 60), ("I2", 60), ("i3", 60), ("I4", 60), ("Ci", 2), ("Cs", 2), ("C4v", 8), ("C3h", 6), ("S6", 6),
     ("D3v", 12), ("D4h", 16), ("Td", 24), ("Th", 24), ("Oh", 48), ("Ih", 120), ("I1h", 120), ("I3h", 120),
     ("I4h", 120)],
)
def test_orders(name: str, order: int) -> None:
    assert point_group(name).order == order


@pytest.mark.parametrize("name", ["C5", "D3", "T", "O", "I1", "I2", "I3", "I4"])
def test_proper_groups_hold_only_rotations(name: str) -> None:
    group = point_group(name)
    assert group.is_proper
    assert torch.allclose(torch.linalg.det(group.operators), torch.ones(group.order, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("name", ["Ci", "Cs", "C4v", "C3h", "S4", "D2h", "Td", "Oh", "I2h"])
def test_improper_groups_are_flagged(name: str) -> None:
    group = point_group(name)
    assert not group.is_proper
    determinants = torch.linalg.det(group.operators)
    assert int((determinants < 0).sum()) == group.order // 2


@pytest.mark.parametrize("name", ["C7", "D5", "T", "O", "I", "I3", "I4", "Td", "Oh", "I1h"])
def test_operators_are_orthogonal_and_closed(name: str) -> None:
    ops = point_group(name).operators
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(ops @ ops.transpose(1, 2), eye.expand_as(ops), atol=1e-9)
    assert torch.allclose(ops[0], eye)
    products = (ops[:, None] @ ops[None]).reshape(-1, 3, 3)
    distance = (products[:, None] - ops[None]).abs().amax(dim=(-2, -1)).amin(dim=1)
    assert float(distance.max()) < 1e-6
    # no duplicates
    pairwise = (ops[:, None] - ops[None]).abs().amax(dim=(-2, -1)) + torch.eye(len(ops), dtype=torch.float64)
    assert float(pairwise.min()) > 1e-3


def test_cyclic_axis_is_z() -> None:
    assert axis_order("C4", Z) == 4
    assert axis_order("C4", X) == 1


def test_dihedral_axes() -> None:
    # D2: 2-folds on X, Y and Z; Dn: principal axis Z and a 2-fold on X
    for axis in (X, Y, Z):
        assert axis_order("D2", axis) == 2
    assert axis_order("D6", Z) == 6
    assert axis_order("D6", X) == 2


def test_tetrahedral_axes() -> None:
    # RELION's T: 3-fold on Z, a 2-fold in the YZ plane at 54.74 deg from Z, nothing on X or Y
    assert axis_order("T", Z) == 3
    assert axis_order("T", X) == 1
    assert axis_order("T", Y) == 1
    tilt = math.radians(54.7356)
    assert has_rotation("T", (0.0, math.sin(tilt), math.cos(tilt)), 2)


def test_octahedral_axes() -> None:
    for axis in (X, Y, Z):
        assert axis_order("O", axis) == 4
    assert has_rotation("O", (1.0, 1.0, 1.0), 3)


@pytest.mark.parametrize("name", ["I", "I1", "I2"])
def test_icosahedral_crowther_settings_have_twofolds_on_xyz(name: str) -> None:
    for axis in (X, Y, Z):
        assert axis_order(name, axis) == 2


def test_icosahedral_fivefolds_in_xz_or_yz_plane() -> None:
    # I2: front-most 5-folds in the XZ plane; I1: in the YZ plane
    golden = (1 + math.sqrt(5)) / 2
    assert has_rotation("I2", (1.0, 0.0, golden), 5)
    assert has_rotation("I1", (0.0, 1.0, golden), 5)


@pytest.mark.parametrize("name", ["I3", "I4"])
def test_icosahedral_52_settings(name: str) -> None:
    assert has_rotation(name, Z, 5)
    assert axis_order(name, Y) == 2


def test_i3_and_i4_are_mirror_images_in_x() -> None:
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    i3 = point_group("I3").operators
    i4 = mirror @ point_group("I4").operators @ mirror
    distance = (i4[:, None] - i3[None]).abs().amax(dim=(-2, -1)).amin(dim=1)
    assert float(distance.max()) < 1e-4


def test_names_are_case_insensitive_and_canonical() -> None:
    assert point_group("d2").name == "D2"
    assert point_group(" c4V ").name == "C4v"
    assert point_group("i").name == "I"
    assert point_group("I").order == point_group("I2").order


@pytest.mark.parametrize("name", ["I5", "i5h", "X3", "C0", "D1", "S3", "", "Dh"])
def test_bad_names_raise_a_clear_error(name: str) -> None:
    with pytest.raises(NovomapError):
        point_group(name)


def test_i5_error_says_not_implemented() -> None:
    with pytest.raises(NovomapError, match="not implemented"):
        point_group("I5")


def _axes(group_operators: torch.Tensor) -> list[torch.Tensor]:
    """Unit axes of the group's non-identity rotations (each once per sign)."""
    axes = []
    for op in group_operators[1:]:
        values, vectors = torch.linalg.eig(op)
        axis = vectors[:, torch.argmin((values - 1).abs())].real
        axis = axis / axis.norm()
        if not any(float(abs(axis @ a)) > 1 - 1e-6 for a in axes):
            axes.append(axis)
    return axes


def _contains_geometrically(larger: str, smaller: str) -> bool:
    """Some rotation R puts every operator of `smaller` (standard frame: main axis z, a 2-fold along x)
    into `larger`: R takes z onto one of larger's axes and x onto one perpendicular to it (or, with no
    perpendicular axis needed, any)."""
    from novomap.symmetry.groups import point_group

    big, small = point_group(larger).operators, point_group(smaller).operators
    axes = _axes(big)
    candidates = [(a, b) for a in axes for b in axes if abs(float(a @ b)) < 1e-6] + [(a, None) for a in axes]
    for a, b in candidates:
        if b is None:  # a cyclic subgroup: only its axis matters
            helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
            helper = helper if abs(float(helper @ a)) < 0.9 else torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
            b = torch.linalg.cross(a, helper)
            b = b / b.norm()
        rotation = torch.stack([b, torch.linalg.cross(a, b), a], 1)  # columns: images of x, y, z
        moved = rotation @ small @ rotation.T
        if all(bool(((big - m).abs().amax((1, 2)) < 1e-6).any()) for m in moved):
            return True
    return False


@pytest.mark.parametrize("larger", ["C4", "C6", "D2", "D3", "D4", "D6", "T", "O", "I"])
@pytest.mark.parametrize("smaller", ["C1", "C2", "C3", "C4", "C5", "D2", "D3", "D4", "T"])
def test_contains_type_agrees_with_the_operators(larger, smaller):
    """contains_type (by the groups' names) against a search for a frame that puts every operator of the
    smaller group into the larger one (an independent, geometric answer)."""
    from novomap.symmetry.groups import contains_type, point_group

    assert contains_type(point_group(larger), point_group(smaller)) == _contains_geometrically(larger, smaller)


@pytest.mark.parametrize("group", ["C1", "C2", "C5", "D2", "D7", "T", "O", "I"])
def test_has_larger_group_only_fails_for_o_and_i(group):
    """has_larger_group against the geometric test: some group of twice the order in its family (C2n, D2n),
    or O for T, contains it; nothing the geometric search can build contains O or I."""
    from novomap.symmetry.groups import has_larger_group, point_group

    letter, n = group[0], int(group[1:] or 0)
    bigger = {"C": [f"C{2 * n}", f"D{n}" if n > 1 else "D2"], "D": [f"D{2 * n}"], "T": ["O", "I"], "O": ["I"], "I": ["O"]}[letter]
    geometric = any(_contains_geometrically(name, group) for name in bigger)
    assert has_larger_group(point_group(group)) == geometric == (group not in ("O", "I"))
