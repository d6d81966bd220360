"""ParticleSet: parameters, path resolution, image reading (lazy, preread, scratch)."""

from __future__ import annotations

import os

import mrcfile
import numpy as np
import pytest
import torch
from _star_fixtures import (
    BOX,
    make_dataset,
    optics_columns,
    particle_columns,
    random_images,
    shared_data_dir,
    write_images,
    write_star,
)

from novomap.errors import NovomapError
from novomap.io.particles import ParticleSet

BETAGAL = "betagal_relion5_tutorial_particles"


def _snapshot(folder):
    """{file: (mtime_ns, bytes)} of every file under `folder`."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_betagal_particles_real_data():
    path = shared_data_dir() / BETAGAL / "particles_ctf_from_relion31_tutorial_goodclasses.star"
    particles = ParticleSet.from_star(path)
    assert particles.n == 1455 and len(particles) == 1455
    assert particles.box_size == 64
    assert particles.pixel_size_a == pytest.approx(3.54)
    assert particles.ctf_premultiplied.tolist() == [False]
    assert particles.voltage_kv.dtype == torch.float64
    assert torch.all(particles.voltage_kv == 200.0)
    assert torch.allclose(particles.cs_mm, torch.tensor(1.4, dtype=torch.float64))
    assert particles.defocus_u_a[0].item() == pytest.approx(10863.857422)
    assert particles.defocus_angle_deg[0].item() == pytest.approx(77.967194)
    assert particles.micrograph_names[0] == "MotionCorr/job002/Movies/20170629_00021_frameImage.mrc"
    assert torch.all(particles.optics_group == 0) and particles.optics_group.dtype == torch.int64
    assert torch.all(particles.rot_deg == 0) and torch.all(particles.origin_x_a == 0)

    # Shuffled indices across several stacks must come back in the order asked for.
    rng = np.random.default_rng(1)
    picks = rng.choice(particles.n, size=40, replace=False)
    images = particles.images(picks)
    assert images.shape == (40, 64, 64) and images.dtype == torch.float32
    for k in (0, 17, 39):
        number, stack = particles.table.particles["rlnImageName"].iloc[picks[k]].split("@")
        with mrcfile.open(path.parent / stack) as mrc:
            expected = mrc.data[int(number) - 1].astype(np.float32)
        assert torch.equal(images[k], torch.from_numpy(expected))
    # Normalised, contrast-inverted images (README: mean about 0.04, std about 1.03).
    every = particles.images(np.arange(particles.n))
    assert abs(every.mean().item() - 0.04) < 0.03
    assert abs(every.std().item() - 1.03) < 0.05


def test_refined_poses_real_data():
    particles = ParticleSet.from_star(shared_data_dir() / BETAGAL / "particles_with_relion_refined_poses.star")
    table = particles.table.particles
    assert particles.n == 582
    for name, label in [
        ("rot_deg", "rlnAngleRot"),
        ("tilt_deg", "rlnAngleTilt"),
        ("psi_deg", "rlnAnglePsi"),
        ("origin_x_a", "rlnOriginXAngst"),
        ("origin_y_a", "rlnOriginYAngst"),
    ]:
        assert np.array_equal(getattr(particles, name).numpy(), table[label].to_numpy(dtype=np.float64)), name
    assert particles.origin_x_a[0].item() == pytest.approx(-8.029390)


def test_relion30_ribosome_real_data():
    particles = ParticleSet.from_star(shared_data_dir() / "ribosome50S_empiar10076_cryodrgn" / "empiar_10076_7.star")
    assert particles.n == 7
    assert particles.box_size == 320
    # The stack header says 0 Å/px; the STAR file's detector pixel / magnification wins.
    assert particles.pixel_size_a == pytest.approx(1.31, abs=1e-3)
    assert torch.allclose(particles.voltage_kv, torch.full((7,), 300.0, dtype=torch.float64))
    assert torch.allclose(particles.amplitude_contrast, torch.full((7,), 0.07, dtype=torch.float64))
    assert particles.micrograph_names == [str(k) for k in range(1, 8)]
    images = particles.images([6, 0])
    assert images.shape == (2, 320, 320)
    assert torch.isfinite(images).all()
    assert not torch.equal(images[0], images[1])


def test_parameters_defaults_and_overrides(tmp_path):
    star, _ = make_dataset(tmp_path, n=3)
    particles = ParticleSet.from_star(star)
    assert particles.defocus_u_a.tolist() == [10000.0, 10100.0, 10200.0]
    assert particles.defocus_v_a.tolist() == [9000.0, 9100.0, 9200.0]
    assert particles.defocus_angle_deg.tolist() == [10.0, 11.0, 12.0]
    assert particles.phase_shift_deg.tolist() == [0.0] * 3
    assert particles.bfactor_a2.tolist() == [0.0] * 3
    assert particles.ctf_scale.tolist() == [1.0] * 3
    for name in ("rot_deg", "tilt_deg", "psi_deg", "origin_x_a", "origin_y_a"):
        assert getattr(particles, name).tolist() == [0.0] * 3
    assert particles.micrograph_names == ["mic0.mrc", "mic1.mrc", "mic0.mrc"]

    overrides = dict(
        rlnPhaseShift=[0, 90, 45],
        rlnCtfBfactor=[0, -50, 10],
        rlnCtfScalefactor=[1, 0.5, 0.8],
        rlnAmplitudeContrast=[0.1, 0.2, 0.07],  # per particle: beats the optics group's 0.1
        rlnAngleRot=[10, 20, 30],
        rlnAngleTilt=[40, 50, 60],
        rlnAnglePsi=[70, 80, 90],
        rlnOriginXAngst=[1.5, -2, 0],
        rlnOriginYAngst=[0, 3, -4.5],
    )
    particles_table = particle_columns(3, **overrides)
    del particles_table["rlnMicrographName"]
    star = write_star(tmp_path / "more.star", optics_columns(), particles_table)
    particles = ParticleSet.from_star(star)
    assert particles.phase_shift_deg.tolist() == [0, 90, 45]
    assert particles.bfactor_a2.tolist() == [0, -50, 10]
    assert particles.ctf_scale.tolist() == [1, 0.5, 0.8]
    assert particles.amplitude_contrast.tolist() == [0.1, 0.2, 0.07]
    assert particles.rot_deg.tolist() == [10, 20, 30]
    assert particles.tilt_deg.tolist() == [40, 50, 60]
    assert particles.psi_deg.tolist() == [70, 80, 90]
    assert particles.origin_x_a.tolist() == [1.5, -2, 0]
    assert particles.origin_y_a.tolist() == [0, 3, -4.5]
    assert particles.micrograph_names == ["", "", ""]


def test_relion30_origins_in_pixels_become_angstrom(tmp_path):
    write_images(tmp_path / "stack.mrcs", random_images(2))
    particles = particle_columns(
        2,
        rlnVoltage=[300] * 2,
        rlnSphericalAberration=[2.7] * 2,
        rlnAmplitudeContrast=[0.1] * 2,
        rlnMagnification=[20000] * 2,
        rlnDetectorPixelSize=[5.0] * 2,  # 2.5 Å/px
        rlnOriginX=[2.0, -1.0],
        rlnOriginY=[0.0, 4.0],
    )
    del particles["rlnOpticsGroup"]
    particle_set = ParticleSet.from_star(write_star(tmp_path / "old.star", None, particles, particle_block=""))
    assert particle_set.pixel_size_a == pytest.approx(2.5)
    assert particle_set.origin_x_a.tolist() == pytest.approx([5.0, -2.5])
    assert particle_set.origin_y_a.tolist() == pytest.approx([0.0, 10.0])


def test_several_optics_groups_with_one_box_and_pixel_size(tmp_path):
    write_images(tmp_path / "stack.mrcs", random_images(4))
    optics = optics_columns(
        2, rlnVoltage=[300.0, 200.0], rlnSphericalAberration=[2.7, 1.4], rlnCtfDataAreCtfPremultiplied=[0, 1]
    )
    optics["rlnOpticsGroup"] = [7, 3]  # numbers need not be 1..G nor sorted
    star = write_star(tmp_path / "p.star", optics, particle_columns(4, rlnOpticsGroup=[3, 7, 7, 3]))
    particles = ParticleSet.from_star(star)
    assert particles.optics_group.tolist() == [1, 0, 0, 1]  # rows of the optics table
    assert particles.voltage_kv.tolist() == [200.0, 300.0, 300.0, 200.0]
    assert particles.cs_mm.tolist() == [1.4, 2.7, 2.7, 1.4]
    assert particles.ctf_premultiplied.tolist() == [False, True]


def test_float16_stack_matches_float32_source(tmp_path):
    source = random_images(6) * 3.0
    write_images(tmp_path / "f32" / "stack.mrcs", source, dtype="float32")
    write_images(tmp_path / "f16" / "stack.mrcs", source, dtype="float16")
    for folder in ("f32", "f16"):
        write_star(tmp_path / folder / "p.star", optics_columns(), particle_columns(6))
    with mrcfile.open(tmp_path / "f16" / "stack.mrcs", header_only=True) as mrc:
        assert int(mrc.header.mode) == 12
    full = ParticleSet.from_star(tmp_path / "f32" / "p.star").images(np.arange(6))
    half = ParticleSet.from_star(tmp_path / "f16" / "p.star").images(np.arange(6))
    assert half.dtype == torch.float32
    assert torch.equal(full, torch.from_numpy(source))
    # Exactly the float16 rounding of the source, i.e. equal to float16 precision.
    assert torch.equal(half, torch.from_numpy(source.astype(np.float16).astype(np.float32)))
    assert torch.allclose(half, full, rtol=2**-10, atol=1e-6)


def test_images_across_stacks_in_any_order(tmp_path):
    first, second = random_images(3, seed=1), random_images(4, seed=2)
    write_images(tmp_path / "a.mrcs", first)
    write_images(tmp_path / "b.mrcs", second)
    names = ["2@a.mrcs", "4@b.mrcs", "1@a.mrcs", "1@b.mrcs", "3@a.mrcs", "2@b.mrcs"]
    expected = np.stack([first[1], second[3], first[0], second[0], first[2], second[1]])
    star = write_star(tmp_path / "p.star", optics_columns(), particle_columns(6, rlnImageName=names))
    # A cache of one open stack forces files to be closed and reopened.
    particles = ParticleSet(ParticleSet.from_star(star).table, max_open_stacks=1)
    order = [5, 0, 3, 3, 1, 4, 2]
    assert torch.equal(particles.images(order), torch.from_numpy(expected[order]))
    assert torch.equal(particles.images(torch.tensor(order)), torch.from_numpy(expected[order]))
    assert particles.images([]).shape == (0, BOX, BOX)
    with pytest.raises(IndexError):
        particles.images([6])
    with pytest.raises(IndexError):
        particles.images([-1])


def test_paths_resolve_from_cwd_first_then_star_folder(tmp_path, monkeypatch):
    # The same relative name exists under the project directory and under the STAR file's folder;
    # pixel [0, 0] tells them apart (a ramp elsewhere: a blank image is refused on reading).
    ramp = np.arange(BOX * BOX, dtype=np.float32).reshape(BOX, BOX) * 1e-3
    write_images(tmp_path / "project" / "Extract" / "s.mrcs", np.stack([1.0 + ramp] * 2))
    write_images(tmp_path / "stars" / "Extract" / "s.mrcs", np.stack([2.0 + ramp] * 2))
    star = write_star(
        tmp_path / "stars" / "p.star", optics_columns(), particle_columns(2, stack="Extract/s.mrcs")
    )
    monkeypatch.chdir(tmp_path / "project")
    assert torch.all(ParticleSet.from_star(star).images([0, 1])[:, 0, 0] == 1.0)
    monkeypatch.chdir(tmp_path)
    from_star_folder = ParticleSet.from_star(star)
    assert torch.all(from_star_folder.images([0, 1])[:, 0, 0] == 2.0)
    # Resolved once: a later change of directory does not change which file is read.
    monkeypatch.chdir(tmp_path / "project")
    assert torch.all(from_star_folder.images([1])[:, 0, 0] == 2.0)
    # Absolute names are used as they are.
    absolute = str(tmp_path / "project" / "Extract" / "s.mrcs")
    star = write_star(tmp_path / "abs.star", optics_columns(), particle_columns(2, stack=absolute))
    monkeypatch.chdir(tmp_path / "stars")
    assert torch.all(ParticleSet.from_star(star).images([0])[:, 0, 0] == 1.0)


def test_preread_and_scratch_match_lazy_and_leave_inputs_alone(tmp_path):
    inputs = tmp_path / "in"
    first, second = random_images(3, seed=3), random_images(3, seed=4)
    # Two stacks with the same file name in different folders: scratch copies must not collide.
    write_images(inputs / "x" / "stack.mrcs", first)
    write_images(inputs / "y" / "stack.mrcs", second, dtype="float16")
    names = ["1@x/stack.mrcs", "1@y/stack.mrcs", "3@x/stack.mrcs", "2@y/stack.mrcs", "3@y/stack.mrcs"]
    star = write_star(inputs / "p.star", optics_columns(), particle_columns(5, rlnImageName=names))
    os.utime(star, ns=(1_000_000_000, 1_000_000_000))  # an old mtime, so that a rewrite would show
    before = _snapshot(inputs)

    everything = np.arange(5)
    lazy = ParticleSet.from_star(star).images(everything)
    preread = ParticleSet.from_star(star, preread=True)
    scratch = tmp_path / "scratch"
    copied = ParticleSet.from_star(star, scratch_dir=scratch)

    assert torch.equal(lazy[0], torch.from_numpy(first[0]))
    assert torch.equal(preread.images(everything), lazy)
    assert torch.equal(preread.images([4, 1]), lazy[[4, 1]])
    assert torch.equal(copied.images(everything), lazy)
    # Reads really come from the copies, one per stack, under the scratch folder.
    assert len(copied.stack_paths) == 2
    assert all(scratch in p.parents for p in copied.stack_paths)
    assert len({p.name for p in copied.stack_paths}) == 2
    assert _snapshot(inputs) == before

    copied.close()  # removes the copies, falls back to the inputs
    assert not any(p.is_file() for p in scratch.rglob("*"))
    assert torch.equal(copied.images(everything), lazy)
    assert _snapshot(inputs) == before


def test_background_std_reads_the_scale_of_the_input_images(tmp_path):
    """The corners' std of each image on the input grid, median over the sampled particles: 1 for
    unit noise whatever the mean, s for images scaled by s, and the same from a preread set."""
    box = 32
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((40, box, box)).astype(np.float32) + 5.0  # any mean
    axis = np.arange(box) - box // 2
    inside = np.hypot(axis[:, None], axis[None, :]) <= box / 2
    noise[:, inside] *= 3.0  # a "particle": only the corners count
    for scale in (1.0, 1000.0):
        folder = tmp_path / f"x{scale:g}"
        write_images(folder / "stack.mrcs", noise * scale)
        star = write_star(folder / "p.star", optics_columns(rlnImageSize=[box]), particle_columns(40))
        for preread in (False, True):
            std = ParticleSet.from_star(star, preread=preread).background_std(max_images=25)
            assert std == pytest.approx(scale, rel=0.03), (scale, preread)


def test_output_names_lead_from_the_current_directory_to_the_same_images(tmp_path, monkeypatch):
    """Names that resolve from the current directory are kept; a stack found only beside the STAR
    file is renamed by its path from here, so that a STAR file written elsewhere reads the same images."""
    project = tmp_path / "project"
    data = project / "data"
    images = random_images(4)
    write_images(data / "stack.mrcs", images)
    write_images(project / "kept.mrcs", images[::-1].copy())
    columns = particle_columns(4)
    columns["rlnImageName"] = ["1@stack.mrcs", "000002@stack.mrcs", "1@kept.mrcs", "2@kept.mrcs"]
    star = write_star(data / "p.star", optics_columns(), columns)
    monkeypatch.chdir(project)
    particles = ParticleSet.from_star(star)
    names = particles.output_image_names()
    assert names == ["1@data/stack.mrcs", "000002@data/stack.mrcs", "1@kept.mrcs", "2@kept.mrcs"]  # under the project: relative
    columns["rlnImageName"] = names
    elsewhere = write_star(project / "out" / "run_data.star", optics_columns(), columns)
    assert torch.equal(ParticleSet.from_star(elsewhere).images(np.arange(4)), particles.images(np.arange(4)))
    monkeypatch.chdir(data)  # from the STAR file's folder every name resolves as it is (kept.mrcs is not there)
    write_images(data / "kept.mrcs", images[::-1].copy())
    assert ParticleSet.from_star(star).output_image_names() == ["1@stack.mrcs", "000002@stack.mrcs", "1@kept.mrcs", "2@kept.mrcs"]


def test_an_unusable_scratch_dir_is_a_clear_error(tmp_path):
    star, _ = make_dataset(tmp_path / "data")
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for scratch in (a_file, a_file / "below"):
        with pytest.raises(NovomapError, match="--scratch-dir"):
            ParticleSet.from_star(star, scratch_dir=scratch)
