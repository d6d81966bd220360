"""`novomap simulate` / `novomap demo`: conventions (origin sign, poses, CTF), noise level,
normalisation, file formats and reproducibility of simulated data sets."""

from __future__ import annotations

import argparse
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from novomap.commands import demo as demo_command
from novomap.commands import simulate as simulate_command
from novomap.demo_data import load_demo_map
from novomap.errors import NovomapError
from novomap.io.mrc import read_map
from novomap.io.particles import ParticleSet
from novomap.io.star import read_particle_star
from novomap.maps.fsc import fsc, resolution_at
from novomap.reconstruct import reconstruct_particles
from novomap.simulate import (
    CtfParameters,
    ParticleParameters,
    SimulationOptions,
    clean_images,
    make_projector,
    masked_variance,
    model_map,
    particle_mask,
    simulate,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUTORIAL_STAR = DATA / "betagal_relion31_tutorial_metadata" / "Extract" / "job018" / "particles.star"
SMALL_MODEL = DATA / "models" / "4ake_chainA_protein_B20.pdb"
BOX = 64
PIXEL_A = 3.54


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    return load_demo_map()[0]


def _options(**changes) -> SimulationOptions:
    values = dict(n=20, snr=0.1, box=BOX, pixel_size_a=PIXEL_A, seed=0, defocus_min_a=8000.0, defocus_max_a=13000.0)
    values.update(changes)
    return SimulationOptions(**values)


def _parameters_from_star(particles: ParticleSet) -> ParticleParameters:
    """What a reader gets back from the STAR file, as simulation parameters (shift = -origin)."""
    origins = torch.stack([particles.origin_x_a, particles.origin_y_a], -1)
    ctf = CtfParameters(
        particles.defocus_u_a,
        particles.defocus_v_a,
        particles.defocus_angle_deg,
        float(particles.voltage_kv[0]),
        float(particles.cs_mm[0]),
        float(particles.amplitude_contrast[0]),
    )
    return ParticleParameters(particles.rot_deg, particles.tilt_deg, particles.psi_deg, -origins / particles.pixel_size_a, ctf)


# --------------------------------------------------------------------------------------------
# A high-SNR data set: poses, origins and CTF must round-trip through the files


@pytest.fixture(scope="module")
def high_snr(volume, tmp_path_factory):
    out = tmp_path_factory.mktemp("high_snr")
    return simulate(volume, out, _options(n=200, snr=10.0, seed=1, particles_per_stack=64))


def test_reconstruction_from_true_poses_reproduces_truth(high_snr):
    # A wrong origin sign gives FSC 0.5 at ~40 Å and a transposed rotation at ~60 Å (checked by
    # breaking simulate on purpose); the correct one reaches ~7.3 Å (Nyquist 7.08 Å).
    with ParticleSet.from_star(high_snr.star_path) as particles:
        reconstruction = reconstruct_particles(particles)
    truth, pixel_size_a = read_map(high_snr.truth_path)
    curve = fsc(reconstruction, torch.from_numpy(truth))
    assert resolution_at(curve, 0.5, BOX, pixel_size_a) < 9.0


def test_star_file_is_relion_31_with_paths_relative_to_its_folder(high_snr, monkeypatch, tmp_path):
    table = read_particle_star(high_snr.star_path)
    assert not table.is_relion30
    optics = table.optics.iloc[0]
    assert optics["rlnOpticsGroupName"] == "opticsGroup1"
    assert int(optics["rlnImageSize"]) == BOX and int(optics["rlnImageDimensionality"]) == 2
    assert float(optics["rlnImagePixelSize"]) == pytest.approx(PIXEL_A)
    assert (float(optics["rlnVoltage"]), float(optics["rlnSphericalAberration"]), float(optics["rlnAmplitudeContrast"])) == (
        200.0,
        1.4,
        0.1,
    )
    particles = table.particles
    for label in (
        "rlnImageName", "rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor",
        "rlnCtfScalefactor", "rlnPhaseShift", "rlnOpticsGroup", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
        "rlnOriginXAngst", "rlnOriginYAngst",
    ):  # fmt: skip
        assert label in particles.columns
    assert len(particles) == 200
    assert particles["rlnImageName"].iloc[0] == "000001@Particles/stack_0001.mrcs"
    assert particles["rlnImageName"].iloc[64] == "000001@Particles/stack_0002.mrcs"
    assert particles["rlnMicrographName"].nunique() == 4  # one fake micrograph per stack of 64
    shifts = np.hypot(particles["rlnOriginXAngst"], particles["rlnOriginYAngst"]) / PIXEL_A
    assert shifts.max() <= 3.0 + 1e-5 and shifts.max() > 2.0
    # readable from another working directory: stacks resolve against the STAR file's folder
    monkeypatch.chdir(tmp_path)
    with ParticleSet.from_star(high_snr.star_path) as particles:
        assert particles.images([0, 199]).shape == (2, BOX, BOX)


def test_truth_map_is_the_input_map(high_snr, volume):
    truth, pixel_size_a = read_map(high_snr.truth_path)
    assert pixel_size_a == pytest.approx(PIXEL_A, abs=1e-4)
    assert np.allclose(truth, volume.numpy())


def test_poses_are_uniform_on_so3(high_snr):
    table = read_particle_star(high_snr.star_path).particles
    # uniform rotations: cos(tilt) uniform on [-1, 1], rot and psi uniform on (-180, 180]
    cos_tilt = np.cos(np.deg2rad(table["rlnAngleTilt"].to_numpy()))
    assert abs(cos_tilt.mean()) < 0.15 and 0.25 < cos_tilt.var() < 0.42  # var of U(-1, 1) = 1/3
    for label in ("rlnAngleRot", "rlnAnglePsi"):
        assert table[label].min() < -120 and table[label].max() > 120


# --------------------------------------------------------------------------------------------
# The origin sign (vdam-spec 1.4)


def test_particle_displaced_by_plus_3_px_has_origin_minus_3_px(volume, tmp_path):
    zeros = torch.zeros(2, dtype=torch.float64)
    defocus = torch.full((2,), 10000.0, dtype=torch.float64)
    parameters = ParticleParameters(
        zeros, zeros, zeros, torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64),
        CtfParameters(defocus, defocus, zeros, 200.0, 1.4, 0.1),
    )  # fmt: skip
    result = simulate(volume, tmp_path, _options(n=2, snr=1e4), parameters=parameters)
    with ParticleSet.from_star(result.star_path) as particles:
        assert particles.origin_x_a.tolist() == pytest.approx([-3 * PIXEL_A, 0.0], abs=1e-6)
        assert particles.origin_y_a.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
        images = particles.images([0, 1]).double()
    # centre of mass inside the particle circle (D2 map, identity pose: the projection is
    # point-symmetric about the box centre, and a symmetric CTF leaves the centre of mass alone)
    weights = images * particle_mask(BOX, 56.0)
    axis = torch.arange(BOX, dtype=torch.float64) - BOX // 2
    com_x = (weights.sum(1) * axis).sum(-1) / weights.sum((1, 2))
    com_y = (weights.sum(2) * axis).sum(-1) / weights.sum((1, 2))
    assert com_x.tolist() == pytest.approx([3.0, 0.0], abs=0.15)
    assert com_y.tolist() == pytest.approx([0.0, 0.0], abs=0.15)


# --------------------------------------------------------------------------------------------
# Noise level and normalisation


@pytest.fixture(scope="module")
def low_snr(volume, tmp_path_factory):
    out = tmp_path_factory.mktemp("low_snr")
    result = simulate(volume, out, _options(n=200, snr=0.1, seed=2))
    with ParticleSet.from_star(result.star_path) as particles:
        images = particles.images(np.arange(particles.n)).double()
        clean = clean_images(make_projector(volume, PIXEL_A), _parameters_from_star(particles), slice(None)).double()
    return result, images, clean


def test_measured_snr_matches_the_requested_one(low_snr):
    # Each written image is a*(clean + noise) + b; fit a, b against the clean image re-made from
    # the STAR values, then SNR = mean var(a * clean inside the circle) / mean var(residual).
    _, images, clean = low_snr
    flat_clean, flat_images = clean.flatten(1), images.flatten(1)
    centred = flat_clean - flat_clean.mean(1, keepdim=True)
    scale = (centred * flat_images).sum(1) / (centred * centred).sum(1)
    residual = flat_images - flat_images.mean(1, keepdim=True) - scale[:, None] * centred
    inside = particle_mask(BOX, 200.0 / PIXEL_A)
    signal = (scale**2 * masked_variance(clean, inside)).mean()
    noise = residual.var(1, unbiased=False).mean()
    assert float(signal / noise) == pytest.approx(0.1, rel=0.1)
    # normalised to background std 1, which at this SNR is nearly all noise
    assert float(noise) == pytest.approx(1.0, rel=0.05)


def test_images_are_normalised_and_particles_white(low_snr):
    _, images, _ = low_snr
    inside = particle_mask(BOX, 200.0 / PIXEL_A)
    background = images[:, ~inside]
    assert background.mean(1).abs().max() < 1e-4
    assert (background.std(1, unbiased=False) - 1).abs().max() < 1e-4
    # positive density, CTF > 0 at low frequency: the particle is brighter than the background
    assert images[:, inside].mean() > 0.05


# --------------------------------------------------------------------------------------------
# Formats, CTF source, reproducibility


def _stack_data(path: Path) -> np.ndarray:
    with mrcfile.open(path) as mrc:
        return np.array(mrc.data), int(mrc.header.mode)


def test_float16_stacks_are_mode_12_and_close_to_float32(volume, tmp_path):
    single = simulate(volume, tmp_path / "f32", _options(n=16))
    half = simulate(volume, tmp_path / "f16", _options(n=16, float16=True))
    data32, mode32 = _stack_data(single.stack_paths[0])
    data16, mode16 = _stack_data(half.stack_paths[0])
    assert (mode32, mode16) == (2, 12)
    assert np.abs(data16.astype(np.float64) - data32).max() < 0.01
    with ParticleSet.from_star(half.star_path) as particles:
        assert particles.images([3]).dtype == torch.float32


@pytest.mark.skipif(not TUTORIAL_STAR.is_file(), reason="tutorial STAR file not present")
def test_ctf_from_takes_defocus_and_optics_from_that_file(volume, tmp_path):
    result = simulate(volume, tmp_path, _options(n=40, ctf_from=TUTORIAL_STAR))
    source = read_particle_star(TUTORIAL_STAR)
    rows = {
        tuple(np.round(row, 2))
        for row in source.particles[["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]].to_numpy(dtype=np.float64)
    }
    written = read_particle_star(result.star_path)
    drawn = written.particles[["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]].to_numpy(dtype=np.float64)
    assert all(tuple(np.round(row, 2)) in rows for row in drawn)
    assert len({tuple(row) for row in drawn}) > 10  # drawn at random (the tutorial has 24 micrographs)
    optics = written.optics.iloc[0]
    assert float(optics["rlnVoltage"]) == 200.0 and float(optics["rlnSphericalAberration"]) == 1.4
    assert float(optics["rlnAmplitudeContrast"]) == 0.1


def _star_text(path: Path) -> str:
    """A STAR file without its comment lines (starfile writes a time stamp into one)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))


def test_same_seed_same_data_other_seed_other_data(volume, tmp_path):
    first = simulate(volume, tmp_path / "a", _options(n=30, particles_per_stack=16))
    again = simulate(volume, tmp_path / "b", _options(n=30, particles_per_stack=16))
    other = simulate(volume, tmp_path / "c", _options(n=30, particles_per_stack=16, seed=1))
    assert _star_text(first.star_path) == _star_text(again.star_path)
    assert _star_text(first.star_path) != _star_text(other.star_path)
    for path_a, path_b, path_c in zip(first.stack_paths, again.stack_paths, other.stack_paths):
        assert np.array_equal(_stack_data(path_a)[0], _stack_data(path_b)[0])
        assert not np.array_equal(_stack_data(path_a)[0], _stack_data(path_c)[0])
    assert np.array_equal(read_map(first.truth_path)[0], read_map(again.truth_path)[0])


# --------------------------------------------------------------------------------------------
# Input maps and models


@pytest.mark.skipif(not SMALL_MODEL.is_file(), reason="test model not present")
def test_model_map_is_centred_on_the_centre_of_mass():
    volume = model_map(SMALL_MODEL, 32, PIXEL_A).double()
    axis = torch.arange(32, dtype=torch.float64) - 16
    weights = volume.clamp(min=0)
    com = [float((weights.sum(dims) * axis).sum() / weights.sum()) for dims in ((0, 1), (0, 2), (1, 2))]
    assert com == pytest.approx([0.0, 0.0, 0.0], abs=0.5)


# --------------------------------------------------------------------------------------------
# Commands


def _parser(module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser


def test_simulate_command_writes_stacks(tmp_path, capsys):
    parser = _parser(simulate_command)
    args = parser.parse_args(
        ["--demo", "--o", str(tmp_path), "--n", "20", "--snr", "1", "--float16", "--particles-per-stack", "8"]
    )
    assert simulate_command.run(args) == 0
    assert sorted(p.name for p in (tmp_path / "Particles").iterdir()) == [f"stack_000{i}.mrcs" for i in (1, 2, 3)]
    assert _stack_data(tmp_path / "Particles" / "stack_0003.mrcs")[0].shape == (4, BOX, BOX)
    assert "wrote" in capsys.readouterr().out


def test_simulate_command_rejects_conflicting_ctf_options(tmp_path):
    star = tmp_path / "any.star"
    star.write_text("data_\n")
    args = _parser(simulate_command).parse_args(
        ["--demo", "--o", str(tmp_path), "--n", "2", "--snr", "1", "--ctf-from", str(star), "--defocus-min", "5000"]
    )
    with pytest.raises(NovomapError, match="either"):
        simulate_command.run(args)


def test_command_help_states_units_and_defaults():
    for module in (simulate_command, demo_command):
        assert module.EXAMPLE.startswith("novomap ")
        for action in _parser(module)._actions:
            if action.dest in ("help", "demo", "float16", "map", "model", "o", "n", "ctf_from"):
                continue
            assert "default" in action.help or action.required, action.dest
    help_text = _parser(simulate_command).format_help()
    assert "Å" in help_text and "px" in help_text and "variance" in help_text


def test_demo_command_runs_the_job_and_reports_fsc(tmp_path, capsys):
    args = _parser(demo_command).parse_args(["--o", str(tmp_path), "--n", "60", "--snr", "1", "--iter", "2", "--j", "1"])
    assert demo_command.run(args) == 0
    assert (tmp_path / "particles.star").is_file()
    assert (tmp_path / "InitialModel" / "initial_model.mrc").is_file()
    out = capsys.readouterr().out
    assert "FSC" in out and "0.143" in out and "correlation" in out
