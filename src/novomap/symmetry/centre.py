"""Where the symmetry axes cross: refine the centre of a map that is already turned to its group's axes.

The alignment (symmetry.align) re-centres a map on its centre of mass and then only turns it. The
centre of mass of a de novo map need not lie on its axes: noise and alignment errors move it by
a fraction of a pixel. Averaging copies about axes that miss by half a pixel blurs every subunit,
and most at high resolution. On a C7 ring at 3 Å/px the FSC 0.5 to the truth went from 7.9 to
7.4 Å with the centre refined here (benchmarks/results/2026-11-30-symmetry-centre.md).

The residual of imposing G on the map moved by d (xyz px, in the aligned frame),

    r(d) = || (1/|G|) sum_g g.T_d A - T_d A ||^2,   with g.T_d A = T_{g d} (g.A),

needs each rotated copy g.A only once: in Fourier space, each moved copy is a phase ramp on its
transform. A pattern search on d (steps 1 px down to 1/8 px) then costs a few hundred products of
transforms. Shifts along a Cn axis leave r unchanged, so the search does not move them.
"""

from __future__ import annotations

import math

import torch

from novomap.maps.transform import rfft_frequencies, rotate_volume
from novomap.symmetry.groups import PointGroup

START_STEP_PX = 1.0
MIN_STEP_PX = 0.125
MAX_SHIFT_PX = 3.0  # the centre of mass is off by a fraction of a pixel; never move further than this
# a move must lower the residual by this fraction: along a Cn axis r is flat up to rounding, and the map
# should not wander there
IMPROVEMENT = 1e-6
_DIRECTIONS = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)


def _axis_wave_numbers(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kx, ky, kz) of an rfftn grid of an (N, N, N) zyx volume, in cycles per box, each 1D:
    (N//2+1,), (N,), (N,)."""
    kz, ky, kx = rfft_frequencies(n)
    return (kx.flatten() * n).float(), (ky.flatten() * n).float(), (kz.flatten() * n).float()


def symmetry_residual_fn(aligned: torch.Tensor, group: PointGroup):
    """r(d) of the module doc for a map (N, N, N) already turned to the group's standard axes:
    a function of d (3,) xyz px -> relative residual (0 = symmetric about axes through the box centre + d)."""
    n = aligned.shape[-1]
    volume = aligned.to(torch.float32)
    copies = torch.fft.rfftn(rotate_volume(volume, group.operators.to(torch.float32)), dim=(-3, -2, -1))  # (G, N, N, N//2+1)
    own = torch.fft.rfftn(volume)
    kx, ky, kz = _axis_wave_numbers(n)
    power = float(own.abs().square().double().sum())
    operators = group.operators.to(torch.float32)

    def ramp(shift_xyz_px: torch.Tensor) -> torch.Tensor:
        # a shift's phase ramp is separable: an outer product of three 1D ramps costs a fraction of
        # the sines and cosines of the whole grid (the pattern search evaluates thousands)
        def axis(k: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return torch.polar(torch.ones_like(k), (-2 * math.pi / n) * k * s)

        zy = axis(kz, shift_xyz_px[2])[:, None] * axis(ky, shift_xyz_px[1])[None, :]
        return zy[:, :, None] * axis(kx, shift_xyz_px[0])[None, None, :]

    def residual(shift_xyz_px: torch.Tensor) -> float:
        d = shift_xyz_px.to(torch.float32)
        average = torch.zeros_like(own)
        for copy, g in zip(copies, operators):  # one copy at a time: memory stays that of the copies
            average += copy * ramp(g @ d)  # the copy of the moved map is the copy moved by g d
        difference = average / len(copies) - own * ramp(d)
        return float(difference.abs().square().double().sum()) / max(power, 1e-30)

    return residual


def refine_centre(aligned: torch.Tensor, group: PointGroup) -> torch.Tensor:
    """The shift d (3,) xyz px, at most MAX_SHIFT_PX, that makes the aligned map (N, N, N) most symmetric
    about the standard axes through the box centre (pattern search); zeros for C1."""
    shift = torch.zeros(3, dtype=torch.float64)
    if group.order == 1:
        return shift
    residual = symmetry_residual_fn(aligned, group)
    best = residual(shift)
    step = START_STEP_PX
    while step >= MIN_STEP_PX:
        moved = True
        while moved:
            moved = False
            for direction in _DIRECTIONS:
                trial = shift + step * direction
                if float(trial.norm()) > MAX_SHIFT_PX:
                    continue
                value = residual(trial)
                if value < best * (1 - IMPROVEMENT):
                    best, shift, moved = value, trial, True
        step /= 2
    return shift
