"""Schedules of a VDAM run: mini-batch size, step size and regularisation T (vdam-spec 4.1).

Iterations are numbered 1..n_iter and split into an initial phase (30 %), an in-between phase
and a final phase (20 %). Step size and T follow sigmoids centred in the in-between phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Phases:
    n_iter: int
    initial: int
    in_between: int
    final: int


def phases(n_iter: int, initial_fraction: float = 0.3, final_fraction: float = 0.2) -> Phases:
    total = initial_fraction + final_fraction
    if total > 0.9:  # RELION renormalises so that some in-between phase remains
        initial_fraction, final_fraction = 0.9 * initial_fraction / total, 0.9 * final_fraction / total
    initial = int(math.floor(initial_fraction * n_iter))
    final = int(math.floor(final_fraction * n_iter))
    return Phases(n_iter, initial, n_iter - initial - final, final)


def default_subset_sizes(n_particles: int) -> tuple[int, int]:
    """(initial, final) mini-batch sizes of RELION's 3D initial model for a data set size."""
    initial = max(min(int(0.005 * n_particles), 5000), 200)
    final = max(min(int(0.1 * n_particles), 50000), 1000)
    return initial, final


def subset_sizes(n_particles: int, initial: int = -1, final: int = -1, final_max_fraction: float = 0.0) -> tuple[int, int]:
    """(initial, final) mini-batch sizes of a run: RELION's automatic sizes, the final one capped at
    final_max_fraction of the data set (never below the initial size; 0: no cap), and sizes given
    explicitly (initial, final > 0) used as they are."""
    auto_initial, auto_final = default_subset_sizes(n_particles)
    if final_max_fraction > 0:
        auto_final = min(auto_final, max(auto_initial, round(final_max_fraction * n_particles)))
    return (initial if initial > 0 else auto_initial, final if final > 0 else auto_final)


def subset_size(iteration: int, p: Phases, initial_size: int, final_size: int, n_particles: int) -> int:
    """Mini-batch size at an iteration: constant, then linear growth, then constant; capped at the data."""
    if iteration < p.initial:
        size = initial_size
    elif iteration < p.initial + p.in_between:
        size = initial_size + round((iteration - p.initial) / p.in_between * (final_size - initial_size))
    else:
        size = final_size
    return min(size, n_particles)


def _sigmoid_weight(iteration: int, width: int, start: int) -> float:
    """s(x) = 1 / (10^((x - b - a/2) / (a/4)) + 1): ~1 before the ramp, ~0 after."""
    if width <= 0:
        return 0.0 if iteration >= start else 1.0
    exponent = (iteration - start - width / 2) / (width / 4)
    exponent = max(min(exponent, 300.0), -300.0)
    return 1.0 / (10.0**exponent + 1.0)


def step_size(iteration: int, p: Phases, base: float = 0.5, inflate: float | None = None) -> float:
    """eta: base * inflate early, base late ("1.8-step" for base 0.5: 0.9 -> 0.5)."""
    inflate = 0.9 / base if inflate is None else inflate
    s = _sigmoid_weight(iteration, p.in_between // 2, p.initial)
    return base * inflate * s + base * (1 - s)


def tau2_fudge(iteration: int, p: Phases, final: float = 4.0, deflate: float | None = None) -> float:
    """T: final / deflate early, final late (the "T0-step" scheme: 1 -> T0)."""
    deflate = final if deflate is None else deflate
    s = _sigmoid_weight(iteration, p.in_between // 4, p.initial)
    return (final / deflate) * s + final * (1 - s)
