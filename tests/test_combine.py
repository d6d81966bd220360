"""maps.combine: equal-variance sums of estimates of one map, put on a reference's greyscale."""

import pytest
import torch

from novomap.maps.combine import equal_variance_sum, match_shell_amplitudes, shell_rms
from novomap.maps.fsc import fsc


def _truth(n: int = 32, seed: int = 0) -> torch.Tensor:
    """A smooth random blob map (N, N, N)."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - n / 2] * 3, indexing="ij"), -1)
    volume = torch.zeros((n, n, n), dtype=torch.float64)
    for centre in (torch.rand((12, 3), generator=g, dtype=torch.float64) - 0.5) * n / 2:
        volume += torch.exp(-((coords - centre) ** 2).sum(-1) / 4.0)
    return volume


def _noisy(truth: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    return truth + sigma * torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_each_map_counts_alike_whatever_its_greyscale():
    truth = _truth()
    a, b = _noisy(truth, 0.3, 1), _noisy(truth, 0.3, 2)
    assert torch.allclose(equal_variance_sum([a, b]), equal_variance_sum([10.0 * a - 3.0, b]), atol=1e-9)
    one = equal_variance_sum([a])
    assert abs(float(one.mean())) < 1e-9 and abs(float(one.std()) - 1.0) < 1e-3


def test_independent_noise_averages_out():
    # two estimates with independent noise: their sum is closer to the truth in every shell with signal
    truth = _truth()
    a, b = _noisy(truth, 0.3, 1), 5.0 * _noisy(truth, 0.3, 2)
    gain = fsc(equal_variance_sum([a, b]), truth) - torch.maximum(fsc(a, truth), fsc(b, truth))
    signal = fsc(a, truth) > 0.2  # beyond these shells the FSC is noise about 0
    assert int(signal[1:].sum()) >= 5 and bool((gain[1:][signal[1:]] > 0).all())


def test_mask_limits_the_statistics_and_the_result():
    truth = _truth()
    mask = torch.zeros_like(truth)
    mask[4:28, 4:28, 4:28] = 1.0
    total = equal_variance_sum([_noisy(truth, 0.3, 1)], mask)
    outside = total[mask == 0]
    assert float(outside.max() - outside.min()) == 0.0  # a constant there: the masked map less its mean
    assert abs(float(total[mask > 0.5].std()) - 1.0) < 1e-9


def test_a_constant_map_has_no_say():
    truth = _truth()
    a = _noisy(truth, 0.3, 1)
    assert torch.allclose(equal_variance_sum([a, torch.full_like(a, 2.0)]), equal_variance_sum([a]))
    assert float(equal_variance_sum([torch.ones((8, 8, 8))]).abs().max()) == 0.0
    with pytest.raises(ValueError):
        equal_variance_sum([])


def test_an_empty_volume_stays_empty_but_for_the_reference_mean():
    reference = _noisy(_truth(), 0.3, 1)
    matched = match_shell_amplitudes(torch.zeros_like(reference), reference)
    assert bool(torch.isfinite(matched).all())
    assert torch.allclose(matched, torch.full_like(matched, float(reference.mean())), atol=1e-9)


def test_matched_amplitudes_follow_the_reference_and_keep_the_fsc():
    truth = _truth()
    volume, reference = _noisy(truth, 0.3, 1), 7.0 * _noisy(truth, 0.1, 2)
    matched = match_shell_amplitudes(volume, reference)
    assert torch.allclose(shell_rms(matched), shell_rms(reference), rtol=1e-8)
    assert torch.allclose(fsc(matched, truth), fsc(volume, truth), atol=1e-9)


def test_shell_rms_of_a_plane_wave():
    # cos(2 pi 3 x / N): all its power in shell 3
    n = 16
    x = torch.arange(n, dtype=torch.float64)
    wave = torch.cos(2 * torch.pi * 3 * x / n)[None, None, :].expand(n, n, n)
    rms = shell_rms(wave)
    assert float(rms[3]) > 0 and float(rms[torch.arange(rms.numel()) != 3].abs().max()) < 1e-9


def test_splice_takes_low_below_and_high_beyond_the_fade():
    from novomap.maps.combine import splice_shells
    from novomap.maps.transform import frequency_radius

    g = torch.Generator().manual_seed(3)
    low, high = torch.randn((24, 24, 24), generator=g, dtype=torch.float64), torch.randn((24, 24, 24), generator=g, dtype=torch.float64)
    spliced = torch.fft.rfftn(splice_shells(low, high, 5.0, 8.0))
    radius = frequency_radius(24)
    assert torch.allclose(spliced[radius < 5.0], torch.fft.rfftn(low)[radius < 5.0])
    # beyond the fade: high's components, all scaled by one factor
    ratio = spliced[radius > 8.0] / torch.fft.rfftn(high)[radius > 8.0]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))


def test_splice_of_a_map_with_itself_on_another_greyscale_is_the_map():
    from novomap.maps.combine import splice_shells

    volume = torch.randn((20, 20, 20), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.allclose(splice_shells(volume, 7.5 * volume, 4.0, 7.0), volume)
