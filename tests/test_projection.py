"""Central slices, back-projection and gridding against analytic transforms (vdam-spec 1.3, 1.4)."""

from __future__ import annotations

import math

import pytest
import torch

from novomap.physics.euler import euler_to_matrix
from novomap.physics.fourier import rfft_image, volume_to_centred_ft
from novomap.physics.projection import (
    extract_slices,
    gridding_correction,
    hermitian_symmetrise,
    insert_slices,
    slice_coordinates,
)
from novomap.physics.window import fourier_window

N = 32
SIGMA = 2.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(seed: int, count: int = 4, spread: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    centres = (torch.rand(count, 3, generator=g, dtype=torch.float64) * 2 - 1) * spread  # (x, y, z) px from centre
    amps = torch.rand(count, generator=g, dtype=torch.float64) + 0.5
    return centres, amps


def _blob_volume(centres: torch.Tensor, amps: torch.Tensor, n: int = N, sigma: float = SIGMA) -> torch.Tensor:
    axis = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.zeros(n, n, n, dtype=torch.float64)
    for c, a in zip(centres, amps):
        vol += a * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma * sigma))
    return vol


def _analytic_slices(centres, amps, rotations, kx, ky, n: int = N, sigma: float = SIGMA) -> torch.Tensor:
    """RELION-normalised 2D transform of the projection of the blobs under each rotation.

    V(A^T p) = sum_j a_j exp(-|p - A r_j|^2 / 2 s^2); integrating along z gives a_j sqrt(2 pi) s times a
    2D Gaussian at (A r_j)_xy, whose transform (1/N^2) sum_xy ... e^{-2 pi i k.x / N} is (sums ~ integrals
    for s >= 1.5 px) a_j (2 pi)^{3/2} s^3 / N^2 exp(-2 pi^2 s^2 |k|^2 / N^2) exp(-2 pi i k.(A r_j)_xy / N).
    """
    moved = torch.einsum("oij,bj->obi", rotations, centres)  # (O, blobs, 3): A r_j
    k2 = kx * kx + ky * ky
    envelope = (2 * math.pi) ** 1.5 * sigma**3 / n**2 * torch.exp(-2 * math.pi**2 * sigma**2 * k2 / n**2)
    phase = -2 * math.pi * (moved[..., 0, None] * kx + moved[..., 1, None] * ky) / n  # (O, blobs, P)
    return (amps[None, :, None] * torch.polar(torch.ones_like(phase), phase)).sum(1) * envelope


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().norm() / b.abs().norm())


def test_analytic_model_matches_discrete_projection():
    # sanity of the reference itself: identity rotation, compared with the FFT of sum_z V
    centres, amps = _blobs(1)
    w = fourier_window(N, N)
    projection = _blob_volume(centres, amps).sum(0)
    discrete = w.take(rfft_image(projection))
    analytic = _analytic_slices(centres, amps, torch.eye(3, dtype=torch.float64)[None], w.kx, w.ky)[0]
    assert _relative_error(discrete, analytic) < 1e-6


def test_slice_coordinates_use_a_transpose():
    a = euler_to_matrix(torch.tensor([20.0]), torch.tensor([50.0]), torch.tensor([-70.0])).double()
    kx = torch.tensor([3.0, 0.0], dtype=torch.float64)
    ky = torch.tensor([1.0, -2.0], dtype=torch.float64)
    coords = slice_coordinates(a, kx, ky, pad=2)
    expected = 2 * (a[0].T @ torch.stack([kx, ky, torch.zeros(2, dtype=torch.float64)]))
    torch.testing.assert_close(coords[0], expected.T)


@pytest.fixture(scope="module")
def central_slice_errors():
    """Relative error of trilinear central slices against the analytic transform, pad 1 and 2."""
    centres, amps = _blobs(2)
    vol = _blob_volume(centres, amps)
    g = _gen(3)
    rotations = euler_to_matrix(
        torch.rand(8, generator=g, dtype=torch.float64) * 360,
        torch.rand(8, generator=g, dtype=torch.float64) * 180,
        torch.rand(8, generator=g, dtype=torch.float64) * 360,
    )
    w = fourier_window(N, N)
    analytic = _analytic_slices(centres, amps, rotations, w.kx, w.ky)
    errors = {}
    for pad in (1, 2):
        f3 = volume_to_centred_ft(vol, pad)
        errors[pad] = _relative_error(extract_slices(f3, rotations, w.kx, w.ky, pad), analytic)
        # RELION's gridding pre-correction (divide the map by sinc^2) compensates part of trilinear's attenuation
        f3c = volume_to_centred_ft(vol / gridding_correction(N, pad), pad)
        errors[f"{pad}-corrected"] = _relative_error(extract_slices(f3c, rotations, w.kx, w.ky, pad), analytic)
        # the wrong convention (sampling at A k instead of A^T k) must be far off
        errors[f"{pad}-transposed"] = _relative_error(extract_slices(f3, rotations.transpose(1, 2), w.kx, w.ky, pad), analytic)
    return errors


def test_central_slice_theorem_random_rotation(central_slice_errors):
    e = central_slice_errors
    print(
        f"central-slice relative error: pad 1 {e[1]:.4f} ({e['1-corrected']:.4f} gridding-corrected), "
        f"pad 2 {e[2]:.4f} ({e['2-corrected']:.4f}); A instead of A^T: {e['1-transposed']:.2f}"
    )
    # measured: pad 1 0.121 (0.096 corrected), pad 2 0.033 (0.022 corrected); trilinear error ~ step^2
    assert e[2] < 0.045
    assert e[1] < 0.16
    assert e[2] < e[1] / 2.5
    assert e["1-corrected"] < 0.9 * e[1] and e["2-corrected"] < 0.9 * e[2]
    assert e["1-transposed"] > 0.5 and e["2-transposed"] > 0.5


def test_extract_identity_pad1_is_exact_on_grid():
    vol = _blob_volume(*_blobs(4)) + 0.05 * torch.randn(N, N, N, generator=_gen(4), dtype=torch.float64)
    w = fourier_window(N, N)
    slices = extract_slices(volume_to_centred_ft(vol, 1), torch.eye(3, dtype=torch.float64)[None], w.kx, w.ky, 1)
    torch.testing.assert_close(slices[0], w.take(rfft_image(vol.sum(0))), atol=1e-12, rtol=0)


@pytest.mark.parametrize("pad", [1, 2])
def test_insert_is_adjoint_of_extract(pad):
    m = pad * N
    g = _gen(5)
    f3 = torch.complex(torch.randn(m, m, m, generator=g, dtype=torch.float64), torch.randn(m, m, m, generator=g, dtype=torch.float64))
    rotations = euler_to_matrix(*(torch.rand(6, generator=g, dtype=torch.float64) * s for s in (360, 180, 360)))
    w = fourier_window(N, N)
    v = torch.complex(torch.randn(6, w.n_pixels, generator=g, dtype=torch.float64), torch.randn(6, w.n_pixels, generator=g, dtype=torch.float64))
    r = torch.rand(6, w.n_pixels, generator=g, dtype=torch.float64)
    data = torch.zeros(m, m, m, dtype=torch.complex128)
    weight = torch.zeros(m, m, m, dtype=torch.float64)
    insert_slices(v, r, rotations, w.kx, w.ky, pad, data, weight)
    lhs = float((torch.view_as_real(extract_slices(f3, rotations, w.kx, w.ky, pad)) * torch.view_as_real(v)).sum())
    rhs = float((torch.view_as_real(f3) * torch.view_as_real(data)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10)
    # the weights follow the same adjoint relation on a real grid
    real = f3.real.contiguous()
    lhs_w = float((extract_slices(real.to(torch.complex128), rotations, w.kx, w.ky, pad).real * r).sum())
    assert lhs_w == pytest.approx(float((real * weight).sum()), rel=1e-10)


@pytest.mark.parametrize("pad", [1, 2])
def test_hermitian_symmetrise_of_half_plane_equals_full_plane(pad):
    m = pad * N
    g = _gen(6)
    rotation = euler_to_matrix(torch.tensor([33.0]), torch.tensor([71.0]), torch.tensor([-12.0])).double()
    # a real image's transform on the half-plane window (without DC, which has no distinct partner);
    # size N - 4 keeps every corner off the unpartnered index 0 of the grid
    w = fourier_window(N, N - 4, include_dc=False)
    image = torch.randn(N, N, generator=g, dtype=torch.float64)
    values = w.take(rfft_image(image))[None]
    ctf2 = torch.rand(1, w.n_pixels, generator=g, dtype=torch.float64)
    half_d = torch.zeros(m, m, m, dtype=torch.complex128)
    half_w = torch.zeros(m, m, m, dtype=torch.float64)
    insert_slices(values, ctf2, rotation, w.kx, w.ky, pad, half_d, half_w)
    sym_d, sym_w = hermitian_symmetrise(half_d, half_w)
    # full plane: every pixel k and its conjugate at -k, with X(-k) = conj X(k)
    full_d = torch.zeros(m, m, m, dtype=torch.complex128)
    full_w = torch.zeros(m, m, m, dtype=torch.float64)
    kx = torch.cat([w.kx, -w.kx])
    ky = torch.cat([w.ky, -w.ky])
    insert_slices(torch.cat([values, values.conj()], 1), torch.cat([ctf2, ctf2], 1), rotation, kx, ky, pad, full_d, full_w)
    # equal up to summation order (the scatter adds the 8 corner contributions in its own order)
    torch.testing.assert_close(sym_d, full_d, atol=1e-12, rtol=0)
    torch.testing.assert_close(sym_w, full_w, atol=1e-12, rtol=0)
    assert float(full_w.sum()) == pytest.approx(2 * float(ctf2.sum()), rel=1e-12)


def _triangle_transform(x: float, pad: int, n: int) -> float:
    """Continuous transform of the trilinear (triangle) kernel of one padded-grid step, by quadrature.

    The kernel tri(t) (t in grid steps; a step is 1/(pad N) cycles/px) has transform
    int tri(t) cos(2 pi t x / (pad N)) dt at real-space distance x px.
    """
    t = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    f = (1 - t.abs()) * torch.cos(2 * math.pi * t * x / (pad * n))
    return float(torch.trapezoid(f, t))


@pytest.mark.parametrize("pad", [1, 2])
def test_gridding_correction(pad):
    n = 16
    g = gridding_correction(n, pad)
    assert g.shape == (n, n, n)
    assert float(g[n // 2, n // 2, n // 2]) == 1.0
    # at the box edge along an axis (r = N/2): sinc^2(1/(2 pad)); pad 1 -> sinc^2(1/2) = 4/pi^2
    edge = float(g[n // 2, n // 2, 0])
    x = 1 / (2 * pad)
    assert edge == pytest.approx((math.sin(math.pi * x) / (math.pi * x)) ** 2, rel=1e-12)
    if pad == 1:
        assert edge == pytest.approx(4 / math.pi**2, rel=1e-12)
    for r in (0, 3, 5, n // 2):
        assert float(g[n // 2, n // 2, n // 2 + r if r < n // 2 else 0]) == pytest.approx(_triangle_transform(r, pad, n), rel=1e-6)
    # radial (RELION's griddingCorrect uses |r|)
    assert float(g[n // 2 + 3, n // 2 + 4, n // 2]) == pytest.approx(_triangle_transform(5, pad, n), rel=1e-6)


def _grid_permuting_groups() -> list[torch.Tensor]:
    """Groups whose operators map the centred grid onto itself: D2 and C4 about the standard axes,
    and D2 about z and the xy diagonals."""
    from novomap.symmetry.groups import point_group

    c = math.sqrt(0.5)
    tilted = torch.tensor([[c, -c, 0.0], [c, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    d2 = point_group("D2").operators.to(torch.float64)
    return [d2, point_group("C4").operators.to(torch.float64), tilted.T @ d2 @ tilted]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_average_over_operators_is_inserting_at_every_equivalent_orientation(compiled, which, monkeypatch):
    """For operators that permute the grid, slices inserted once and averaged over the group equal the
    same slices inserted at every A g with 1/G of their values and weights (no interpolation involved)."""
    from novomap.physics import projection

    operators = _grid_permuting_groups()[which]
    g = _gen(31)
    m = 24
    window = fourier_window(m, 18, "cpu")  # inside the grid: no equivalent point falls off its edge
    rotations = euler_to_matrix(torch.rand(6, generator=g) * 360, torch.rand(6, generator=g) * 180, torch.rand(6, generator=g) * 360)
    values = torch.complex(torch.randn(6, window.n_pixels, generator=g), torch.randn(6, window.n_pixels, generator=g))
    weights = torch.rand(6, window.n_pixels, generator=g)
    once = torch.zeros((m, m, m), dtype=torch.complex128), torch.zeros((m, m, m), dtype=torch.float64)
    insert_slices(values, weights, rotations, window.kx, window.ky, 1, *once)
    expected = torch.zeros((m, m, m), dtype=torch.complex128), torch.zeros((m, m, m), dtype=torch.float64)
    for op in operators:
        insert_slices(values / len(operators), weights / len(operators), (rotations.double() @ op).float(), window.kx, window.ky, 1, *expected)
    if not compiled:
        monkeypatch.setattr(projection, "compiled_loops", lambda: None)
    data, weight = projection.average_over_operators(*once, operators.float())
    assert data.dtype == torch.complex128 and weight.dtype == torch.float64
    assert torch.allclose(data, expected[0], atol=1e-5)
    assert torch.allclose(weight, expected[1], atol=1e-5)
    assert float(weight.abs().sum()) > 0
    # written into the input grids themselves (as estep.accumulate.symmetrise_sums does): the same values
    in_place = projection.average_over_operators(*once, operators.float(), out=once)
    assert in_place[0] is once[0] and in_place[1] is once[1]
    assert torch.equal(once[0], data) and torch.equal(once[1], weight)


def _gaussian_grid(m: int, centre_xyz: torch.Tensor, sigma: float) -> torch.Tensor:
    axis = torch.arange(m, dtype=torch.float64) - m // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    points = torch.stack([x, y, z], -1)
    return torch.exp(-((points - centre_xyz) ** 2).sum(-1) / (2 * sigma**2))


@pytest.mark.parametrize("compiled", [True, False])
def test_average_over_operators_of_a_smooth_field_matches_the_analytic_average(compiled, monkeypatch):
    """A Gaussian at c0 averaged over a C3 group about a tilted axis: the result at p is the mean of
    the Gaussian at g p, i.e. of Gaussians centred at g^T c0, to within trilinear interpolation's error."""
    from novomap.physics import projection
    from novomap.symmetry.groups import point_group

    m, sigma = 32, 2.5
    frame = euler_to_matrix(torch.tensor([25.0]), torch.tensor([40.0]), torch.tensor([-70.0]))[0].double()
    operators = frame.T @ point_group("C3").operators.double() @ frame
    centre = torch.tensor([6.0, -4.0, 3.0], dtype=torch.float64)
    field = _gaussian_grid(m, centre, sigma)
    expected = sum(_gaussian_grid(m, op.T @ centre, sigma) for op in operators) / 3
    if not compiled:
        monkeypatch.setattr(projection, "compiled_loops", lambda: None)
    data, weight = projection.average_over_operators(field.to(torch.complex128) * (1 - 2j), field, operators)
    assert float((weight - expected).abs().max()) < 0.02
    assert float((data - expected * (1 - 2j)).abs().max()) < 0.05
    # the unaveraged field is far from the answer: the test can tell
    assert float((field - expected).abs().max()) > 0.5


def test_average_over_operators_compiled_and_grid_sample_agree_and_radius_bounds_the_work():
    from novomap.physics import projection, trilinear_cpu
    from novomap.symmetry.groups import point_group

    if not trilinear_cpu.available():
        pytest.skip("numba is not installed")
    g = _gen(5)
    m = 20
    frame = euler_to_matrix(torch.tensor([10.0]), torch.tensor([70.0]), torch.tensor([33.0]))[0].double()
    operators = frame.T @ point_group("D3").operators.double() @ frame
    operators[0] = torch.eye(3, dtype=torch.float64)  # the identity exactly, as a group in its standard frame has it
    channels = torch.randn((m, m, m, 3), generator=g, dtype=torch.float64)
    compiled = trilinear_cpu.operator_average(channels, operators, radius=m)
    reference = projection._grid_sample_operator_average(channels, operators)
    assert torch.allclose(compiled, reference, atol=1e-10)
    inner = trilinear_cpu.operator_average(channels, operators, radius=6.0)
    axis = torch.arange(m, dtype=torch.float64) - m // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    within = (x**2 + y**2 + z**2) <= 36
    assert torch.equal(inner[within], compiled[within])
    assert float(inner[~within].abs().max()) == 0.0


@pytest.mark.parametrize("threads", [3, 16])
def test_grid_sample_slices_with_more_threads_than_even_batches_match_the_compiled_gather(threads):
    """35 slices over 16 threads: ceil(35/16) = 3 slices per batch entry leaves entries 12-15 empty
    unless the split shrinks to 12 entries (the GPU machine's 16 threads crashed there)."""
    from novomap.physics import projection, trilinear_cpu

    g = _gen(11)
    m, box = 24, 12
    volume_ft = torch.randn((m, m, m), generator=g, dtype=torch.float64).to(torch.complex128)
    rotations = euler_to_matrix(*(torch.rand(35, generator=g, dtype=torch.float64) * 180 for _ in range(3)))
    window = fourier_window(box, box)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch.empty((35, window.n_pixels), dtype=torch.complex128)
        sampled = projection._grid_sample_slices(volume_ft, rotations, window.kx, window.ky, 2, out)
    finally:
        torch.set_num_threads(before)
    if trilinear_cpu.available():
        reference = torch.empty_like(out)
        trilinear_cpu.gather_slices(volume_ft, rotations, window.kx, window.ky, 2, reference)
    else:  # one slice at a time: no split at all
        reference = torch.cat([projection._grid_sample_slices(volume_ft, r[None], window.kx, window.ky, 2, torch.empty_like(out[:1])) for r in rotations])
    assert torch.allclose(sampled, reference, atol=1e-10)
    assert float(reference.abs().max()) > 0.1


@pytest.mark.parametrize("window_size", [10, 30])
def test_compiled_scatter_into_the_reached_cube_is_the_whole_grid_scatter_to_the_bit(window_size, monkeypatch):
    """Slices of a small window reach a cube of the padded grid: the private grids are cropped to it
    (trilinear_cpu.reached_cube), and the sums must be those of the whole grid exactly, for the buffer's
    rows (add_scattered_rows) and for scatter_slices; a window reaching the grid's edge keeps the whole grid."""
    from novomap.physics import trilinear_cpu

    if not trilinear_cpu.available():
        pytest.skip("numba is not installed")
    g = _gen(12)
    m, pad = 64, 2
    window = fourier_window(32, window_size)
    rotations = euler_to_matrix(*(torch.rand(50, generator=g, dtype=torch.float64) * 360 for _ in range(3))).float()
    channels = torch.randn((3, 60, window.n_pixels), generator=g, dtype=torch.float32)
    rows = torch.arange(5, 55)

    def both_sums():
        data = torch.zeros((m, m, m), dtype=torch.complex128)
        weight = torch.zeros((m, m, m), dtype=torch.float64)
        trilinear_cpu.add_scattered_rows(channels, rows, rotations, window.kx.float(), window.ky.float(), pad, data, weight)
        scattered = trilinear_cpu.scatter_slices(list(channels[:, rows]), rotations, window.kx.float(), window.ky.float(), pad, m)
        return data, weight, scattered

    cropped = both_sums()
    geometry = trilinear_cpu._geometry(rotations, window.kx, window.ky, pad, torch.float32)
    offset, size = trilinear_cpu.reached_cube(*geometry, m)
    if window_size == 10:
        assert 0 < offset and size < m // 2  # the crop is taken
    else:
        assert (offset, size) == (0, m)  # slices reaching the edge: the whole grid
    monkeypatch.setattr(trilinear_cpu, "reached_cube", lambda rows, kx, ky, m: (0, m))
    whole = both_sums()
    for a, b in zip(cropped, whole):
        assert torch.equal(a, b)
    assert float(whole[1].sum()) == pytest.approx(float(channels[2, rows].double().sum()), rel=1e-6)  # nothing lost
