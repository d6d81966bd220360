"""The working grid (io.working_grid): choice of box/pixel, Fourier resizing, several optics groups, outputs.

Ground truth: band-limited functions sampled analytically on each grid (a Fourier crop of a
function sampled finely must equal the same function sampled coarsely), and a whole job on
particles twice the tutorial's box size that must write its maps at the input's grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from novomap.commands.main import main
from novomap.io.particles import ParticleSet
from novomap.io.working_grid import (
    auto_max_resolution_a,
    centre_crop_or_pad_images,
    choose_working_grid,
    final_grid_max_resolution_a,
    fourier_resize_images,
    to_output_grid,
)

from _star_fixtures import optics_columns, write_images, write_star


def band_limited_images(n: int, pixel_a: float, field_a: float, count: int = 3, seed: int = 0) -> np.ndarray:
    """(count, n, n) samples of sums of cosines with at most 7 cycles across `field_a`, centred at n // 2."""
    rng = np.random.default_rng(seed)
    x = (np.arange(n) - n // 2) * pixel_a
    images = np.zeros((count, n, n))
    for c in range(count):
        for _ in range(6):
            kx, ky = rng.integers(-7, 8, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            images[c] += rng.normal() * np.cos(2 * np.pi * (kx * x[None, :] + ky * x[:, None]) / field_a + phase)
    return images


# ---------------------------------------------------------------------------------------------
# choice of the grid


def test_tutorial_particles_are_used_as_they_are():
    grid = choose_working_grid(np.array([64]), np.array([3.54]), 7.0)
    assert (grid.box, grid.pixel_size_a, grid.resamples) == (64, 3.54, False)
    assert (grid.output_box, grid.output_pixel_size_a) == (64, 3.54)


def test_full_size_particles_are_cropped_to_the_resolution_needed():
    grid = choose_working_grid(np.array([256]), np.array([0.885]), 7.0)
    assert grid.box == 64 and math.isclose(grid.pixel_size_a, 3.54)
    assert grid.resamples and grid.group_resized_box == (64,)
    assert (grid.output_box, grid.output_pixel_size_a) == (256, 0.885)
    assert math.isclose(grid.input_pixel_size_a, 0.885)


def test_groups_of_different_pixel_and_box_share_one_grid():
    grid = choose_working_grid(np.array([64, 80]), np.array([3.54, 2.832]), 7.0)
    assert grid.box == 64 and math.isclose(grid.pixel_size_a, 3.54)
    assert grid.group_resized_box == (64, 64)
    assert grid.group_is_identity(0) and not grid.group_is_identity(1)
    assert (grid.output_box, grid.output_pixel_size_a) == (80, 2.832)  # widest field, then finest pixel
    chosen = choose_working_grid(np.array([64, 80]), np.array([3.54, 2.832]), 7.0, output_pixel_size_a=1.77)
    assert (chosen.output_box, chosen.output_pixel_size_a) == (128, 1.77)


def test_never_finer_than_the_data_and_small_fields_keep_64_px():
    grid = choose_working_grid(np.array([64]), np.array([5.8]), 7.0)
    assert (grid.box, grid.pixel_size_a, grid.resamples) == (64, 5.8, False)
    assert auto_max_resolution_a(np.array([100]), np.array([1.0])) == pytest.approx(3.125)
    small = choose_working_grid(np.array([100]), np.array([1.0]), auto_max_resolution_a(np.array([100]), np.array([1.0])))
    assert small.box == 64
    assert auto_max_resolution_a(np.array([256]), np.array([0.885])) == 7.0


def test_large_fields_are_capped():
    grid = choose_working_grid(np.array([600]), np.array([1.0]), 7.0)
    assert grid.box == 128 and math.isclose(grid.pixel_size_a, 600 / 128)


def test_the_final_reconstruction_grid_is_at_most_twice_as_fine_and_capped():
    # particles as they are: no finer grid
    assert final_grid_max_resolution_a(choose_working_grid(np.array([64]), np.array([3.54]), 7.0)) is None
    # 256 px at 0.885 Å, worked on at 64 px, 3.54 Å: reconstructed at 128 px, 1.77 Å
    tutorial = choose_working_grid(np.array([256]), np.array([0.885]), 7.0)
    fine = choose_working_grid(np.array([256]), np.array([0.885]), final_grid_max_resolution_a(tutorial))
    assert fine.box == 128 and math.isclose(fine.pixel_size_a, 1.77)
    # 96 px at 1.833 Å worked on at 64 px: the input grid itself, never finer than the data
    small = choose_working_grid(np.array([96]), np.array([1.833]), 5.5)
    fine = choose_working_grid(np.array([96]), np.array([1.833]), final_grid_max_resolution_a(small))
    assert (fine.box, fine.resamples) == (96, False)
    # a working grid already at the box cap gains nothing from a capped finer one
    assert final_grid_max_resolution_a(choose_working_grid(np.array([600]), np.array([1.0]), 7.0)) is None


# ---------------------------------------------------------------------------------------------
# resizing


def test_fourier_crop_equals_sampling_the_function_coarsely():
    field = 64.0
    fine = band_limited_images(128, field / 128, field)
    coarse = band_limited_images(32, field / 32, field)
    resized = fourier_resize_images(torch.from_numpy(fine), 32).numpy()
    np.testing.assert_allclose(resized, coarse, atol=1e-9)
    # and back up: zero-padding the spectrum interpolates the same function
    np.testing.assert_allclose(fourier_resize_images(torch.from_numpy(coarse), 128).numpy(), fine, atol=1e-9)


@pytest.mark.parametrize("fine_px, coarse_px", [(97, 32), (96, 33), (81, 35), (64, 31)])
def test_fourier_resize_of_odd_boxes_keeps_the_centre(fine_px, coarse_px):
    # odd boxes have their centre pixel (n // 2) off the field's middle: the resize moves it by a phase ramp
    field = 64.0
    fine = band_limited_images(fine_px, field / fine_px, field, seed=fine_px)
    coarse = band_limited_images(coarse_px, field / coarse_px, field, seed=fine_px)
    np.testing.assert_allclose(fourier_resize_images(torch.from_numpy(fine), coarse_px).numpy(), coarse, atol=1e-9)
    np.testing.assert_allclose(fourier_resize_images(torch.from_numpy(coarse), fine_px).numpy(), fine, atol=1e-9)


def test_greyscale_is_kept():
    constant = torch.full((2, 48, 48), 3.25, dtype=torch.float64)
    np.testing.assert_allclose(fourier_resize_images(constant, 20).numpy(), 3.25, atol=1e-12)


def test_centre_crop_keeps_the_centre_pixel():
    images = torch.zeros((1, 10, 10))
    images[0, 5, 5] = 1.0
    assert centre_crop_or_pad_images(images, 6)[0, 3, 3] == 1.0
    assert centre_crop_or_pad_images(images, 14)[0, 7, 7] == 1.0


def test_maps_go_back_to_the_input_grid():
    grid = choose_working_grid(np.array([64]), np.array([1.0]), 4.0)  # 32 px at 2 Å -> output 64 px at 1 Å
    assert (grid.box, grid.output_box) == (32, 64)

    def gaussian(n: int, pixel: float) -> torch.Tensor:
        r = (torch.arange(n, dtype=torch.float64) - n // 2) * pixel
        z, y, x = torch.meshgrid(r, r, r, indexing="ij")
        return torch.exp(-((x - 3) ** 2 + y**2 + (z + 2) ** 2) / (2 * 6.0**2))

    out = to_output_grid(gaussian(32, 2.0), grid)
    assert out.shape == (64, 64, 64)
    np.testing.assert_allclose(out.numpy(), gaussian(64, 1.0).numpy(), atol=2e-3)


# ---------------------------------------------------------------------------------------------
# particles of two optics groups on one grid


def _two_group_set(folder: Path) -> Path:
    field = 64.0
    group1 = band_limited_images(32, field / 32, field, seed=3)  # 32 px at 2 Å
    group2 = band_limited_images(48, field / 48, field, seed=4)  # 48 px at 1.333 Å
    write_images(folder / "g1.mrcs", group1.astype(np.float32))
    write_images(folder / "g2.mrcs", group2.astype(np.float32))
    optics = optics_columns(2, rlnImageSize=[32, 48], rlnImagePixelSize=[2.0, field / 48])
    particles = {
        "rlnImageName": [f"{i}@g1.mrcs" for i in (1, 2, 3)] + [f"{i}@g2.mrcs" for i in (1, 2, 3)],
        "rlnDefocusU": [10000.0] * 6,
        "rlnDefocusV": [10000.0] * 6,
        "rlnDefocusAngle": [0.0] * 6,
        "rlnOpticsGroup": [1, 1, 1, 2, 2, 2],
    }
    return write_star(folder / "particles.star", optics, particles)


@pytest.mark.parametrize("mode", ["stream", "preread"])
def test_two_optics_groups_give_the_same_function_on_the_working_grid(tmp_path, mode):
    star = _two_group_set(tmp_path)
    particles = ParticleSet.from_star(star, preread=(mode == "preread"), max_resolution_a=4.0)
    assert (particles.box_size, particles.pixel_size_a) == (32, 2.0)
    images = particles.images([5, 0, 3]).numpy()  # read twice (the second from the cache)
    np.testing.assert_array_equal(images, particles.images([5, 0, 3]).numpy())
    expected1 = band_limited_images(32, 2.0, 64.0, seed=3)
    expected2 = band_limited_images(32, 2.0, 64.0, seed=4)
    np.testing.assert_allclose(images[1], expected1[0], atol=1e-5)  # group 1: as read
    np.testing.assert_allclose(images[0], expected2[2], atol=1e-5)  # group 2: Fourier-cropped 48 -> 32
    np.testing.assert_allclose(images[2], expected2[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# a whole job on full-size particles


def test_job_on_large_boxes_writes_maps_at_the_input_grid(tmp_path):
    from novomap.demo_data import load_demo_map
    from novomap.maps.transform import resample_map
    from novomap.simulate import SimulationOptions, simulate

    volume, pixel = load_demo_map()
    # 96 px at 2.36 Å (the demo map's field of view): worked on at 64 px, 3.54 Å
    fine = resample_map(volume, pixel, 96, pixel * 64 / 96)
    result = simulate(fine, tmp_path / "data", SimulationOptions(n=60, snr=1.0, seed=3, box=96, pixel_size_a=pixel * 64 / 96))
    out = tmp_path / "job"
    args = ["initial-model", "--i", str(result.star_path), "--o", str(out), "--iter", "2", "--particle-diameter", "200",
            "--j", "1", "--sym", "C1", "--quiet", "--no-report", "--offset-range", "9", "--offset-step", "3"]  # fmt: skip
    assert main(args) == 0
    for name in ("initial_model.mrc", "run_it002_class001.mrc"):
        with mrcfile.open(out / name, permissive=True) as mrc:
            assert mrc.data.shape == (96, 96, 96), name
            assert float(mrc.voxel_size.x) == pytest.approx(pixel * 64 / 96, rel=1e-4)
    log = (out / "run.out").read_text()
    assert "working grid: 64 px at 3.54 Å/px" in log
    # initial_model.mrc also holds what the working grid cannot (a reconstruction on the 96 px grid);
    # the class maps stop at the working Nyquist (shell 32 of 96)
    assert "initial_model.mrc: beyond 7.08 Å from the particles reconstructed at their final poses on 96 px" in log
    from novomap.maps.combine import shell_rms

    with mrcfile.open(out / "initial_model.mrc", permissive=True) as mrc:
        final_power = shell_rms(torch.from_numpy(mrc.data.copy()))
    with mrcfile.open(out / "run_it002_class001.mrc", permissive=True) as mrc:
        class_power = shell_rms(torch.from_numpy(mrc.data.copy()))
    # (relative to their own low shells: the class maps are on VDAM's greyscale, not the reconstruction's)
    class_beyond = class_power[34:46] / class_power[2:20].mean()
    final_beyond = final_power[34:46] / final_power[2:20].mean()
    assert float(final_beyond.min()) > 100 * float(class_beyond.max())
    data = starfile.read(out / "run_it002_data.star", always_dict=True)
    assert int(data["optics"]["rlnImageSize"].iloc[0]) == 96  # the images as they are on disk
    assert "rlnOriginXAngst" in data["particles"].columns
    # the model STAR file describes the maps it names: the output grid's box, pixel size and shells
    model = starfile.read(out / "run_it002_model.star", always_dict=True)
    assert int(model["model_general"]["rlnOriginalImageSize"]) == 96
    assert float(model["model_general"]["rlnPixelSize"]) == pytest.approx(pixel * 64 / 96, rel=1e-4)
    shells = model["model_class_1"]
    assert len(shells) == 49 and len(model["model_optics_group_1"]) == 49
    assert float(shells["rlnAngstromResolution"].iloc[32]) == pytest.approx(2 * pixel, rel=1e-3)  # the working Nyquist
    ssnr = shells["rlnSsnrMap"].to_numpy()
    assert ssnr[1] > 0 and (ssnr[33:] == 0).all()  # nothing beyond the working grid
    sampling = starfile.read(out / "run_it002_sampling.star", always_dict=True)["sampling_general"]
    # 9 px of the input (2.36 Å) = 6 working px (3.54 Å) = 21.2 Å
    assert float(sampling["rlnOffsetRange"]) == pytest.approx(9 * pixel * 64 / 96, rel=1e-3)


def test_spectra_move_to_the_output_shells_by_frequency():
    """A working-grid spectrum taken at the output grid's shells: shell j of a field twice as wide is the
    frequency of working shell j / 2 (linear between shells), and nothing lies beyond the working Nyquist."""
    from novomap.outputs.relion import on_output_shells

    working = np.arange(33, dtype=np.float64) ** 2  # 64 px: shells 0..32
    same = on_output_shells(working, 226.6, 226.6, 64)
    assert np.array_equal(same, working)  # same field of view, same box: unchanged
    wider = on_output_shells(working, 226.6, 453.2, 128)  # the output field twice as wide, 128 px
    assert wider.shape == (65,)
    assert wider[20] == pytest.approx(working[10]) and wider[21] == pytest.approx((working[10] + working[11]) / 2)
    assert wider[64] == pytest.approx(working[32])
    finer = on_output_shells(working, 226.6, 226.6, 96)  # the same field on 96 px: shells 33..48 beyond
    assert np.array_equal(finer[:33], working) and (finer[33:] == 0).all()


@pytest.mark.parametrize(
    "boxes, pixels, max_resolution_a, cause",
    [
        ((32,), (7.08,), 7.0, "the particles' own pixel size"),  # s33's 32 px particles: Nyquist 14.2 Å
        ((256,), (0.885,), 30.0, "--max-resolution 30"),  # asked for a 14 px grid
        ((300,), (3.0,), 7.0, "capped at 128 px, here across a 900 Å field"),  # a virus-sized field
        ((64,), (3.54,), 7.0, None),  # the tutorial's particles: no warning
        ((40,), (5.83,), 7.0, None),  # 11.7 Å: at the bar, still fine (betagal_d2_40 reached its bound)
    ],
)
def test_a_coarse_working_grid_is_warned_about_with_its_cause(boxes, pixels, max_resolution_a, cause):
    from novomap.commands.initial_model import coarse_grid_warning

    grid = choose_working_grid(np.array(boxes), np.array(pixels), max_resolution_a)
    warning = coarse_grid_warning(grid, max_resolution_a)
    if cause is None:
        assert warning is None
    else:
        assert warning is not None and warning.startswith("warning: the working grid") and cause in warning, warning
