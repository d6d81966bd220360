"""align_to_symmetry: synthetic maps of every group and the real beta-galactosidase map, randomly rotated.

Acceptance: after alignment every operator of the group leaves the output invariant (correlation
>= 0.95), and the output is a proper rotation of the input (it matches the rotated original better
than that map's mirror image). The slow tier repeats this for 100 random rotations per group.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from _synthetic_maps import PIXEL_SIZE_A, blob_map, correlation, random_rotation
from novomap.commands import align_symmetry
from novomap.errors import InputError, NovomapError
from novomap.io.mrc import read_map, write_map
from novomap.maps.transform import crop_or_pad, mirror_volume, rotate_volume, shift_volume
from novomap.physics.euler import euler_to_matrix
from novomap.symmetry.align import align_to_symmetry
from novomap.symmetry.candidates import coarse_candidates
from novomap.symmetry.score import search_operators
from novomap.symmetry.groups import close_group, point_group
from novomap.symmetry.symmetrise import symmetrise

BETAGAL = Path("/work/shared/data/betagal_relion_tutorial_map/betaGal.mrc")
GROUPS = ["C4", "C7", "D2", "D7", "T", "O", "I", "I1", "I3"]


def betagal_64() -> torch.Tensor:
    volume, _ = read_map(BETAGAL)
    return crop_or_pad(torch.from_numpy(volume), 64)


def original_map(name: str) -> tuple[torch.Tensor, str]:
    """(map in RELION's standard frame, its group) for a group name or 'betagal'."""
    if name == "betagal":
        return betagal_64(), "D2"
    return blob_map(name), name


def check_alignment(original: torch.Tensor, rotation_applied: torch.Tensor, group_name: str) -> None:
    moved = rotate_volume(original, rotation_applied)
    group = point_group(group_name)
    result = align_to_symmetry(moved, PIXEL_SIZE_A, group)
    out = result.volume
    assert torch.isclose(torch.linalg.det(result.rotation), torch.tensor(1.0, dtype=torch.float64), atol=1e-9)
    worst = min(correlation(out, rotate_volume(out, g)) for g in group.operators[1:])
    assert worst >= 0.95, f"{group_name}: an operator changes the aligned map (correlation {worst:.3f})"
    # the output is the original turned by rotation @ rotation_applied, moved by the re-centring
    total = result.rotation @ rotation_applied
    shift_xyz = result.rotation @ result.shift_zyx_px.flip(0)
    expected = shift_volume(rotate_volume(original, total), shift_xyz.flip(0))
    assert correlation(out, expected) > 0.95
    assert correlation(out, expected) > correlation(out, mirror_volume(expected)) + 0.02


@pytest.mark.parametrize("name", GROUPS + ["betagal"])
def test_aligns_a_randomly_rotated_map(name: str) -> None:
    original, group = original_map(name)
    check_alignment(original, random_rotation(100 + GROUPS.index(group) if name != "betagal" else 7), group)


@pytest.mark.slow
@pytest.mark.parametrize("name", GROUPS + ["betagal"])
def test_never_misses_over_100_rotations(name: str) -> None:
    original, group = original_map(name)
    for seed in range(100):
        check_alignment(original, random_rotation(10_000 + seed), group)


@pytest.mark.parametrize("name", ["C4v", "D2h"])
def test_aligns_improper_groups(name: str) -> None:
    # a map with mirror symmetry is its own mirror image, so only the operators are checked
    group = point_group(name)
    result = align_to_symmetry(rotate_volume(blob_map(name), random_rotation(31)), PIXEL_SIZE_A, group)
    assert torch.isclose(torch.linalg.det(result.rotation), torch.tensor(1.0, dtype=torch.float64))
    out = result.volume
    assert min(correlation(out, rotate_volume(out, g)) for g in group.operators[1:]) >= 0.95


def test_c1_returns_the_input_unchanged() -> None:
    volume = blob_map("C1", blobs_per_unit=6)
    result = align_to_symmetry(volume, PIXEL_SIZE_A, "C1")
    assert torch.equal(result.volume, volume)
    assert torch.equal(result.rotation, torch.eye(3, dtype=torch.float64))
    assert result.score == 0.0


def test_deterministic_and_reports_euler_angles_of_the_rotation() -> None:
    moved = rotate_volume(blob_map("C4"), random_rotation(3))
    first = align_to_symmetry(moved, PIXEL_SIZE_A, "c4")
    second = align_to_symmetry(moved.clone(), PIXEL_SIZE_A, "C4")
    assert torch.equal(first.rotation, second.rotation)
    assert first.score == second.score
    assert 0.0 <= first.score < 0.01
    rebuilt = euler_to_matrix(*(torch.tensor(a, dtype=torch.float64) for a in (first.rot, first.tilt, first.psi)))
    assert torch.allclose(rebuilt, first.rotation, atol=1e-9)


def test_accepts_numpy_input() -> None:
    moved = rotate_volume(blob_map("C2", size=32), random_rotation(4)).numpy()
    result = align_to_symmetry(np.asarray(moved), PIXEL_SIZE_A, "C2")
    assert result.volume.shape == (32, 32, 32)
    assert correlation(result.volume, rotate_volume(result.volume, point_group("C2").operators[1])) > 0.95


@pytest.mark.parametrize("name", ["C5", "D3", "T", "O", "I3", "C4v", "D2h", "Oh"])
def test_coarse_grid_covers_every_alignment(name: str) -> None:
    """Any rotation is within the grid's reach (<= 13 deg) of a candidate, modulo the group's equivalences."""
    group = point_group(name)
    candidates = coarse_candidates(group)
    generator = torch.Generator().manual_seed(5)
    angles = torch.rand(300, 3, generator=generator, dtype=torch.float64) * torch.tensor([360.0, 1.0, 360.0])
    tilt = torch.rad2deg(torch.arccos(1 - 2 * angles[:, 1]))
    probes = euler_to_matrix(angles[:, 0], tilt, angles[:, 2])
    if candidates.directions_only:
        cosine = (probes[:, 2] @ candidates.rotations[:, 2].T).abs().amax(dim=1).clamp(max=1.0)
        worst = float(torch.rad2deg(torch.arccos(cosine)).max())
    else:
        equivalent = (candidates.equivalences[None] @ probes[:, None]).reshape(-1, 3, 3)
        trace = torch.einsum("pij,cij->pc", equivalent, candidates.rotations)
        best = trace.reshape(len(probes), -1).amax(dim=1)
        worst = float(torch.rad2deg(torch.arccos(((best - 1) / 2).clamp(-1, 1))).max())
    assert worst <= 13.0


@pytest.mark.parametrize("name", ["C24", "D7", "T", "O", "I", "Td"])
def test_search_operators_generate_the_group(name: str) -> None:
    group = point_group(name)
    ops = search_operators(group, 6)
    assert 1 <= len(ops) <= 7
    assert close_group(list(ops)).shape[0] == group.order


def test_search_operators_cover_every_kind_of_axis() -> None:
    # for I: 2-, 3- and 5-folds, so that an alignment satisfying only a T subgroup scores badly
    angles = {round(float(torch.rad2deg(torch.arccos((torch.trace(g) - 1) / 2)))) for g in
              search_operators(point_group("I"), 6)}
    assert {180, 120, 72, 144} <= angles


def test_symmetrise_imposes_the_group() -> None:
    group = point_group("D3")
    volume = blob_map("C1", blobs_per_unit=10)
    symmetric = symmetrise(volume, group)
    for g in group.operators[1:]:
        assert correlation(symmetric, rotate_volume(symmetric, g)) > 0.97


def test_symmetrise_keeps_a_symmetric_map() -> None:
    volume = blob_map("D2")
    assert correlation(symmetrise(volume, point_group("D2")), volume) > 0.9999


def test_symmetrise_with_rotation_equals_rotate_then_symmetrise() -> None:
    group = point_group("C3")
    rotation = random_rotation(9)
    volume = blob_map("C1", blobs_per_unit=8)
    combined = symmetrise(volume, group, rotation)
    separate = symmetrise(rotate_volume(volume, rotation), group)
    assert correlation(combined, separate) > 0.99


# --- the align-symmetry command ---------------------------------------------------------------


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    align_symmetry.add_arguments(parser)
    return align_symmetry.run(parser.parse_args(argv))


def write_model_star(path: Path, references: list[str], distributions: list[float]) -> None:
    rows = "\n".join(f"{name} {share:.4f} 20.0" for name, share in zip(references, distributions))
    path.write_text(
        "\n# version 30001\n\ndata_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n"
        f"_rlnEstimatedResolution #3\n{rows}\n"
    )


def test_command_writes_symmetrised_map_with_pixel_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, output = tmp_path / "in.mrc", tmp_path / "out.mrc"
    write_map(source, rotate_volume(blob_map("D2"), random_rotation(12)), PIXEL_SIZE_A)
    assert run_command(["--i", str(source), "--o", str(output), "--sym", "D2", "--apply-sym"]) == 0
    text = capsys.readouterr().out
    assert "rot" in text and "tilt" in text and "psi" in text and "score" in text
    volume, pixel = read_map(output)
    assert pixel == pytest.approx(PIXEL_SIZE_A, rel=1e-4)
    out = torch.from_numpy(volume)
    for g in point_group("D2").operators[1:]:
        assert correlation(out, rotate_volume(out, g)) > 0.999


def test_command_reads_the_largest_class_of_a_model_star(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "InitialModel"
    run_dir.mkdir()
    write_map(run_dir / "run_it100_class001.mrc", torch.zeros(64, 64, 64), PIXEL_SIZE_A)
    write_map(run_dir / "run_it100_class002.mrc", rotate_volume(blob_map("C4"), random_rotation(13)), PIXEL_SIZE_A)
    star = run_dir / "run_it100_model.star"
    write_model_star(star, ["run_it100_class001.mrc", "run_it100_class002.mrc"], [0.3, 0.7])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # names are then found relative to the STAR file's folder
    output = tmp_path / "aligned.mrc"
    assert run_command(["--i", str(star), "--o", str(output), "--sym", "C4"]) == 0
    assert "run_it100_class002.mrc" in capsys.readouterr().out
    out = torch.from_numpy(read_map(output)[0])
    assert correlation(out, rotate_volume(out, point_group("C4").operators[1])) > 0.95


def test_command_auto_detects_the_group(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, output = tmp_path / "in.mrc", tmp_path / "out.mrc"
    write_map(source, rotate_volume(blob_map("D2"), random_rotation(14)), PIXEL_SIZE_A)
    assert run_command(["--i", str(source), "--o", str(output), "--sym", "auto"]) == 0
    text = capsys.readouterr().out
    assert "detected point group: D2" in text
    assert "point group: D2 (order 4)" in text


def test_command_c1_copies_the_input(tmp_path: Path) -> None:
    source, output = tmp_path / "in.mrc", tmp_path / "out.mrc"
    volume = blob_map("C1", blobs_per_unit=5)
    write_map(source, volume, PIXEL_SIZE_A)
    assert run_command(["--i", str(source), "--o", str(output)]) == 0
    assert torch.equal(torch.from_numpy(read_map(output)[0]), volume)


def test_command_errors(tmp_path: Path) -> None:
    source = tmp_path / "in.mrc"
    write_map(source, torch.zeros(16, 16, 16), 1.0)
    with pytest.raises(NovomapError, match="unknown point group"):
        run_command(["--i", str(source), "--o", str(tmp_path / "o.mrc"), "--sym", "Q7"])
    star = tmp_path / "model.star"
    write_model_star(star, ["missing.mrc"], [1.0])
    with pytest.raises(InputError, match="not found"):
        run_command(["--i", str(star), "--o", str(tmp_path / "o.mrc"), "--sym", "C2"])


@pytest.mark.filterwarnings("ignore:Data array contains NaN values")  # mrcfile's, on writing the bad map
def test_a_map_with_a_nan_voxel_is_refused_with_its_position(tmp_path):
    volume = blob_map("C2", size=32).numpy()
    volume[5, 4, 3] = np.nan
    write_map(tmp_path / "nan.mrc", volume, PIXEL_SIZE_A)
    with pytest.raises(InputError, match=r"1 NaN or infinite voxel\(s\), the first at \(x, y, z\) = \(3, 4, 5\)"):
        run_command(["--i", str(tmp_path / "nan.mrc"), "--o", str(tmp_path / "out.mrc"), "--sym", "C2"])
    assert not (tmp_path / "out.mrc").exists()
