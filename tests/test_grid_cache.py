import torch

from novomap.estep import driver
from novomap.physics import grid_cache
from novomap.physics.fourier import centred_radius
from novomap.physics.masks import soft_edge_mask
from novomap.physics.projection import gridding_correction, projector_transform


def test_a_cached_grid_is_computed_once_per_arguments_and_large_ones_are_not_kept(monkeypatch):
    calls = []

    @grid_cache.cached_grid
    def ramp(n: int, scale: float = 1.0) -> torch.Tensor:
        calls.append((n, scale))
        return torch.arange(n**3, dtype=torch.float64) * scale

    first = ramp(4)
    assert ramp(4) is first and calls == [(4, 1.0)]
    assert torch.equal(ramp(4, scale=2.0), 2 * first) and len(calls) == 2  # other arguments: computed
    monkeypatch.setattr(grid_cache, "MAX_VOXELS", 100)
    big = ramp(5)  # 125 voxels
    assert ramp(5) is not big and calls.count((5, 1.0)) == 2
    # the oldest entries give way
    for n in range(1, grid_cache.MAX_ENTRIES + 2):
        ramp(1, scale=float(n))
    assert ramp(4) is not first


def test_the_cached_physics_grids_equal_fresh_ones():
    for function, args in ((centred_radius, (12, 2)), (soft_edge_mask, ((10, 10, 10), 3.5, 2.0)), (gridding_correction, (9, 2))):
        kept = function(*args)
        assert function(*args) is kept
        assert torch.equal(kept, function.__wrapped__(*args))


def test_projector_transforms_are_kept_for_the_same_unchanged_maps():
    generator = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 8, 8, 8, generator=generator, dtype=torch.float64)
    first = driver.projector_transforms(maps)
    assert driver.projector_transforms(maps) is first
    expected = torch.stack([projector_transform(m, driver.PAD) for m in maps])
    assert torch.equal(first, expected)
    # an equal but other tensor, and the same tensor changed in place, are transformed afresh
    other = maps.clone()
    assert driver.projector_transforms(other) is not first
    maps[1] += 1.0
    again = driver.projector_transforms(maps)
    assert torch.equal(again, torch.stack([projector_transform(m, driver.PAD) for m in maps]))
    assert not torch.equal(again[1], first[1])
