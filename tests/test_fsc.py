"""Fourier shell correlation and the resolution where it crosses a threshold."""

from __future__ import annotations

import math

import pytest
import torch

from novomap.maps.fsc import fsc, resolution_at
from novomap.maps.transform import lowpass


def test_map_against_itself_is_one() -> None:
    volume = torch.randn(32, 32, 32)
    curve = fsc(volume, volume)
    assert curve.shape == (17,)
    assert torch.allclose(curve, torch.ones(17, dtype=torch.float64), atol=1e-9)


def test_sign_and_scale() -> None:
    volume = torch.randn(24, 24, 24)
    assert torch.allclose(fsc(volume, -3.0 * volume), -torch.ones(13, dtype=torch.float64), atol=1e-9)


def test_independent_noise_is_near_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(48, 48, 48, generator=generator)
    b = torch.randn(48, 48, 48, generator=generator)
    curve = fsc(a, b)
    assert float(curve[5:].abs().max()) < 0.15  # shells with few voxels fluctuate more


def test_shells_follow_round_of_frequency_radius() -> None:
    # a map and a copy whose shell-10 content is negated: FSC -1 there, +1 elsewhere
    n = 32
    volume = torch.randn(n, n, n, dtype=torch.float64)
    spectrum = torch.fft.rfftn(volume)
    k = torch.fft.fftfreq(n, dtype=torch.float64) * n
    kx = torch.fft.rfftfreq(n, dtype=torch.float64) * n
    shells = torch.round(torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2))
    flipped = torch.fft.irfftn(torch.where(shells == 10, -spectrum, spectrum), s=volume.shape)
    curve = fsc(volume, flipped)
    assert float(curve[10]) == pytest.approx(-1.0, abs=1e-9)
    assert float(curve[9]) == pytest.approx(1.0, abs=1e-9)
    assert float(curve[11]) == pytest.approx(1.0, abs=1e-9)


def test_resolution_is_interpolated_between_shells() -> None:
    curve = torch.tensor([1.0, 0.9, 0.7, 0.3, 0.1, 0.0], dtype=torch.float64)
    # 0.5 is crossed half way between shells 2 and 3 -> shell 2.5 -> 100 px * 2 Å / 2.5
    assert resolution_at(curve, 0.5, 100, 2.0) == pytest.approx(80.0)
    assert resolution_at(curve, 0.143, 100, 2.0) == pytest.approx(200.0 / (3 + (0.3 - 0.143) / 0.2))


def test_resolution_when_never_crossing_is_nyquist() -> None:
    assert resolution_at(torch.ones(33, dtype=torch.float64), 0.143, 64, 1.5) == pytest.approx(3.0)


def test_resolution_when_crossing_at_the_first_shell() -> None:
    value = resolution_at(torch.tensor([1.0, 0.0, 0.0]), 0.5, 10, 1.0)
    assert value == pytest.approx(20.0)  # shell 0.5
    assert math.isinf(resolution_at(torch.tensor([1.0, -1.0]), 1.0, 10, 1.0))


def test_low_pass_copy_gives_its_cutoff() -> None:
    generator = torch.Generator().manual_seed(1)
    volume = torch.randn(64, 64, 64, generator=generator)
    filtered = lowpass(volume, 2.0, 10.0, edge_shells=0.5)  # cutoff shell 64 * 2 / 10 = 12.8
    assert resolution_at(fsc(volume, filtered), 0.5, 64, 2.0) == pytest.approx(10.0, rel=0.06)
