"""The orientation/translation search of one chunk of particles: coarse pass, significance, fine pass.

Every pass is dense linear algebra over (particle x translation) x (class x orientation):
  D2(b, t, o) = sum_p q_b(p) |X_b(p) e_t(p) - c_b(p) P_o(p)|^2,   q = 1 / (2 sigma^2)
             = const_b + sum_p q c^2 |P_o|^2 - 2 Re sum_p [X_b c_b q_b e_t](p) conj(P_o(p)),
so the cross term is one real matrix product of [Re, Im] stacks (vdam-spec 3.4-3.5).
The fine pass evaluates, for each (particle, fine orientation) pair that descends from a
significant coarse hypothesis, the product Z = X c q conj(P) against all fine translation phases
(again a matrix product), and keeps only the children of significant coarse hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from novomap.estep.cache import ProjectionCache
from novomap.estep.prepare import PreparedBatch
from novomap.physics.projection import extract_slices
from novomap.physics.window import FourierWindow, shift_phases
from novomap.sampling.grid import SearchGrid

# fine-pass pairs are evaluated in slices of this many (pair x pixel) complex values, bounding memory
_PAIR_PIXEL_BUDGET = 4_000_000


@dataclass
class SearchSettings:
    adaptive_fraction: float = 0.999
    max_significant: int = 100
    pixel_size_a: float = 1.0
    sigma_offset_a: float = 10.0
    mask_radius_px: float = 1e9  # soft circular mask of the particle diameter (alignment and noise)


@dataclass
class FineResult:
    """Posterior weights of the fine hypotheses of a chunk, and each particle's best pose.

    A fine hypothesis row h is one fine orientation (child c of a significant coarse hypothesis's
    orientation) combined with the 4 children of that coarse hypothesis's translation.
    """

    row_particle: torch.Tensor  # (H,) int64 index into the chunk
    row_class: torch.Tensor  # (H,) int64
    row_orientation: torch.Tensor  # (H,) int64 index into grid.fine_rotations.reshape(-1, 3, 3)
    row_direction: torch.Tensor  # (H,) int64 coarse HEALPix direction
    row_translation: torch.Tensor  # (H,) int64 coarse translation index t_c
    row_projection: torch.Tensor  # (H,) int64 index into `projections`
    projections: torch.Tensor  # (n_unique, P) complex64 reference projections
    weights: torch.Tensor  # (H, 4) float64, normalised per particle; 0 = not retained
    best_class: torch.Tensor  # (B,)
    best_orientation: torch.Tensor  # (B,) fine orientation index
    best_translation_px: torch.Tensor  # (B, 2) fine translation (x, y) relative to the rounded old origin
    max_probability: torch.Tensor  # (B,)
    n_significant: torch.Tensor  # (B,) coarse significant samples
    log_likelihood: torch.Tensor  # (B,)


def project_references(references: torch.Tensor, rotations: torch.Tensor, window: FourierWindow, pad: int) -> torch.Tensor:
    """Projections of every class at every rotation: references (K, M, M, M), rotations (O, 3, 3) -> (K*O, P) complex64."""
    slices = [extract_slices(ref, rotations.to(ref.real.dtype), window.kx.to(ref.device), window.ky.to(ref.device), pad) for ref in references]
    return torch.cat(slices, 0).to(torch.complex64)


def _offset_log_prior(origin_px: torch.Tensor, translations_px: torch.Tensor, settings: SearchSettings) -> torch.Tensor:
    """Gaussian prior on the new origin (Å) around 0: origin (B, 2), translations (T, 2) -> (B, T)."""
    new_origin_a = (origin_px[:, None, :] + translations_px[None, :, :]) * settings.pixel_size_a
    return -new_origin_a.square().sum(-1) / (2 * settings.sigma_offset_a**2)


def _cross_terms(weighted_images: torch.Tensor, phases: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Re sum_p Y_b(p) e_t(p) conj(P_o(p)): Y (B, P), e (T, P), P (O, P) -> (B, T, O) float32."""
    shifted = weighted_images[:, None, :] * phases[None, :, :]  # (B, T, P)
    stacked = torch.cat([shifted.real, shifted.imag], -1).reshape(-1, 2 * shifted.shape[-1]).float()
    refs = torch.cat([projections.real, projections.imag], -1).float()
    return (stacked @ refs.T).reshape(shifted.shape[0], shifted.shape[1], -1)


def coarse_pass(
    batch: PreparedBatch,
    coarse_pixels: torch.Tensor,
    coarse_window: FourierWindow,
    projections: torch.Tensor,
    grid: SearchGrid,
    log_direction_prior: torch.Tensor,
    settings: SearchSettings,
) -> torch.Tensor:
    """Significant coarse hypotheses -> mask (B, T, K*O) bool.

    projections: (K*O, Pc) at the coarse window; coarse_pixels: (Pc,) positions of the coarse
    window inside the batch's window; log_direction_prior: (K, n_dir).
    """
    x = batch.masked[:, coarse_pixels]
    ctf = batch.ctf[:, coarse_pixels]
    q = 0.5 * batch.inv_sigma2[:, coarse_pixels]
    phases = shift_phases(coarse_window, grid.coarse_translations.to(x.device)).to(x.dtype)
    cross = _cross_terms(x * ctf * q, phases, projections)
    norm = (ctf * ctf * q).float() @ projections.abs().square().T  # (B, K*O)
    prior = log_direction_prior[:, grid.coarse_direction.to(x.device)].reshape(-1)  # (K*O,)
    log_w = (2 * cross - norm[:, None, :]).double() + prior[None, None, :] + _offset_log_prior(
        batch.origin_px, grid.coarse_translations.to(x.device), settings
    )[:, :, None]
    flat = log_w.reshape(log_w.shape[0], -1)
    weights = torch.softmax(flat, dim=-1)
    # only the largest max_significant weights can be significant: a partial sort suffices
    cap = min(settings.max_significant, flat.shape[-1])
    ordered = torch.topk(weights, cap, dim=-1, sorted=True).values
    needed = (torch.cumsum(ordered, -1) < settings.adaptive_fraction).sum(-1) + 1
    n_sig = needed.clamp(max=cap)
    threshold = ordered.gather(1, (n_sig - 1)[:, None])
    significant = (weights >= threshold) & (weights > 0)
    return significant.reshape(log_w.shape)


def _segment_logsumexp(values: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """log sum exp of rows' values (U, T) grouped by segment (U,) -> (n_segments,)."""
    row_max = values.max(-1).values
    seg_max = torch.full((n_segments,), -torch.inf, dtype=values.dtype, device=values.device)
    seg_max = seg_max.scatter_reduce(0, segment, row_max, reduce="amax")
    sums = torch.zeros(n_segments, dtype=values.dtype, device=values.device)
    sums.index_add_(0, segment, torch.exp(values - seg_max[segment, None]).sum(-1))
    return seg_max + torch.log(sums)


def _retain_mass(weights: torch.Tensor, segment: torch.Tensor, n_segments: int, fraction: float) -> torch.Tensor:
    """Per segment, keep the largest weights until their sum reaches `fraction` (ties kept) -> bool (U, T).

    One sort on the key segment * 2 - weight (weights are in [0, 1]) groups the entries by
    segment with descending weights inside each group.
    """
    flat = weights.reshape(-1)
    seg = segment[:, None].expand_as(weights).reshape(-1)
    order = torch.argsort(seg.to(flat.dtype) * 2 - flat)
    w_sorted = flat[order]
    seg_sorted = seg[order]
    cum = torch.cumsum(w_sorted, 0)
    totals = torch.zeros(n_segments, dtype=flat.dtype, device=flat.device).index_add_(0, seg, flat)
    start = torch.cumsum(totals, 0) - totals
    before = cum - w_sorted - start[seg_sorted]
    keep_sorted = (before < fraction * totals[seg_sorted]) & (w_sorted > 0)
    threshold = torch.full((n_segments,), torch.inf, dtype=flat.dtype, device=flat.device)
    threshold = threshold.scatter_reduce(0, seg_sorted[keep_sorted], w_sorted[keep_sorted], reduce="amin")
    return (weights >= threshold[segment, None]) & (weights > 0)


def sub_shift_phases(window: FourierWindow, grid: SearchGrid) -> torch.Tensor:
    """Phases of the 4 child offsets of a coarse translation (identical for every parent) -> (4, P)."""
    offsets = grid.fine_translations[0] - grid.coarse_translations[0]
    return shift_phases(window, offsets.to(window.kx.device))


def fine_pass(
    batch: PreparedBatch,
    window: FourierWindow,
    significant: torch.Tensor,
    projection_cache: ProjectionCache,
    grid: SearchGrid,
    log_direction_prior: torch.Tensor,
    settings: SearchSettings,
) -> FineResult:
    """Evaluate the 8 orientations x 4 translations children of every significant coarse hypothesis.

    With e_{t_c + delta_j} = e_{t_c} e_{delta_j}, each row (hypothesis s, child orientation c) needs
    Z = X c q e_{t_c} conj(P_c) once and a (P x 4) product for its 4 child translations.
    """
    device = batch.masked.device
    n_batch, _, n_ko = significant.shape
    n_orient = grid.n_coarse_orientations
    s_b, s_t, s_ko = torch.nonzero(significant, as_tuple=True)
    row_particle = s_b.repeat_interleave(8)
    row_translation = s_t.repeat_interleave(8)
    row_class = (s_ko // n_orient).repeat_interleave(8)
    coarse_o = (s_ko % n_orient).repeat_interleave(8)
    row_orientation = coarse_o * 8 + torch.arange(8, device=device).repeat(s_b.numel())
    row_direction = grid.coarse_direction.to(device)[coarse_o]
    projections, row_projection = projection_cache.lookup(row_class * projection_cache.n_orientations + row_orientation)

    q = 0.5 * batch.inv_sigma2
    coarse_phases = shift_phases(window, grid.coarse_translations.to(device)).to(torch.complex64)  # (T_c, P)
    weighted = (batch.masked * batch.ctf * q).to(torch.complex64)
    shifted = (weighted[:, None, :] * coarse_phases[None, :, :]).reshape(-1, window.n_pixels)  # (B*T_c, P)
    row_shifted = row_particle * coarse_phases.shape[0] + row_translation
    projection_power = projections.real.square() + projections.imag.square()
    ctf2q = (batch.ctf * batch.ctf * q).float()
    # sum_p c^2 q |P|^2 for every (particle, projection) pair at once, then picked per row
    norms = (ctf2q @ projection_power.T)[row_particle, row_projection].double()
    sub = sub_shift_phases(window, grid).to(torch.complex64)  # (4, P)
    d2 = torch.empty((row_particle.numel(), 4), dtype=torch.float64, device=device)
    step = max(1, _PAIR_PIXEL_BUDGET // max(1, window.n_pixels))
    for start in range(0, row_particle.numel(), step):
        rows = slice(start, start + step)
        z = shifted[row_shifted[rows]] * projections[row_projection[rows]].conj()
        cross = z.real @ sub.real.T - z.imag @ sub.imag.T  # Re(z e_delta) for the 4 children
        d2[rows] = norms[rows, None] - 2 * cross.double()

    fine_translations = grid.fine_translations.to(device)  # (T_c, 4, 2)
    offset_prior = _offset_log_prior(batch.origin_px, fine_translations.reshape(-1, 2), settings).reshape(n_batch, -1, 4)
    log_w = -d2 + log_direction_prior[row_class, row_direction][:, None] + offset_prior[row_particle, row_translation]
    log_norm = _segment_logsumexp(log_w, row_particle, n_batch)
    weights = torch.exp(log_w - log_norm[row_particle, None])
    retained = _retain_mass(weights, row_particle, n_batch, settings.adaptive_fraction)
    weights = torch.where(retained, weights, torch.zeros_like(weights))

    flat = weights.reshape(-1)
    seg = row_particle[:, None].expand_as(weights).reshape(-1)
    pmax = torch.zeros(n_batch, dtype=flat.dtype, device=device).scatter_reduce(0, seg, flat, reduce="amax", include_self=False)
    is_best = (flat == pmax[seg]) & (flat > 0)
    first = torch.full((n_batch,), flat.numel(), dtype=torch.long, device=device)
    best_flat = first.scatter_reduce(0, seg[is_best], torch.nonzero(is_best).squeeze(1), reduce="amin")
    best_row, best_child = best_flat // 4, best_flat % 4
    const = (batch.masked.abs().square() * q).sum(-1).double()
    return FineResult(
        row_particle=row_particle,
        row_class=row_class,
        row_orientation=row_orientation,
        row_direction=row_direction,
        row_translation=row_translation,
        row_projection=row_projection,
        projections=projections,
        weights=weights,
        best_class=row_class[best_row],
        best_orientation=row_orientation[best_row],
        best_translation_px=fine_translations[row_translation[best_row], best_child],
        max_probability=pmax,
        n_significant=significant.reshape(n_batch, -1).sum(-1),
        log_likelihood=log_norm - const,
    )
