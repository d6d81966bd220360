"""The E-step sums (estep.accumulate) against a direct, row-by-row evaluation of their definition.

For each fine hypothesis row (particle b, class k, fine orientation f, coarse translation t) and
each of its J child translations j (4, or 1 without translational oversampling) with weight w:
  gradient slice (half of b, k, f) += w c (X e_{t,j} - c P) / sigma^2
  weight slice                     += w c^2 / sigma^2
  noise of b, per shell            += w |X_masked e_{t,j} - c P|^2
with e_{t,j} the phase of fine translation (t, j); the slices are then back-projected.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from novomap.estep import accumulate as accumulate_module
from novomap.estep import cache as cache_module
from novomap.estep import sparse_cpu
from novomap.estep.accumulate import Sums, _child_sums, _sparse_product, accumulate, flush_slices
from novomap.estep.cache import SliceBuffer
from novomap.estep.prepare import PreparedBatch
from novomap.estep.search import FineResult
from novomap.physics.projection import insert_slices
from novomap.physics.window import fourier_window, shift_phases
from novomap.sampling.grid import build_search_grid, without_sub_translations

BOX = 16
N_CLASSES = 2


def _random_inputs(generator: torch.Generator, sub_translations: bool = True):
    window = fourier_window(BOX, BOX, "cpu")
    grid = build_search_grid(1, 4, 2, perturbation=0.3)
    if not sub_translations:
        grid = without_sub_translations(grid)
    n_batch, n_rows, n_proj, p = 3, 7, 5, window.n_pixels

    def complex_noise(*shape):
        return torch.complex(torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator))

    batch = PreparedBatch(
        particle_index=torch.arange(n_batch),
        half=torch.tensor([0, 1, 0]),
        optics_group=torch.tensor([0, 0, 1]),
        origin_px=torch.tensor([[1.0, -2.0], [0.0, 0.0], [-3.0, 1.0]], dtype=torch.float64),
        masked=complex_noise(n_batch, p),
        unmasked=complex_noise(n_batch, p),
        ctf=torch.rand(n_batch, p, generator=generator) * 2 - 1,
        inv_sigma2=torch.rand(n_batch, p, generator=generator) + 0.5,
        masked_power=torch.rand(n_batch, BOX // 2 + 1, generator=generator, dtype=torch.float64),
    )
    n_fine = grid.fine_rotations.shape[0] * 8
    weights = torch.rand(n_rows, grid.n_sub_translations, generator=generator, dtype=torch.float64)
    weights[2, -1] = 0.0  # a child that was not retained
    result = FineResult(
        row_particle=torch.tensor([0, 0, 1, 2, 2, 2, 1]),
        row_class=torch.tensor([0, 1, 0, 1, 1, 0, 0]),
        # rows 3 and 4 share particle, class and orientation: their slices add
        row_orientation=torch.tensor([5, 5, 17, 40, 40, 3, 17]),
        row_direction=torch.tensor([0, 0, 1, 2, 2, 0, 1]),
        row_translation=torch.tensor([0, 3, 2, 1, 4, 0, 2]),
        row_projection=torch.tensor([0, 1, 2, 3, 3, 4, 2]),
        projections=complex_noise(n_proj, p),
        weights=weights,
        best_class=torch.zeros(n_batch, dtype=torch.long),
        best_orientation=torch.zeros(n_batch, dtype=torch.long),
        best_translation_px=torch.zeros(n_batch, 2, dtype=torch.float64),
        max_probability=torch.rand(n_batch, generator=generator, dtype=torch.float64),
        n_significant=torch.ones(n_batch, dtype=torch.long),
        log_likelihood=torch.randn(n_batch, generator=generator, dtype=torch.float64),
    )
    sums = Sums.zeros(N_CLASSES, BOX, BOX, 2, grid.n_directions, torch.ones(BOX // 2 + 1, dtype=torch.float64), n_fine, p, "cpu")
    return window, grid, batch, result, sums


def _direct(window, grid, batch: PreparedBatch, result: FineResult):
    gradient = torch.zeros((2, N_CLASSES, BOX, BOX, BOX), dtype=torch.complex128)
    weight = torch.zeros((2, N_CLASSES, BOX, BOX, BOX), dtype=torch.float64)
    noise = torch.zeros((2, BOX // 2 + 1), dtype=torch.float64)
    rotations = grid.fine_rotations.reshape(-1, 3, 3)
    c, inv_sigma2 = batch.ctf.double(), batch.inv_sigma2.double()
    for r in range(result.weights.shape[0]):
        b, k, t = int(result.row_particle[r]), int(result.row_class[r]), int(result.row_translation[r])
        projection = result.projections[result.row_projection[r]].to(torch.complex128)
        h = int(batch.half[b])
        rotation = rotations[result.row_orientation[r]][None]
        for j in range(grid.n_sub_translations):
            w = float(result.weights[r, j])
            phase = shift_phases(window, grid.fine_translations[t, j][None].double())[0]
            residual = batch.unmasked[b].to(torch.complex128) * phase - c[b] * projection
            slice_values = (w * c[b] * residual * inv_sigma2[b])[None]
            slice_weights = (w * c[b] ** 2 * inv_sigma2[b])[None]
            insert_slices(slice_values, slice_weights, rotation, window.kx, window.ky, 1, gradient[h, k], weight[h, k])
            masked_residual = batch.masked[b].to(torch.complex128) * phase - c[b] * projection
            per_pixel = w * masked_residual.abs().square()
            noise[batch.optics_group[b]].index_add_(0, window.shell, per_pixel)
    return gradient, weight, noise


needs_numba = pytest.mark.skipif(not sparse_cpu.available(), reason="numba is not installed")


@pytest.mark.parametrize("planes", [False, True])
@pytest.mark.parametrize("sub_translations", [True, False])
@pytest.mark.parametrize("overflow", [False, True])
@pytest.mark.parametrize("compiled", [pytest.param(True, marks=needs_numba), False])
def test_accumulated_sums_equal_their_row_by_row_definition(compiled, overflow, sub_translations, planes, monkeypatch):
    """overflow: a slice buffer with room for fewer slices than the chunk has, so they are inserted directly;
    sub_translations False: a grid without translational oversampling (one child per coarse translation);
    planes: the projections stored as the CPU's cache stores them, real and imaginary planes (read in place)."""
    if not compiled:  # torch.sparse.mm, as on a GPU
        monkeypatch.setattr(accumulate_module, "_compiled_sparse_sums", lambda: None)
        monkeypatch.setattr(cache_module, "compiled_sparse_cpu", lambda: None)
    generator = torch.Generator().manual_seed(7)
    window, grid, batch, result, sums = _random_inputs(generator, sub_translations)
    if overflow:
        sums.slices = SliceBuffer(sums.slices.slot.numel(), window.n_pixels, "cpu", max_slices=2)
    stored = dataclasses.replace(result, projections=torch.stack([result.projections.real, result.projections.imag], 1)) if planes else result
    accumulate(sums, batch, stored, window, grid, 1, pixel_size_a=2.0)
    flush_slices(sums, grid, window, 1)
    gradient, weight, noise = _direct(window, grid, batch, result)

    assert float(weight.abs().sum()) > 0
    scale = float(gradient.abs().max())
    assert torch.allclose(sums.gradient, gradient, atol=1e-5 * scale), float((sums.gradient - gradient).abs().max())
    assert torch.allclose(sums.weight, weight, atol=1e-5 * float(weight.max()))
    in_window = torch.arange(BOX // 2 + 1) < window.size // 2
    assert torch.allclose(sums.noise[:, in_window], noise[:, in_window], rtol=1e-4)
    # class and direction weights are the rows' total weights
    totals = result.weights.sum(-1)
    expected_class = torch.zeros(N_CLASSES, dtype=torch.float64).index_add_(0, result.row_class, totals)
    assert torch.allclose(sums.class_weight, expected_class)
    # sum w |new origin (Å)|^2: each child's translation added to its particle's origin, at 2 Å/px
    expected_offset = 0.0
    for r in range(result.weights.shape[0]):
        b, t = int(result.row_particle[r]), int(result.row_translation[r])
        for j in range(grid.n_sub_translations):
            origin_a = (batch.origin_px[b] + grid.fine_translations[t, j].double()) * 2.0
            expected_offset += float(result.weights[r, j]) * float(origin_a.square().sum())
    assert float(sums.offset_sq_a2) == pytest.approx(expected_offset, rel=1e-9)


def test_sparse_product_sums_each_entry_into_its_row():
    generator = torch.Generator().manual_seed(3)
    dense = torch.complex(torch.randn(6, 40, generator=generator), torch.randn(6, 40, generator=generator))
    # unsorted rows, a repeated (row, column) entry, and output rows 1 and 4 with no entry at all
    rows = torch.tensor([3, 0, 3, 2, 0, 3, 5])
    columns = torch.tensor([1, 5, 1, 0, 2, 4, 5])
    values = torch.rand(7, generator=generator)
    # freed memory of the output's size holding other values, which the product's own output may reuse
    stale = torch.full((6, 80), 7.0)
    del stale
    got = _sparse_product(rows, columns, values, 6, dense)
    expected = torch.zeros((6, 40), dtype=torch.complex128)
    for r, c, v in zip(rows.tolist(), columns.tolist(), values.tolist()):
        expected[r] += v * dense[c].to(torch.complex128)
    assert got.shape == (6, 40) and got.dtype == torch.complex64
    assert torch.allclose(got.to(torch.complex128), expected, atol=1e-5)
    assert float(got[1].abs().max()) == 0.0 and float(got[4].abs().max()) == 0.0
    # a conjugated view is read as its values (accumulate passes projections.conj())
    conj = _sparse_product(rows, columns, values, 6, dense.conj())
    assert torch.allclose(conj.to(torch.complex128), expected.conj(), atol=1e-5)


@pytest.mark.parametrize("n_children", [4, 1])
@pytest.mark.parametrize("compiled", [pytest.param(True, marks=needs_numba), False])
def test_child_sums_mix_each_rows_children_before_the_product(compiled, n_children, monkeypatch):
    """out[r] = sum over entries e of row r of dense[c_e] * sum_j w_ej children[j], checked entry by entry;
    the compiled passes (4 children, or 1) and the sparse product of the products (any device) alike."""
    if not compiled:
        monkeypatch.setattr(accumulate_module, "_compiled_sparse_sums", lambda: None)
    generator = torch.Generator().manual_seed(11)

    def complex_noise(*shape):
        return torch.complex(torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator))

    dense, children = complex_noise(5, 37), complex_noise(n_children, 37)
    # unsorted rows, a repeated (row, column) entry, output row 2 with no entry
    rows = torch.tensor([4, 0, 4, 1, 0, 3, 4, 1])
    columns = torch.tensor([2, 0, 2, 4, 3, 1, 0, 2])
    weights = torch.rand(8, n_children, generator=generator, dtype=torch.float64)
    weights[3, -1] = 0.0
    got = _child_sums(rows, columns, weights, children, 5, dense.conj())
    expected = torch.zeros((5, 37), dtype=torch.complex128)
    for e, (r, c) in enumerate(zip(rows.tolist(), columns.tolist())):
        for j in range(n_children):
            expected[r] += float(weights[e, j]) * dense[c].conj().to(torch.complex128) * children[j].to(torch.complex128)
    assert got.shape == (5, 37) and got.dtype == torch.complex64
    assert torch.allclose(got.to(torch.complex128), expected, atol=1e-5 * float(expected.abs().max()))
    assert float(got[2].abs().max()) == 0.0
    if compiled:  # the same from the dense rows' planes, conjugated in the pass (the projection store read in place)
        from_planes = sparse_cpu.child_row_sums(rows, columns, weights, children, 5, sparse_cpu.row_planes(dense), conjugate=True)
        assert torch.allclose(from_planes.to(torch.complex128), expected, atol=1e-5 * float(expected.abs().max()))
    # no entries at all (a chunk whose rows all went elsewhere): zero rows, or no rows
    none = torch.zeros(0, dtype=torch.long)
    empty = _child_sums(none, none, torch.zeros((0, n_children), dtype=torch.float64), children, 3, dense)
    assert empty.shape == (3, 37) and float(empty.abs().max()) == 0.0
    assert _child_sums(none, none, torch.zeros((0, n_children), dtype=torch.float64), children, 0, dense).shape == (0, 37)
    if compiled:  # the compiled loops read exactly 4 children, or 1: other counts are refused, not misread
        three = complex_noise(3, 37)
        with pytest.raises(ValueError):
            sparse_cpu.child_row_sums(rows, columns, torch.rand(8, 3, generator=generator, dtype=torch.float64), three, 5, dense)


@needs_numba
def test_grouped_order_is_a_stable_sort_by_row():
    generator = torch.Generator().manual_seed(5)
    rows = torch.randint(0, 7, (200,), generator=generator)
    rows[rows == 4] = 5  # row 4 without entries
    order, row_start = sparse_cpu.grouped_order(rows, 8)  # row 7 without entries too
    assert torch.equal(order, torch.argsort(rows, stable=True))
    assert torch.equal(row_start[1:] - row_start[:-1], torch.bincount(rows, minlength=8))
    assert int(row_start[0]) == 0 and int(row_start[-1]) == rows.numel()


def test_dense_rows_sums_duplicates_in_one_order_every_time() -> None:
    """Runs of one seed must give one map: _dense_rows (and the direction weights) add rows that share
    a cell in the same order on every call. index_put_(accumulate=True) did not on the CPU: 30 calls
    of 200,000 values gave 30 different float sums, and the maps of one seed drifted apart on a busy machine."""
    from novomap.estep.accumulate import _dense_rows

    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 200, (200_000,), generator=generator)
    columns = torch.randint(0, 50, (200_000,), generator=generator)
    values = torch.rand(200_000, generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        results = [_dense_rows(rows, columns, values, 200, 50) for _ in range(10)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], other) for other in results[1:])
    exact = torch.zeros(200, 50, dtype=torch.float64).index_put_((rows, columns), values.double(), accumulate=True)
    torch.testing.assert_close(results[0].double(), exact, rtol=1e-5, atol=1e-4)


@needs_numba
def test_real_row_sums_add_each_weighted_dense_row_into_its_row():
    generator = torch.Generator().manual_seed(13)
    dense = torch.randn(6, 29, generator=generator)
    # unsorted rows, a repeated (row, column) entry, output row 1 with no entry
    rows = torch.tensor([3, 0, 3, 2, 0, 3])
    columns = torch.tensor([5, 1, 5, 0, 4, 2])
    weights = torch.rand(6, generator=generator, dtype=torch.float64)
    got = sparse_cpu.real_row_sums(rows, columns, weights, 4, dense)
    expected = torch.zeros((4, 29), dtype=torch.float64)
    for r, c, w in zip(rows.tolist(), columns.tolist(), weights.tolist()):
        expected[r] += w * dense[c].double()
    assert got.shape == (4, 29) and got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, atol=1e-6) and float(got[1].abs().max()) == 0.0
    none = torch.zeros(0, dtype=torch.long)
    assert float(sparse_cpu.real_row_sums(none, none, torch.zeros(0), 2, dense).abs().max()) == 0.0


@needs_numba
def test_power_row_sums_add_each_weighted_power_of_a_planes_row():
    generator = torch.Generator().manual_seed(17)
    dense = torch.complex(torch.randn(6, 29, generator=generator), torch.randn(6, 29, generator=generator))
    rows = torch.tensor([3, 0, 3, 2, 0, 3])
    columns = torch.tensor([5, 1, 5, 0, 4, 2])
    weights = torch.rand(6, generator=generator, dtype=torch.float64)
    got = sparse_cpu.power_row_sums(rows, columns, weights, 4, sparse_cpu.row_planes(dense))
    expected = torch.zeros((4, 29), dtype=torch.float64)
    for r, c, w in zip(rows.tolist(), columns.tolist(), weights.tolist()):
        expected[r] += w * dense[c].to(torch.complex128).abs().square()
    assert got.shape == (4, 29) and torch.allclose(got.double(), expected, atol=1e-5) and float(got[1].abs().max()) == 0.0
    with pytest.raises(ValueError):  # planes are (C, 2, P): a real (C, P) array is not mistaken for them
        sparse_cpu.row_planes(dense.real)
