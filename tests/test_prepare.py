import torch

from novomap.estep.prepare import shell_power, shift_images_integer
from novomap.physics.fourier import rfft_image, rfft_shells


def test_shell_power_sums_the_squared_moduli_of_each_shell():
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(3, 12, 12, generator=generator, dtype=torch.float64)
    spectra = rfft_image(images)
    shells = rfft_shells(12)
    got = shell_power(spectra, shells, 7)
    expected = torch.zeros(3, 7, dtype=torch.float64)
    for b in range(3):
        for (i, j), shell in zip(torch.cartesian_prod(torch.arange(12), torch.arange(7)).tolist(), shells.reshape(-1).tolist()):
            if 0 <= shell < 7:
                expected[b, shell] += abs(complex(spectra[b, i, j])) ** 2
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_integer_shifts_move_the_content_and_fill_with_zeros():
    images = torch.arange(2 * 5 * 5, dtype=torch.float64).reshape(2, 5, 5)
    moved = shift_images_integer(images, torch.tensor([[1.0, 0.0], [-2.0, 1.0]]))
    # image 0 moved by +1 in x: column j holds column j - 1, column 0 is empty
    assert torch.equal(moved[0, :, 1:], images[0, :, :-1]) and not moved[0, :, 0].any()
    # image 1 moved by -2 in x and +1 in y
    assert torch.equal(moved[1, 1:, :-2], images[1, :-1, 2:]) and not moved[1, 0].any() and not moved[1, :, -2:].any()


def test_integer_shifts_match_moving_each_image_by_slicing():
    generator = torch.Generator().manual_seed(11)
    images = torch.randn(6, 9, 9, generator=generator)
    shifts = torch.tensor([[0.0, 0.0], [3.0, -1.0], [-4.0, 2.0], [1.0, 4.0], [-2.0, -3.0], [8.0, 0.0]])
    moved = shift_images_integer(images, shifts)
    for b, (sx, sy) in enumerate(shifts.long().tolist()):
        expected = torch.zeros(9, 9)
        # output (y, x) holds input (y - sy, x - sx) where that lies inside the image
        ys, xs = slice(max(0, sy), min(9, 9 + sy)), slice(max(0, sx), min(9, 9 + sx))
        expected[ys, xs] = images[b, max(0, -sy) : min(9, 9 - sy), max(0, -sx) : min(9, 9 - sx)]
        assert torch.equal(moved[b], expected)


def _visit(cache, images, index, origins):
    """prepare_batch of the particles `index` at `origins`, with and without the cache."""
    from novomap.estep.prepare import prepare_batch
    from novomap.physics.window import fourier_window

    n = images.shape[-1]
    window = fourier_window(n, 20)
    b = index.numel()
    args = (images[index], index, torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long), origins, window,
            torch.ones(b, window.n_pixels), torch.ones(1, n // 2 + 1), 9.0)
    return prepare_batch(*args, cache=cache), prepare_batch(*args)


def _same(cached, fresh) -> bool:
    return all(torch.equal(getattr(cached, name), getattr(fresh, name)) for name in ("masked", "unmasked", "masked_power", "origin_px"))


def test_spectra_cache_gives_the_spectra_prepared_afresh():
    """Visits at origins seen before (in any of a particle's ways), new origins, particles beyond the
    cache's room and a new mask radius: always the very values prepare_batch forms without the cache."""
    from novomap.estep.prepare import SpectraCache

    generator = torch.Generator().manual_seed(3)
    images = torch.randn(12, 24, 24, generator=generator)
    per_row = 2 * 24 * 13 * 8 + 13 * 8 + 16
    cache = SpectraCache(12, 24, "cpu", budget_bytes=10 * per_row)  # room for 10 rows
    first = torch.tensor([[1.0, 2.0]] * 6)
    second = torch.tensor([[-3.0, 0.0]] * 6)
    index = torch.tensor([0, 2, 4, 6, 8, 10])
    for origins in (first, second, first, second + 1, first):
        assert _same(*_visit(cache, images, index, origins))
    assert cache.count == 10  # full: six particles x two origins wanted 12 rows
    # particle 0 comes back at its first origin: read from the cache (its row changed would show)
    row = int(cache.rows[0][(cache.origin[cache.rows[0].clamp(min=0)] == first[0]).all(-1) & (cache.rows[0] >= 0)][0])
    cache.masked_power[row] += 1.0
    cached, fresh = _visit(cache, images, torch.tensor([0]), first[:1])
    assert torch.equal(cached.masked_power, fresh.masked_power + 1.0)
    cache.masked_power[row] -= 1.0
    # mixed hits and misses in one batch, in any order
    mixed = torch.tensor([10, 1, 0, 11, 4])
    origins = torch.tensor([[1.0, 2.0], [0.0, 0.0], [-3.0, 0.0], [5.0, 5.0], [1.0, 2.0]])
    assert _same(*_visit(cache, images, mixed, origins))
    # another mask radius: nothing kept applies
    from novomap.estep.prepare import prepare_batch
    from novomap.physics.window import fourier_window

    window = fourier_window(24, 20)
    args = (images[index], index, torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long), first, window, torch.ones(6, window.n_pixels), torch.ones(1, 13))
    assert torch.equal(prepare_batch(*args, 6.0, cache=cache).masked, prepare_batch(*args, 6.0).masked)
