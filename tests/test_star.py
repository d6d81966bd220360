"""Reading and writing particle STAR files (RELION 3.0 and 3.1+), on real and synthetic files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _star_fixtures import (
    make_dataset,
    optics_columns,
    particle_columns,
    random_images,
    shared_data_dir,
    write_images,
    write_star,
)

from novomap.io.star import (
    format_star_float,
    parse_image_names,
    read_particle_star,
    resolve_stack_path,
    write_particle_star,
)

BETAGAL = "betagal_relion5_tutorial_particles"


def test_reads_relion5_tutorial_particles():
    path = shared_data_dir() / BETAGAL / "particles_ctf_from_relion31_tutorial_goodclasses.star"
    table = read_particle_star(path)
    assert not table.is_relion30
    assert table.path == path
    assert len(table.particles) == 1455
    optics = table.optics.iloc[0]
    assert optics["rlnOpticsGroup"] == 1
    assert optics["rlnImagePixelSize"] == pytest.approx(3.54)
    assert optics["rlnImageSize"] == 64
    assert optics["rlnVoltage"] == pytest.approx(200.0)
    assert optics["rlnSphericalAberration"] == pytest.approx(1.4)
    assert optics["rlnAmplitudeContrast"] == pytest.approx(0.1)
    # Columns not used by novomap are kept, in their order, with their values.
    assert list(table.particles.columns[:4]) == [
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnAutopickFigureOfMerit",
        "rlnClassNumber",
    ]
    assert table.particles["rlnCoordinateX"].iloc[0] == pytest.approx(1614.217657)
    assert table.particles["rlnImageName"].iloc[0] == "000001@Extract/job009/Movies/20170629_00021_frameImage.mrcs"
    assert table.particles["rlnOpticsGroup"].dtype == np.int64


def test_reads_refined_poses():
    table = read_particle_star(shared_data_dir() / BETAGAL / "particles_with_relion_refined_poses.star")
    assert len(table.particles) == 582
    first = table.particles.iloc[0]
    assert first["rlnAngleRot"] == pytest.approx(170.477497)
    assert first["rlnOriginXAngst"] == pytest.approx(-8.029390)
    assert first["rlnOriginYAngst"] == pytest.approx(-4.911474)


def test_converts_relion30_ribosome_file():
    table = read_particle_star(shared_data_dir() / "ribosome50S_empiar10076_cryodrgn" / "empiar_10076_7.star")
    assert table.is_relion30
    assert len(table.optics) == 1
    optics = table.optics.iloc[0]
    # 5 µm detector pixel at 38168x magnification
    assert optics["rlnImagePixelSize"] == pytest.approx(5e4 / 38168)
    assert optics["rlnImagePixelSize"] == pytest.approx(1.31, abs=1e-3)
    assert optics["rlnImageSize"] == 320  # from the stack: the file has no rlnImageSize
    assert optics["rlnVoltage"] == pytest.approx(300.0)
    assert optics["rlnSphericalAberration"] == pytest.approx(2.7)
    assert optics["rlnAmplitudeContrast"] == pytest.approx(0.07)
    assert (table.particles["rlnOpticsGroup"] == 1).all()
    # Optics labels moved to the optics table; micrograph names stay text.
    assert "rlnVoltage" not in table.particles.columns
    assert "rlnMagnification" not in table.particles.columns
    assert table.particles["rlnMicrographName"].tolist() == [str(k) for k in range(1, 8)]
    assert table.particles["rlnDefocusU"].iloc[0] == pytest.approx(15301.1)


def test_relion30_groups_by_optics_values_and_converts_origins(tmp_path):
    write_images(tmp_path / "stack.mrcs", random_images(4))
    particles = particle_columns(
        4,
        rlnVoltage=[300, 200, 300, 300],
        rlnSphericalAberration=[2.7, 2.7, 2.7, 2.7],
        rlnAmplitudeContrast=[0.1, 0.1, 0.1, 0.07],
        rlnMagnification=[10000] * 4,
        rlnDetectorPixelSize=[2.0] * 4,
        rlnOriginX=[1.0, -2.0, 0.5, 0.0],
        rlnOriginY=[0.0, 3.0, 0.0, -1.0],
    )
    del particles["rlnOpticsGroup"]
    star = write_star(tmp_path / "old.star", None, particles, particle_block="")
    table = read_particle_star(star)
    assert table.is_relion30
    # Groups are numbered in order of first appearance: (300, 0.1), (200, 0.1), (300, 0.07).
    assert table.particles["rlnOpticsGroup"].tolist() == [1, 2, 1, 3]
    assert table.optics["rlnOpticsGroup"].tolist() == [1, 2, 3]
    assert table.optics["rlnVoltage"].tolist() == [300.0, 200.0, 300.0]
    assert table.optics["rlnAmplitudeContrast"].tolist() == pytest.approx([0.1, 0.1, 0.07])
    assert table.optics["rlnImagePixelSize"].tolist() == pytest.approx([2.0] * 3)
    assert table.optics["rlnImageSize"].tolist() == [8, 8, 8]
    # Origins in pixels become RELION 3.1 origins in Å (2 Å/px).
    assert table.particles["rlnOriginXAngst"].tolist() == pytest.approx([2.0, -4.0, 1.0, 0.0])
    assert table.particles["rlnOriginYAngst"].tolist() == pytest.approx([0.0, 6.0, 0.0, -2.0])
    assert "rlnOriginX" not in table.particles.columns


def test_single_block_with_optics_per_particle_prefers_image_pixel_size(tmp_path):
    write_images(tmp_path / "stack.mrcs", random_images(3))
    particles = particle_columns(
        3,
        rlnVoltage=[300] * 3,
        rlnSphericalAberration=[2.7] * 3,
        rlnAmplitudeContrast=[0.1] * 3,
        rlnImagePixelSize=[1.5] * 3,
        rlnMagnification=[10000] * 3,  # would give 5 Å/px: ignored
        rlnDetectorPixelSize=[5.0] * 3,
    )
    table = read_particle_star(write_star(tmp_path / "p.star", None, particles))
    assert table.is_relion30
    assert table.optics["rlnImagePixelSize"].tolist() == pytest.approx([1.5])
    assert table.particles["rlnOpticsGroup"].tolist() == [1, 1, 1]


def test_data_images_block_is_read(tmp_path):
    write_images(tmp_path / "stack.mrcs", random_images(2))
    particles = particle_columns(
        2, rlnVoltage=[300] * 2, rlnSphericalAberration=[2.7] * 2, rlnAmplitudeContrast=[0.1] * 2,
        rlnImagePixelSize=[1.0] * 2,
    )
    table = read_particle_star(write_star(tmp_path / "p.star", None, particles, particle_block="images"))
    assert len(table.particles) == 2 and table.is_relion30


def test_image_size_is_filled_from_the_stack_when_absent(tmp_path):
    write_images(tmp_path / "stack.mrcs", random_images(3, box=12))
    optics = optics_columns()
    del optics["rlnImageSize"]
    table = read_particle_star(write_star(tmp_path / "p.star", optics, particle_columns(3)))
    assert table.optics["rlnImageSize"].tolist() == [12]


def test_single_optics_group_may_be_omitted_on_particles(tmp_path):
    star, _ = make_dataset(tmp_path)
    particles = particle_columns(5)
    del particles["rlnOpticsGroup"]
    write_star(star, optics_columns(), particles)
    table = read_particle_star(star)
    assert table.particles["rlnOpticsGroup"].tolist() == [1] * 5


def test_round_trip_keeps_every_column(tmp_path):
    star, _ = make_dataset(tmp_path, rlnClassNumber=[3, 1, 4, 1, 5], rlnLogLikeliContribution=[1e-9, 2, 3, 4, 5e7])
    table = read_particle_star(star)
    out = tmp_path / "out" / "written.star"
    write_particle_star(out, table.optics, table.particles)
    text = out.read_text()
    assert "data_optics" in text and "data_particles" in text and "# version 30001" in text
    back = read_particle_star(out)
    assert not back.is_relion30
    pd.testing.assert_frame_equal(back.optics, table.optics, rtol=1e-6)
    pd.testing.assert_frame_equal(back.particles, table.particles, rtol=1e-6)
    # Tiny values are not flattened to 0.000000.
    assert back.particles["rlnLogLikeliContribution"].iloc[0] == pytest.approx(1e-9)
    # Written atomically: no temporary file is left beside it.
    assert sorted(p.name for p in out.parent.iterdir()) == ["written.star"]


def test_round_trip_of_converted_relion30_file(tmp_path):
    table = read_particle_star(shared_data_dir() / "ribosome50S_empiar10076_cryodrgn" / "empiar_10076_7.star")
    out = tmp_path / "converted.star"
    write_particle_star(out, table.optics, table.particles)
    # The stacks are not beside the written file, but rlnImageSize now comes from the optics table.
    back = read_particle_star(out)
    pd.testing.assert_frame_equal(back.optics, table.optics, rtol=1e-6)
    pd.testing.assert_frame_equal(back.particles, table.particles, rtol=1e-6)


def test_parse_image_names():
    numbers, stacks = parse_image_names(pd.Series(["000001@a/b.mrcs", "12@/abs/c.mrcs", " 3@d e.mrcs "]), "x.star")
    assert numbers.tolist() == [1, 12, 3]
    assert stacks.tolist() == ["a/b.mrcs", "/abs/c.mrcs", "d e.mrcs"]


def test_resolve_stack_path_prefers_cwd(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    (tmp_path / "stars").mkdir()
    (tmp_path / "project" / "s.mrcs").write_bytes(b"")
    (tmp_path / "stars" / "s.mrcs").write_bytes(b"")
    star = tmp_path / "stars" / "p.star"
    monkeypatch.chdir(tmp_path / "project")
    assert resolve_stack_path("s.mrcs", star) == tmp_path / "project" / "s.mrcs"
    monkeypatch.chdir(tmp_path)
    assert resolve_stack_path("s.mrcs", star) == tmp_path / "stars" / "s.mrcs"
    assert resolve_stack_path("missing.mrcs", star) is None
    assert resolve_stack_path(str(tmp_path / "project" / "s.mrcs"), star) == tmp_path / "project" / "s.mrcs"


def test_format_star_float():
    assert format_star_float(1.5) == "1.500000"
    assert format_star_float(0.0) == "0.000000"
    assert float(format_star_float(2.5e-9)) == pytest.approx(2.5e-9)
    assert float(format_star_float(-3.25e8)) == pytest.approx(-3.25e8)


def _starfile_text(path, optics: pd.DataFrame, particles: pd.DataFrame) -> str:
    """The particle file as the starfile package writes it (the writer's reference), with RELION's version lines."""
    import re

    import starfile

    starfile.write({"optics": optics, "particles": particles}, path, float_format=format_star_float)
    return re.sub(r"^(data_(?:optics|particles))$", "# version 30001\n\n\\1", path.read_text(), flags=re.M)


def test_written_text_is_starfiles_for_every_kind_of_cell(tmp_path):
    table = read_particle_star(shared_data_dir() / BETAGAL / "particles_ctf_from_relion31_tutorial_goodclasses.star")
    particles = table.particles.iloc[:12].copy()
    particles["rlnAngleRot"] = [np.nan, 1e-9, -0.0, np.inf, 2.5e6, -1e-3, 0.0009999999, 999999.9999999, -7.25, 1e-300, 0.0, 123.4567895]
    particles["rlnClassNumber"] = np.arange(12, dtype=np.int32) - 5
    particles["rlnRandomSubset"] = np.arange(12, dtype=np.int64)
    particles["rlnMicrographName"] = ["a b.mrc", ""] + ["m.mrc"] * 10
    particles["rlnOpticsGroupName"] = pd.Series(["x y"] + ["g"] * 11, dtype="string", index=particles.index)
    ours = tmp_path / "ours.star"
    write_particle_star(ours, table.optics, particles)
    reference = _starfile_text(tmp_path / "reference.star", table.optics, particles)
    # the first line credits the writer; every other character is the same
    assert ours.read_text().split("\n", 1)[1] == reference.split("\n", 1)[1]
    assert ours.read_text().startswith("# Created by novomap")


def test_a_column_of_another_type_is_written_by_starfile(tmp_path):
    star, _ = make_dataset(tmp_path, rlnClassNumber=[3, 1, 4, 1, 5])
    table = read_particle_star(star)
    particles = table.particles.copy()
    particles["rlnIsFlipped"] = [True, False, True, False, True]
    out = tmp_path / "out.star"
    write_particle_star(out, table.optics, particles)
    # starfile's own text, dated to the second on its first line
    assert out.read_text().split("\n", 1)[1] == _starfile_text(tmp_path / "reference.star", table.optics, particles).split("\n", 1)[1]
    assert out.read_text().startswith("# Created by the starfile")
    assert read_particle_star(out).particles["rlnClassNumber"].tolist() == [3, 1, 4, 1, 5]
