"""When and how a requested point group is imposed on the class maps while VDAM runs (symmetry.impose).

The run and any runner-up of its race (vdam.finalists) are treated alike: each has the group imposed
about its own axes after the same iterations.
"""

from __future__ import annotations

from novomap.estep.driver import PAD
from novomap.symmetry.groups import PointGroup
from novomap.symmetry.impose import impose_group
from novomap.vdam import convergence, schedules
from novomap.vdam.config import VdamConfig
from novomap.vdam.recentre import recentre_on_axes, untrusted_shift_px
from novomap.vdam.state import RunState
from novomap.vdam.unit_search import settled_axes


def imposition_starts_after(config: VdamConfig) -> int:
    """The iteration after which a requested group is imposed on the class maps (imposing_due): the end
    of VDAM's initial phase."""
    return schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction).initial


def imposing_due(iteration: int, config: VdamConfig) -> bool:
    """Whether the requested group is imposed on the class maps after this iteration: every
    config.impose_symmetry_every iterations after VDAM's initial phase, which is also where the race
    of starts ends (a wrong start is not forced into a symmetric shape), never after the last one
    (the final map is symmetrised anyway). With vdam.convergence, nor where its comparisons fall
    (n_iter - check_every - lag, every check_every iterations on): each compares maps left free for the same
    number of iterations, and the run may stop at any of them from n_iter on."""
    every = config.impose_symmetry_every
    first = imposition_starts_after(config)
    if every <= 0 or iteration <= first or (iteration - first) % every:
        return False
    if config.convergence_check_every <= 0:
        return iteration < config.n_iter
    return not convergence.compared_iteration(iteration, config)


def impose_on_class_maps(state: RunState, group: PointGroup, pixel_size_a: float, config: VdamConfig) -> None:
    """The group imposed on every class map about its own axes (symmetry.impose; axes kept where
    vdam.unit_search.settled_axes allows), each map then moved so that its symmetry centre is the box
    centre (config.recentre_on_symmetry)."""
    state.maps, state.symmetry_axes = impose_group(
        state.maps, group, pixel_size_a, state.symmetry_axes, untrusted_shift_px(state, config), settled_axes(state, config)
    )
    if config.recentre_on_symmetry:
        state.symmetry_axes = recentre_on_axes(state, state.symmetry_axes, pixel_size_a, PAD)


def impose_if_due(state: RunState, group: PointGroup | None, pixel_size_a: float, config: VdamConfig) -> None:
    """After an iteration of `state`: the group imposed on its class maps if one is requested (order > 1)
    and imposing_due says so."""
    if group is not None and group.order > 1 and imposing_due(state.iteration, config):
        impose_on_class_maps(state, group, pixel_size_a, config)
