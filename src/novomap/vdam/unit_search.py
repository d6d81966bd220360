"""The search over one asymmetric unit of an imposed point group (sampling.asymmetric_unit), run-level:
when a mini-batch may use it, and the final poses spread over their equivalents afterwards."""

from __future__ import annotations

import torch

from novomap.physics.euler import euler_to_matrix, matrix_to_euler
from novomap.symmetry.groups import PointGroup
from novomap.vdam import schedules
from novomap.vdam.config import VdamConfig
from novomap.vdam.recentre import centred_classes
from novomap.vdam.state import RunState

def searchable_by_unit(group: PointGroup | None) -> bool:
    """Whether a group lets the search skip equivalent orientations: more than one operator, all
    proper rotations (a mirror maps a projection onto the mirror image of another, not onto another
    projection)."""
    return group is not None and group.is_proper and group.order > 1


def unit_operators(state: RunState, config: VdamConfig, group: PointGroup | None, with_sums: bool) -> list[torch.Tensor | None] | None:
    """Per class, the group's operators in that class map's frame (G, 3, 3) when this mini-batch
    searches one asymmetric unit of it (sampling.asymmetric_unit), None for a class searched whole;
    None when no class is searched by unit.

    Only in the mini-batch iterations after VDAM's initial phase (the race of starts has chosen and the
    group is imposed), and only for classes whose map has had the group imposed about its own axes
    and whose symmetry centre is the box centre (vdam.recentre), so that the group's rotations about
    the box centre are symmetries of the map: the iteration's sums are then averaged over the group
    (estep.accumulate.symmetrise_sums), as if each slice had gone to its equivalent orientations as
    well, which keeps the VDAM update symmetric between impositions. With several classes each map
    has its own axes, hence its own unit (a K=3 run on real beta-gal searched 4x the orientations per
    class without it). A class whose centre could not be brought to the box centre is searched whole
    while the others still search their units; with several classes that no longer happens by default
    (a junk class's far centre is replaced by the box centre: vdam.recentre.untrusted_shift_px). The final pass
    (with_sums False) searches every orientation, unless config.final_unit_search (several classes only):
    then one unit too, its poses spread over their equivalents afterwards (spread_equivalent_poses)."""
    if not with_sums and not (config.final_unit_search and state.n_classes > 1):
        return None
    if not config.search_asymmetric_unit or not searchable_by_unit(group):
        return None
    if state.iteration < schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction).initial:
        return None
    centred = centred_classes(state)
    if not any(centred):
        return None
    return [group.in_frame(rotation).operators if ok else None for (rotation, _), ok in zip(state.symmetry_axes, centred)]


def settled_axes(state: RunState, config: VdamConfig) -> list[bool]:
    """Per class, whether the next imposition may keep its axes as they are (symmetry.impose_group
    keep_axes): the class is centred and every iteration of the last two imposition intervals searched
    by unit, so its map has been updated with sums averaged over the group about those axes ever since
    they were last refined, and stays symmetric about them. Refining them again moved them by
    0.01-0.06 degrees per 10 iterations on real beta-gal (K=1 and K=3) and cost 0.19 s per class each
    time (benchmarks/results/2026-12-05-s37-classes.md)."""
    if not config.keep_settled_axes:
        return [False] * state.n_classes
    recent = state.history[-2 * config.impose_symmetry_every :]
    by_unit = len(recent) == 2 * config.impose_symmetry_every and all(f.get("unit_fraction", 1.0) < 1.0 for f in recent)
    return [by_unit and centred for centred in centred_classes(state)]


def spread_equivalent_poses(state: RunState, group: PointGroup | None, config: VdamConfig) -> int:
    """After the final pass of a run whose iterations searched one asymmetric unit (unit_operators),
    give each particle placed in a class searched by unit one of its |G| equivalent poses A g (g of
    its class map's group), drawn uniformly (seeded); returns how many particles were given one (0
    when the run never searched by unit).

    Against the symmetric map every equivalent pose is as good, and a full search picks among them
    as by chance; poses left in one unit instead cover the directions unevenly, so the final
    reconstruction (CTF-weighted, one regularised division) would lose detail where its weights are
    thin: the half-set FSC of the real tutorial job read 9.8 instead of 9.5 Å."""
    if not searchable_by_unit(group) or not any(f.get("unit_fraction", 1.0) < 1.0 for f in state.history):
        return 0
    centred = centred_classes(state)
    if not any(centred):
        return 0
    operators = torch.stack([group.in_frame(rotation).operators for rotation, _ in state.symmetry_axes[: state.n_classes]])  # (K, G, 3, 3)
    in_unit_class = torch.tensor(centred)[(state.class_number - 1).clamp(min=0)]
    placed = torch.nonzero((state.class_number > 0) & in_unit_class).squeeze(1)
    draw = torch.randint(operators.shape[1], (placed.numel(),), generator=torch.Generator().manual_seed(config.seed + 31))
    poses = euler_to_matrix(state.rot_deg[placed], state.tilt_deg[placed], state.psi_deg[placed])
    chosen = operators[state.class_number[placed] - 1, draw]
    rot, tilt, psi = matrix_to_euler(poses @ chosen.to(poses.dtype))
    state.rot_deg[placed] = rot.to(state.rot_deg.dtype)
    state.tilt_deg[placed] = tilt.to(state.tilt_deg.dtype)
    state.psi_deg[placed] = psi.to(state.psi_deg.dtype)
    return int(placed.numel())
