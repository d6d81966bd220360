"""RELION's Fourier conventions (vdam-spec 1.3): normalisation, centring, central slices, shells."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from novomap.physics.fourier import (
    centred_ft_to_volume,
    centred_radius,
    hermitian_partner,
    hermitian_sum_at,
    image_frequencies,
    irfft_image,
    power_spectrum_images,
    rfft_image,
    rfft_shells,
    shell_average,
    volume_to_centred_ft,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", [32, 33])
def test_rfft_round_trip(n):
    images = torch.randn(3, n, n, generator=_gen(1), dtype=torch.float64)
    spectra = rfft_image(images)
    assert spectra.shape == (3, n, n // 2 + 1)
    torch.testing.assert_close(irfft_image(spectra, n), images, atol=1e-12, rtol=0)


def test_normalisation_constant_and_centre_delta():
    n = 24
    constant = torch.full((n, n), 2.5, dtype=torch.float64)
    f = rfft_image(constant)
    assert complex(f[0, 0]) == pytest.approx(2.5, abs=1e-12)
    assert float(f.abs().flatten()[1:].max()) < 1e-12
    delta = torch.zeros(n, n, dtype=torch.float64)
    delta[n // 2, n // 2] = 1.0
    torch.testing.assert_close(rfft_image(delta), torch.full((n, n // 2 + 1), 1.0 / n**2, dtype=torch.complex128), atol=1e-15, rtol=0)


@pytest.mark.parametrize("shift", [(3, 0), (-2, 5), (7, -4)])
def test_shifted_delta_has_phase_minus_2pi_k_s(shift):
    n = 32
    sx, sy = shift
    delta = torch.zeros(n, n, dtype=torch.float64)
    delta[n // 2 + sy, n // 2 + sx] = 1.0  # numpy order (y, x)
    ky, kx = (k.double() for k in image_frequencies(n))
    expected = torch.exp(-2j * math.pi * (kx * sx + ky * sy) / n) / n**2
    torch.testing.assert_close(rfft_image(delta), expected.to(torch.complex128), atol=1e-14, rtol=0)


def test_image_frequencies_layout():
    ky, kx = image_frequencies(8)
    assert ky[:, 0].tolist() == [0, 1, 2, 3, -4, -3, -2, -1]
    assert kx[0].tolist() == [0, 1, 2, 3, 4]


def _blob_volume(n: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    axis = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.zeros(n, n, n, dtype=torch.float64)
    for _ in range(5):
        c = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * n / 2
        vol += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 2.0**2))
    return vol + 0.1 * torch.randn(n, n, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("pad", [1, 2])
def test_central_slice_equals_projection_transform(pad):
    n = 16
    m = pad * n
    vol = _blob_volume(n, 2)
    f3 = volume_to_centred_ft(vol, pad)
    assert f3.shape == (m, m, m)
    projection = vol.sum(0)  # numpy order (z, y, x): integrate along z
    f2 = rfft_image(projection)  # (n, n//2+1), ky in FFT order
    ky, kx = image_frequencies(n)
    ky, kx = ky.long(), kx.long()
    keep = kx < n // 2  # kx = n/2 would sit at padded index m//2 + pad*n/2 = m for pad 1
    iy = m // 2 + pad * ky[keep]
    ix = m // 2 + pad * kx[keep]
    slice_values = f3[m // 2, iy, ix]
    torch.testing.assert_close(slice_values, f2[keep], atol=1e-12, rtol=0)


@pytest.mark.parametrize("pad", [1, 2])
def test_centred_ft_to_volume_inverts(pad):
    vol = _blob_volume(16, 3)
    torch.testing.assert_close(centred_ft_to_volume(volume_to_centred_ft(vol, pad), 16), vol, atol=1e-12, rtol=0)


def test_hermitian_partner_maps_i_to_minus_i():
    m = 8
    grid = torch.randn(m, m, m, generator=_gen(4), dtype=torch.float64)
    partner = hermitian_partner(grid)
    for i, j, k in [(0, 0, 0), (1, 2, 3), (4, 4, 4), (7, 0, 5), (3, 6, 1)]:
        assert float(partner[i, j, k]) == float(grid[(m - i) % m, (m - j) % m, (m - k) % m])
    # the transform of a real map is Hermitian: F(-k) = conj F(k), away from the unpartnered index 0
    f = volume_to_centred_ft(_blob_volume(8, 5), 1)
    inner = (slice(1, None),) * 3
    torch.testing.assert_close(hermitian_partner(f)[inner].conj(), f[inner], atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [16, 64, 50])
def test_rfft_shells_count_each_frequency_once(n):
    shells = rfft_shells(n)
    ky, kx = image_frequencies(n)
    assert bool((shells[(kx == 0) & (ky < 0)] == -1).all())
    # full transform: all n x n integer frequencies in [-n/2, n/2)
    k = np.fft.fftfreq(n, 1.0 / n)
    full = np.rint(np.hypot(*np.meshgrid(k, k, indexing="ij"))).astype(int)
    full_counts = np.bincount(full.ravel())
    half_counts = np.bincount(shells[shells >= 0].numpy().ravel(), minlength=full_counts.size)
    assert half_counts[0] == full_counts[0] == 1
    # every non-zero frequency below Nyquist has its conjugate partner in the full transform only
    for s in range(1, n // 2):
        assert 2 * half_counts[s] == full_counts[s], s


def test_shell_average():
    values = torch.tensor([1.0, 3.0, 5.0, 7.0, 100.0], dtype=torch.float64)
    shells = torch.tensor([0, 0, 1, 1, 5])
    torch.testing.assert_close(shell_average(values, shells, 3), torch.tensor([2.0, 6.0, 0.0], dtype=torch.float64))


def test_centred_radius():
    r = centred_radius(8, pad=2)
    assert float(r[4, 4, 4]) == 0.0
    assert float(r[4, 4, 6]) == pytest.approx(1.0)
    assert float(r[0, 4, 4]) == pytest.approx(2.0)


def test_power_spectrum_of_white_noise():
    # F(k) = (1/N^2) sum_r f(r) e^{...}: E|F(k)|^2 = N^2 s2 / N^4 = s2 / N^2; RELION's power is mean |F|^2 / 2
    n, s2 = 32, 2.25
    noise = math.sqrt(s2) * torch.randn(400, n, n, generator=_gen(6), dtype=torch.float64)
    power = power_spectrum_images(rfft_image(noise), n)
    assert power.shape == (400, n // 2 + 1)
    mean_power = power.mean(0)
    expected = s2 / (2 * n * n)
    # shells 1..n/2-1 hold >= 3 independent pixels each, 400 images: relative error < ~6 %
    rel = (mean_power[1 : n // 2] / expected - 1).abs()
    assert float(rel.max()) < 0.08, rel
    assert float(mean_power[1:].mean() / expected) == pytest.approx(1.0, abs=0.02)


def test_power_is_the_squared_magnitude_of_complex_real_and_conjugated_tensors():
    from novomap.physics.fourier import power

    z = torch.tensor([3 + 4j, -1 - 2j, 0j], dtype=torch.complex64)
    assert torch.equal(power(z), torch.tensor([25.0, 5.0, 0.0]))
    assert torch.equal(power(z.conj()), power(z))  # a conjugate view: same squared magnitudes
    assert torch.equal(power(torch.tensor([-2.0, 3.0])), torch.tensor([4.0, 9.0]))


@pytest.mark.parametrize("n,pad", [(16, 1), (16, 2), (15, 1), (9, 3)])
def test_centred_transforms_are_the_padded_shifted_ones(n, pad):
    """The transforms by their definition: zero-padded to (pad N)^3 with the map's centre at M//2,
    ifftshift, FFT, fftshift (and back, the central N^3): the same values to the last bit."""
    m = pad * n
    vol = _blob_volume(n, 6)
    padded = torch.zeros((m, m, m), dtype=torch.float64)
    start = m // 2 - n // 2
    padded[start : start + n, start : start + n, start : start + n] = vol
    expected = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(padded)) / (n * n))
    assert torch.equal(volume_to_centred_ft(vol, pad), expected)
    spectrum = expected * (1 + 0.5j)
    back = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spectrum)).real) * (n * n)
    result = centred_ft_to_volume(spectrum, n)
    assert torch.equal(result, back[start : start + n, start : start + n, start : start + n]) and result.is_contiguous()


def test_hermitian_sum_at_is_the_symmetrised_grid_there():
    from novomap.physics.projection import hermitian_symmetrise

    m = 10
    data = torch.randn((m, m, m), generator=_gen(7), dtype=torch.complex128)
    weight = torch.rand((m, m, m), generator=_gen(8), dtype=torch.float64)
    full_data, full_weight = hermitian_symmetrise(data, weight)
    index = torch.tensor([0, 1, 57, 555, 999, 123])  # index 0 (no partner) and the centre included
    assert torch.equal(hermitian_sum_at(data, index), full_data.reshape(-1)[index])
    assert torch.equal(hermitian_sum_at(weight, index), full_weight.reshape(-1)[index])
