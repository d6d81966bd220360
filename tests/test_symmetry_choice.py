"""`--sym auto`: the job's last step detects the point group of the C1 map, then applies it exactly as
an explicit --sym would (novomap.symmetry.choice.apply_point_group)."""

from __future__ import annotations

import pytest
import torch

from _synthetic_maps import PIXEL_SIZE_A, add_noise, blob_map, correlation, random_rotation
from novomap.demo_data import load_demo_map
from novomap.maps.transform import lowpass, rotate_volume, shift_volume
from novomap.symmetry.choice import (
    apply_point_group,
    is_auto,
    requested_group,
    summary_line,
    symmetry_record,
    write_symmetry_file,
)
from novomap.symmetry.groups import point_group
from novomap.symmetry.symmetrise import symmetrise
from novomap.vdam.config import VdamConfig


def _c1_map(volume: torch.Tensor, pixel: float, seed: int) -> torch.Tensor:
    """The symmetric map as a C1 run leaves it: any orientation, a little off-centre, 20 Å, noisy."""
    moved = shift_volume(rotate_volume(volume, random_rotation(seed)), (1.3, -0.7, 2.1))
    return add_noise(lowpass(moved, pixel, 20.0), 0.5, seed)


@pytest.mark.parametrize("name", ["betagal_D2", "C7"])
def test_auto_gives_the_group_and_the_map_of_the_explicit_group(name):
    if name == "betagal_D2":
        volume, pixel = load_demo_map()
        expected = "D2"
    else:
        volume, pixel, expected = blob_map(name), PIXEL_SIZE_A, name
    c1 = _c1_map(volume.float(), pixel, seed=3)
    config = VdamConfig(particle_diameter_a=0.9 * volume.shape[-1] * pixel)
    auto = apply_point_group(c1, pixel, requested_group("auto"), config)
    explicit = apply_point_group(c1, pixel, requested_group(expected), config)
    assert auto.group.name == expected and auto.detection is not None and explicit.detection is None
    assert correlation(auto.volume, explicit.volume) > 0.999
    # the result has the group in RELION's standard frame: symmetrising it again changes nothing
    assert correlation(symmetrise(auto.volume.float(), auto.group), auto.volume) > 0.99


def test_auto_is_recognised_and_other_names_still_validated():
    assert is_auto("auto") and is_auto(" AUTO ") and not is_auto("C1")
    assert requested_group("auto") is None
    assert requested_group("d2").name == "D2"
    with pytest.raises(Exception):
        requested_group("X9")


def test_c1_is_handed_back_unchanged():
    volume = blob_map("C1")
    applied = apply_point_group(volume, PIXEL_SIZE_A, point_group("C1"), VdamConfig(particle_diameter_a=150.0))
    assert applied.group.name == "C1" and torch.equal(applied.volume, volume)


def test_the_decision_is_written_with_its_table(tmp_path):
    volume, pixel = load_demo_map()
    c1 = _c1_map(volume.float(), pixel, seed=5)
    applied = apply_point_group(c1, pixel, None, VdamConfig(particle_diameter_a=200.0))
    record = symmetry_record("auto", applied.group, applied.alignment.score, applied.detection)
    assert record["applied"] == "D2" and any(row["group"] == "D2" and row["accepted"] for row in record["table"])
    line = summary_line(record)
    assert line.startswith("symmetry: D2 detected") and "threshold" in line
    text = write_symmetry_file(tmp_path, record).read_text()
    assert text.startswith("point group: D2") and "D4" in text and "noise fraction" in text
    explicit = symmetry_record("D2", applied.group, applied.alignment.score, None)
    assert "table" not in explicit and "as given" in summary_line(explicit)


def test_alignment_near_earlier_axes_matches_the_global_search_and_falls_back_when_poor():
    """The final map's alignment refined from the axes imposed during the run (symmetry.choice.align_near)
    gives the map of the global search; a result scoring above max_score is refused (None)."""
    from novomap.symmetry.align import align_to_symmetry
    from novomap.symmetry.choice import align_near
    from novomap.physics.euler import axis_angle_to_matrix, rotation_angle_deg

    volume, pixel = load_demo_map()
    group = point_group("D2")
    c1 = _c1_map(volume.float(), pixel, seed=4)
    config = VdamConfig(particle_diameter_a=0.9 * volume.shape[-1] * pixel)
    found = align_to_symmetry(c1, pixel, group)
    # axes from an earlier version of the map: a few degrees and a fraction of a pixel off
    tilt = axis_angle_to_matrix(torch.tensor([0.3, -0.8, 0.5], dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64))
    earlier = (tilt.reshape(3, 3) @ found.rotation.double(), found.shift_zyx_px.double() + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    near = align_near(c1, pixel, group, earlier)
    assert near is not None
    assert float(rotation_angle_deg(near.rotation.double(), found.rotation.double())) < 0.5  # the 4 degrees undone
    assert float((near.shift_zyx_px - found.shift_zyx_px).norm()) < 0.15  # the centre refined too
    by_near = apply_point_group(c1, pixel, group, config, near)
    by_search = apply_point_group(c1, pixel, group, config)
    assert correlation(by_near.volume, by_search.volume) > 0.99
    assert align_near(c1, pixel, group, earlier, max_score=-1.0) is None


def test_c1_map_looks_names_the_group_of_a_symmetric_map_and_nothing_for_an_asymmetric_one():
    """initial_model.c1_map_looks, the hint for C1 runs that did not settle: the de novo detection's group."""
    from novomap.initial_model import c1_map_looks

    assert c1_map_looks(add_noise(rotate_volume(blob_map("D2"), random_rotation(5)), 0.1, seed=1), PIXEL_SIZE_A) == "D2"
    assert c1_map_looks(add_noise(blob_map("C1"), 0.1, seed=1), PIXEL_SIZE_A) is None
