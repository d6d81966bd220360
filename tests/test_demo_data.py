"""The built-in demo map: its file, its frame (RELION's D2 standard frame) and its hand."""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import pytest
import torch

from novomap.demo_data import demo_map_path, load_demo_map
from novomap.io.mrc import read_map
from novomap.maps.transform import crop_or_pad

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BETAGAL = DATA / "betagal_relion_tutorial_map" / "betaGal.mrc"


def _cc(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double().flatten() - a.double().mean()
    b = b.double().flatten() - b.double().mean()
    return float(a @ b / math.sqrt(float((a @ a) * (b @ b))))


def _rotate_180(volume: torch.Tensor, axis: int) -> torch.Tensor:
    """180° about the x (axis=2), y (1) or z (0) axis through voxel N//2: negate the other two coordinates.

    Index j -> N - j (mod N) keeps voxel N//2 fixed: a flip (j -> N-1-j) then a roll by one.
    """
    dims = [d for d in (0, 1, 2) if d != axis]
    return torch.roll(torch.flip(volume, dims), shifts=(1, 1), dims=dims)


def test_demo_map_file_is_small_float16_with_pixel_size():
    path = demo_map_path()
    assert path.stat().st_size < 600_000
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == 12
        assert float(mrc.voxel_size.x) == pytest.approx(3.54, abs=1e-4)
    volume, pixel_size_a = load_demo_map()
    assert volume.shape == (64, 64, 64) and volume.dtype == torch.float32
    assert pixel_size_a == 3.54
    assert torch.isfinite(volume).all() and volume.std() > 0


def test_demo_map_is_d2_symmetric_about_the_box_axes():
    volume, _ = load_demo_map()
    for axis in (0, 1, 2):
        assert _cc(volume, _rotate_180(volume, axis)) > 0.98
    # a 90° turn about z is not a symmetry: the check above is not trivially true
    assert _cc(volume, torch.rot90(volume, 1, dims=(1, 2))) < 0.8


@pytest.mark.skipif(not BETAGAL.is_file(), reason="betaGal.mrc not present")
def test_demo_map_matches_relion_tutorial_map_in_frame_and_hand():
    volume, _ = load_demo_map()
    data, pixel_size_a = read_map(BETAGAL)
    assert pixel_size_a == pytest.approx(3.54, abs=1e-3)
    reference = crop_or_pad(torch.from_numpy(data), 64)
    same = _cc(volume, reference)
    assert same >= 0.8
    # mirror images (any single-axis flip is a mirror; with D2 they are all equivalent)
    for dim in (0, 1, 2):
        mirrored = torch.roll(torch.flip(volume, (dim,)), 1, dims=dim)
        assert _cc(mirrored, reference) < same - 0.15
