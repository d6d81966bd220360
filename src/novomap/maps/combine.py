"""Combine estimates of the same map: an equal-variance sum, put on a reference's greyscale.

Each estimate is reduced to zero mean and unit standard deviation inside a mask and the results are
added: every estimate gets the same say over the masked volume, whatever its greyscale, and within
that each frequency counts by its share of the estimate's power. Where the estimates' errors are
partly independent the sum is closer to the truth than either (the FSC with the truth rises), which is
what final_map.final_map measures. The sum is then given, shell by shell, the RMS amplitude of a
reference map: the FSC does not depend on it (one factor per shell), it only puts the result on the
reference's greyscale.
"""

from __future__ import annotations

import torch

from novomap.maps.transform import frequency_radius


def equal_variance_sum(maps: list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of maps (N, N, N), each masked (soft mask (N, N, N) with values in [0, 1]; None: the whole
    box), less its mean and scaled to unit standard deviation, both over the voxels where mask > 0.5.
    Maps constant there are left out (all of them: zeros)."""
    if not maps:
        raise ValueError("need at least one map")
    mask = torch.ones_like(maps[0], dtype=torch.float64) if mask is None else mask.double()
    inside = mask > 0.5
    total = torch.zeros_like(mask)
    for volume in maps:
        masked = volume.double() * mask
        # less a constant: only the zero frequency changes, so maps that agree stay proportional
        centred = masked - masked[inside].mean()
        spread = centred[inside].std()
        if float(spread) > 0.0:  # a map constant inside the mask holds no structure: no say
            total += centred / spread
    return total


def shell_rms(volume: torch.Tensor) -> torch.Tensor:
    """RMS Fourier amplitude per shell round(|k|) (1/box units; corners in the last shell) -> (N//2+1,)."""
    n = volume.shape[-1]
    shells = torch.round(frequency_radius(n)).long().clamp(max=n // 2).flatten()
    spectrum = torch.fft.rfftn(volume.double()).flatten()
    power = torch.bincount(shells, weights=spectrum.abs().square(), minlength=n // 2 + 1)
    return torch.sqrt(power / torch.bincount(shells, minlength=n // 2 + 1).clamp(min=1))


def match_shell_amplitudes(volume: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The volume (N, N, N) rescaled shell by shell to the reference's RMS amplitude, with the
    reference's mean -> float64 (shells where the volume is empty stay empty)."""
    n = volume.shape[-1]
    shells = torch.round(frequency_radius(n)).long().clamp(max=n // 2)
    own = shell_rms(volume)
    scale = torch.where(own > 0, shell_rms(reference) / own.clamp(min=1e-300), torch.zeros_like(own))
    spectrum = torch.fft.rfftn(volume.double()) * scale[shells]
    spectrum[0, 0, 0] = torch.fft.rfftn(reference.double())[0, 0, 0]  # the reference's mean, sign included
    return torch.fft.irfftn(spectrum, s=(n, n, n))


def splice_shells(low: torch.Tensor, high: torch.Tensor, fade_from: float, fade_to: float) -> torch.Tensor:
    """low's Fourier components below radius fade_from, high's beyond fade_to, a cosine cross-fade in
    between (radii in 1/box units) -> (N, N, N) float64. Both maps (N, N, N) on the same grid.

    high is first scaled by one factor, its RMS amplitude over the cross-fade's shells against low's,
    so that the two meet on one greyscale whatever their reconstructions' normalisation.
    """
    n = low.shape[-1]
    radius = frequency_radius(n)
    low_ft, high_ft = torch.fft.rfftn(low.double()), torch.fft.rfftn(high.double())
    band = (radius >= fade_from) & (radius <= fade_to)
    high_power = high_ft.abs().square()[band].sum()
    scale = torch.sqrt(low_ft.abs().square()[band].sum() / high_power) if float(high_power) > 0 else torch.ones((), dtype=torch.float64)
    t = ((radius - fade_from) / max(fade_to - fade_from, 1e-9)).clamp(0, 1)
    keep_low = 0.5 * (1 + torch.cos(torch.pi * t))  # 1 below fade_from, 0 beyond fade_to
    return torch.fft.irfftn(low_ft * keep_low + high_ft * scale * (1 - keep_low), s=(n, n, n))
