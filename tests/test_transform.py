"""Volume transforms against analytic cases: Gaussian blobs at known positions."""

from __future__ import annotations

import pytest
import torch

from novomap.maps.transform import (
    center_of_mass,
    centred_coordinates,
    crop_or_pad,
    fourier_resize,
    lowpass,
    mirror_volume,
    resample_map,
    rotate_volume,
    sample_at,
    shift_volume,
    spherical_mask,
)
from novomap.physics.euler import euler_to_matrix

N = 32


def blob(centre_xyz: tuple[float, float, float], size: int = N, sigma: float = 1.5) -> torch.Tensor:
    coords = centred_coordinates(size, torch.float64)
    r0 = torch.tensor(centre_xyz, dtype=torch.float64)
    return torch.exp(-((coords - r0) ** 2).sum(-1) / (2 * sigma**2)).float()


def com_xyz(volume: torch.Tensor) -> torch.Tensor:
    return center_of_mass(volume).flip(0)


def matrix(rot: float, tilt: float, psi: float) -> torch.Tensor:
    t = torch.tensor
    return euler_to_matrix(t(rot, dtype=torch.float64), t(tilt, dtype=torch.float64), t(psi, dtype=torch.float64))


def test_coordinates_put_the_centre_at_n_half() -> None:
    coords = centred_coordinates(5)
    assert coords[2, 2, 2].tolist() == [0, 0, 0]
    assert coords[0, 1, 4].tolist() == [2, -1, -2]  # (x, y, z) of voxel (z=0, y=1, x=4)


def test_identity_rotation_returns_the_volume() -> None:
    volume = torch.randn(N, N, N)
    assert torch.allclose(rotate_volume(volume, torch.eye(3, dtype=torch.float64)), volume, atol=1e-5)


def test_blob_lands_at_r_times_r0() -> None:
    r0 = torch.tensor([5.0, -3.0, 8.0], dtype=torch.float64)
    rotation = matrix(30.0, 50.0, -20.0)
    rotated = rotate_volume(blob(tuple(r0.tolist())), rotation)
    assert torch.allclose(com_xyz(rotated), rotation @ r0, atol=0.02)


def test_batched_rotation_matches_single() -> None:
    volume = blob((4.0, 2.0, -6.0))
    rotations = torch.stack([matrix(10.0, 20.0, 30.0), matrix(200.0, 100.0, 5.0)])
    batch = rotate_volume(volume, rotations)
    assert batch.shape == (2, N, N, N)
    for k in range(2):
        assert torch.allclose(batch[k], rotate_volume(volume, rotations[k]), atol=1e-6)


def test_rotation_composition() -> None:
    # rotating by R1 then by R2 equals rotating by R2 @ R1
    volume = blob((6.0, 1.0, -4.0), sigma=2.0)
    r1, r2 = matrix(40.0, 70.0, 10.0), matrix(-30.0, 25.0, 120.0)
    twice = rotate_volume(rotate_volume(volume, r1), r2)
    once = rotate_volume(volume, r2 @ r1)
    assert torch.allclose(com_xyz(twice), com_xyz(once), atol=0.05)
    assert float((twice - once).norm() / once.norm()) < 0.1  # two interpolations smooth a little more


def test_quarter_turn_about_z_is_exact() -> None:
    volume = torch.randn(N, N, N)
    quarter = matrix(0.0, 0.0, -90.0)  # RELION's Rz(psi) with psi = -90 turns +x onto +y
    assert torch.allclose(quarter @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                          torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    rotated = rotate_volume(volume, quarter)
    # output voxel r = (x, y, z) takes the input at R^T r = (y, -x, z)
    c = N // 2
    z, y, x = 20, 7, 11
    assert torch.isclose(rotated[z, y, x], volume[z, c - (x - c), c + (y - c)], atol=1e-4)


def test_sample_at_reads_voxels_and_zero_outside() -> None:
    volume = torch.randn(N, N, N)
    positions = torch.tensor([[0.0, 0.0, 0.0], [3.0, -2.0, 5.0], [100.0, 0.0, 0.0]])
    values = sample_at(volume, positions)
    c = N // 2
    assert torch.isclose(values[0], volume[c, c, c], atol=1e-5)
    assert torch.isclose(values[1], volume[c + 5, c - 2, c + 3], atol=1e-5)
    assert values[2] == 0


@pytest.mark.parametrize("shift", [(1.5, -2.0, 0.25), (0.0, 3.0, -4.0)])
def test_shift_moves_content_by_plus_shift(shift: tuple[float, float, float]) -> None:
    volume = blob((5.0, -3.0, 2.0))
    moved = shift_volume(volume, shift)
    assert torch.allclose(center_of_mass(moved) - center_of_mass(volume),
                          torch.tensor(shift, dtype=torch.float64), atol=1e-3)


def test_center_of_mass_ignores_negative_voxels() -> None:
    volume = blob((6.0, 0.0, 0.0)) - blob((-8.0, 0.0, 0.0))
    assert torch.allclose(com_xyz(volume), torch.tensor([6.0, 0.0, 0.0], dtype=torch.float64), atol=1e-3)
    assert center_of_mass(torch.zeros(8, 8, 8)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("new_size", [24, 48, 31])
def test_fourier_resize_keeps_greyscale_and_positions(new_size: int) -> None:
    volume = blob((5.0, -3.0, 8.0), sigma=2.0) + 0.25
    resized = fourier_resize(volume, new_size)
    assert resized.shape == (new_size,) * 3
    scale = N / new_size
    assert float(resized.mean()) == pytest.approx(float(volume.mean()), rel=1e-3)
    assert torch.allclose(com_xyz(resized - 0.25) * scale, com_xyz(volume - 0.25), atol=0.05)


def test_fourier_resize_bfactor_widens_a_gaussian_as_theory_says() -> None:
    """exp(-B s^2 / 4) times the transform of a Gaussian of width sigma is that of a Gaussian of width
    sqrt(sigma^2 + B / (8 pi^2)) with the same integral (here 2 px -> 3 px at 1 Å/px)."""
    import math

    narrow, wide = 2.0, 3.0
    bfactor_a2 = 8 * math.pi**2 * (wide**2 - narrow**2)
    volume = blob((0.0, 0.0, 0.0), sigma=narrow).double()
    blurred = fourier_resize(volume, N, bfactor_a2=bfactor_a2, pixel_size_a=1.0)
    expected = blob((0.0, 0.0, 0.0), sigma=wide).double() * (narrow / wide) ** 3
    assert torch.allclose(blurred, expected, atol=1e-4 * float(expected.max()))


def test_fourier_resize_to_its_own_size_is_a_copy() -> None:
    volume = torch.randn(N, N, N)
    same = fourier_resize(volume, N)
    assert torch.equal(same, volume) and same.data_ptr() != volume.data_ptr()


def test_fourier_pad_then_crop_is_identity() -> None:
    volume = lowpass(torch.randn(N, N, N), 1.0, 4.0)
    assert torch.allclose(fourier_resize(fourier_resize(volume, 48), N), volume, atol=1e-4)


def test_lowpass_removes_high_frequencies_and_keeps_low_ones() -> None:
    volume = torch.randn(N, N, N)
    filtered = lowpass(volume, 2.0, 8.0, edge_shells=2)  # cutoff shell N * 2 / 8 = 8
    spectrum_in = torch.fft.rfftn(volume.double())
    spectrum_out = torch.fft.rfftn(filtered.double())
    k = torch.fft.fftfreq(N) * N
    kx = torch.fft.rfftfreq(N) * N
    radius = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    # float32 maps: compare with the spectrum's scale (|F| ~ N^1.5 ~ 180)
    assert float(spectrum_out[radius > 9.01].abs().max()) < 1e-4
    assert torch.allclose(spectrum_out[radius < 6.99], spectrum_in[radius < 6.99], atol=1e-4)


def test_crop_or_pad_keeps_the_centre_voxel() -> None:
    volume = torch.zeros(N, N, N)
    volume[N // 2, N // 2, N // 2] = 1.0
    for size in (20, 21, 40, 41):
        out = crop_or_pad(volume, size)
        assert out[size // 2, size // 2, size // 2] == 1.0
        assert float(out.sum()) == 1.0


@pytest.mark.parametrize("size", [32, 33])
def test_mirror_flips_z_about_the_centre(size: int) -> None:
    volume = blob((3.0, -2.0, 5.0), size=size)
    mirrored = mirror_volume(volume)
    assert torch.allclose(com_xyz(mirrored), torch.tensor([3.0, -2.0, -5.0], dtype=torch.float64), atol=1e-3)
    improper = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    assert torch.allclose(mirrored, rotate_volume(volume, improper), atol=1e-5)


def test_spherical_mask_profile() -> None:
    mask = spherical_mask(N, 10.0, 4.0)
    c = N // 2
    assert mask[c, c, c] == 1.0
    assert mask[c, c, c + 10] == 1.0
    assert float(mask[c, c, c + 12]) == pytest.approx(0.5, abs=1e-6)
    assert mask[c, c, c + 14] == 0.0


def test_resample_map_keeps_physical_positions_and_values():
    # a Gaussian blob 10 Å right of the centre, 2 Å/px -> 3 Å/px: it must stay 10 Å right
    axis = (torch.arange(64, dtype=torch.float64) - 32) * 2.0
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    gaussian = torch.exp(-((x - 10) ** 2 + y**2 + z**2) / (2 * 8.0**2))
    resampled = resample_map(gaussian, 2.0, 48, 3.0)
    assert resampled.shape == (48, 48, 48)
    axis3 = (torch.arange(48, dtype=torch.float64) - 24) * 3.0
    com_x = float((resampled.sum((0, 1)) * axis3).sum() / resampled.sum())
    assert com_x == pytest.approx(10.0, abs=0.05)
    assert float(resampled.max()) == pytest.approx(1.0, abs=0.03)
