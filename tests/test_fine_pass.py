"""The fine pass (estep.search.fine_pass) against the Gaussian posterior written out one fine
hypothesis at a time, on its compiled CPU loop (estep.fine_cpu) and on its batched tensor products."""

from __future__ import annotations

import pytest
import torch

from novomap.estep import fine_cpu, search
from novomap.estep.cache import ProjectionCache
from novomap.estep.prepare import PreparedBatch
from novomap.estep.search import CoarseHits, SearchSettings, fine_pass
from novomap.physics.projection import extract_slices
from novomap.physics.window import fourier_window, shift_phases
from novomap.sampling.grid import build_search_grid, without_sub_translations

BOX = 16
PAD = 2

needs_numba = pytest.mark.skipif(not fine_cpu.available(), reason="numba is not installed")


def _complex_noise(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.complex(torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator))


def _problem(sub_translations: bool = True):
    """A reference, a batch of 3 particles made from known fine projections in noise, and coarse
    hits (several per particle, the true one among them, two sharing a block); sub_translations:
    False, a grid without translational oversampling (one child per coarse translation)."""
    generator = torch.Generator().manual_seed(11)
    window = fourier_window(BOX, BOX, "cpu")
    grid = build_search_grid(0, 2, 1, perturbation=0.1)
    if not sub_translations:
        grid = without_sub_translations(grid)
    m = BOX * PAD
    references = _complex_noise(generator, 1, m, m, m)
    fine = grid.fine_rotations.reshape(-1, 3, 3).to(torch.float32)
    truth = torch.tensor([8 * 5 + 3, 8 * 30 + 6, 8 * 30 + 1])  # fine orientations
    ctf = torch.rand(3, window.n_pixels, generator=generator) * 1.6 - 0.8
    clean = extract_slices(references[0], fine[truth], window.kx, window.ky, PAD)
    masked = 0.3 * ctf * clean + _complex_noise(generator, 3, window.n_pixels)
    batch = PreparedBatch(
        particle_index=torch.arange(3),
        half=torch.zeros(3, dtype=torch.long),
        optics_group=torch.zeros(3, dtype=torch.long),
        origin_px=torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, 0.0]], dtype=torch.float64),
        masked=masked,
        unmasked=masked,
        ctf=ctf,
        inv_sigma2=torch.rand(3, window.n_pixels, generator=generator) + 0.5,
        masked_power=torch.zeros(3, BOX // 2 + 1, dtype=torch.float64),
    )
    hits = CoarseHits(
        particle=torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]),
        translation=torch.tensor([4, 1, 4, 4, 7, 0, 4, 4]),
        orientation=torch.tensor([5, 5, 17, 30, 30, 30, 30, 2]),
        n_significant=torch.tensor([3, 2, 3]),
    )
    log_prior = torch.log(torch.rand(1, grid.n_directions, generator=generator, dtype=torch.float64) + 0.1)
    settings = SearchSettings(adaptive_fraction=1.0, max_significant=20, pixel_size_a=2.0, sigma_offset_a=5.0)
    return window, grid, references, batch, hits, log_prior, settings


def _direct_log_posterior(window, grid, references, batch, hits, log_prior, settings) -> torch.Tensor:
    """log of prior x likelihood of every (hit, child orientation, sub-translation) -> (H, 8, J) float64."""
    fine = grid.fine_rotations.reshape(-1, 3, 3)
    n_sub = grid.fine_translations.shape[1]
    out = torch.empty((hits.particle.numel(), 8, n_sub), dtype=torch.float64)
    for h, (b, t, o) in enumerate(zip(hits.particle.tolist(), hits.translation.tolist(), hits.orientation.tolist())):
        x, c, q = batch.masked[b].to(torch.complex128), batch.ctf[b].double(), 0.5 * batch.inv_sigma2[b].double()
        for child in range(8):
            projection = extract_slices(references[0].to(torch.complex128), fine[o * 8 + child][None], window.kx.double(), window.ky.double(), PAD)[0]
            for j in range(n_sub):
                shift = grid.fine_translations[t, j]
                phase = shift_phases(window, shift[None])[0].to(torch.complex128)
                d2 = (q * (x * phase - c * projection).abs().square()).sum()
                new_origin_a = (batch.origin_px[b] + shift) * settings.pixel_size_a
                offset_prior = -new_origin_a.square().sum() / (2 * settings.sigma_offset_a**2)
                out[h, child, j] = -d2 + log_prior[0, grid.coarse_direction[o]] + offset_prior
    return out


@pytest.mark.parametrize("sub_translations", [True, False])
@pytest.mark.parametrize("compiled", [pytest.param(True, marks=needs_numba), False])
def test_fine_weights_and_log_likelihood_are_the_direct_posterior(compiled, sub_translations, monkeypatch):
    window, grid, references, batch, hits, log_prior, settings = _problem(sub_translations)
    if not compiled:
        monkeypatch.setattr(search, "_compiled_fine_sums", lambda: None)
    batched = search.fine_pass_needs_powers(torch.device("cpu"))
    cache = ProjectionCache(references, grid.fine_rotations, window, PAD, with_power=batched, with_planes=not batched)
    result = fine_pass(batch, window, hits, cache, grid, log_prior, settings)

    direct = _direct_log_posterior(window, grid, references, batch, hits, log_prior, settings)
    for b in range(3):
        rows = hits.particle == b
        log_norm = torch.logsumexp(direct[rows].reshape(-1), 0)
        expected = torch.exp(direct[rows] - log_norm).reshape(-1, direct.shape[-1])
        got = result.weights[result.row_particle == b]
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=2e-4), (b, (got - expected).abs().max())
        # the marginal likelihood (up to the Gaussian's normalisation, which no hypothesis changes)
        assert abs(float(result.log_likelihood[b]) - float(log_norm)) < 1e-4 * max(1.0, abs(float(log_norm)))
        # the best pose is the direct posterior's mode
        best_hit, best_child, best_sub = torch.unravel_index(torch.argmax(torch.where(rows[:, None, None], direct, -torch.inf)), direct.shape)
        assert int(result.best_orientation[b]) == int(hits.orientation[best_hit]) * 8 + int(best_child)
        assert torch.equal(result.best_translation_px[b], grid.fine_translations[hits.translation[best_hit], best_sub])


def _written_out_sums(blocks, shifted, hit_block, hit_pair, hit_particle, ctf2q):
    """Re sum_p P_c(p) S_j(p) and sum_p |P_c(p)|^2 w_b(p) of each hit, in double precision."""
    powers = blocks.real.square() + blocks.imag.square()
    cross = torch.einsum("hcp,hjp->hcj", blocks[hit_block].to(torch.complex128), shifted[hit_pair].to(torch.complex128)).real
    return cross, torch.einsum("hcp,hp->hc", powers[hit_block].double(), ctf2q[hit_particle].double())


@needs_numba
@pytest.mark.parametrize("n_sub", [4, 1])
def test_compiled_sums_match_the_batched_products(n_sub):
    generator = torch.Generator().manual_seed(5)
    blocks = _complex_noise(generator, 7, 8, 50)
    shifted = _complex_noise(generator, 4, n_sub, 50)
    hit_block = torch.tensor([0, 6, 6, 3, 1])
    hit_pair = torch.tensor([3, 0, 2, 2, 1])
    hit_particle = torch.tensor([1, 0, 1, 1, 0])
    ctf2q = torch.rand(2, 50, generator=generator)
    powers = blocks.real.square() + blocks.imag.square()
    cross, norms = fine_cpu.fine_sums(fine_cpu.planes_of(blocks), shifted.real, shifted.imag, hit_block, hit_pair, hit_particle, ctf2q)
    expected_cross, expected_norms = _written_out_sums(blocks, shifted, hit_block, hit_pair, hit_particle, ctf2q)
    assert cross.shape == (5, 8, n_sub)
    assert torch.allclose(cross.double(), expected_cross, atol=1e-4)
    assert torch.allclose(norms.double(), expected_norms, atol=1e-4)
    batched = search._batched_fine_sums(blocks, powers, shifted, hit_block, hit_pair, hit_particle, ctf2q)
    assert torch.allclose(batched[0], cross, atol=1e-4) and torch.allclose(batched[1], norms, atol=1e-4)
    if n_sub == 4:  # the compiled loops read exactly 4 or 1 sub-translations: others are refused, not misread
        with pytest.raises(ValueError):
            fine_cpu.fine_sums(fine_cpu.planes_of(blocks), shifted[:, :2].real, shifted[:, :2].imag, hit_block, hit_pair, hit_particle, ctf2q)


@needs_numba
@pytest.mark.parametrize("n_sub", [4, 1])
def test_compiled_sums_over_each_hits_own_prefix_of_pixels(n_sub):
    # a class whose window is narrower than the chunk's sums only its own leading pixels: the same as the
    # full sums over blocks that are zero beyond that prefix (whatever the images hold there)
    generator = torch.Generator().manual_seed(8)
    blocks = _complex_noise(generator, 4, 8, 60)
    shifted = _complex_noise(generator, 3, n_sub, 60)
    hit_block, hit_pair, hit_particle = torch.tensor([0, 3, 1, 2, 2]), torch.tensor([2, 0, 1, 1, 0]), torch.tensor([1, 0, 1, 0, 0])
    hit_pixels = torch.tensor([60, 17, 60, 33, 33])
    ctf2q = torch.rand(2, 60, generator=generator)
    cross, norms = fine_cpu.fine_sums(fine_cpu.planes_of(blocks), shifted.real, shifted.imag, hit_block, hit_pair, hit_particle, ctf2q, hit_pixels)
    zeroed = blocks[hit_block].masked_fill(torch.arange(60)[None, None, :] >= hit_pixels[:, None, None], 0)  # one block per hit
    expected_cross, expected_norms = _written_out_sums(zeroed, shifted, torch.arange(5), hit_pair, hit_particle, ctf2q)
    assert torch.allclose(cross.double(), expected_cross, atol=1e-4)
    assert torch.allclose(norms.double(), expected_norms, atol=1e-4)
    assert not torch.allclose(cross[1].double(), torch.einsum("cp,jp->cj", blocks[3].to(torch.complex128), shifted[0].to(torch.complex128)).real, atol=1e-2)
    with pytest.raises(ValueError):
        fine_cpu.fine_sums(fine_cpu.planes_of(blocks), shifted.real, shifted.imag, hit_block, hit_pair, hit_particle, ctf2q, hit_pixels + 1)


@needs_numba
def test_conjugated_shifts_are_the_conjugated_products_as_planes():
    generator = torch.Generator().manual_seed(9)
    images = _complex_noise(generator, 5, 37)
    phases = torch.polar(torch.ones(4, 37), torch.rand(4, 37, generator=generator) * 6.3)
    shifted_re, shifted_im = fine_cpu.conjugated_shifts(images, phases)
    expected = (images[:, None, :] * phases[None]).conj()
    assert shifted_re.shape == shifted_im.shape == (5, 4, 37)
    assert torch.allclose(shifted_re, expected.real, atol=1e-6) and torch.allclose(shifted_im, expected.imag, atol=1e-6)
    # a conjugated view as input is read as its values
    flipped_re, flipped_im = fine_cpu.conjugated_shifts(images.conj(), phases)
    assert torch.allclose(flipped_re + 1j * flipped_im, (images.conj()[:, None, :] * phases[None]).conj(), atol=1e-6)


def test_a_cache_without_powers_refuses_to_give_them():
    _, grid, references, _, _, _, _ = _problem()
    cache = ProjectionCache(references, grid.fine_rotations, fourier_window(BOX, BOX, "cpu"), PAD, with_power=False)
    cache.lookup(torch.tensor([3]))
    with pytest.raises(ValueError, match="no powers"):
        cache.powers()


def _retained_by_definition(weights: torch.Tensor, segment: torch.Tensor, n_segments: int, fraction: float) -> torch.Tensor:
    """Per segment: sort its weights high to low, keep each while the sum of those before it is below
    fraction x the segment's total (and it is positive), then keep every weight tied with a kept one."""
    keep = torch.zeros_like(weights, dtype=torch.bool)
    for s in range(n_segments):
        rows = segment == s
        values = sorted(weights[rows].reshape(-1).tolist(), reverse=True)
        total, before, kept = sum(values), 0.0, []
        for w in values:
            if w <= 0 or before >= fraction * total:
                break
            kept.append(w)
            before += w
        if kept:
            keep[rows] = (weights[rows] >= min(kept)) & (weights[rows] > 0)
    return keep


def test_retained_mass_keeps_the_fewest_best_weights_per_particle():
    generator = torch.Generator().manual_seed(11)
    # segments out of order, one (3) without rows, one (4) with only zero weights, ties in segment 0
    segment = torch.tensor([2, 0, 0, 2, 1, 0, 4, 2, 1, 0])
    weights = torch.rand(10, 4, generator=generator, dtype=torch.float64) ** 4
    weights[torch.rand(10, 4, generator=generator) < 0.2] = 0.0
    weights[6] = 0.0
    weights[1, 2] = weights[5, 0] = weights[2, 3]
    for fraction in (0.5, 0.9, 0.999):
        got = search._retain_mass(weights, segment, 5, fraction)
        assert torch.equal(got, _retained_by_definition(weights, segment, 5, fraction)), fraction
    assert not bool(got[6].any())


@needs_numba
def test_compiled_cut_is_exact_when_most_weights_are_negligible():
    """Posterior-like particles, where most weights are far below (1 - fraction) / n of the total:
    the compiled cut sorts only the others and must still find the definition's threshold."""
    generator = torch.Generator().manual_seed(4)
    row_particle = torch.randint(0, 6, (400,), generator=generator)
    log_w = torch.randn(400, 32, generator=generator, dtype=torch.float64) * 6
    zeros = torch.zeros(400, dtype=torch.float64)
    for fraction in (0.9, 0.999, 0.99999):
        # log w = 2 cross: no norms and no priors
        weights, log_norm, _, _ = fine_cpu.fine_weights(
            zeros.float(), (log_w / 2).float(), zeros, torch.zeros(6, 1, 32, dtype=torch.float64), row_particle, torch.zeros(400, dtype=torch.long), fraction
        )
        full = torch.exp(2 * (log_w / 2).float().double() - log_norm[row_particle, None])
        floor = 0.5 * (1 - fraction) / full.shape[1] / torch.bincount(row_particle, minlength=6)[row_particle, None]
        assert float((full < floor).double().mean()) > 0.5  # the cut matters here
        assert torch.equal(weights > 0, _retained_by_definition(full, row_particle, 6, fraction)), fraction


def _fine_weights_compiled(norms, cross, row_prior, offset_prior, row_particle, row_translation, n_batch, fraction):
    return fine_cpu.fine_weights(norms, cross, row_prior, offset_prior, row_particle, row_translation, fraction)


@pytest.mark.parametrize("fine_weights", [pytest.param(_fine_weights_compiled, marks=needs_numba, id="compiled"), pytest.param(search._fine_weights, id="tensors")])
def test_fine_weights_are_the_normalised_cut_posterior_and_its_first_best(fine_weights):
    """Rows of particles out of order, a particle (3) without rows, exact ties for the best weight."""
    generator = torch.Generator().manual_seed(5)
    row_particle = torch.tensor([2, 0, 0, 2, 1, 0, 2, 1, 0, 0])
    row_translation = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0, 1, 0])
    n_batch, n_sub = 4, 4
    norms = (torch.rand(10, generator=generator) * 40).float()
    cross = (torch.randn(10, n_sub, generator=generator) * 10).float()
    row_prior = torch.randn(10, generator=generator, dtype=torch.float64)
    offset_prior = -torch.rand(n_batch, 3, n_sub, generator=generator, dtype=torch.float64) * 2
    cross[5] = cross[1] + 0  # rows 1 and 5 of particle 0: the same translation, the same values
    norms[5], row_prior[5] = norms[1], row_prior[1]
    cross[1, 3] = cross[1, 2] = cross[1].max() + 30  # particle 0's best, tied four ways: the first (row 1, child 2) is named
    for fraction in (0.5, 0.999, 1.0):
        weights, log_norm, pmax, best = fine_weights(norms, cross, row_prior, offset_prior, row_particle, row_translation, n_batch, fraction)
        log_w = -(norms.double()[:, None] - 2 * cross.double()) + row_prior[:, None] + offset_prior[row_particle, row_translation]
        for b in range(3):
            rows = row_particle == b
            expected_norm = torch.logsumexp(log_w[rows].reshape(-1), 0)
            assert abs(float(log_norm[b] - expected_norm)) < 1e-12
        full = torch.exp(log_w - log_norm[row_particle, None])
        kept = _retained_by_definition(full, row_particle, n_batch, fraction)
        assert torch.equal(weights > 0, kept), fraction
        assert torch.allclose(weights, torch.where(kept, full, 0.0), rtol=1e-12, atol=0)
        for b in range(3):
            flat = torch.where(row_particle[:, None] == b, weights, -1.0).reshape(-1)
            assert float(pmax[b]) == float(flat.max())
            assert int(best[b]) == int(torch.nonzero(flat == flat.max())[0])
        assert int(best[0]) == 1 * n_sub + 2
        assert float(log_norm[3]) == -float("inf") and float(pmax[3]) == 0.0 and int(best[3]) == 10 * n_sub
