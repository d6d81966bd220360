"""cryoSPARC `.cs` input: real beta-gal particles written as a cryoSPARC project, read back.

The `.cs` files are built here from the STAR file with conversions derived independently of
novomap (scipy's rotations, plain NumPy): pose = rotation vector of the active intrinsic ZYZ
rotation (rot, tilt, psi), i.e. of RELION's matrix transposed; shift = origin in pixels; angles
in radians. Reading them must give the same ParticleSet, the same images and the same map.
"""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from _star_fixtures import random_images, shared_data_dir, write_images
from scipy.spatial.transform import Rotation

from novomap.errors import InputError
from novomap.io.cryosparc import (
    CryosparcOptions,
    add_cryosparc_arguments,
    find_passthrough,
    read_cryosparc,
    rotation_vectors_to_matrices,
)
from novomap.io.mrc import write_stack
from novomap.io.particles import ParticleSet
from novomap.io.star import read_particle_star
from novomap.physics.euler import euler_to_matrix
from novomap.reconstruct import reconstruct_particles

POSES_STAR = Path("betagal_relion5_tutorial_particles") / "particles_with_relion_refined_poses.star"
PIXEL = 3.54


# --------------------------------------------------------------------------------------------
# Building .cs files (numpy.save of a structured array, as cryoSPARC writes them)


def _save_cs(path: Path, columns: dict[str, tuple[str, object]]) -> Path:
    """columns: field -> (numpy type, values (n,) or (n, k)); written with numpy.save like cryoSPARC."""
    n = len(next(iter(columns.values()))[1])
    dtype = []
    for name, (kind, values) in columns.items():
        values = np.asarray(values)
        dtype.append((name, kind, values.shape[1:]) if values.ndim > 1 else (name, kind))
    array = np.zeros(n, dtype=dtype)
    for name, (_, values) in columns.items():
        array[name] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # keep the .cs name (np.save(path) would add .npy)
        np.save(handle, array)
    return path


def _relion_to_cryosparc(star_path: Path, project: Path) -> tuple[Path, Path, dict]:
    """Write the STAR file's particles as project/J9/J9_particles.cs + J9_passthrough_particles.cs.

    Stacks are linked into project/J3/imported/ as cryoSPARC's import does; blob paths are
    relative to the project (half of them with the '>' prefix of older versions). The main file
    has blob/* and alignments3D/*, the passthrough (rows shuffled, extra rows) ctf/* and location/*.
    """
    blocks = starfile.read(star_path, always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    n = len(particles)
    imported = project / "J3" / "imported"
    imported.mkdir(parents=True)
    paths, index = [], []
    for row, name in enumerate(particles["rlnImageName"]):
        number, stack = name.split("@")
        link = imported / Path(stack).name
        if not link.exists():
            link.symlink_to(star_path.parent / stack)
        paths.append((">" if row % 2 else "") + f"J3/imported/{Path(stack).name}")
        index.append(int(number) - 1)
    rot, tilt, psi = (particles[f"rlnAngle{a}"].to_numpy() for a in ("Rot", "Tilt", "Psi"))
    pose = Rotation.from_euler("ZYZ", np.stack([rot, tilt, psi], 1), degrees=True).as_rotvec()
    shift = np.stack([particles["rlnOriginXAngst"], particles["rlnOriginYAngst"]], 1) / PIXEL
    box = int(optics["rlnImageSize"].iloc[0])
    uid = np.arange(n, dtype=np.uint64) * 7919 + 12345678901234
    main = _save_cs(
        project / "J9" / "J9_particles.cs",
        {
            "uid": ("<u8", uid),
            "blob/path": ("S80", np.array(paths, dtype="S80")),
            "blob/idx": ("<u4", index),
            "blob/shape": ("<u4", np.tile([box, box], (n, 1))),
            "blob/psize_A": ("<f4", np.full(n, PIXEL)),
            "blob/sign": ("<f4", np.ones(n)),
            "alignments3D/pose": ("<f4", pose),
            "alignments3D/shift": ("<f4", shift),
            "alignments3D/psize_A": ("<f4", np.full(n, PIXEL)),
        },
    )
    order = np.random.default_rng(0).permutation(n + 5)  # 5 particles the main file does not have
    all_uid = np.concatenate([uid, uid[-1] + 1 + np.arange(5, dtype=np.uint64)])

    def extended(values) -> np.ndarray:
        values = np.asarray(values)
        return np.concatenate([values, values[:5]])[order]

    passthrough = _save_cs(
        project / "J9" / "J9_passthrough_particles.cs",
        {
            "uid": ("<u8", all_uid[order]),
            "ctf/accel_kv": ("<f4", extended(np.full(n, optics["rlnVoltage"].iloc[0]))),
            "ctf/cs_mm": ("<f4", extended(np.full(n, optics["rlnSphericalAberration"].iloc[0]))),
            "ctf/amp_contrast": ("<f4", extended(np.full(n, optics["rlnAmplitudeContrast"].iloc[0]))),
            "ctf/df1_A": ("<f4", extended(particles["rlnDefocusU"])),
            "ctf/df2_A": ("<f4", extended(particles["rlnDefocusV"])),
            "ctf/df_angle_rad": ("<f4", extended(np.radians(particles["rlnDefocusAngle"]))),
            "ctf/phase_shift_rad": ("<f4", extended(np.radians(particles["rlnPhaseShift"]))),
            "ctf/scale": ("<f4", extended(particles["rlnCtfScalefactor"])),
            "ctf/bfactor": ("<f4", extended(particles["rlnCtfBfactor"])),
            "ctf/exp_group_id": ("<u4", extended(np.full(n, 1))),
            "location/micrograph_path": ("S100", extended(np.array(particles["rlnMicrographName"], dtype="S100"))),
        },
    )
    return main, passthrough, {"pose": pose, "shift": shift, "uid": uid, "paths": paths, "index": index}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(STAR ParticleSet, .cs ParticleSet, main .cs path, build info) for the refined beta-gal particles."""
    star_path = shared_data_dir() / POSES_STAR
    project = tmp_path_factory.mktemp("cryosparc") / "P1"
    main, _, info = _relion_to_cryosparc(star_path, project)
    from_star = ParticleSet.from_star(star_path)
    from_cs = ParticleSet.from_star(main)  # the .cs dispatch in read_particle_star
    yield from_star, from_cs, main, info
    from_star.close()
    from_cs.close()


# --------------------------------------------------------------------------------------------
# Real particles: same parameters, images and map as the STAR file


def test_rotation_vector_convention_is_relion_matrix_transposed():
    """The independent scipy derivation used to build the files agrees with RELION's matrix, transposed."""
    g = np.random.default_rng(3)
    angles = np.stack([g.uniform(-180, 180, 50), g.uniform(0, 180, 50), g.uniform(-180, 180, 50)], 1)
    relion = euler_to_matrix(*torch.from_numpy(angles).T).numpy()
    cs = Rotation.from_euler("ZYZ", angles, degrees=True)
    np.testing.assert_allclose(cs.as_matrix(), np.swapaxes(relion, 1, 2), atol=1e-12)
    np.testing.assert_allclose(rotation_vectors_to_matrices(cs.as_rotvec()), cs.as_matrix(), atol=1e-12)


def test_real_cs_gives_the_star_parameters(real):
    from_star, from_cs, main, _ = real
    assert from_cs.n == from_star.n == 582
    assert from_cs.box_size == from_star.box_size == 64
    assert from_cs.pixel_size_a == pytest.approx(from_star.pixel_size_a, rel=1e-6)
    for name, tolerance in [
        ("defocus_u_a", 2e-3),
        ("defocus_v_a", 2e-3),
        ("defocus_angle_deg", 1e-4),
        ("voltage_kv", 1e-4),
        ("cs_mm", 1e-6),
        ("amplitude_contrast", 1e-7),
        ("phase_shift_deg", 1e-6),
        ("bfactor_a2", 1e-6),
        ("ctf_scale", 1e-6),
        ("origin_x_a", 1e-4),
        ("origin_y_a", 1e-4),
    ]:
        np.testing.assert_allclose(getattr(from_cs, name), getattr(from_star, name), atol=tolerance, rtol=0, err_msg=name)
    a = euler_to_matrix(from_star.rot_deg, from_star.tilt_deg, from_star.psi_deg)
    b = euler_to_matrix(from_cs.rot_deg, from_cs.tilt_deg, from_cs.psi_deg)
    assert (a - b).abs().max() < 1e-5
    assert from_cs.micrograph_names == from_star.micrograph_names
    assert from_cs.table.path == main
    assert list(from_cs.table.optics["rlnOpticsGroupName"]) == ["exp_group1"]


def test_real_cs_gives_the_star_images(real):
    from_star, from_cs, _, _ = real
    rows = np.arange(from_star.n)
    assert torch.equal(from_cs.images(rows), from_star.images(rows))


def test_real_cs_reconstructs_the_star_map(real, one_thread):
    from_star, from_cs, _, _ = real
    a = reconstruct_particles(from_star).numpy()
    b = reconstruct_particles(from_cs).numpy()
    assert _cc(a, b) > 0.99


def test_dark_particles_with_sign_minus_one_give_the_same_map(real, tmp_path, one_thread):
    """blob/sign -1: the stacks hold contrast-inverted (dark) particles; the map must not change."""
    from_star, _, main, _ = real
    array = np.load(main)
    project = tmp_path / "P2"
    stacks = {}
    for path in np.unique(array["blob/path"]):
        name = path.decode().lstrip(">")
        if name not in stacks:
            source = main.parent.parent / name
            with mrcfile.open(source, permissive=True) as mrc:
                write_stack(project / "J4" / "inverted" / Path(name).name, -np.asarray(mrc.data, dtype=np.float32), PIXEL)
            stacks[name] = f"J4/inverted/{Path(name).name}"
    array["blob/path"] = [stacks[p.decode().lstrip(">")].encode() for p in array["blob/path"]]
    array["blob/sign"] = -1.0
    dark_path = project / "J8" / "J8_particles.cs"
    dark_path.parent.mkdir(parents=True)
    with open(dark_path, "wb") as handle:
        np.save(handle, array)
    with ParticleSet(read_cryosparc(dark_path, passthrough=main.parent / "J9_passthrough_particles.cs")) as dark:
        assert torch.equal(dark.images(np.arange(5)), -from_star.images(np.arange(5)))
        np.testing.assert_allclose(dark.ctf_scale, -from_star.ctf_scale)
        assert _cc(reconstruct_particles(dark).numpy(), reconstruct_particles(from_star).numpy()) > 0.99


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


# --------------------------------------------------------------------------------------------
# Synthetic files: options, discovery and errors

N = 4
BOX = 8


def _synthetic(folder: Path, main_fields: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A small project: folder/J1/imported/stack.mrcs, folder/J2/J2_particles.cs with all fields."""
    write_images(folder / "J1" / "imported" / "stack.mrcs", random_images(N, BOX))
    columns = {
        "uid": ("<u8", np.arange(N) + 100),
        "blob/path": ("S40", np.array([b"J1/imported/stack.mrcs"] * N)),
        "blob/idx": ("<u4", np.arange(N)[::-1]),
        "blob/shape": ("<u4", np.tile([BOX, BOX], (N, 1))),
        "blob/psize_A": ("<f4", np.full(N, 2.0)),
        "ctf/accel_kv": ("<f4", np.full(N, 300.0)),
        "ctf/cs_mm": ("<f4", np.full(N, 2.7)),
        "ctf/amp_contrast": ("<f4", np.full(N, 0.07)),
        "ctf/df1_A": ("<f4", 15000.0 + np.arange(N)),
        "ctf/df2_A": ("<f4", 14000.0 + np.arange(N)),
        "ctf/df_angle_rad": ("<f4", np.full(N, math.pi / 2)),
        "ctf/exp_group_id": ("<u4", [0, 0, 1, 1]),
    }
    columns.update(main_fields or {})
    for name in drop:
        del columns[name]
    return _save_cs(folder / "J2" / "J2_particles.cs", columns)


def test_synthetic_conversion_and_optics_groups(tmp_path):
    table = read_particle_star(_synthetic(tmp_path))
    particles, optics = table.particles, table.optics
    stack = (tmp_path / "J1" / "imported" / "stack.mrcs").absolute()
    assert list(particles["rlnImageName"]) == [f"{k:06d}@{stack}" for k in (4, 3, 2, 1)]
    np.testing.assert_allclose(particles["rlnDefocusAngle"], 90.0, atol=1e-5)
    assert list(particles["rlnOpticsGroup"]) == [1, 1, 2, 2]
    assert list(optics["rlnOpticsGroupName"]) == ["exp_group0", "exp_group1"]
    assert list(optics["rlnImageSize"]) == [BOX, BOX]
    assert "rlnAngleRot" not in particles.columns  # no alignments3D: no poses
    with ParticleSet(table) as particles_set:
        assert particles_set.images([0]).shape == (1, BOX, BOX)


def test_project_dir_option_and_box_from_the_stack(tmp_path):
    cs = _synthetic(tmp_path / "project", drop=("blob/shape",))
    elsewhere = tmp_path / "elsewhere" / "particles.cs"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(cs.read_bytes())
    with pytest.raises(InputError) as error:
        read_cryosparc(elsewhere)
    assert error.value.label == "blob/path" and error.value.row == 1 and "--cs-project-dir" in str(error.value)
    table = read_cryosparc(elsewhere, project_dir=tmp_path / "project")
    assert list(table.optics["rlnImageSize"]) == [BOX, BOX]


def test_command_line_options_reach_the_reader(tmp_path):
    import argparse

    cs = _synthetic(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere" / "particles.cs"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(cs.read_bytes())
    parser = argparse.ArgumentParser()
    add_cryosparc_arguments(parser)
    args = parser.parse_args(["--cs-project-dir", str(tmp_path / "project")])
    assert args.cs_project_dir == str(tmp_path / "project")
    options = CryosparcOptions.from_args(args)
    assert options == CryosparcOptions(project_dir=tmp_path / "project")
    assert len(read_particle_star(elsewhere, options).particles) == N
    assert len(ParticleSet.from_star(elsewhere, cryosparc=options).optics_group) == N
    # nothing is left behind for the next reader: without the options the stacks are not found
    with pytest.raises(InputError):
        read_particle_star(elsewhere)


def test_poses_and_sign(tmp_path):
    rotations = Rotation.from_euler("ZYZ", [[10, 20, 30], [0, 90, 0], [-170, 135, 45], [5, 0.0, 0]], degrees=True)
    cs = _synthetic(
        tmp_path,
        {
            "alignments3D/pose": ("<f8", rotations.as_rotvec()),
            "alignments3D/shift": ("<f8", [[1, -2], [0, 0], [0.5, 0.25], [-3, 3]]),
            "blob/sign": ("<f4", [-1, 1, -1, 1]),
            "ctf/scale": ("<f4", [1, 1, 0.5, 2]),
        },
    )
    particles = read_cryosparc(cs).particles
    rot, tilt, psi = (torch.tensor(particles[f"rlnAngle{a}"].to_numpy()) for a in ("Rot", "Tilt", "Psi"))
    np.testing.assert_allclose(euler_to_matrix(rot, tilt, psi).numpy(), np.swapaxes(rotations.as_matrix(), 1, 2), atol=1e-9)
    np.testing.assert_allclose(particles["rlnOriginXAngst"], [2, 0, 1, -6])
    np.testing.assert_allclose(particles["rlnOriginYAngst"], [-4, 0, 0.5, 6])
    np.testing.assert_allclose(particles["rlnCtfScalefactor"], [-1, 1, -0.5, 2])


def test_passthrough_is_found_by_name(tmp_path):
    main = tmp_path / "J5" / "cryosparc_P1_J5_004_particles.cs"
    main.parent.mkdir()
    main.write_bytes(b"")
    other = tmp_path / "J5" / "J5_passthrough_particles.cs"
    other.write_bytes(b"")
    assert find_passthrough(main) == other
    assert find_passthrough(other) is None
    simple = tmp_path / "J6" / "particles_selected.cs"
    simple.parent.mkdir()
    simple.write_bytes(b"")
    (tmp_path / "J6" / "passthrough_particles_selected.cs").write_bytes(b"")
    assert find_passthrough(simple) == tmp_path / "J6" / "passthrough_particles_selected.cs"


# Errors: each names the file, the row and the field


def _error(path: Path, **kwargs) -> InputError:
    with pytest.raises(InputError) as error:
        read_cryosparc(path, **kwargs)
    assert str(error.value).startswith(str(error.value.path))
    return error.value


def test_missing_field_without_passthrough(tmp_path):
    error = _error(_synthetic(tmp_path, drop=("ctf/df1_A",)))
    assert error.label == "ctf/df1_A" and error.path.endswith("J2_particles.cs") and "--passthrough" in str(error)


def test_missing_field_with_passthrough(tmp_path):
    cs = _synthetic(tmp_path, drop=("ctf/df2_A",))
    _save_cs(cs.parent / "J2_passthrough_particles.cs", {"uid": ("<u8", np.arange(N) + 100), "ctf/cs_mm": ("<f4", np.ones(N))})
    error = _error(cs)
    assert error.label == "ctf/df2_A" and "passthrough" in str(error)


def test_field_taken_from_passthrough(tmp_path):
    cs = _synthetic(tmp_path, drop=("ctf/df2_A",))
    _save_cs(cs.parent / "J2_passthrough_particles.cs", {"uid": ("<u8", np.arange(N)[::-1] + 100), "ctf/df2_A": ("<f4", [1.0, 2.0, 3.0, 4.0])})
    np.testing.assert_allclose(read_cryosparc(cs).particles["rlnDefocusV"], [4, 3, 2, 1])


def test_uid_not_in_passthrough(tmp_path):
    cs = _synthetic(tmp_path, drop=("ctf/df2_A",))
    extra = _save_cs(tmp_path / "pt.cs", {"uid": ("<u8", [100, 101, 103]), "ctf/df2_A": ("<f4", [1.0, 2.0, 3.0])})
    error = _error(cs, passthrough=extra)
    assert (error.label, error.row) == ("uid", 3) and "102" in str(error)


def test_bad_value_in_passthrough_names_both_files(tmp_path):
    cs = _synthetic(tmp_path, drop=("ctf/df2_A",))
    extra = _save_cs(tmp_path / "pt.cs", {"uid": ("<u8", np.arange(N) + 100), "ctf/df2_A": ("<f4", [1.0, np.nan, 3.0, 4.0])})
    error = _error(cs, passthrough=extra)
    assert (error.label, error.row) == ("ctf/df2_A", 2) and "pt.cs" in str(error)


@pytest.mark.parametrize(
    "fields, label, row",
    [
        ({"blob/path": ("S40", [b"J1/imported/stack.mrcs"] * 2 + [b"J1/imported/missing.mrcs"] * 2)}, "blob/path", 3),
        ({"blob/path": ("S40", [b"J1/imported/stack.mrcs"] * 3 + [b">"])}, "blob/path", 4),
        ({"ctf/df1_A": ("<f4", [1.0, 2.0, np.inf, 4.0])}, "ctf/df1_A", 3),
        ({"blob/psize_A": ("<f4", [2.0, 0.0, 2.0, 2.0])}, "blob/psize_A", 2),
        ({"blob/idx": ("<f4", [0.0, 1.5, 2.0, 3.0])}, "blob/idx", 2),
        ({"blob/shape": ("<u4", [[8, 8], [8, 8], [8, 6], [8, 8]])}, "blob/shape", 3),
        ({"blob/sign": ("<f4", [1, 1, 1, 0.5])}, "blob/sign", 4),
        ({"ctf/amp_contrast": ("<f4", [0.1, 1.0, 0.1, 0.1])}, "ctf/amp_contrast", 2),
        ({"alignments3D/pose": ("<f4", np.zeros((N, 3)))}, "alignments3D/shift", None),
        ({"alignments3D/pose": ("<f4", np.zeros((N, 2))), "alignments3D/shift": ("<f4", np.zeros((N, 2)))}, "alignments3D/pose", None),
    ],
)
def test_bad_values(tmp_path, fields, label, row):
    error = _error(_synthetic(tmp_path, fields))
    assert (error.label, error.row) == (label, row)


def test_image_beyond_the_stack_end(tmp_path):
    cs = _synthetic(tmp_path, {"blob/idx": ("<u4", [0, 1, 2, 9])})
    with pytest.raises(InputError) as error:
        ParticleSet.from_star(cs)
    assert error.value.row == 4 and "beyond the end" in str(error.value)


def test_files_that_are_not_cs_tables(tmp_path):
    text = tmp_path / "text.cs"
    text.write_text("data_particles\n")
    assert "NumPy" in str(_error(text))
    plain = tmp_path / "plain.cs"
    with open(plain, "wb") as handle:
        np.save(handle, np.zeros(3))
    assert "structured" in str(_error(plain))
    objects = tmp_path / "objects.cs"
    with open(objects, "wb") as handle:
        np.save(handle, np.array([(1, "a")], dtype=[("uid", "<u8"), ("blob/path", "O")]), allow_pickle=True)
    assert "Python objects" in str(_error(objects))
    empty = _save_cs(tmp_path / "empty.cs", {"uid": ("<u8", np.zeros(0))})
    assert "no rows" in str(_error(empty))
    assert "not found" in str(_error(tmp_path / "absent.cs"))


def test_initial_model_reads_a_moved_cs_file_with_its_project_folder(tmp_path, capsys):
    from novomap.commands.main import main

    cs = _synthetic(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere" / "particles.cs"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(cs.read_bytes())
    common = ["initial-model", "--i", str(elsewhere), "--iter", "1", "--j", "1", "--no-report", "--quiet", "--particle-diameter", "14", "--starts", "1"]
    # without the project folder the stacks cannot be found: one line naming the file and the field
    assert main([*common, "--o", str(tmp_path / "lost")]) == 2
    assert "blob/path" in capsys.readouterr().err
    # with it, the whole job runs (the option reaches every reader of the input, not a global)
    assert main([*common, "--o", str(tmp_path / "job"), "--cs-project-dir", str(tmp_path / "project")]) == 0
    assert (tmp_path / "job" / "initial_model.mrc").is_file()
