"""Fourier windows (the pixels images are compared on) and shift phases (vdam-spec 1.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from novomap.physics.fourier import image_frequencies, irfft_image, rfft_image
from novomap.physics.window import FourierWindow, fourier_window, shift_phases, window_prefix


@pytest.mark.parametrize("box, size", [(64, 64), (64, 28), (64, 12), (50, 30)])
def test_window_pixels(box, size):
    w = fourier_window(box, size)
    kx, ky = w.kx.numpy().astype(int), w.ky.numpy().astype(int)
    radius = np.hypot(kx, ky)
    assert (np.rint(radius) < size / 2).all()
    assert (w.shell.numpy() == np.rint(radius)).all()
    pairs = set(zip(kx.tolist(), ky.tolist()))
    assert len(pairs) == w.n_pixels  # each frequency once
    assert all((-x, -y) not in pairs for x, y in pairs if (x, y) != (0, 0))  # never both k and -k
    # exact count: the full-plane lattice points of the disc, each conjugate pair once, DC once
    k = np.arange(-box // 2, box - box // 2)
    full = np.rint(np.hypot(*np.meshgrid(k, k))) < size / 2
    assert w.n_pixels == (int(full.sum()) + 1) // 2
    # round(|k|) < size/2 <=> |k| < size/2 - 1/2: about half a disc of that radius (~ pi (size/2)^2 / 2)
    assert w.n_pixels == pytest.approx(math.pi * (size / 2 - 0.5) ** 2 / 2, rel=0.05)
    assert w.n_pixels == pytest.approx(math.pi * (size / 2) ** 2 / 2, rel=0.2)
    # take() picks those pixels of an rfft array
    ky_grid, kx_grid = image_frequencies(box)
    assert torch.equal(w.take(kx_grid.double()), w.kx)
    assert torch.equal(w.take(ky_grid.double()), w.ky)


def test_window_without_dc():
    w = fourier_window(32, 32, include_dc=False)
    assert w.n_pixels == fourier_window(32, 32).n_pixels - 1
    assert int(w.shell.min()) == 1


def _all_pixels_window(n: int) -> FourierWindow:
    """A window holding every rfft pixel (also the corners beyond N/2 and the redundant column half)."""
    ky, kx = image_frequencies(n)
    flat = torch.arange(ky.numel())
    shell = torch.round(torch.sqrt(kx * kx + ky * ky)).long().reshape(-1)
    return FourierWindow(n, n, flat, kx.reshape(-1).double(), ky.reshape(-1).double(), shell)


@pytest.mark.parametrize("shift", [(3, 0), (0, -5), (4, 7)])
def test_shift_phases_move_content_by_plus_s(shift):
    n = 32
    delta = torch.zeros(1, n, n, dtype=torch.float64)
    delta[0, n // 2, n // 2] = 1.0
    # exact: on every rfft pixel the phases move the delta to centre + s
    w = _all_pixels_window(n)
    moved = (rfft_image(delta).reshape(1, -1) * shift_phases(w, torch.tensor([shift], dtype=torch.float64))).reshape(1, n, n // 2 + 1)
    image = irfft_image(moved, n)[0]
    expected = torch.zeros(n, n, dtype=torch.float64)
    expected[n // 2 + shift[1], n // 2 + shift[0]] = 1.0  # numpy order (y, x)
    torch.testing.assert_close(image, expected, atol=1e-12, rtol=0)
    # through the full-size window (disc, redundant half restored by symmetry): the peak moves by +s
    w = fourier_window(n, n)
    values = w.take(rfft_image(delta)) * shift_phases(w, torch.tensor([shift], dtype=torch.float64))
    spectrum = torch.zeros(1, n * (n // 2 + 1), dtype=torch.complex128)
    spectrum[:, w.flat_index] = values
    spectrum = spectrum.reshape(1, n, n // 2 + 1)
    spectrum[0, n - torch.arange(1, n // 2), 0] = spectrum[0, torch.arange(1, n // 2), 0].conj()
    image = irfft_image(spectrum, n)[0]
    peak = int(torch.argmax(image))
    assert divmod(peak, n) == (n // 2 + shift[1], n // 2 + shift[0])


def test_shift_phases_batch_shape():
    w = fourier_window(16, 16)
    phases = shift_phases(w, torch.zeros(3, 5, 2))
    assert phases.shape == (3, 5, w.n_pixels)
    assert phases.dtype == torch.complex128
    torch.testing.assert_close(phases, torch.ones_like(phases))


@pytest.mark.parametrize("box, size, smaller", [(64, 64, 30), (64, 46, 12), (50, 30, 29)])
def test_a_smaller_window_is_a_prefix_of_a_larger_one(box, size, smaller):
    larger, small = fourier_window(box, size, by_shell=True), fourier_window(box, smaller, by_shell=True)
    assert (torch.diff(larger.shell) >= 0).all()  # shell by shell
    n = window_prefix(larger, smaller)
    assert n == small.n_pixels
    assert torch.equal(larger.flat_index[:n], small.flat_index)
    assert torch.equal(larger.kx[:n], small.kx) and torch.equal(larger.ky[:n], small.ky)
    assert window_prefix(larger, size) == larger.n_pixels
    # the same pixels as in raster order, which is not one of prefixes
    raster = fourier_window(box, size)
    assert not raster.by_shell and torch.equal(raster.flat_index.sort().values, larger.flat_index.sort().values)
    with pytest.raises(ValueError):
        window_prefix(raster, smaller)
