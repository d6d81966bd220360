"""estep.cache.ProjectionCache: each block holds the 8 projections of its key, within a memory budget."""

from __future__ import annotations

import pytest
import torch

from novomap.estep import cache as cache_module
from novomap.estep import sparse_cpu
from novomap.estep.cache import ProjectionCache, SliceBuffer
from novomap.physics.projection import extract_slices
from novomap.physics.window import fourier_window
from novomap.sampling.grid import build_search_grid


def _cache(budget_bytes: int) -> tuple[ProjectionCache, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn((1, 32, 32, 32), generator=generator, dtype=torch.complex64)
    grid = build_search_grid(1, 2.0, 2.0, 0.0)
    window = fourier_window(16, 12, "cpu")
    return ProjectionCache(reference, grid.fine_rotations, window, 2, budget_bytes), reference, grid.fine_rotations


def _expected(reference, rotations, window, key: int) -> torch.Tensor:
    return extract_slices(reference[0], rotations[key].to(torch.float32), window.kx, window.ky, 2)


def test_blocks_are_the_projections_of_their_keys_and_the_budget_bounds_the_store():
    unbounded, reference, rotations = _cache(1 << 30)
    window = unbounded.window
    small_budget = 3 * 8 * window.n_pixels * 12  # room for three blocks
    bounded, _, _ = _cache(small_budget)
    assert bounded.max_blocks == 3
    for keys in ([5, 9], [9, 40], [41, 42, 43], [5]):  # the third lookup overflows: the store starts again
        keys = torch.tensor(keys)
        for cache in (unbounded, bounded):
            store, index = cache.lookup(keys)
            for key, block in zip(keys.tolist(), index.tolist()):
                assert torch.allclose(store[block], _expected(reference, rotations, window, key), atol=1e-5)
                assert torch.allclose(cache.power[block], store[block].abs().square(), rtol=1e-5, atol=1e-6)
        assert bounded.count <= max(bounded.max_blocks, keys.unique().numel())
    assert unbounded.count == 6 and bounded.count == 1  # the last lookup found [41, 42, 43] only, and 5 gone


def test_a_store_of_planes_holds_the_same_projections_as_the_complex_store():
    generator = torch.Generator().manual_seed(1)
    reference = torch.randn((2, 32, 32, 32), generator=generator, dtype=torch.complex64)
    grid = build_search_grid(1, 2.0, 2.0, 0.0)
    window = fourier_window(16, 12, "cpu")
    planes = ProjectionCache(reference, grid.fine_rotations, window, 2, with_power=True, with_planes=True)
    plain = ProjectionCache(reference, grid.fine_rotations, window, 2)
    for keys in ([3, 700], [700, 4, 600], [5]):  # keys of both classes (576 coarse orientations each)
        store, index = planes.lookup(torch.tensor(keys))
        expected, expected_index = plain.lookup(torch.tensor(keys))
    assert store.shape == (expected.shape[0], 8, 2, window.n_pixels) and store.dtype == torch.float32
    assert torch.equal(index, expected_index)
    assert torch.equal(store[:, :, 0], expected.real) and torch.equal(store[:, :, 1], expected.imag)
    assert torch.allclose(planes.powers(), expected.abs().square(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_planes", [False, True])
def test_a_narrower_class_holds_its_own_window_and_zeros_beyond(with_planes):
    generator = torch.Generator().manual_seed(2)
    reference = torch.randn((2, 32, 32, 32), generator=generator, dtype=torch.complex64)
    grid = build_search_grid(1, 2.0, 2.0, 0.0)
    window = fourier_window(16, 14, "cpu", by_shell=True)
    n_narrow = fourier_window(16, 8, "cpu").n_pixels
    with pytest.raises(ValueError):  # a prefix is another window's pixels only in shell order
        ProjectionCache(reference, grid.fine_rotations, fourier_window(16, 14, "cpu"), 2, class_pixels=[window.n_pixels, n_narrow])
    cache = ProjectionCache(reference, grid.fine_rotations, window, 2, with_planes=with_planes, class_pixels=[window.n_pixels, n_narrow])
    full = ProjectionCache(reference, grid.fine_rotations, window, 2, with_planes=with_planes)
    keys = torch.tensor([3, 700, 701, 5])  # classes 0, 1, 1, 0 (576 coarse orientations each)
    store, index = cache.lookup(keys)
    expected, expected_index = full.lookup(keys)
    assert torch.equal(cache.class_pixels, torch.tensor([window.n_pixels, n_narrow]))
    for key, block, other in zip(keys.tolist(), index.tolist(), expected_index.tolist()):
        n = window.n_pixels if key < 576 else n_narrow
        assert torch.allclose(store[block][..., :n], expected[other][..., :n], atol=1e-6)
        assert not store[block][..., n:].any()
        assert not cache.power[block][..., n:].any()
    assert expected[expected_index[1]][..., n_narrow:].abs().sum() > 0  # the full class-1 blocks are not zero there


@pytest.mark.parametrize("with_planes", [False, True])
def test_a_released_store_serves_the_next_cache_with_its_own_projections(monkeypatch, with_planes):
    """ProjectionCache.release hands the CPU store's storage on: the next cache (another map, same
    device) writes its blocks into the same memory, stale values and all, and reads back its own
    projections, within the budget that sizes the store."""
    monkeypatch.setattr(cache_module, "_SPARE_STORAGE", {})  # no spare left by other tests
    generator = torch.Generator().manual_seed(2)
    grid = build_search_grid(1, 2.0, 2.0, 0.0)
    window = fourier_window(16, 12, "cpu")
    budget = 20 * 8 * window.n_pixels * 12  # twenty blocks: the store is sized to the budget, not to every key
    first_reference = torch.randn((1, 32, 32, 32), generator=generator, dtype=torch.complex64)
    first = ProjectionCache(first_reference, grid.fine_rotations, window, 2, budget, with_planes=with_planes)
    assert first.store.shape[0] == first.max_blocks < first.slot.numel()
    first.lookup(torch.tensor([3, 7, 11]))
    pointer = first.store.data_ptr()
    first.release()
    assert first.count == 0 and bool((first.slot < 0).all())

    second_reference = torch.randn((1, 32, 32, 32), generator=generator, dtype=torch.complex64)
    second = ProjectionCache(second_reference, grid.fine_rotations, window, 2, budget, with_planes=with_planes)
    assert second.store.data_ptr() == pointer
    keys = torch.tensor([7, 3, 500])
    store, index = second.lookup(keys)
    for key, block in zip(keys.tolist(), index.tolist()):
        expected = _expected(second_reference, grid.fine_rotations, window, key)
        got = torch.complex(store[block, :, 0], store[block, :, 1]) if with_planes else store[block]
        assert torch.allclose(got, expected, atol=1e-5)
    # a cache made while the storage is in use gets memory of its own
    third = ProjectionCache(second_reference, grid.fine_rotations, window, 2, budget, with_planes=with_planes)
    assert third.store.data_ptr() != pointer


needs_numba = pytest.mark.skipif(not sparse_cpu.available(), reason="numba is not installed")


def _flushed_grids(buffer: SliceBuffer, rotations: torch.Tensor, window, n_classes: int, m: int):
    gradient = torch.zeros((2, n_classes, m, m, m), dtype=torch.complex128)
    weight = torch.zeros((2, n_classes, m, m, m), dtype=torch.float64)
    buffer.flush(rotations, n_classes, window, 1, gradient, weight)
    return gradient, weight


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=needs_numba), False])
def test_slice_buffer_sums_repeated_keys_and_forgets_flushed_rows(compiled, monkeypatch):
    """Slices added under the same key across adds are summed, each less its reference row times its
    weight where one is given; after a flush the buffer starts from nothing (its reused rows are
    overwritten, never added to), so a second round of adds back-projects exactly what a fresh buffer
    would. compiled: estep.sparse_cpu's loop; else the tensor path of other devices."""
    if not compiled:
        monkeypatch.setattr(cache_module, "compiled_sparse_cpu", lambda: None)
    monkeypatch.setattr(cache_module, "_SPARE_STORAGE", {})  # no spare left by other tests
    box, n_classes = 12, 2
    window = fourier_window(box, box, "cpu")
    p = window.n_pixels
    rotations = build_search_grid(1, 2.0, 2.0, 0.0).fine_rotations.reshape(-1, 3, 3)[:6]
    n_keys = 2 * n_classes * rotations.shape[0]
    m = box + 3

    def round_of_adds(buffer: SliceBuffer, seed: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        expected: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        reference = torch.complex(torch.randn(3, p, generator=g), torch.randn(3, p, generator=g))
        for keys in (torch.tensor([1, 4, 9]), torch.tensor([4, 20, 1, 13]), torch.tensor([13])):
            data = torch.complex(torch.randn(len(keys), p, generator=g), torch.randn(len(keys), p, generator=g))
            weight = torch.rand(len(keys), p, generator=g)
            reference_rows = torch.randint(0, 3, (len(keys),), generator=g)
            with_reference = len(keys) == 4  # the second add subtracts the reference term
            if with_reference:
                buffer.add(keys, data, weight, reference, reference_rows)
            else:
                buffer.add(keys, data, weight)
            for key, d, w, j in zip(keys.tolist(), data, weight, reference_rows.tolist()):
                old = expected.get(key, (0, 0))
                expected[key] = (old[0] + d - (reference[j] * w if with_reference else 0), old[1] + w)
        return expected

    reused = SliceBuffer(n_keys, p, "cpu", max_slices=8)
    round_of_adds(reused, seed=10)
    storage_pointer = reused._storage.data_ptr()
    _flushed_grids(reused, rotations, window, n_classes, m)
    expected = round_of_adds(reused, seed=11)
    for key, (data, weight) in expected.items():
        row = int(reused.slot[key])
        assert torch.allclose(torch.complex(reused.channels[0, row], reused.channels[1, row]), data, atol=1e-5)
        assert torch.allclose(reused.channels[2, row], weight, atol=1e-5)

    fresh = SliceBuffer(n_keys, p, "cpu", max_slices=8)
    round_of_adds(fresh, seed=11)
    fresh_grids = _flushed_grids(fresh, rotations, window, n_classes, m)
    for got, want in zip(_flushed_grids(reused, rotations, window, n_classes, m), fresh_grids):
        assert got.abs().max() > 0
        assert torch.allclose(got, want, atol=1e-6)
    assert reused.count == 0 and bool((reused.slot < 0).all())

    # a released buffer's storage (stale values in it) serves the next buffer on the device
    reused.release()
    recycled = SliceBuffer(n_keys, p, "cpu", max_slices=8)
    round_of_adds(recycled, seed=11)
    assert recycled._storage is not None and recycled._storage.data_ptr() == storage_pointer
    for got, want in zip(_flushed_grids(recycled, rotations, window, n_classes, m), fresh_grids):
        assert torch.allclose(got, want, atol=1e-6)
