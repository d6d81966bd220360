"""The coarse pass against the Gaussian likelihood written out directly, and its significance cut
against a plain sort of the normalised posterior (vdam-spec 3.4)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from novomap.estep.prepare import PreparedBatch
from novomap.estep.search import (
    CoarseReferences,
    SearchSettings,
    coarse_log_weights,
    coarse_pass,
    significant,
)
from novomap.physics.window import fourier_window, shift_phases
from novomap.sampling.grid import build_search_grid

BOX = 16


def _inputs(sharpness: float):
    generator = torch.Generator().manual_seed(3)
    window = fourier_window(BOX, BOX, "cpu")
    grid = build_search_grid(0, 4, 2, perturbation=0.2)
    n_batch, p = 4, window.n_pixels

    def complex_noise(*shape):
        return torch.complex(torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator))

    projections = complex_noise(grid.n_coarse_orientations, p)
    # images made from chosen projections, so that posteriors have a clear peak
    truth = torch.tensor([3, 10, 25, 40])
    ctf = torch.rand(n_batch, p, generator=generator) * 1.6 - 0.8
    masked = sharpness * ctf * projections[truth] + complex_noise(n_batch, p)
    batch = PreparedBatch(
        particle_index=torch.arange(n_batch),
        half=torch.zeros(n_batch, dtype=torch.long),
        optics_group=torch.zeros(n_batch, dtype=torch.long),
        origin_px=torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, 0.0], [-1.0, 3.0]], dtype=torch.float64),
        masked=masked,
        unmasked=masked,
        ctf=ctf,
        inv_sigma2=torch.rand(n_batch, p, generator=generator) + 0.5,
        masked_power=torch.zeros(n_batch, BOX // 2 + 1, dtype=torch.float64),
    )
    log_prior = torch.log(torch.rand(1, grid.n_directions, generator=generator, dtype=torch.float64) + 0.1)
    settings = SearchSettings(adaptive_fraction=0.999, max_significant=20, pixel_size_a=2.0, sigma_offset_a=5.0)
    return window, grid, batch, projections, log_prior, settings


def _whole_window(window, projections) -> CoarseReferences:
    """The coarse pass run on the batch's whole window."""
    power = projections.real.square() + projections.imag.square()
    return CoarseReferences(torch.arange(window.n_pixels), window, projections, power)


def _direct_log_posterior(window, grid, batch, projections, log_prior, settings) -> torch.Tensor:
    """log p(b, t, o) up to a per-particle constant, in float64, one hypothesis at a time."""
    n_batch, n_trans, n_orient = batch.masked.shape[0], grid.n_coarse_translations, grid.n_coarse_orientations
    out = torch.empty((n_batch, n_trans, n_orient), dtype=torch.float64)
    x, c = batch.masked.to(torch.complex128), batch.ctf.double()
    q = 0.5 * batch.inv_sigma2.double()
    proj = projections.to(torch.complex128)
    for t in range(n_trans):
        phase = shift_phases(window, grid.coarse_translations[t][None])[0]
        new_origin_a = (batch.origin_px + grid.coarse_translations[t]) * settings.pixel_size_a
        offset_prior = -new_origin_a.square().sum(-1) / (2 * settings.sigma_offset_a**2)
        for o in range(n_orient):
            residual = x * phase - c * proj[o]
            d2 = (q * residual.abs().square()).sum(-1)
            out[:, t, o] = -d2 + log_prior[0, grid.coarse_direction[o]] + offset_prior
    # the coarse pass leaves out sum_p q |X|^2, the same for every hypothesis of a particle
    return out + (q * x.abs().square()).sum(-1)[:, None, None]


def test_coarse_log_weights_are_the_gaussian_log_likelihood_with_priors():
    window, grid, batch, projections, log_prior, settings = _inputs(sharpness=1.0)
    ours = coarse_log_weights(batch, _whole_window(window, projections), grid, log_prior, settings)
    direct = _direct_log_posterior(window, grid, batch, projections, log_prior, settings)
    assert torch.allclose(ours.double(), direct, atol=2e-3 * float(direct.abs().max())), float((ours.double() - direct).abs().max())
    assert torch.equal(ours.reshape(4, -1).argmax(-1), direct.reshape(4, -1).argmax(-1))


def test_significant_hypotheses_are_the_fewest_best_holding_the_fraction():
    for sharpness in (0.3, 0.8, 1.0, 2.0):  # broad to sharp: 12-20, 1-14, 1-15 and 1 significant per particle
        window, grid, batch, projections, log_prior, settings = _inputs(sharpness)
        hits = coarse_pass(batch, _whole_window(window, projections), grid, log_prior, settings)
        weights = torch.softmax(_direct_log_posterior(window, grid, batch, projections, log_prior, settings).reshape(4, -1), -1)
        for b in range(4):
            ordered, index = torch.sort(weights[b], descending=True)
            needed = int((torch.cumsum(ordered, 0) < settings.adaptive_fraction).sum()) + 1
            needed = min(needed, settings.max_significant)
            mine = hits.particle == b
            assert int(hits.n_significant[b]) == needed
            found = set((hits.translation[mine] * grid.n_coarse_orientations + hits.orientation[mine]).tolist())
            assert found == set(index[:needed].tolist()), (sharpness, b)


def test_significant_matches_a_full_sort_for_sharp_broad_and_capped_rows():
    """The candidates within 30 log units of the best, or a partial sort where there are more than the
    cap, give what sorting every hypothesis gives."""
    generator = torch.Generator().manual_seed(11)
    n_hyp = 5000
    rows = [
        torch.randn(n_hyp, generator=generator) * 200,  # sharp: a few within 30 of the best
        torch.randn(n_hyp, generator=generator) * 2,  # broad: thousands near the best, the cap binds
        torch.randn(n_hyp, generator=generator) * 12,  # in between
        torch.full((n_hyp,), -3.0),  # flat: every hypothesis ties
        torch.cat([torch.tensor([5.0]), torch.full((n_hyp - 1,), -100.0)]),  # one hypothesis holds it all
    ]
    log_w = torch.stack(rows).float()
    for fraction, cap in ((0.999, 100), (0.9, 100), (0.999, 7)):
        settings = SearchSettings(adaptive_fraction=fraction, max_significant=cap)
        particle, index, n_sig = significant(log_w.clone(), settings)
        for b in range(log_w.shape[0]):
            weights = torch.softmax(log_w[b].double(), 0)
            ordered, order = torch.sort(weights, descending=True)
            needed = min(int((torch.cumsum(ordered, 0) < fraction).sum()) + 1, cap)
            assert int(n_sig[b]) == needed, (fraction, cap, b)
            mine = index[particle == b]
            if b == 3:  # ties: any `needed` of them
                assert mine.unique().numel() == needed
            else:
                assert set(mine.tolist()) == set(order[:needed].tolist()), (fraction, cap, b)


def test_a_coarse_pass_over_some_columns_is_the_full_posterior_restricted_to_them():
    """Searching only some (class, orientation) columns (one asymmetric unit per class) gives the
    significant hypotheses of the direct posterior renormalised over those columns, keyed as in a
    full search (class * O + orientation)."""
    window, grid, batch, projections, log_prior, settings = _inputs(sharpness=0.8)
    n_orient = grid.n_coarse_orientations
    columns = torch.nonzero(torch.arange(n_orient) % 3 != 1).squeeze(1)  # the truths 3, 10, 25, 40 are among them
    power = projections.real.square() + projections.imag.square()
    coarse = CoarseReferences(torch.arange(window.n_pixels), window, projections[columns], power[columns], columns)
    hits = coarse_pass(batch, coarse, grid, log_prior, settings)
    direct = _direct_log_posterior(window, grid, batch, projections, log_prior, settings)[:, :, columns]
    weights = torch.softmax(direct.reshape(4, -1), -1)
    for b in range(4):
        ordered, index = torch.sort(weights[b], descending=True)
        needed = min(int((torch.cumsum(ordered, 0) < settings.adaptive_fraction).sum()) + 1, settings.max_significant)
        mine = hits.particle == b
        assert int(hits.n_significant[b]) == needed
        expected = {(int(i) // columns.numel(), int(columns[int(i) % columns.numel()])) for i in index[:needed]}
        assert set(zip(hits.translation[mine].tolist(), hits.orientation[mine].tolist())) == expected


def test_significant_keeps_each_particle_within_its_own_cap():
    generator = torch.Generator().manual_seed(12)
    log_w = (torch.randn(3, 4000, generator=generator) * 2).float()  # broad: the caps bind
    settings = SearchSettings(adaptive_fraction=0.999, max_significant=100)
    particle, index, n_sig = significant(log_w.clone(), settings, torch.tensor([100, 30, 500]))
    assert n_sig.tolist() == [100, 30, 100]  # a cap above max_significant is max_significant
    for b in range(3):
        order = torch.sort(log_w[b], descending=True).indices
        assert set(index[particle == b].tolist()) == set(order[: int(n_sig[b])].tolist())


def test_the_compiled_coarse_pass_finds_the_hypotheses_of_the_pytorch_one(monkeypatch):
    """On the CPU the significant hypotheses are chosen by the compiled top-k selection
    (estep.select_cpu); elsewhere by torch.topk: the same hits."""
    from novomap.estep import select_cpu

    if not select_cpu.available():
        pytest.skip("needs numba")
    for sharpness in (0.3, 1.0, 2.0):
        window, grid, batch, projections, log_prior, settings = _inputs(sharpness)
        settings = dataclasses.replace(settings, max_significant=5)  # rows of >= 16 x 5 hypotheses: the compiled selection
        compiled = coarse_pass(batch, _whole_window(window, projections), grid, log_prior, settings)
        monkeypatch.setattr(select_cpu, "available", lambda: False)
        reference = coarse_pass(batch, _whole_window(window, projections), grid, log_prior, settings)
        monkeypatch.undo()
        assert torch.equal(compiled.n_significant, reference.n_significant), sharpness
        for name in ("particle", "translation", "orientation"):
            assert torch.equal(getattr(compiled, name), getattr(reference, name)), (sharpness, name)
