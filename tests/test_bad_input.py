"""Bad input gives one clear InputError naming the file, the 1-based row and the label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _star_fixtures import (
    BOX,
    make_dataset,
    optics_columns,
    particle_columns,
    random_images,
    write_images,
    write_star,
)

from novomap.errors import InputError
from novomap.io.particles import ParticleSet
from novomap.io.star import read_particle_star


def expect_error(call, path: Path, row: int | None, label: str | None, *words: str) -> InputError:
    """Run `call`, which must raise InputError at `path`, `row`, `label`; the message has `words`."""
    with pytest.raises(InputError) as caught:
        call()
    error = caught.value
    assert error.path == str(path)
    assert error.row == row
    assert error.label == label
    prefix = ", ".join([str(path)] + ([f"row {row}"] if row is not None else []) + ([label] if label else []))
    assert str(error).startswith(prefix + ": "), str(error)
    for word in words:
        assert word in str(error), str(error)
    return error


def relion30_particles(n: int, **overrides) -> dict[str, list]:
    columns = particle_columns(
        n,
        rlnVoltage=[300.0] * n,
        rlnSphericalAberration=[2.7] * n,
        rlnAmplitudeContrast=[0.1] * n,
        rlnMagnification=[10000] * n,
        rlnDetectorPixelSize=[2.0] * n,
    )
    del columns["rlnOpticsGroup"]
    columns.update(overrides)
    return columns


# ---------------------------------------------------------------------------------------------
# STAR file contents


@pytest.mark.parametrize("label", ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"])
def test_missing_particle_label(tmp_path, label):
    star, _ = make_dataset(tmp_path)
    columns = particle_columns(5)
    del columns[label]
    write_star(star, optics_columns(), columns)
    # A whole column is missing: there is no row to name.
    expect_error(lambda: read_particle_star(star), star, None, label, "missing")


@pytest.mark.parametrize("label", ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"])
def test_missing_optics_label(tmp_path, label):
    star, _ = make_dataset(tmp_path)
    optics = optics_columns()
    del optics[label]
    write_star(star, optics, particle_columns(5))
    expect_error(lambda: read_particle_star(star), star, None, label, "missing", "data_optics")


def test_missing_pixel_size_label(tmp_path):
    star, _ = make_dataset(tmp_path)
    optics = optics_columns()
    del optics["rlnImagePixelSize"]
    write_star(star, optics, particle_columns(5))
    expect_error(lambda: read_particle_star(star), star, None, "rlnImagePixelSize", "no pixel size")


@pytest.mark.parametrize("value", [0.0, -1.5, "nan"])
def test_bad_pixel_size_in_optics_table(tmp_path, value):
    star, _ = make_dataset(tmp_path)
    write_star(star, optics_columns(2, rlnImagePixelSize=[2.0, value]), particle_columns(5))
    expect_error(lambda: read_particle_star(star), star, 2, "rlnImagePixelSize", "data_optics")


def test_zero_and_missing_pixel_size_in_relion30_file(tmp_path):
    write_images(tmp_path / "stack.mrcs", random_images(4))
    star = tmp_path / "old.star"
    write_star(star, None, relion30_particles(4, rlnDetectorPixelSize=[2.0, 2.0, 0.0, 2.0]), particle_block="")
    expect_error(lambda: read_particle_star(star), star, 3, "rlnDetectorPixelSize", "pixel size must be positive")
    write_star(star, None, relion30_particles(4, rlnMagnification=[10000, "nan", 10000, 10000]), particle_block="")
    expect_error(lambda: read_particle_star(star), star, 2, "rlnMagnification", "not a finite number")
    write_star(star, None, relion30_particles(4, rlnImagePixelSize=[1.0, 1.0, 1.0, 0.0]), particle_block="")
    expect_error(lambda: read_particle_star(star), star, 4, "rlnImagePixelSize", "must be positive")
    columns = relion30_particles(4)
    del columns["rlnMagnification"]
    write_star(star, None, columns, particle_block="")
    expect_error(lambda: read_particle_star(star), star, None, "rlnImagePixelSize", "no pixel size")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "abc"])
def test_bad_number_in_required_column_names_first_bad_row(tmp_path, value):
    star, _ = make_dataset(tmp_path)
    write_star(star, optics_columns(), particle_columns(5, rlnDefocusV=[9000, 9000, value, 9000, value]))
    error = expect_error(lambda: read_particle_star(star), star, 3, "rlnDefocusV", "not a finite number")
    assert "np." not in str(error) and value.lower() in str(error).lower()  # the value as written, not a numpy repr


def test_undefined_optics_group(tmp_path):
    star, _ = make_dataset(tmp_path)
    write_star(star, optics_columns(2), particle_columns(5, rlnOpticsGroup=[1, 2, 2, 3, 1]))
    expect_error(lambda: read_particle_star(star), star, 4, "rlnOpticsGroup", "optics group 3 is not defined")


def test_optics_group_missing_with_several_groups(tmp_path):
    star, _ = make_dataset(tmp_path)
    columns = particle_columns(5)
    del columns["rlnOpticsGroup"]
    write_star(star, optics_columns(2), columns)
    expect_error(lambda: read_particle_star(star), star, None, "rlnOpticsGroup", "missing")


@pytest.mark.parametrize("bad_name", ["0@stack.mrcs", "stack.mrcs", "-1@stack.mrcs", "x@stack.mrcs", "3@"])
def test_bad_image_name(tmp_path, bad_name):
    star, _ = make_dataset(tmp_path)
    names = [f"{k}@stack.mrcs" for k in range(1, 6)]
    names[1] = bad_name
    write_star(star, optics_columns(), particle_columns(5, rlnImageName=names))
    expect_error(lambda: read_particle_star(star), star, 2, "rlnImageName", "N@stack.mrcs")


# ---------------------------------------------------------------------------------------------
# Garbled files


def test_row_with_too_many_fields(tmp_path):
    star, _ = make_dataset(tmp_path)
    lines = star.read_text().splitlines()
    third = [i for i, line in enumerate(lines) if line.startswith("000003@")][0]
    lines[third] += "\t42"
    star.write_text("\n".join(lines) + "\n")
    expect_error(lambda: read_particle_star(star), star, 3, "data_particles", "7 fields", "6 labels")


def test_truncated_star_file(tmp_path):
    star, _ = make_dataset(tmp_path)
    text = star.read_text().rstrip()
    star.write_text(text[: text.rfind("\t")])  # the last row loses its last field
    expect_error(lambda: read_particle_star(star), star, 5, "data_particles", "5 fields", "truncated")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x01\x02garbage\xff\xfe" * 100, b"just some text\nwithout blocks\n"],
    ids=["empty", "binary", "text"],
)
def test_not_a_star_file(tmp_path, content):
    star = tmp_path / "p.star"
    star.write_bytes(content)
    expect_error(lambda: read_particle_star(star), star, None, None, "no data_ block")


def test_star_without_particle_table(tmp_path):
    star = tmp_path / "model.star"
    star.write_text("data_model_general\n\n_rlnNrClasses 1\n\ndata_model_classes\n\nloop_\n_rlnClassDistribution\n1\n")
    expect_error(lambda: read_particle_star(star), star, None, None, "no particle table")


def test_missing_star_file(tmp_path):
    star = tmp_path / "absent.star"
    expect_error(lambda: read_particle_star(star), star, None, None, "not found")


def test_empty_particle_table(tmp_path):
    star = tmp_path / "p.star"
    star.write_text("data_optics\n\nloop_\n_rlnOpticsGroup #1\n1\n\ndata_particles\n\nloop_\n_rlnImageName #1\n")
    expect_error(lambda: read_particle_star(star), star, None, "data_particles", "no rows")


# ---------------------------------------------------------------------------------------------
# Stacks


def test_missing_stack(tmp_path):
    write_images(tmp_path / "stack.mrcs", random_images(5))
    names = ["1@stack.mrcs", "2@stack.mrcs", "1@gone.mrcs", "2@gone.mrcs", "3@stack.mrcs"]
    star = write_star(tmp_path / "p.star", optics_columns(), particle_columns(5, rlnImageName=names))
    expect_error(lambda: ParticleSet.from_star(star), star, 3, "rlnImageName", "gone.mrcs", "not found")


def test_missing_stack_when_image_size_must_come_from_it(tmp_path):
    optics = optics_columns()
    del optics["rlnImageSize"]
    star = write_star(tmp_path / "p.star", optics, particle_columns(2, stack="gone.mrcs"))
    expect_error(lambda: read_particle_star(star), star, 1, "rlnImageName", "gone.mrcs", "not found")


def test_index_beyond_stack(tmp_path):
    names = ["1@stack.mrcs", "5@stack.mrcs", "2@stack.mrcs", "6@stack.mrcs", "9@stack.mrcs"]  # the stack holds 5
    star, _ = make_dataset(tmp_path, rlnImageName=names)
    # Found up front by the cheap validation ...
    expect_error(lambda: ParticleSet.from_star(star), star, 4, "rlnImageName", "image 6", "holds 5 images")
    # ... and on reading when validation is skipped.
    particles = ParticleSet.from_star(star, validate=False)
    particles.images([0, 1, 2])
    expect_error(lambda: particles.images([4, 0, 3]), star, 4, "rlnImageName", "beyond the end")


def test_box_size_mismatch(tmp_path):
    star, _ = make_dataset(tmp_path)
    write_star(star, optics_columns(rlnImageSize=[16]), particle_columns(5))
    expect_error(lambda: ParticleSet.from_star(star), star, 1, "rlnImageName", "box size mismatch")
    particles = ParticleSet.from_star(star, validate=False)
    expect_error(lambda: particles.images([2]), star, 1, "rlnImageName", "8 px", "16 px")


def test_box_size_mismatch_in_second_stack(tmp_path):
    write_images(tmp_path / "a.mrcs", random_images(2))
    write_images(tmp_path / "b.mrcs", random_images(2, box=10))
    names = ["1@a.mrcs", "2@a.mrcs", "1@b.mrcs", "2@b.mrcs"]
    star = write_star(tmp_path / "p.star", optics_columns(), particle_columns(4, rlnImageName=names))
    expect_error(lambda: ParticleSet.from_star(star), star, 3, "rlnImageName", "b.mrcs", "box size mismatch")


def test_non_square_images(tmp_path):
    write_images(tmp_path / "stack.mrcs", np.zeros((3, BOX, BOX + 2), np.float32))
    star = write_star(tmp_path / "p.star", optics_columns(), particle_columns(3))
    expect_error(lambda: ParticleSet.from_star(star), star, 1, "rlnImageName", "not square")
    optics = optics_columns()
    del optics["rlnImageSize"]
    write_star(star, optics, particle_columns(3))
    expect_error(lambda: read_particle_star(star), star, 1, "rlnImageName", "not square")


def test_optics_group_box_not_matching_its_stack(tmp_path):
    # groups may differ in box (io.working_grid), but each group's stack must have the group's box
    star, _ = make_dataset(tmp_path)
    write_star(star, optics_columns(2, rlnImageSize=[2 * BOX, BOX]), particle_columns(5))
    expect_error(lambda: ParticleSet.from_star(star), star, 1, "rlnImageName", "box size mismatch")


def test_optics_group_with_bad_pixel_size(tmp_path):
    star, _ = make_dataset(tmp_path)
    write_star(star, optics_columns(2, rlnImagePixelSize=[2.0, -1.0]), particle_columns(5))
    expect_error(lambda: ParticleSet.from_star(star), star, 2, "rlnImagePixelSize", "positive")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile warns when writing the bad stack
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_pixels(tmp_path, bad):
    images = random_images(5)
    images[3, 2, 5] = bad
    write_images(tmp_path / "stack.mrcs", images)
    star = write_star(tmp_path / "p.star", optics_columns(), particle_columns(5))
    # The cheap validation does not read pixels; reading does.
    particles = ParticleSet.from_star(star)
    particles.images([0, 1, 2, 4])
    expect_error(lambda: particles.images([4, 3, 0]), star, 4, "rlnImageName", "NaN or Inf")
    # With preread every pixel is read, so it fails at the start.
    expect_error(lambda: ParticleSet.from_star(star, preread=True), star, 4, "rlnImageName", "NaN or Inf")


def test_truncated_stack(tmp_path):
    star, _ = make_dataset(tmp_path)
    stack = tmp_path / "stack.mrcs"
    stack.write_bytes(stack.read_bytes()[:-100])
    expect_error(lambda: ParticleSet.from_star(star), star, 1, "rlnImageName", "cannot read image stack")


def test_not_an_mrc_stack(tmp_path):
    star, _ = make_dataset(tmp_path)
    (tmp_path / "stack.mrcs").write_bytes(b"not an mrc file" * 10)
    expect_error(lambda: ParticleSet.from_star(star), star, 1, "rlnImageName", "cannot read image stack")
