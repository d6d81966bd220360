"""The VDAM map update (vdam-spec 4.2) worked by hand on small grids, and the model parameters of spec 3.1 / 4.3."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from novomap.model.params import class_image_sizes, image_sizes, resolution_shell, spectral_snr, update_sigma2, update_with_momentum
from novomap.physics.fourier import centred_radius
from novomap.vdam.update import fisher_weight_floor, inside_index, map_memory_halves, vdam_update, vdam_update_at

M = 10  # grid side; shells 0..8 in the corners
CURRENT_SIZE = 8  # inside: |k| < 4


def _grid():
    radius = centred_radius(M)
    shells = torch.round(radius).long()
    inside = radius < CURRENT_SIZE / 2
    return shells, inside


def _phase(seed: int) -> torch.Tensor:
    """exp(i phi) with random phases (modulus exactly 1), (M, M, M) complex128."""
    phi = torch.rand((M, M, M), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 * math.pi
    return torch.polar(torch.ones_like(phi), phi)


def _fresh_moments():
    return torch.zeros((2, M, M, M), dtype=torch.complex128), torch.ones((M, M, M), dtype=torch.float64)


def test_identical_halves_first_and_second_update_by_hand():
    """gradient_h = W_h (target - F) with W_h >= 1, both halves equal.

    Step 1: d_h = g_h / max(1, W_h) = target - F.
    Step 2 (first call, m == 0): m_h = d_h.
    Step 3: v = 0.999 * 1 + 0.001 * |d_1 - d_0|^2 / (...) = 0.999.
    Step 4: G = (m_0 + m_1)/2 / sqrt(v) = (target - F) / sqrt(0.999).
    Step 5: n(s) = mean |m_0 - m_1| = 0 -> snr = inf -> f = 1 in every shell.
    Step 6: F' = F + eta (1 * G - 0 * F) = F + eta (target - F) / sqrt(0.999).
    """
    shells, inside = _grid()
    gen = torch.Generator().manual_seed(1)
    reference = 2.0 * _phase(2)
    target = torch.randn((M, M, M), generator=gen, dtype=torch.complex128)
    weight = 1.0 + 3.0 * torch.rand((2, M, M, M), generator=gen, dtype=torch.float64)
    gradient = weight * (target - reference)
    m1, v = _fresh_moments()
    eta, tau = 0.9, 1.0
    updated = vdam_update(reference, gradient, weight, m1, v, shells, inside, eta, tau)

    assert torch.allclose(v[inside], torch.full_like(v[inside], 0.999), rtol=0, atol=1e-15)
    assert torch.all(v[~inside] == 1.0)  # the moments outside the ball are untouched
    assert torch.allclose(m1[:, inside], (target - reference)[inside].expand(2, -1), atol=1e-10)
    assert torch.all(m1[:, ~inside] == 0)
    expected = reference + eta * (target - reference) / math.sqrt(0.999)
    assert torch.allclose(updated[inside], expected[inside], rtol=0, atol=1e-10)
    # i.e. almost exactly eta of the way to the target (sqrt(0.999) = 0.99950)
    assert torch.allclose(updated[inside], (reference + eta * (target - reference))[inside], atol=5e-4 * 3 * eta * 4)
    # step 7: beyond current_size/2 the reference is zero
    assert torch.all(updated[~inside] == 0)

    # second call from the updated reference, same target:
    # d = target - F1;  m <- 0.9 m + 0.1 d;  v <- 0.999 * 0.999;  G = m / sqrt(v);  f = 1
    d2 = target - updated
    gradient2 = weight * d2
    m_before = m1.clone()
    again = vdam_update(updated, gradient2, weight, m1, v, shells, inside, 0.5, 4.0)
    m_expected = 0.9 * m_before + 0.1 * d2
    assert torch.allclose(m1[:, inside], m_expected[:, inside], atol=1e-10)
    assert torch.allclose(v[inside], torch.full_like(v[inside], 0.999 * 0.999), rtol=0, atol=1e-15)
    expected2 = updated + 0.5 * m_expected[0] / math.sqrt(0.999**2)
    assert torch.allclose(again[inside], expected2[inside], atol=1e-10)


def test_weight_below_one_does_not_amplify_the_gradient():
    """d = g / max(1, W): where W < 1 the raw gradient is used as it is."""
    shells, inside = _grid()
    reference = _phase(3)
    target = 3.0 * _phase(4)
    weight = torch.full((2, M, M, M), 0.25, dtype=torch.float64)
    gradient = weight * (target - reference)  # d = 0.25 (target - F), not (target - F)
    m1, v = _fresh_moments()
    updated = vdam_update(reference, gradient, weight, m1, v, shells, inside, 1.0, 1.0)
    expected = reference + 0.25 * (target - reference) / math.sqrt(0.999)
    assert torch.allclose(updated[inside], expected[inside], atol=1e-10)


def test_opposite_halves_shrink_the_reference_by_the_shell_fsc():
    """d_0 = x, d_1 = -x: G = 0 and F' = F (1 - eta (1 - f)), f = snr/(1+snr), snr = 2 T a(s) / n(s).

    |F| = 1 and |x| = 2 everywhere: a = 1, n = mean |m_0 - m_1| = 4, snr = 2 * 4 * 1 / 4 = 2 at T = 4,
    f = 2/3, so with eta = 0.5: F' = F * (1 - 0.5/3) = 5/6 F.
    """
    shells, inside = _grid()
    reference = _phase(5)
    x = 2.0 * _phase(6)
    weight = torch.full((2, M, M, M), 2.0, dtype=torch.float64)
    gradient = torch.stack([weight[0] * x, -weight[1] * x])
    m1, v = _fresh_moments()
    updated = vdam_update(reference, gradient, weight, m1, v, shells, inside, 0.5, 4.0)
    assert torch.allclose(updated[inside], (5.0 / 6.0) * reference[inside], atol=1e-10)
    assert torch.all(updated[~inside] == 0)
    # the second moment saw the full disagreement: |2x|^2 / (0 + 1e-12)
    assert torch.allclose(v[inside], 0.999 + 0.001 * 16.0 / 1e-12 * torch.ones_like(v[inside]), rtol=1e-9)


def test_partly_disagreeing_halves_numbers_written_out():
    """d_0 = y + x, d_1 = y - x with |F| = 1, |x| = 1/2, |y| = 1, T = 1, eta = 0.5.

    v = 0.999 + 0.001 * |2x|^2 / |y|^2 = 0.999 + 0.001 * 1 = 1.0  ->  G = y
    a = 1, n = |2x| = 1, snr = 2 * 1 * 1 / 1 = 2, f = 2/3
    F' = F + 0.5 (2/3 y - 1/3 F)
    """
    shells, inside = _grid()
    reference = _phase(7)
    x = 0.5 * _phase(8)
    y = _phase(9)
    weight = torch.full((2, M, M, M), 5.0, dtype=torch.float64)
    gradient = torch.stack([5.0 * (y + x), 5.0 * (y - x)])
    m1, v = _fresh_moments()
    updated = vdam_update(reference, gradient, weight, m1, v, shells, inside, 0.5, 1.0)
    assert torch.allclose(v[inside], torch.ones_like(v[inside]), atol=1e-10)
    expected = reference + 0.5 * (2.0 / 3.0 * y - 1.0 / 3.0 * reference)
    assert torch.allclose(updated[inside], expected[inside], atol=1e-10)


def test_f_is_estimated_per_shell_from_amplitudes():
    """|F| = 1/(1+s) per shell s, |x| = 1: snr(s) = T |F|(s) (amplitude, not power), f(s) = snr/(1+snr)."""
    shells, inside = _grid()
    amplitude = 1.0 / (1.0 + shells.double())
    reference = amplitude * _phase(10)
    x = _phase(11)
    weight = torch.ones((2, M, M, M), dtype=torch.float64)
    gradient = torch.stack([x, -x])
    m1, v = _fresh_moments()
    tau = 3.0
    updated = vdam_update(reference, gradient, weight, m1, v, shells, inside, 1.0, tau)
    snr = 2 * tau * amplitude / 2.0
    f = snr / (1 + snr)
    expected = reference * f  # eta = 1, G = 0: F' = F - (1 - f) F
    assert torch.allclose(updated[inside], expected[inside], atol=1e-10)
    ratio = (updated[inside] / reference[inside]).real
    assert float(ratio.max()) < 1.0  # disagreement always shrinks the map
    # smaller amplitude (higher shell) -> smaller f -> stronger shrinkage
    by_shell = {int(s): float(r) for s, r in zip(shells[inside].tolist(), ratio.tolist())}
    assert all(by_shell[s] > by_shell[s + 1] for s in range(0, 3))


def test_first_moment_blend_uses_beta1_on_the_second_call():
    shells, inside = _grid()
    reference = _phase(12)
    d_first, d_second = _phase(13), 0.3 * _phase(14)
    w = torch.ones((2, M, M, M), dtype=torch.float64)
    m1, v = _fresh_moments()
    vdam_update(reference, torch.stack([d_first, d_first]), w, m1, v, shells, inside, 0.1, 1.0)
    vdam_update(reference, torch.stack([d_second, -d_second]), w, m1, v, shells, inside, 0.1, 1.0)
    assert torch.allclose(m1[0, inside], (0.9 * d_first + 0.1 * d_second)[inside], atol=1e-10)
    assert torch.allclose(m1[1, inside], (0.9 * d_first - 0.1 * d_second)[inside], atol=1e-10)
    # v: first call adds 0, second 0.001 * |2 d2|^2 / |0|^2-ish: 0.999 * 0.999 + 0.001 * 4 * 0.09 / 1e-12
    assert torch.allclose(v[inside], (0.999 * 0.999 + 0.001 * 0.36 / 1e-12) * torch.ones_like(v[inside]), rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# model/params


def test_resolution_shell_is_last_shell_before_ssnr_drops_below_one():
    ssnr = torch.tensor([50.0] * 12 + [0.5] * 21, dtype=torch.float64)
    assert resolution_shell(ssnr) == 11
    # a later recovery above 1 does not count: the first drop decides
    ssnr2 = ssnr.clone()
    ssnr2[15:18] = 5.0
    assert resolution_shell(ssnr2) == 11
    # never below minres_map = 5 shells
    low = torch.tensor([50.0, 3.0, 2.0, 0.9] + [0.1] * 29, dtype=torch.float64)
    assert resolution_shell(low) == 5
    # shell 0 (the DC term) does not count: SSNR < 1 there changes nothing
    dc = ssnr.clone()
    dc[0] = 0.0
    assert resolution_shell(dc) == 11


def test_image_sizes_tutorial_numbers():
    """Spec 3.1: D = 200 Å, 64 px, 3.54 Å/px: coarse 12 px at 30 deg, 22 px at 15 deg, 42 px at 7.5 deg;
    current_size = 2 (res + 10) capped at the box."""
    box, pixel, diameter = 64, 3.54, 200.0
    assert image_sizes(30, box, 30.0, diameter, pixel) == (64, 12)
    assert image_sizes(30, box, 15.0, diameter, pixel) == (64, 22)
    assert image_sizes(30, box, 7.5, diameter, pixel) == (64, 42)
    # iteration 1 of the tutorial: maxres = round(0.07 * 64) = 4 shells -> 28 px, ini_high 56.6 Å
    assert image_sizes(4, box, 30.0, diameter, pixel) == (28, 12)
    assert image_sizes(11, box, 30.0, diameter, pixel) == (42, 12)
    assert image_sizes(22, box, 30.0, diameter, pixel)[0] == 64  # 2 * 32 = box: capped
    # the coarse size never exceeds the current size
    assert image_sizes(5, box, 7.5, diameter, pixel) == (30, 30)


def test_class_image_sizes_narrow_a_class_by_two_pixels_per_shell_it_trails():
    # best class at shell 22 (current_size 64), one 9 shells behind: 2 (13 + 10) = 46 px, its own
    # resolution plus RELION's 10 shells, as current_size is for the best class
    assert class_image_sizes(22, [22, 13, 22], 64) == [64, 46, 64]
    # the window is capped at the box: the best class keeps current_size, the others never exceed it
    assert class_image_sizes(30, [30, 25], 64) == [64, 64]
    assert class_image_sizes(30, [30, 20], 64) == [64, 60]
    # scored starts and restarts may set the run's shell apart from the classes': the gap still counts
    assert class_image_sizes(12, [20, 15], 44) == [44, 34]
    assert class_image_sizes(16, [16], 52) == [52]


def test_update_sigma2_with_momentum_by_hand():
    old = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]], dtype=torch.float64)
    noise = torch.tensor([[8.0, 16.0, 0.0, 48.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    weight = torch.tensor([2.0, 0.0], dtype=torch.float64)  # group 2 not seen in this batch
    pixels = torch.tensor([1.0, 4.0, 8.0, 12.0], dtype=torch.float64)
    new = update_sigma2(old, noise, weight, pixels, 0.9)
    # estimate = noise / (2 * sum_w * N_pix) = [2, 1, 0, 1]; new = 0.9 old + 0.1 estimate
    assert torch.allclose(new[0], torch.tensor([0.9 + 0.2, 1.8 + 0.1, 2.7 + 0.0, 3.6 + 0.1], dtype=torch.float64))
    assert torch.allclose(new[1], old[1])  # an unseen group keeps its spectrum
    # values below 1e-14 take the previous shell's value
    f64 = dict(dtype=torch.float64)
    # shell 1: 0.5 * 1e-16 + 0.5 * 0 < 1e-14 -> shell 0's new value 0.5 * 1 + 0.5 * 1 = 1
    tiny = update_sigma2(torch.tensor([[1.0, 1e-16, 1.0]], **f64), torch.tensor([[2.0, 0.0, 2.0]], **f64), torch.tensor([1.0], **f64), torch.ones(3, **f64), 0.5)
    assert torch.allclose(tiny[0], torch.tensor([1.0, 1.0, 1.0], **f64))


def test_update_with_momentum_and_ssnr():
    assert float(update_with_momentum(torch.tensor(10.0), torch.tensor(0.0), 0.9)) == pytest.approx(9.0)
    shells, _ = _grid()
    w = torch.full((M, M, M), 2.0, dtype=torch.float64)
    tau2 = torch.linspace(1.0, 0.1, 9, dtype=torch.float64)
    ssnr = spectral_snr(w, tau2, shells, 4.0, 1)
    assert torch.allclose(ssnr, 4.0 * 2.0 * tau2)  # pad^3 T <W_0> tau2
    assert torch.allclose(spectral_snr(w, tau2, shells, 4.0, 2), 8 * 4.0 * 2.0 * tau2)


def test_map_memory_matches_the_variance_the_first_moments_keep():
    """Drive vdam_update with independent unit-variance gradients: the first moments' variance at
    steady state is 1 / (the mini-batches map_memory_halves counts per half), measured over voxels."""
    shells, inside = _grid()
    moment1, moment2 = _fresh_moments()
    reference = torch.zeros((M, M, M), dtype=torch.complex128)
    weight = torch.ones((2, M, M, M), dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    for _ in range(300):
        gradient = torch.randn((2, M, M, M), generator=generator, dtype=torch.complex128)
        vdam_update(reference, gradient, weight, moment1, moment2, shells, inside, 0.0, 4.0)
    measured = float(moment1[:, inside].abs().square().mean())  # E|d|^2 = 1 for randn complex
    batches_per_half = map_memory_halves(1000, 10**9) / 2
    assert measured == pytest.approx(1.0 / batches_per_half, rel=0.08)


def test_map_memory_never_exceeds_the_data_set():
    assert map_memory_halves(1000, 10**9) == pytest.approx(2 * 19)
    assert map_memory_halves(1000, 2000) == pytest.approx(4.0)  # the whole data set, both halves
    assert map_memory_halves(1455, 1455) == pytest.approx(2.0)  # a mini-batch holding every particle


def test_resolution_estimate_reads_the_map_memory_only_in_the_final_phase():
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.iterate import map_information

    config = VdamConfig(n_iter=100)  # final phase: iterations 81-100 (and any past n_iter)
    assert map_information(30, 200, 2000, config) == 1.0
    assert map_information(80, 1000, 2000, config) == 1.0
    assert map_information(81, 1000, 2000, config) == pytest.approx(map_memory_halves(1000, 2000))
    assert map_information(90, 1000, 2000, dataclasses.replace(config, accumulated_ssnr=False)) == 1.0


def test_weight_floor_is_one_for_normalised_images_and_follows_their_scale_otherwise():
    for std in (0.5, 0.97, 1.0, 1.3, 2.0, float("nan"), 0.0):
        assert fisher_weight_floor(std) == 1.0
    assert fisher_weight_floor(1000.0) == pytest.approx(1e-6)
    assert fisher_weight_floor(0.1) == pytest.approx(100.0)


@pytest.mark.parametrize("scale", [1000.0, 0.01])
def test_the_update_of_scaled_images_is_the_scaled_update(scale):
    """Images x s make the reference s F, gradients g / s and weights W / s^2 (sigma^2 grows by s^2);
    with the floor 1 / s^2 the update is s times the update of the unscaled images, including the
    voxels whose weight is under the floor. With the floor left at 1 it is not."""
    shells, inside = _grid()
    gen = torch.Generator().manual_seed(7)
    reference = 2.0 * _phase(8)
    target = torch.randn((M, M, M), generator=gen, dtype=torch.complex128)
    weight = 3.0 * torch.rand((2, M, M, M), generator=gen, dtype=torch.float64)  # a third under 1
    gradient = weight * (target - reference) + 0.3 * torch.randn((2, M, M, M), generator=gen, dtype=torch.complex128)
    results = []
    for s, floor in ((1.0, 1.0), (scale, fisher_weight_floor(scale)), (scale, 1.0)):
        m1, v = _fresh_moments()
        first = vdam_update(s * reference, gradient / s, weight / s**2, m1, v, shells, inside, 0.7, 1.0, floor)
        second = vdam_update(first, gradient / s, weight / s**2, m1, v, shells, inside, 0.7, 1.0, floor)
        results.append(second / s)
    assert torch.allclose(results[1], results[0], rtol=1e-9, atol=1e-9)
    if scale > 1:  # smaller images only raise the weights, further above a floor of 1
        assert not torch.allclose(results[2], results[0], rtol=1e-3, atol=1e-3)


def test_update_from_the_sums_inside_alone_is_the_full_update():
    """vdam_update_at, given the sums at the voxels inside only (what the M-step forms), gives the very map
    and moments of vdam_update given the whole grids."""
    shells, inside = _grid()
    gen = torch.Generator().manual_seed(11)
    reference = torch.randn((M, M, M), generator=gen, dtype=torch.complex128)
    gradient = torch.randn((2, M, M, M), generator=gen, dtype=torch.complex128)
    weight = 3.0 * torch.rand((2, M, M, M), generator=gen, dtype=torch.float64)
    (m1_full, v_full), (m1_at, v_at) = _fresh_moments(), _fresh_moments()
    for _ in range(2):  # the second call reads the moments the first one left
        full = vdam_update(reference, gradient, weight, m1_full, v_full, shells, inside, 0.7, 2.0)
        index = inside_index(inside)
        at = vdam_update_at(reference, gradient.reshape(2, -1)[:, index], weight.reshape(2, -1)[:, index].clone(), m1_at, v_at, shells, index, 0.7, 2.0)
        assert torch.equal(full, at) and torch.equal(m1_full, m1_at) and torch.equal(v_full, v_at)
        reference = full
