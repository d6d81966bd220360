"""maps.rotate_cpu (rotate_volume's compiled CPU loop) against exact permutations and against grid_sample."""

from __future__ import annotations

import pytest
import torch

from novomap.maps import rotate_cpu, transform
from novomap.maps.transform import rotate_volume
from novomap.physics.euler import euler_to_matrix

pytestmark = pytest.mark.skipif(not rotate_cpu.available(), reason="needs numba")


def _by_grid_sample(volume: torch.Tensor, matrices: torch.Tensor, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as patch:
        patch.setattr(transform, "_compiled_rotation", lambda: None)
        return rotate_volume(volume, matrices)


def test_quarter_turn_about_z_moves_every_voxel_exactly():
    """90 degrees about z sends (x, y, z) to (-y, x, z) about the centre voxel: a permutation of whole
    voxels (the odd box keeps every voxel inside), with no interpolation at all."""
    n = 9
    volume = torch.randn(n, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    rotated = rotate_cpu.rotate(volume, quarter[None])[0]
    c = n // 2
    for z, y, x in [(0, 0, 0), (c, 2, 7), (8, 8, 3), (5, 1, 6)]:
        # output r takes the value at R^T r: R^T (x - c, y - c) = (y - c, -(x - c))
        assert rotated[z, y, x] == volume[z, c - (x - c), c + (y - c)]


def test_matches_grid_sample_on_random_rotations_mirrors_and_the_edges(monkeypatch):
    """Any rotation (and a mirror), even and odd boxes, both precisions: grid_sample's values, including
    the voxels whose source lies partly or wholly outside the box (zero padding)."""
    generator = torch.Generator().manual_seed(4)
    for n, dtype, tolerance in ((16, torch.float64, 1e-12), (15, torch.float64, 1e-12), (16, torch.float32, 1e-4)):
        volume = torch.randn(n, n, n, generator=generator).to(dtype)
        angles = torch.rand(6, 3, generator=generator) * torch.tensor([360.0, 180.0, 360.0])
        matrices = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]).to(dtype)
        matrices[2] = -matrices[2]  # an improper rotation
        compiled = rotate_cpu.rotate(volume, matrices)
        expected = _by_grid_sample(volume, matrices, monkeypatch)
        assert compiled.dtype == dtype and compiled.shape == (6, n, n, n)
        assert torch.allclose(compiled, expected, atol=tolerance, rtol=0), (n, dtype)
        # the box's corners come from outside it at these angles: zero padding shows there
        assert (expected[:, 0, 0, 0] == 0).any()


def test_rotate_volume_takes_the_compiled_loop_on_the_cpu(monkeypatch):
    calls = []
    original = rotate_cpu.rotate
    monkeypatch.setattr(rotate_cpu, "rotate", lambda v, m: calls.append(m.shape) or original(v, m))
    volume = torch.randn(8, 8, 8)
    one = rotate_volume(volume, torch.eye(3))
    assert calls == [(1, 3, 3)]
    assert torch.equal(one, volume)  # the identity moves nothing
