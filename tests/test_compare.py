"""`novomap compare` and align_maps: FSC resolutions, rotation/shift/hand recovery."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from _synthetic_maps import PIXEL_SIZE_A, add_noise, blob_map, correlation, random_rotation
from novomap.commands import compare
from novomap.io.mrc import write_map
from novomap.maps.align import align_maps
from novomap.maps.transform import fourier_resize, mirror_volume, rotate_volume, shift_volume
from novomap.physics.euler import euler_to_matrix, rotation_angle_deg
from novomap.symmetry.groups import point_group

MIRROR_Z = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return blob_map("C1", blobs_per_unit=12, seed=3)


def run_compare(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    assert compare.run(parser.parse_args(argv)) == 0
    return capsys.readouterr().out


def write(path: Path, volume: torch.Tensor, pixel: float = PIXEL_SIZE_A) -> str:
    write_map(path, volume, pixel)
    return str(path)


def test_map_against_itself(tmp_path: Path, reference: torch.Tensor, capsys: pytest.CaptureFixture) -> None:
    a = write(tmp_path / "a.mrc", reference)
    report = json.loads(run_compare([a, a, "--json"], capsys))
    assert report["fsc05_a"] == pytest.approx(2 * PIXEL_SIZE_A)  # never drops: Nyquist
    assert report["fsc0143_a"] == pytest.approx(2 * PIXEL_SIZE_A)
    assert "cc" not in report
    text = run_compare([a, a], capsys)
    assert "FSC 0.5:" in text and "FSC 0.143:" in text


def test_align_recovers_rotation_and_shift(
    tmp_path: Path, reference: torch.Tensor, capsys: pytest.CaptureFixture
) -> None:
    rotation = random_rotation(41)
    moved = shift_volume(rotate_volume(reference, rotation), (2.5, -1.5, 3.0))
    a, b = write(tmp_path / "a.mrc", reference), write(tmp_path / "b.mrc", moved)
    report = json.loads(run_compare([a, b, "--align", "--json"], capsys))
    found = torch.tensor(report["rotation"], dtype=torch.float64)
    assert float(rotation_angle_deg(found, rotation.T)) < 2.0
    assert report["cc"] > 0.95
    assert report["hand_flipped"] is False
    assert len(report["euler_deg"]) == 3
    assert report["fsc05_a"] < 4 * PIXEL_SIZE_A
    unaligned = json.loads(run_compare([a, b, "--json"], capsys))
    assert unaligned["fsc05_a"] > report["fsc05_a"]


def test_align_finds_the_mirror_image(reference: torch.Tensor) -> None:
    rotation = random_rotation(42)
    moved = shift_volume(rotate_volume(mirror_volume(reference), rotation), (-2.0, 1.0, 0.5))
    result = align_maps(reference, moved, PIXEL_SIZE_A)
    assert result.hand_flipped
    assert result.cc > 0.95
    # mirror(moved) is the reference turned by M Q M, so the rotation found undoes it
    assert float(rotation_angle_deg(result.rotation, (MIRROR_Z @ rotation @ MIRROR_Z).T)) < 2.0
    rebuilt = shift_volume(rotate_volume(mirror_volume(moved), result.rotation), result.shift_zyx_px)
    assert correlation(rebuilt, result.volume) > 0.99


def test_last_refinement_mends_a_rotation_degrees_off(reference: torch.Tensor) -> None:
    """The search's small copies can leave the winner a few degrees off (a 120 kDa map: ~5 deg, FSC 0.5
    7.98 instead of 7.49 Å); the refinement at the maps' own sampling brings it back from 4 deg."""
    from novomap.maps import centring
    from novomap.maps.align import _finish, _refine_at_full_size
    from novomap.physics.euler import axis_angle_to_matrix

    rotation = random_rotation(43)
    moved = add_noise(shift_volume(rotate_volume(reference, rotation), (1.5, -0.5, 2.0)), 0.3, seed=5)
    ref_centred, ref_shift = centring.centre_by_mass(reference)
    mov_centred, mov_shift = centring.centre_by_mass(moved)
    crop = max(centring.search_box(ref_centred), centring.search_box(mov_centred))
    off = axis_angle_to_matrix(torch.tensor([[0.6, 0.0, 0.8]], dtype=torch.float64), 4.0)[0] @ rotation.T
    hands = [mov_centred, mirror_volume(mov_centred)]
    start = _finish(reference, ref_centred, ref_shift, hands, mov_shift, False, off)
    refined = _refine_at_full_size(reference, ref_centred, ref_shift, hands, mov_shift, crop, start)
    assert float(rotation_angle_deg(start.rotation, rotation.T)) == pytest.approx(4.0, abs=0.01)
    assert float(rotation_angle_deg(refined.rotation, rotation.T)) < 0.3
    assert refined.cc > start.cc + 0.01


def _lowpassed(volume: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian low-pass, exp(-2 (sigma f)^2) with f in cycles per pixel."""
    f = torch.fft.fftfreq(volume.shape[-1], dtype=torch.float64)
    f2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2
    return torch.fft.ifftn(torch.fft.fftn(volume.double()) * torch.exp(-2 * sigma_px**2 * f2)).real.float()


@pytest.mark.parametrize(("group", "map_seed", "tilt_deg", "psi_deg"), [("C7", 0, 180.0, 111.0), ("C7", 1, 180.0, 37.0), ("D7", 1, 180.0, 37.0), ("D7", 1, 0.0, 74.0)])
def test_align_symmetric_maps_in_standard_frames(group: str, map_seed: int, tilt_deg: float, psi_deg: float) -> None:
    """A map in its group's standard frame against a blurred, noisy copy turned about the axes (the
    way an initial model meets its truth): the superposition is as good as the known answer's.

    Before: a C7 ring's copy came out the wrong way up (cc 0.93-0.95 against 0.975) and D7's 1.6 deg
    off, since the small copies favoured rotations that interpolation blurs least."""
    truth = blob_map(group, seed=map_seed)
    turn = euler_to_matrix(torch.tensor(0.0, dtype=torch.float64), torch.tensor(tilt_deg, dtype=torch.float64), torch.tensor(psi_deg, dtype=torch.float64))
    moved = add_noise(rotate_volume(_lowpassed(truth, 4.0), turn.float()), 0.3, seed=1)
    best_possible = correlation(truth, rotate_volume(moved, turn.T.contiguous().float()))
    result = align_maps(truth, moved, PIXEL_SIZE_A)
    assert not result.hand_flipped
    assert result.cc > best_possible - 0.003
    equivalent = point_group(group).operators @ result.rotation
    assert float(rotation_angle_deg(equivalent, turn.T.contiguous()[None].expand_as(equivalent)).min()) < 1.0


def test_noise_gives_low_resolution(tmp_path: Path, reference: torch.Tensor, capsys: pytest.CaptureFixture) -> None:
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(8))
    a, b = write(tmp_path / "a.mrc", reference), write(tmp_path / "noise.mrc", noise)
    report = json.loads(run_compare([a, b, "--json"], capsys))
    assert report["fsc05_a"] is None or report["fsc05_a"] > 20 * PIXEL_SIZE_A
    # never coarser than the box: two independent noise maps cross 0.5 before shell 1, which is no resolution
    other = write(tmp_path / "other.mrc", torch.randn(reference.shape, generator=torch.Generator().manual_seed(9)))
    box_a = reference.shape[-1] * PIXEL_SIZE_A
    report = json.loads(run_compare([b, other, "--json"], capsys))  # crossings interpolated to 384 and 224 Å
    assert report["fsc05_a"] is None and report["fsc0143_a"] is None, (box_a, report)


def test_different_boxes_and_pixel_sizes_are_matched(
    tmp_path: Path, reference: torch.Tensor, capsys: pytest.CaptureFixture
) -> None:
    a = write(tmp_path / "a.mrc", reference)
    bigger_pixel = write(tmp_path / "b.mrc", fourier_resize(reference, 48), PIXEL_SIZE_A * 64 / 48)
    report = json.loads(run_compare([a, bigger_pixel, "--json"], capsys))
    assert any("resampled" in note for note in report["notes"])
    assert report["box"] == 64
    assert report["fsc05_a"] < 3 * PIXEL_SIZE_A * 64 / 48 + 1e-6  # identical up to B's lower Nyquist
    cropped = write(tmp_path / "c.mrc", reference[8:56, 8:56, 8:56])
    report = json.loads(run_compare([a, cropped, "--json"], capsys))
    assert report["box"] == 48
    assert any("cropped" in note for note in report["notes"])
    text = run_compare([a, cropped], capsys)
    assert text.startswith("note: boxes differ")


def test_compare_is_registered() -> None:
    from novomap.commands.main import COMMANDS

    assert COMMANDS["compare"] == "compare"
    assert COMMANDS["align-symmetry"] == "align_symmetry"
    assert COMMANDS["detect-symmetry"] == "detect_symmetry"
