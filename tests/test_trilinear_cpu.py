"""The compiled CPU slice kernels (physics.trilinear_cpu) against grid_sample, the GPU path."""

import pytest
import torch

from novomap.physics import projection, trilinear_cpu
from novomap.physics.projection import _grid_sample_adjoint, _grid_sample_slices, extract_slice_planes, extract_slices, insert_slice_rows, insert_slices

pytestmark = pytest.mark.skipif(not trilinear_cpu.available(), reason="numba is not installed")


def _geometry(m: int, n_slices: int, n_pixels: int, dtype, seed: int):
    generator = torch.Generator().manual_seed(seed)
    rotations, _ = torch.linalg.qr(torch.randn(n_slices, 3, 3, generator=generator, dtype=torch.float64))
    # pixels out to beyond the grid's edge, so that the zero padding is exercised
    kx = (torch.rand(n_pixels, generator=generator, dtype=torch.float64) - 0.5) * 1.2 * m
    ky = torch.rand(n_pixels, generator=generator, dtype=torch.float64) * 0.6 * m
    return rotations.to(dtype), kx.to(dtype), ky.to(dtype)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("pad", [1, 2])
def test_gather_matches_grid_sample(dtype, tolerance, pad):
    m = 16 * pad
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    volume = torch.randn(m, m, m, dtype=complex_dtype, generator=torch.Generator().manual_seed(1))
    rotations, kx, ky = _geometry(m // pad, 30, 200, dtype, seed=2)
    reference = _grid_sample_slices(volume, rotations, kx, ky, pad, torch.empty((30, 200), dtype=complex_dtype))
    compiled = extract_slices(volume, rotations, kx, ky, pad)
    scale = float(reference.abs().max())
    assert scale > 0 and float((compiled == 0).float().mean()) > 0.05  # some pixels fall outside the grid
    assert torch.allclose(compiled, reference, atol=tolerance * scale * 10, rtol=0)


def test_gather_into_a_strided_output():
    volume = torch.randn(16, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    rotations, kx, ky = _geometry(16, 5, 40, torch.float32, seed=4)
    out = torch.zeros((40, 5), dtype=torch.complex64).T  # not contiguous
    extract_slices(volume, rotations, kx, ky, 1, out=out)
    assert torch.allclose(out, extract_slices(volume, rotations, kx, ky, 1), atol=1e-6)


def test_slices_as_planes_are_the_complex_slices_parts():
    volume = torch.randn(16, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(7))
    rotations, kx, ky = _geometry(16, 40, 60, torch.float32, seed=8)  # 40 slices, pixels out beyond the grid's edge
    planes = torch.full((40, 2, 60), float("nan"))
    extract_slice_planes(volume, rotations, kx, ky, 1, planes)
    expected = _grid_sample_slices(volume, rotations, kx, ky, 1, torch.empty((40, 60), dtype=torch.complex64))
    assert torch.allclose(planes[:, 0], expected.real, atol=1e-5) and torch.allclose(planes[:, 1], expected.imag, atol=1e-5)


@pytest.mark.parametrize("compiled", [True, False])
def test_inserting_a_buffers_rows_in_place_equals_inserting_the_gathered_slices(compiled, monkeypatch):
    if not compiled:  # the path of other devices: the rows gathered, then grid_sample's adjoint
        monkeypatch.setattr(projection, "compiled_loops", lambda: None)
    generator = torch.Generator().manual_seed(9)
    rotations, kx, ky = _geometry(16, 30, 70, torch.float32, seed=10)
    channels = torch.randn(3, 50, 70, generator=generator)  # a buffer of 50 rows, 30 of them inserted
    index = torch.randperm(50, generator=generator)[:30]
    # grids that hold sums already: the rows' sums are added to them
    start = (torch.randn(16, 16, 16, dtype=torch.complex128, generator=generator), torch.rand(16, 16, 16, dtype=torch.float64, generator=generator))
    in_place = (start[0].clone(), start[1].clone())
    gathered = (start[0].clone(), start[1].clone())
    insert_slice_rows(channels, index, rotations, kx, ky, 1, *in_place)
    insert_slices(torch.complex(channels[0, index], channels[1, index]), channels[2, index], rotations, kx, ky, 1, *gathered)
    assert torch.equal(in_place[0], gathered[0]) and torch.equal(in_place[1], gathered[1])
    assert float((in_place[1] - start[1]).abs().sum()) > 0


@pytest.mark.parametrize("pad", [1, 2])
def test_scatter_matches_grid_sample_adjoint(pad):
    m = 16 * pad
    rotations, kx, ky = _geometry(16, 40, 150, torch.float64, seed=5)
    generator = torch.Generator().manual_seed(6)
    channels = [torch.randn(40, 150, dtype=torch.float64, generator=generator) for _ in range(3)]
    compiled = trilinear_cpu.scatter_slices(channels, rotations, kx, ky, pad, m)
    reference = _grid_sample_adjoint(channels, rotations, kx, ky, pad, m, torch.float64, torch.device("cpu"))
    assert compiled.shape == (3, m, m, m)
    assert torch.allclose(compiled, reference, atol=1e-10)


def test_scatter_is_the_adjoint_of_gather():
    """<extract(V), S> = <V, insert(S)> for the compiled pair, both real and imaginary parts."""
    m = 20
    generator = torch.Generator().manual_seed(7)
    volume = torch.randn(m, m, m, dtype=torch.complex128, generator=generator)
    rotations, kx, ky = _geometry(m, 25, 120, torch.float64, seed=8)
    slices = torch.randn(25, 120, dtype=torch.complex128, generator=generator)
    data = torch.zeros((m, m, m), dtype=torch.complex128)
    insert_slices(slices, None, rotations, kx, ky, 1, data, None)
    lhs = (extract_slices(volume, rotations, kx, ky, 1).conj() * slices).real.sum()
    rhs = (volume.conj() * data).real.sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10)


def test_scatter_does_not_depend_on_thread_count():
    rotations, kx, ky = _geometry(16, 64, 100, torch.float32, seed=9)
    channels = [torch.randn(64, 100, generator=torch.Generator().manual_seed(10))]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = trilinear_cpu.scatter_slices(channels, rotations, kx, ky, 1, 16)
    finally:
        torch.set_num_threads(threads)
    several = trilinear_cpu.scatter_slices(channels, rotations, kx, ky, 1, 16)
    assert torch.allclose(one, several, atol=1e-9)


def test_scatter_within_its_memory_budget(monkeypatch):
    """Fewer private grids than threads when they would not fit: the same sums."""
    rotations, kx, ky = _geometry(16, 64, 100, torch.float32, seed=11)
    channels = [torch.randn(64, 100, generator=torch.Generator().manual_seed(12))]
    full = trilinear_cpu.scatter_slices(channels, rotations, kx, ky, 1, 16)
    monkeypatch.setattr(trilinear_cpu, "_SCATTER_BUDGET_BYTES", 8 * 16**3)  # room for one grid
    single = trilinear_cpu.scatter_slices(channels, rotations, kx, ky, 1, 16)
    assert torch.allclose(full, single, atol=1e-9)


def test_rim_holds_every_pixel_that_can_reach_the_grid_edge():
    """The gather's second pass visits only the rim: every pixel with a neighbour outside the grid at
    some slice must be in it, and the core pixels far from the edge must not."""
    for pad in (1, 2):
        m = 16 * pad
        rotations, kx, ky = _geometry(16, 200, 400, torch.float32, seed=8)
        rows, kx_values, ky_values = trilinear_cpu._geometry(rotations, kx, ky, pad, torch.float32)
        rim = set(trilinear_cpu._rim_pixels(rows, kx_values, ky_values, m).tolist())
        positions = torch.einsum("ojc,pj->opc", torch.from_numpy(rows), torch.stack([kx, ky], -1).float()) + m // 2
        corner = torch.floor(positions)
        reaches_edge = ((corner < 0) | (corner >= m - 1)).any(-1).any(0)  # (P,): at some slice
        assert set(torch.nonzero(reaches_edge).squeeze(1).tolist()) <= rim
        radius = torch.sqrt(kx.double() ** 2 + ky.double() ** 2) * pad
        assert not (set(torch.nonzero(radius < m / 2 - 2).squeeze(1).tolist()) & rim)
