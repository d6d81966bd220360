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
