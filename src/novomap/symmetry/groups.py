"""Point groups with RELION's names and axis conventions (vdam-spec 5.3).

Each group is built from RELION's generators (symmetries.cpp `fill_symmetry_class`): an n-fold
rotation about an axis, a mirror perpendicular to a normal, or the inversion; the generators are
closed under composition. Operators are 3x3 float64 matrices acting on physical coordinates
r = (x, y, z) (Å or px from the box centre); applying operator g to a volume means V'(r) = V(g^T r).

Names are case-insensitive: Cn, Ci, Cs, Cnv, Cnh, Sn (n even), Dn, Dnv, Dnh, T, Td, Th, O, Oh,
I (= I2), I1, I2, I3, I4 and their h variants (Ih, I1h, ...). I5 is not implemented (nor in RELION).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from novomap.errors import NovomapError
from novomap.physics.euler import axis_angle_to_matrix

_X, _Y, _Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
_MAX_ORDER = 1000  # far above any finite group here; guards against generators that never close
_TOLERANCE = 1e-4  # RELION's icosahedral axes carry 7 digits, so products drift by ~1e-7 per factor


@dataclass(frozen=True)
class PointGroup:
    """A point group: canonical name, operators (G, 3, 3) float64 (identity first), is_proper = all det +1."""

    name: str
    operators: torch.Tensor
    is_proper: bool

    @property
    def order(self) -> int:
        return int(self.operators.shape[0])

    def in_frame(self, rotation: torch.Tensor) -> "PointGroup":
        """The group about a map's own axes: rotation (3, 3) takes those axes onto the standard ones
        (symmetry.align.SymmetryAlignment.rotation), so the operators become R^T g R."""
        rotation = torch.as_tensor(rotation, dtype=torch.float64)
        return PointGroup(self.name, rotation.T @ self.operators @ rotation, self.is_proper)


def _rotation(axis: tuple[float, float, float], fold: int) -> torch.Tensor:
    return axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float64), 360.0 / fold)


def _mirror(normal: tuple[float, float, float]) -> torch.Tensor:
    """Reflection through the plane perpendicular to `normal`: I - 2 n n^T."""
    n = torch.tensor(normal, dtype=torch.float64)
    n = n / n.norm()
    return torch.eye(3, dtype=torch.float64) - 2.0 * torch.outer(n, n)


def _inversion() -> torch.Tensor:
    return -torch.eye(3, dtype=torch.float64)


def close_group(generators: list[torch.Tensor], tolerance: float = _TOLERANCE) -> torch.Tensor:
    """All products of the generators (G, 3, 3), identity first, in breadth-first order.

    Left-multiplying every known element by every generator until nothing new appears yields the
    whole (finite) group; products are re-orthogonalised so that rounding does not grow.
    """
    elements = torch.eye(3, dtype=torch.float64)[None]
    if not generators:
        return elements
    gens = torch.stack([torch.as_tensor(g, dtype=torch.float64) for g in generators])
    frontier = elements
    while frontier.shape[0]:
        products = _nearest_orthogonal((gens[:, None] @ frontier[None]).reshape(-1, 3, 3))
        known = _distances(products, elements).amin(dim=1) <= tolerance
        fresh = _first_of_each(products[~known], tolerance)
        elements = torch.cat([elements, fresh])
        frontier = fresh
        if elements.shape[0] > _MAX_ORDER:
            raise NovomapError("symmetry generators do not close into a finite group")
    return elements


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Largest element-wise difference between matrices a (P, 3, 3) and b (Q, 3, 3) -> (P, Q)."""
    return (a[:, None] - b[None]).abs().amax(dim=(-2, -1))


def _first_of_each(matrices: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The matrices that have no equal (within tolerance) earlier in the list."""
    if matrices.shape[0] == 0:
        return matrices
    same = _distances(matrices, matrices) <= tolerance
    index = torch.arange(matrices.shape[0])
    earlier = (same & (index[None, :] < index[:, None])).any(dim=1)
    return matrices[~earlier]


def _nearest_orthogonal(matrix: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(matrix)
    return u @ vh


# RELION's generator axes (vdam-spec 5.3), unit vectors as printed there.
_ICOSAHEDRAL: dict[str, tuple[tuple, tuple, tuple, tuple]] = {
    # name: (2-fold axis, 5-fold axis, 3-fold axis, normal of the mirror of the h variant)
    "I2": ((0, 0, 1), (0.525731114, 0, 0.850650807), (0, 0.356822076, 0.934172364), _X),
    "I1": (_X, (0.8506508, 0, -0.5257311), (0.9341724, 0.3568221, 0), _Z),
    "I3": ((-0.5257311, 0, 0.8506508), _Z, (-0.4911235, 0.3568221, 0.7946545), (0.8506508, 0, 0.5257311)),
    "I4": ((0.5257311, 0, 0.8506508), (0.8944272, 0, 0.4472136), (0.4911235, 0.3568221, 0.7946545),
           (0.8506508, 0, -0.5257311)),
}
_T_TWOFOLD = (0.0, 0.816496, 0.577350)


def _cyclic_family(n: int, suffix: str) -> list[torch.Tensor]:
    gens = [_rotation(_Z, n)]
    if suffix == "V":
        gens.append(_mirror(_Y))
    elif suffix == "H":
        gens.append(_mirror(_Z))
    return gens


def _dihedral_family(n: int, suffix: str) -> list[torch.Tensor]:
    gens = [_rotation(_Z, n), _rotation(_X, 2)]
    if suffix == "V":
        gens.append(_mirror(_X))
    elif suffix == "H":
        gens.append(_mirror(_Z))
    return gens


def _polyhedral_family(letter: str, suffix: str) -> list[torch.Tensor]:
    if letter == "T":
        gens = [_rotation(_Z, 3), _rotation(_T_TWOFOLD, 2)]
        if suffix == "D":
            gens.append(_mirror((1.4142136, 2.4494897, 0.0)))
        elif suffix == "H":
            gens.append(_inversion())
        return gens
    gens = [_rotation((1.0, 1.0, 1.0), 3), _rotation(_Z, 4)]  # O
    if suffix == "H":
        gens.append(_mirror((0.0, 1.0, 1.0)))
    return gens


def _icosahedral_family(setting: str, suffix: str) -> list[torch.Tensor]:
    two, five, three, mirror_normal = _ICOSAHEDRAL[setting]
    gens = [_rotation(two, 2), _rotation(five, 5), _rotation(three, 3)]
    if suffix == "H":
        gens.append(_mirror(mirror_normal))
    return gens


def _parse(name: str) -> tuple[str, list[torch.Tensor]]:
    """Canonical name and RELION generators for a group name (case-insensitive)."""
    key = name.strip().upper()
    if key in ("C1", "CI", "CS"):
        gens = {"C1": [], "CI": [_inversion()], "CS": [_mirror(_Z)]}[key]
        return {"C1": "C1", "CI": "Ci", "CS": "Cs"}[key], gens
    match = re.fullmatch(r"([CDS])(\d+)([VH]?)", key)
    if match:
        letter, n, suffix = match.group(1), int(match.group(2)), match.group(3)
        return _parse_axial(name, letter, n, suffix)
    match = re.fullmatch(r"([TO])([DH]?)", key)
    if match and not (match.group(1) == "O" and match.group(2) == "D"):
        letter, suffix = match.group(1), match.group(2)
        return letter + suffix.lower(), _polyhedral_family(letter, suffix)
    match = re.fullmatch(r"I(\d?)(H?)", key)
    if match:
        setting, suffix = match.group(1), match.group(2)
        if setting == "5":
            raise NovomapError(f"point group {name}: the I5 setting is not implemented (nor in RELION)")
        if setting in ("", "1", "2", "3", "4"):
            return "I" + setting + suffix.lower(), _icosahedral_family("I" + (setting or "2"), suffix)
    raise NovomapError(
        f"unknown point group '{name}' (expected Cn, Ci, Cs, Cnv, Cnh, Sn, Dn, Dnv, Dnh, T, Td, Th, O, Oh, "
        "I, I1-I4 or their h variants)"
    )


def _parse_axial(name: str, letter: str, n: int, suffix: str) -> tuple[str, list[torch.Tensor]]:
    if n < 1 or (letter == "D" and n < 2):
        raise NovomapError(f"point group {name}: the order must be at least {1 if letter != 'D' else 2}")
    if letter == "S":
        if suffix or n % 2:
            raise NovomapError(f"point group {name}: Sn needs an even n and no suffix")
        # RELION's Sn: an (n/2)-fold about Z plus the inversion
        gens = ([_rotation(_Z, n // 2)] if n > 2 else []) + [_inversion()]
        return f"S{n}", gens
    if letter == "C":
        return f"C{n}{suffix.lower()}", _cyclic_family(n, suffix)
    return f"D{n}{suffix.lower()}", _dihedral_family(n, suffix)


@lru_cache(maxsize=256)
def _cached(key: str) -> PointGroup:
    name, generators = _parse(key)
    operators = close_group(generators)
    is_proper = bool((torch.linalg.det(operators) > 0).all())
    return PointGroup(name=name, operators=operators, is_proper=is_proper)


def point_group(name: str) -> PointGroup:
    """The point group called `name` (RELION's naming and frame; case-insensitive).

    Raises NovomapError for unknown names, I5, odd Sn or a zero order.
    """
    group = _cached(name.strip().upper())
    # operators are shared by the cache: hand out a copy so callers cannot corrupt it
    return PointGroup(group.name, group.operators.clone(), group.is_proper)


def _rotation_type(name: str) -> tuple[str, int]:
    """('C' or 'D', n) for Cn and Dn, ('T'|'O'|'I', 0) for the polyhedral groups (any I setting)."""
    match = re.fullmatch(r"([CD])(\d+)", name)
    if match:
        return match.group(1), int(match.group(2))
    if name in ("T", "O") or re.fullmatch(r"I\d?", name):
        return name[0], 0
    raise NovomapError(f"point group {name}: only proper rotation groups (Cn, Dn, T, O, I) are compared")


# the cyclic and dihedral subgroups of each polyhedral group, besides C1 and (for O and I) T
POLYHEDRAL_GROUPS = ("T", "O", "I")  # in order of size
_POLYHEDRAL_SUBGROUPS = {"T": {("C", 2), ("C", 3), ("D", 2)}, "O": {("C", 2), ("C", 3), ("C", 4), ("D", 2), ("D", 3), ("D", 4)},
                         "I": {("C", 2), ("C", 3), ("C", 5), ("D", 2), ("D", 3), ("D", 5)}}  # fmt: skip


def contains_type(larger: PointGroup, smaller: PointGroup) -> bool:
    """Whether `larger` has a subgroup of `smaller`'s type (proper rotation groups Cn, Dn, T, O, I; in
    some orientation, not necessarily the standard one): C1 is in every group, Cn in Cm and Dm when n
    divides m (and C2 in every Dm), Dn in Dm when n divides m, and the polyhedral groups' cyclic and
    dihedral subgroups as listed (T also in O and I)."""
    big, small = _rotation_type(larger.name), _rotation_type(smaller.name)
    if smaller.order == 1 or big == small:
        return True
    if big[0] in "TOI":
        return small in _POLYHEDRAL_SUBGROUPS[big[0]] or (small[0] == "T" and big[0] in "OI")
    if small[0] in "TOI" or (small[0] == "D" and big[0] == "C"):
        return False
    return big[1] % small[1] == 0 or (small == ("C", 2) and big[0] == "D")


def has_larger_group(group: PointGroup) -> bool:
    """Whether a larger proper group (Cn, Dn, T, O, I) contains `group`: every one but O and I (Cn lies
    in C2n and Dn, Dn in D2n, T in O and I)."""
    return _rotation_type(group.name)[0] not in "OI"
