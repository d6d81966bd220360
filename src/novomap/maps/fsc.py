"""Fourier shell correlation between two maps and the resolution where it crosses a threshold."""

from __future__ import annotations

import math

import torch

from novomap.maps.transform import frequency_radius


def fsc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """FSC per shell (N//2 + 1,) float64 of two cubes (N, N, N) of the same size.

    Shell i holds the Fourier voxels with round(|k|) = i, |k| in units of 1/box (RELION's shells);
    corners beyond N//2 are ignored. Shells where either map has no power get 0.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"fsc needs two cubes of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[-1]
    fa = torch.fft.rfftn(torch.as_tensor(a, dtype=torch.float64))
    fb = torch.fft.rfftn(torch.as_tensor(b, dtype=torch.float64))
    shells = torch.round(frequency_radius(n)).long()
    # the half transform holds each conjugate pair once, except the kx = 0 (and, for even N, kx = N/2)
    # planes, which hold both members: weight 2 elsewhere so that sums run over the full sphere
    weights = torch.full(fa.shape, 2.0, dtype=torch.float64)
    weights[..., 0] = 1.0
    if n % 2 == 0:
        weights[..., -1] = 1.0
    keep = shells <= n // 2
    index = shells[keep]

    def shell_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.bincount(index, weights=(weights * values)[keep], minlength=n // 2 + 1)

    cross = shell_sum((fa * fb.conj()).real)
    power_a = shell_sum(fa.abs() ** 2)
    power_b = shell_sum(fb.abs() ** 2)
    denominator = torch.sqrt(power_a * power_b)
    return torch.where(denominator > 0, cross / denominator.clamp(min=1e-300), torch.zeros_like(cross))


def resolution_at(fsc_curve: torch.Tensor, threshold: float, box: int, pixel_size_a: float) -> float:
    """Resolution (Å) where the FSC first drops below threshold, interpolated linearly between shells.

    The FSC at shell i belongs to resolution box * pixel / i. The search starts at shell 1 (shell 0
    only holds the mean, which is taken as perfectly correlated); a curve that never drops gives
    Nyquist (2 pixels); a drop already at shell 1 gives a value above box * pixel.
    """
    curve = [float(value) for value in torch.as_tensor(fsc_curve)]
    previous_value = 1.0
    for shell in range(1, len(curve)):
        value = curve[shell]
        if value < threshold:
            fraction = (previous_value - threshold) / (previous_value - value)
            position = shell - 1 + fraction
            return box * pixel_size_a / position if position > 0 else math.inf
        previous_value = value
    return box * pixel_size_a / max(len(curve) - 1, 1)
