"""detect_point_group and `novomap detect-symmetry`: the right group, never a too-large one."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from _synthetic_maps import PIXEL_SIZE_A, add_noise, blob_map, random_rotation
from novomap.commands import detect_symmetry
from novomap.io.mrc import read_map, write_map
from novomap.maps.transform import crop_or_pad, lowpass, rotate_volume
from novomap.symmetry import detect
from novomap.symmetry.detect import detect_point_group

BETAGAL = Path("/work/shared/data/betagal_relion_tutorial_map/betaGal.mrc")
GROUPS = ["C4", "C7", "D2", "D7", "T", "O", "I", "I1", "I3"]
EXPECTED = {"I1": "I", "I3": "I"}  # detection reports I in RELION's default (I2) frame


def rotated_map(name: str, noisy: bool, seed: int = 21) -> torch.Tensor:
    """A randomly rotated synthetic map (or beta-gal cropped to 64^3); noisy: 20 Å low-pass + noise."""
    if name == "betagal":
        volume = crop_or_pad(torch.from_numpy(read_map(BETAGAL)[0]), 64)
        pixel = 3.54
    else:
        volume, pixel = blob_map(name), PIXEL_SIZE_A
    volume = rotate_volume(volume, random_rotation(seed))
    if noisy:
        volume = add_noise(lowpass(volume, pixel, 20.0), 2.0, seed)
    return volume


def row(result: detect.DetectionResult, name: str) -> detect.GroupScore:
    return next(r for r in result.table if r.group == name)


def test_d2_map_is_d2_not_d4() -> None:
    result = detect_point_group(rotated_map("D2", noisy=False), PIXEL_SIZE_A)
    assert result.point_group == "D2"
    assert not row(result, "D4").accepted
    assert row(result, "C2").score < 0.01


def test_c4_map_is_c4_not_d4() -> None:
    result = detect_point_group(rotated_map("C4", noisy=False), PIXEL_SIZE_A)
    assert result.point_group == "C4"
    assert not row(result, "D4").accepted
    assert not row(result, "C8").accepted


def test_noisy_low_pass_map() -> None:
    result = detect_point_group(rotated_map("D7", noisy=True), PIXEL_SIZE_A)
    assert result.point_group == "D7"
    assert result.noise_fraction > 0.01


def test_betagal_is_d2() -> None:
    assert detect_point_group(rotated_map("betagal", noisy=False), 3.54).point_group == "D2"


@pytest.mark.slow
@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("name", GROUPS + ["betagal"])
def test_detects_every_group(name: str, noisy: bool) -> None:
    expected = "D2" if name == "betagal" else EXPECTED.get(name, name)
    result = detect_point_group(rotated_map(name, noisy), PIXEL_SIZE_A)
    assert result.point_group == expected


def test_table_lists_every_candidate_once() -> None:
    result = detect_point_group(rotated_map("C4", noisy=False), PIXEL_SIZE_A, max_order=6)
    names = [r.group for r in result.table]
    assert names[0] == "C1"
    expected = ["C1"] + [f"C{n}" for n in range(2, 7)] + [f"D{n}" for n in range(2, 7)] + ["T", "O", "I"]
    assert sorted(names) == sorted(expected)
    assert result.rotation.shape == (3, 3)


def test_noise_fraction_tracks_added_noise() -> None:
    from novomap.symmetry import align

    clean = align.prepare(blob_map("D2"), detect.FINE_SIZE)
    noisy = align.prepare(add_noise(lowpass(blob_map("D2"), PIXEL_SIZE_A, 20.0), 2.0, 3), detect.FINE_SIZE)
    assert detect.noise_model(clean).fraction < 1e-3
    assert detect.noise_model(noisy).fraction > 0.02
    assert 0.0 < detect.resampling_floor(clean.fine) < 0.02


def test_command_prints_table_and_group(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "map.mrc"
    write_map(path, rotated_map("D2", noisy=False), PIXEL_SIZE_A)
    parser = argparse.ArgumentParser()
    detect_symmetry.add_arguments(parser)
    assert detect_symmetry.run(parser.parse_args([str(path), "--max-order", "8"])) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "point group: D2"
    assert lines[0].split()[:4] == ["group", "order", "score", "threshold"]
    assert any(line.startswith("D4 ") for line in lines)
