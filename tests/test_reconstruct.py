"""Fourier reconstruction from known poses: synthetic ground truth, then real particles with
RELION-refined poses against an independent beta-galactosidase map (vdam-spec 1.4 conventions)."""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from novomap.physics.ctf import ctf_values, pixel_frequencies_a
from novomap.physics.euler import euler_to_matrix
from novomap.physics.fourier import image_frequencies, irfft_image, rfft_image
from novomap.reconstruct import FourierAccumulator, reconstruct_particles

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PARTICLES = DATA / "betagal_relion5_tutorial_particles"
POSES_STAR = PARTICLES / "particles_with_relion_refined_poses.star"
BETAGAL = DATA / "betagal_relion_tutorial_map" / "betaGal.mrc"
needs_data = pytest.mark.skipif(not (POSES_STAR.is_file() and BETAGAL.is_file()), reason="real test data not present")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run this module's back-projections on one thread (and restore the setting afterwards).

    The scatter-heavy back-projection gains little from a second thread, and on a busy 2-core
    machine two threads spin against each other (measured: 0.9 s CPU with 1 thread, 2.5-6.5 s with 2).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


# --------------------------------------------------------------------------------------------
# (a) synthetic: blobs projected analytically in real space (no extract_slices, no shift_phases)

N = 32
SIGMA = 2.0
PIXEL_A = 3.0


def _random_rotations(count: int, g: torch.Generator) -> torch.Tensor:
    rot = torch.rand(count, generator=g, dtype=torch.float64) * 360
    tilt = torch.rad2deg(torch.arccos(1 - 2 * torch.rand(count, generator=g, dtype=torch.float64)))  # uniform on the sphere
    psi = torch.rand(count, generator=g, dtype=torch.float64) * 360
    return euler_to_matrix(rot, tilt, psi)


def _blob_volume(centres: torch.Tensor, amps: torch.Tensor) -> torch.Tensor:
    axis = torch.arange(N, dtype=torch.float64) - N // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.zeros(N, N, N, dtype=torch.float64)
    for c, a in zip(centres, amps):
        vol += a * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * SIGMA**2))
    return vol


def _raw_images(centres, amps, rotations, origins_px, ctf_full) -> torch.Tensor:
    """Particle images by the forward model of spec 1.4, X_raw(r) = (c * P_A)(r + s).

    P_A(p) = int V(A^T (p, z)) dz puts blob j at (A r_j)_xy with weight a_j sqrt(2 pi) sigma; the raw
    image shows it at (A r_j)_xy - s. The CTF is applied on the full rfft grid.
    """
    axis = torch.arange(N, dtype=torch.float64) - N // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    moved = torch.einsum("oij,bj->obi", rotations, centres)[..., :2] - origins_px[:, None, :]  # (O, blobs, 2)
    dx = x[None, None] - moved[..., 0, None, None]
    dy = y[None, None] - moved[..., 1, None, None]
    blobs = amps[None, :, None, None] * math.sqrt(2 * math.pi) * SIGMA * torch.exp(-(dx * dx + dy * dy) / (2 * SIGMA**2))
    projections = blobs.sum(1)
    return irfft_image(rfft_image(projections) * ctf_full, N)


def _random_ctfs(count: int, g: torch.Generator, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    fx, fy = pixel_frequencies_a(kx, ky, N, PIXEL_A)
    dfu = 8000 + 12000 * torch.rand(count, generator=g, dtype=torch.float64)
    return ctf_values(fx, fy, dfu, dfu - 500, torch.rand(count, generator=g, dtype=torch.float64) * 180, 300.0, 2.7, 0.1)


def _reconstruct_synthetic(images, rotations, origins_px, seed: int) -> torch.Tensor:
    acc = FourierAccumulator(N, pad=2)
    g = _gen(seed)
    ctf = _random_ctfs(len(images), g, acc.window.kx, acc.window.ky)  # same generator state as the forward model
    acc.add(acc.window.take(rfft_image(images)), ctf, rotations, origins_px)
    return acc.reconstruct(0.2)


@pytest.fixture(scope="module")
def synthetic():
    g = _gen(11)
    centres = (torch.rand(6, 3, generator=g, dtype=torch.float64) * 2 - 1) * 7
    amps = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    count = 300
    rotations = _random_rotations(count, g)
    origins = (torch.rand(count, 2, generator=g, dtype=torch.float64) * 2 - 1) * 4  # non-integer px
    ky, kx = image_frequencies(N)
    ctf_full = _random_ctfs(count, _gen(12), kx.reshape(-1), ky.reshape(-1)).reshape(count, N, N // 2 + 1)
    images = _raw_images(centres, amps, rotations, origins, ctf_full)
    images = images + 0.02 * images.std() * torch.randn(images.shape, generator=g, dtype=torch.float64)
    return _blob_volume(centres, amps), images, rotations, origins


def test_synthetic_reconstruction_and_origin_sign(synthetic):
    truth, images, rotations, origins = synthetic
    good = _cc(_reconstruct_synthetic(images, rotations, origins, 12).numpy(), truth.numpy())
    flipped = _cc(_reconstruct_synthetic(images, rotations, -origins, 12).numpy(), truth.numpy())
    inverse = _cc(_reconstruct_synthetic(images, rotations.transpose(1, 2), origins, 12).numpy(), truth.numpy())
    print(f"synthetic cc: correct {good:.3f}, origin sign flipped {flipped:.3f}, A^T instead of A {inverse:.3f}")
    assert good > 0.95
    assert flipped < good - 0.1
    assert inverse < good - 0.1


def test_batches_add_up_whatever_the_split(synthetic, monkeypatch):
    # the CPU accumulator keeps per-thread grids between add() calls and adds them into its sums only
    # when flushed: any split into batches, and more batches after a flush, give the same map, which is
    # the map of the path other devices take (grid_sample's adjoint, each batch added at once)
    from novomap.physics import projection

    _, images, rotations, origins = synthetic
    window = FourierAccumulator(N, pad=2).window
    spectra = window.take(rfft_image(images[:90]))
    ctf = _random_ctfs(90, _gen(15), window.kx, window.ky)
    with monkeypatch.context() as without_numba:
        without_numba.setattr(projection, "compiled_loops", lambda: None)
        reference = FourierAccumulator(N, pad=2)
        reference.add(spectra, ctf, rotations[:90], origins[:90])
        assert reference._private is None
        expected = reference.reconstruct(0.2)
    acc = FourierAccumulator(N, pad=2)
    acc.add(spectra, ctf, rotations[:90], origins[:90])
    whole = acc.reconstruct(0.2)
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-9 * float(expected.abs().max()))
    for split in ((30, 60), (45,)):
        parts = FourierAccumulator(N, pad=2)
        edges = [0, *split, 90]
        for i, (start, stop) in enumerate(itertools.pairwise(edges)):
            parts.add(spectra[start:stop], ctf[start:stop], rotations[start:stop], origins[start:stop])
            if i == 0:
                parts.flush()
        torch.testing.assert_close(parts.reconstruct(0.2), whole, rtol=0, atol=1e-12 * float(whole.abs().max()))


def test_particle_at_plus_3_px_has_origin_minus_3_px():
    # spec 1.4: density at the box centre, particle appearing at (+3, 0) px -> rlnOriginX = -3 px
    g = _gen(13)
    count = 60
    centres = torch.zeros(1, 3, dtype=torch.float64)
    amps = torch.ones(1, dtype=torch.float64)
    rotations = _random_rotations(count, g)
    origins = torch.tensor([[-3.0, 0.0]], dtype=torch.float64).expand(count, 2)
    ky, kx = image_frequencies(N)
    ctf_full = _random_ctfs(count, _gen(14), kx.reshape(-1), ky.reshape(-1)).reshape(count, N, N // 2 + 1)
    images = _raw_images(centres, amps, rotations, origins, ctf_full)
    # the particle really sits at +3 px in x (CTF aside): check on a CTF-free rendering
    plain = _raw_images(centres, amps, rotations[:1], origins[:1], torch.ones(1, N, N // 2 + 1, dtype=torch.float64))[0]
    assert divmod(int(torch.argmax(plain)), N) == (N // 2, N // 2 + 3)
    for sign, expected_offset in ((1.0, 0), (-1.0, None)):
        vol = _reconstruct_synthetic(images, rotations, sign * origins, 14)
        peak = np.unravel_index(int(torch.argmax(vol)), vol.shape)
        offset = np.array(peak) - N // 2
        if expected_offset == 0:
            assert (offset == 0).all(), offset
        else:
            assert np.abs(offset).max() >= 3, offset  # wrong sign: the density is smeared off centre


# --------------------------------------------------------------------------------------------
# (b) real particles with RELION-refined poses against betaGal.mrc


def _reference() -> np.ndarray:
    with mrcfile.open(BETAGAL, permissive=True) as mrc:
        return np.asarray(mrc.data, dtype=np.float64)[18:82, 18:82, 18:82].copy()  # centre 50 -> 32 = N//2


def _signed_permutations() -> list[tuple[float, tuple[int, ...], tuple[int, ...]]]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3))
            for row, (axis, sign) in enumerate(zip(perm, signs)):
                matrix[row, axis] = sign
            out.append((float(np.linalg.det(matrix)), perm, signs))
    return out


def _apply(volume: np.ndarray, perm, signs) -> np.ndarray:
    """Permute axes, then flip the signed ones about the centre voxel N//2 (flip, then roll by 1)."""
    v = np.transpose(volume, perm)
    for axis, sign in enumerate(signs):
        if sign < 0:
            v = np.roll(np.flip(v, axis), 1, axis)
    return v


def _fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    k = np.fft.fftfreq(n, 1.0 / n)
    shells = np.rint(np.sqrt(sum(g * g for g in np.meshgrid(k, k, k, indexing="ij")))).astype(int).ravel()
    num = np.bincount(shells, (fa * fb.conj()).real.ravel())
    den = np.sqrt(np.bincount(shells, (np.abs(fa) ** 2).ravel()) * np.bincount(shells, (np.abs(fb) ** 2).ravel()))
    return (num / den)[: n // 2 + 1]


def _resolution_at(fsc: np.ndarray, n: int, pixel_a: float, threshold: float = 0.5) -> float:
    """Resolution (Å) where the FSC first falls below the threshold (linear between shells)."""
    for s in range(1, len(fsc)):
        if fsc[s] < threshold:
            crossing = s - 1 + (fsc[s - 1] - threshold) / (fsc[s - 1] - fsc[s])
            return n * pixel_a / crossing
    return 2 * pixel_a


def _compare(volume: np.ndarray, reference: np.ndarray, pixel_a: float) -> dict[str, float]:
    """Best cc over the 24 proper and the 24 improper signed axis permutations, FSC 0.5 of the best proper one."""
    best = {1: (-2.0, None), -1: (-2.0, None)}
    for det, perm, signs in _signed_permutations():
        hand = 1 if det > 0 else -1
        c = _cc(_apply(volume, perm, signs), reference)
        if c > best[hand][0]:
            best[hand] = (c, (perm, signs))
    perm, signs = best[1][1]
    fsc = _fsc(_apply(volume, perm, signs), reference)
    return {"cc": best[1][0], "mirror_cc": best[-1][0], "fsc05_a": _resolution_at(fsc, volume.shape[0], pixel_a)}


class _OriginsReplaced:
    """A particle set whose origins are replaced (for the wrong-convention controls)."""

    def __init__(self, particles, origin_x_a: torch.Tensor, origin_y_a: torch.Tensor) -> None:
        self._particles = particles
        self.origin_x_a = origin_x_a
        self.origin_y_a = origin_y_a

    def __getattr__(self, name):
        return getattr(self._particles, name)


@pytest.fixture(scope="module")
def real_particles():
    if not (POSES_STAR.is_file() and BETAGAL.is_file()):
        pytest.skip("real test data not present")
    from novomap.io.particles import ParticleSet

    with ParticleSet.from_star(POSES_STAR, preread=True) as particles:
        yield particles


@pytest.fixture(scope="module")
def real_results(real_particles):
    reference = _reference()
    p = real_particles
    variants = {
        "correct": (p.origin_x_a, p.origin_y_a),
        "no origins": (torch.zeros_like(p.origin_x_a), torch.zeros_like(p.origin_y_a)),
        "origin sign flipped": (-p.origin_x_a, -p.origin_y_a),
        "origin x/y swapped": (p.origin_y_a, p.origin_x_a),
    }
    results = {}
    for name, (ox, oy) in variants.items():
        particles = p if name == "correct" else _OriginsReplaced(p, ox, oy)
        volume = reconstruct_particles(particles, pad=2, regulariser=0.2).numpy()
        if name == "correct":
            results["_volume"] = volume
        results[name] = r = _compare(volume, reference, p.pixel_size_a)
        print(f"{name}: cc {r['cc']:.3f}, mirror cc {r['mirror_cc']:.3f}, FSC 0.5 at {r['fsc05_a']:.1f} Å")
    return results


@needs_data
def test_real_particles_reproduce_betagal_in_the_right_hand(real_particles, real_results):
    assert real_particles.n == 582 and real_particles.box_size == 64
    r = real_results["correct"]
    # measured: cc 0.681, mirror 0.477, FSC 0.5 at 15.5 Å
    assert r["cc"] >= 0.65
    assert r["mirror_cc"] <= r["cc"] - 0.15
    assert r["fsc05_a"] <= 20.0


@needs_data
@pytest.mark.parametrize("variant", ["no origins", "origin sign flipped", "origin x/y swapped"])
def test_wrong_origin_conventions_are_clearly_worse(real_results, variant):
    # measured: 27.9 Å, 49.4 Å and 29.6 Å against 15.5 Å
    good, bad = real_results["correct"], real_results[variant]
    assert bad["fsc05_a"] >= good["fsc05_a"] + 8.0
    assert bad["cc"] <= good["cc"] - 0.05


# --------------------------------------------------------------------------------------------
# the command


def _command_parser() -> argparse.ArgumentParser:
    from novomap.commands import reconstruct as command

    parser = argparse.ArgumentParser(prog="novomap reconstruct")
    parser.add_argument("--verbose", action="store_true")
    command.add_arguments(parser)
    parser.set_defaults(_run=command.run)
    return parser


def _main_available() -> bool:
    from novomap.commands.main import COMMANDS

    return all(importlib.util.find_spec(f"novomap.commands.{module}") is not None for module in COMMANDS.values())


def _read_written_map(path: Path) -> tuple[np.ndarray, float]:
    with mrcfile.open(path, permissive=True) as mrc:
        return np.asarray(mrc.data, dtype=np.float64).copy(), float(mrc.voxel_size.x)


def test_help_states_units_and_defaults():
    text = " ".join(_command_parser().format_help().split())  # undo line wrapping
    for word in ("degrees", "Å", "default: 2", "default: 0.2", "default: 256", "--preread", "--j"):
        assert word in text, word


@needs_data
def test_command_end_to_end(tmp_path, monkeypatch, real_results):
    monkeypatch.chdir(tmp_path)  # image paths then resolve relative to the STAR file's folder
    args = _command_parser().parse_args(["--i", str(POSES_STAR), "--o", "out/map.mrc", "--j", "1"])
    assert args._run(args) == 0
    volume, pixel = _read_written_map(tmp_path / "out" / "map.mrc")
    assert volume.shape == (64, 64, 64)
    assert pixel == pytest.approx(3.54, abs=1e-4)
    np.testing.assert_allclose(volume, real_results["_volume"], atol=1e-6 * np.abs(volume).max())
    assert _compare(volume, _reference(), pixel)["cc"] >= 0.65
    assert not list((tmp_path / "out").glob(".*tmp*"))  # the atomic write left no temporary file


def _write_subset_star(folder: Path, count: int, drop: tuple[str, ...] = ()) -> Path:
    """The first `count` particles of the real STAR, with absolute image paths, written to `folder`."""
    star = starfile.read(POSES_STAR, always_dict=True)
    particles = star["particles"].head(count).drop(columns=list(drop))
    particles["rlnImageName"] = [f"{n.split('@')[0]}@{PARTICLES / n.split('@')[1]}" for n in particles["rlnImageName"]]
    path = folder / "subset.star"
    starfile.write({"optics": star["optics"], "particles": particles}, path)
    return path


@needs_data
def test_command_through_main(tmp_path, monkeypatch, capsys):
    from novomap.commands import main as main_module
    from novomap.commands.main import main

    if not _main_available():  # other commands are still being written: dispatch to this one only
        monkeypatch.setattr(main_module, "COMMANDS", {"reconstruct": "reconstruct"})
    star = _write_subset_star(tmp_path, 40)
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", "--i", str(star), "--o", "map.mrc", "--pad", "1", "--preread", "--batch-size", "16"]) == 0
    volume, pixel = _read_written_map(tmp_path / "map.mrc")
    assert volume.shape == (64, 64, 64) and pixel == pytest.approx(3.54, abs=1e-4)
    assert np.isfinite(volume).all() and volume.std() > 0
    assert "40 particles" in capsys.readouterr().out
    # user errors end as one line on stderr and exit code 2
    star = _write_subset_star(tmp_path, 5, drop=("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    assert main(["reconstruct", "--i", str(star), "--o", "map2.mrc"]) == 2
    assert "no poses" in capsys.readouterr().err
    assert not (tmp_path / "map2.mrc").exists()


@needs_data
def test_command_without_poses_is_a_clear_error(tmp_path, monkeypatch):
    from novomap.errors import NovomapError

    path = _write_subset_star(tmp_path, 5, drop=("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    monkeypatch.chdir(tmp_path)
    args = _command_parser().parse_args(["--i", str(path), "--o", "map.mrc"])
    with pytest.raises(NovomapError, match="no poses.*rlnAngleRot"):
        args._run(args)
    assert not (tmp_path / "map.mrc").exists()


@pytest.mark.parametrize("option", [["--pad", "0"], ["--regulariser", "0"], ["--regulariser", "nan"], ["--batch-size", "0"], ["--j", "0"]])
def test_command_rejects_bad_options(option, tmp_path):
    from novomap.errors import NovomapError

    args = _command_parser().parse_args(["--i", str(tmp_path / "x.star"), "--o", str(tmp_path / "m.mrc"), *option])
    with pytest.raises(NovomapError):
        args._run(args)


def test_an_odd_box_is_written_on_the_particles_grid(tmp_path):
    """75 px particles (worked at 74 px, the nearest even box) give a 75 px map at their pixel size,
    the simulated truth's map and not a shifted or rescaled one."""
    from novomap.commands.main import main
    from novomap.demo_data import load_demo_map
    from novomap.maps.transform import resample_map
    from novomap.simulate import SimulationOptions, simulate

    volume, pixel = load_demo_map()
    volume = resample_map(volume, pixel, 75, 2.83)
    result = simulate(volume, tmp_path / "sim", SimulationOptions(n=300, snr=1.0, seed=3, box=75, pixel_size_a=2.83))
    assert main(["reconstruct", "--i", str(result.star_path), "--o", str(tmp_path / "map.mrc"), "--preread"]) == 0
    written, written_pixel = _read_written_map(tmp_path / "map.mrc")
    truth, _ = _read_written_map(result.truth_path)
    assert written.shape == (75, 75, 75) and written_pixel == pytest.approx(2.83, abs=1e-4)
    assert truth.shape == written.shape
    assert np.corrcoef(written.ravel(), truth.ravel())[0, 1] > 0.8


def test_ctf_premultiplied_particles_are_refused_with_group_and_label(tmp_path, capsys):
    from novomap.commands.main import main
    from novomap.demo_data import load_demo_map
    from novomap.simulate import SimulationOptions, simulate

    volume, pixel = load_demo_map()
    result = simulate(volume, tmp_path / "sim", SimulationOptions(n=20, snr=1.0, seed=1, box=volume.shape[-1], pixel_size_a=pixel))
    blocks = starfile.read(result.star_path, always_dict=True)
    blocks["optics"]["rlnCtfDataAreCtfPremultiplied"] = 1
    flagged = tmp_path / "premultiplied.star"
    starfile.write(blocks, flagged)
    assert main(["reconstruct", "--i", str(flagged), "--o", str(tmp_path / "map.mrc")]) == 2
    err = capsys.readouterr().err
    assert "row 1, rlnCtfDataAreCtfPremultiplied" in err and "premultiplied" in err
    assert not (tmp_path / "map.mrc").exists()
