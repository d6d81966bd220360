"""The orientation/translation search of one chunk of particles: coarse pass, significance, fine pass.

Every pass is dense linear algebra over (particle x translation) x (class x orientation):
  D2(b, t, o) = sum_p q_b(p) |X_b(p) e_t(p) - c_b(p) P_o(p)|^2,   q = 1 / (2 sigma^2)
             = const_b + sum_p q c^2 |P_o|^2 - 2 Re sum_p [X_b c_b q_b e_t](p) conj(P_o(p)),
so the coarse cross terms are one real matrix product of [Re, Im] stacks (vdam-spec 3.4-3.5),
and significance keeps, per particle, the best hypotheses holding 0.999 of the posterior mass.
The fine pass takes each significant coarse hypothesis (b, t, o) as a unit: the 8 child
orientations of o (one cached block of projections) against the J child translations of t
(4, or 1 where the grid has no translational oversampling), a (8 x P) x (P x J) complex product
for each hypothesis of the chunk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from novomap.blas_cpu import product_nt
from novomap.estep.cache import ProjectionCache
from novomap.estep.prepare import PreparedBatch
from novomap.estep.unique import unique_bounded
from novomap.physics.fourier import power
from novomap.physics.projection import extract_slices
from novomap.physics.window import FourierWindow, fourier_window, shift_phases
from novomap.sampling.grid import SearchGrid

# fine-pass hits are evaluated in slices of this many gathered (hit x 12 x pixel) complex values, bounding memory
_PAIR_PIXEL_BUDGET = 8_000_000


@dataclass
class SearchSettings:
    adaptive_fraction: float = 0.999
    max_significant: int = 100
    pixel_size_a: float = 1.0
    sigma_offset_a: float = 10.0
    mask_radius_px: float = 1e9  # soft circular mask of the particle diameter (alignment and noise)
    # (n_particles,) int64: a cap of each particle's own (rows of the particle table), at most
    # max_significant, or None: max_significant for every particle
    particle_cap: torch.Tensor | None = None


@dataclass
class FineResult:
    """Posterior weights of the fine hypotheses of a chunk, and each particle's best pose.

    A fine hypothesis row h is one fine orientation (child c of a significant coarse hypothesis's
    orientation) combined with the J children of that coarse hypothesis's translation (J =
    grid.n_sub_translations: 4, or 1 where the translations are not oversampled).
    """

    row_particle: torch.Tensor  # (H,) int64 index into the chunk
    row_class: torch.Tensor  # (H,) int64
    row_orientation: torch.Tensor  # (H,) int64 index into grid.fine_rotations.reshape(-1, 3, 3)
    row_direction: torch.Tensor  # (H,) int64 coarse HEALPix direction
    row_translation: torch.Tensor  # (H,) int64 coarse translation index t_c
    row_projection: torch.Tensor  # (H,) int64 index into `projections`
    # (n_stored, P) complex64 reference projections, or (n_stored, 2, P) float32 their real and imaginary
    # planes (the CPU's projection cache); rows no hypothesis uses included. Rows as complex: projection_rows
    projections: torch.Tensor
    weights: torch.Tensor  # (H, J) float64, normalised per particle; 0 = not retained
    best_class: torch.Tensor  # (B,)
    best_orientation: torch.Tensor  # (B,) fine orientation index
    best_translation_px: torch.Tensor  # (B, 2) fine translation (x, y) relative to the rounded old origin
    max_probability: torch.Tensor  # (B,)
    n_significant: torch.Tensor  # (B,) coarse significant samples
    log_likelihood: torch.Tensor  # (B,)
    # (K,) int64: per class, the leading pixels of the window its projections hold (the rest zero:
    # estep.cache.ProjectionCache); None: all of them
    class_pixels: torch.Tensor | None = None


def project_references(references: torch.Tensor, rotations: torch.Tensor, window: FourierWindow, pad: int) -> torch.Tensor:
    """Projections of every class at every rotation: references (K, M, M, M), rotations (O, 3, 3) -> (K*O, P) complex64."""
    slices = [extract_slices(ref, rotations.to(ref.real.dtype), window.kx.to(ref.device), window.ky.to(ref.device), pad) for ref in references]
    return torch.cat(slices, 0).to(torch.complex64)


def _offset_log_prior(origin_px: torch.Tensor, translations_px: torch.Tensor, settings: SearchSettings) -> torch.Tensor:
    """Gaussian prior on the new origin (Å) around 0: origin (B, 2), translations (T, 2) -> (B, T)."""
    new_origin_a = (origin_px[:, None, :] + translations_px[None, :, :]) * settings.pixel_size_a
    return -new_origin_a.square().sum(-1) / (2 * settings.sigma_offset_a**2)


def projection_rows(projections: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of FineResult.projections as complex64 (n, P), whichever layout they are stored in."""
    rows = projections[index]
    return rows if rows.is_complex() else torch.complex(rows[:, 0], rows[:, 1])


def _cross_terms(weighted_images: torch.Tensor, phases: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """Re sum_p Y_b(p) e_t(p) conj(P_o(p)): Y (B, P), e (T, P), P as planes (O, 2P) [Re P, Im P] -> (B, T, O) float32."""
    shifted = weighted_images[:, None, :] * phases[None, :, :]  # (B, T, P)
    stacked = torch.cat([shifted.real, shifted.imag], -1).reshape(-1, 2 * shifted.shape[-1]).float()
    return product_nt(stacked, planes).reshape(shifted.shape[0], shifted.shape[1], -1)


@dataclass
class CoarseHits:
    """The significant coarse hypotheses of a chunk, best first within each particle."""

    particle: torch.Tensor  # (S,) int64 index into the chunk
    translation: torch.Tensor  # (S,) int64 coarse translation index
    orientation: torch.Tensor  # (S,) int64 class * n_coarse_orientations + orientation
    n_significant: torch.Tensor  # (B,) int64


@dataclass
class CoarseReferences:
    """What every chunk's coarse pass compares against: the references at the coarse window."""

    pixels: torch.Tensor  # (Pc,) positions of the coarse window inside the batch's window
    window: FourierWindow  # the coarse window itself
    projections: torch.Tensor  # (C, Pc) complex64: the searched (class, coarse orientation) columns
    power: torch.Tensor  # (C, Pc) |projections|^2
    # (C,) int64 key class * O + orientation of each row, ascending; None: every class at every
    # orientation in that order (C = K*O)
    columns: torch.Tensor | None = None

    @functools.cached_property
    def planes(self) -> torch.Tensor:
        """(C, 2 Pc) float32: each row's real parts, then its imaginary parts (the coarse product's
        right-hand side, made once per iteration rather than once per chunk)."""
        return torch.cat([self.projections.real, self.projections.imag], -1).float()


def coarse_references(
    references: torch.Tensor, grid: SearchGrid, window: FourierWindow, coarse_size: int, pad: int, columns: torch.Tensor | None = None
) -> CoarseReferences:
    """Project references (K, M, M, M) at the grid's coarse orientations on the coarse window of `window`.

    columns: (C,) ascending keys class * O + orientation, the only hypotheses searched (each class's
    map searched over its own asymmetric unit, vdam.unit_search); None: all of them.
    """
    device = references.device
    coarse_window = fourier_window(window.box, coarse_size, device, by_shell=window.by_shell)  # its pixels in the window's order
    rotations = grid.coarse_rotations.to(device)
    if columns is None:
        projections = project_references(references, rotations, coarse_window, pad)
    else:
        columns = columns.to(device)
        n_orient = grid.n_coarse_orientations
        parts = [project_references(references[k : k + 1], rotations[columns[columns // n_orient == k] % n_orient], coarse_window, pad) for k in range(references.shape[0])]
        projections = torch.cat(parts, 0)
    return CoarseReferences(
        pixels=torch.nonzero(window.shell < coarse_size // 2).squeeze(1),
        window=coarse_window,
        projections=projections,
        power=power(projections),
        columns=columns,
    )


def coarse_log_weights(
    batch: PreparedBatch,
    coarse: CoarseReferences,
    grid: SearchGrid,
    log_direction_prior: torch.Tensor,
    settings: SearchSettings,
) -> torch.Tensor:
    """Unnormalised log posterior of every coarse hypothesis -> (B, T, C) float32 (C: coarse.columns, or K*O).

    Single precision on purpose: the cross terms come out of a float32 matrix product, so the
    log weights are only that accurate whatever they are stored in (~1e-4 for sums of ~1e3
    pixel terms, far below the ~1 differences that decide significance), and keeping the
    largest array of the E-step in float32, updated in place, halves its memory traffic.
    """
    x = batch.masked[:, coarse.pixels]
    ctf = batch.ctf[:, coarse.pixels]
    q = 0.5 * batch.inv_sigma2[:, coarse.pixels]
    phases = shift_phases(coarse.window, grid.coarse_translations.to(x.device)).to(x.dtype)
    # the cross terms' factor 2 on the images (B x P values), not on the products (B x T x C): scaling by
    # a power of two is exact, so the log weights are the same to the bit, with one pass fewer over them
    log_w = _cross_terms(x * ctf * (2 * q), phases, coarse.planes)
    norm = product_nt((ctf * ctf * q).float(), coarse.power)  # (B, K*O)
    prior = log_direction_prior[:, grid.coarse_direction.to(x.device)].reshape(-1).float()  # (K*O,)
    if coarse.columns is not None:
        prior = prior[coarse.columns]
    log_w.sub_((norm - prior[None, :])[:, None, :])
    offset_prior = _offset_log_prior(batch.origin_px, grid.coarse_translations.to(x.device), settings)
    return log_w.add_(offset_prior.float()[:, :, None])


def coarse_pass(
    batch: PreparedBatch,
    coarse: CoarseReferences,
    grid: SearchGrid,
    log_direction_prior: torch.Tensor,
    settings: SearchSettings,
) -> CoarseHits:
    """Significant coarse hypotheses: per particle, the fewest best ones holding `adaptive_fraction`
    of the posterior mass, at most `max_significant` (vdam-spec 3.4). log_direction_prior: (K, n_dir).
    """
    log_w = coarse_log_weights(batch, coarse, grid, log_direction_prior, settings)
    n_columns = log_w.shape[-1]
    particle, index, n_sig = significant(log_w, settings, batch_caps(settings, batch))
    column = index % n_columns
    orientation = column if coarse.columns is None else coarse.columns[column]
    return CoarseHits(particle=particle, translation=index // n_columns, orientation=orientation, n_significant=n_sig)


def batch_caps(settings: SearchSettings, batch: PreparedBatch) -> torch.Tensor | None:
    """(B,) the batch's particles' own caps (settings.particle_cap), or None where there are none."""
    if settings.particle_cap is None:
        return None
    return settings.particle_cap[batch.particle_index.cpu()].to(batch.masked.device)


def significant(log_w: torch.Tensor, settings: SearchSettings, caps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per particle, the fewest best hypotheses holding `adaptive_fraction` of the mass, at most
    `max_significant` (and at most caps (B,) where given): log_w (B, ...) (spent: overwritten) ->
    (particle (S,), flat index (S,), count (B,))."""
    n_batch = log_w.shape[0]
    flat = log_w.view(n_batch, -1)
    # only the largest max_significant weights can be significant: a partial sort suffices
    cap = min(settings.max_significant, flat.shape[-1])
    selection = _compiled_selection() if flat.device.type == "cpu" else None
    top, top_index = selection.largest(flat, cap) if selection is not None else torch.topk(flat, cap, dim=-1, sorted=True)
    # mass relative to the best (log_w is spent here); the clamp keeps exp off its slow path for
    # very negative arguments (and out of denormals) at a cost below 1e-20 of the mass
    mass = flat.sub_(top[:, :1]).clamp_(min=-60.0).exp_().sum(-1)
    ordered = torch.exp(top - top[:, :1]) / mass[:, None]
    needed = (torch.cumsum(ordered, -1) < settings.adaptive_fraction).sum(-1) + 1
    n_sig = needed.clamp(max=cap) if caps is None else torch.minimum(needed, caps.clamp(min=1, max=cap))
    keep = torch.arange(cap, device=flat.device)[None, :] < n_sig[:, None]
    particle = torch.arange(n_batch, device=flat.device)[:, None].expand(n_batch, cap)[keep]
    return particle, top_index[keep], n_sig


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
    segment with descending weights inside each group (on the CPU, estep.fine_cpu.fine_weights
    sorts each particle's weights on its own, in parallel).
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
    """Phases of the J child offsets of a coarse translation (identical for every parent) -> (J, P)
    (J = 1 without translational oversampling: the zero offset, phases 1)."""
    offsets = grid.fine_translations[0] - grid.coarse_translations[0]
    return shift_phases(window, offsets.to(window.kx.device))


def _compiled_selection():
    """estep.select_cpu when numba is installed, else None (imported on first use, as numba is)."""
    from novomap.estep import select_cpu

    return select_cpu if select_cpu.available() else None


def _compiled_fine_sums():
    """estep.fine_cpu when numba is installed, else None (imported on first use, as numba is)."""
    from novomap.estep import fine_cpu

    return fine_cpu if fine_cpu.available() else None


def fine_pass_needs_powers(device: torch.device) -> bool:
    """Whether fine_pass on `device` reads the projection cache's powers (only its batched products do)."""
    return torch.device(device).type != "cpu" or _compiled_fine_sums() is None


def _batched_fine_sums(
    blocks: torch.Tensor, powers: torch.Tensor, shifted: torch.Tensor, hit_block: torch.Tensor, hit_pair: torch.Tensor, hit_particle: torch.Tensor, ctf2q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """estep.fine_cpu.fine_sums as batched tensor products (any device), in slices that bound the
    copied blocks' memory: shifted (n_pairs, J, P) -> (cross (H, 8, J), norms (H, 8)) float32."""
    n_hits, n_pixels = hit_block.shape[0], blocks.shape[-1]
    cross = torch.empty((n_hits, 8, shifted.shape[1]), dtype=torch.float32, device=blocks.device)
    norms = torch.empty((n_hits, 8), dtype=torch.float32, device=blocks.device)
    step = max(1, _PAIR_PIXEL_BUDGET // (12 * max(1, n_pixels)))
    for start in range(0, n_hits, step):
        rows = slice(start, start + step)
        # Re sum_p P_c(p) conj(Y_j(p)) for the 8 children c x J sub-translations j
        cross[rows] = torch.bmm(blocks[hit_block[rows]], shifted[hit_pair[rows]].transpose(1, 2)).real
        # sum_p c^2 q |P_c|^2 of the 8 children
        norms[rows] = torch.bmm(powers[hit_block[rows]], ctf2q[hit_particle[rows], :, None]).squeeze(-1)
    return cross, norms


def _fine_weights(
    norms: torch.Tensor, cross: torch.Tensor, row_prior: torch.Tensor, offset_prior: torch.Tensor, row_particle: torch.Tensor, row_translation: torch.Tensor,
    n_batch: int, fraction: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """estep.fine_cpu.fine_weights as tensor operations (any device): the fine weights normalised per
    particle and cut to `fraction` of its mass -> (weights (R, J), log_norm (B,), pmax (B,), best flat index (B,))."""
    n_sub = offset_prior.shape[-1]
    d2 = norms.reshape(-1, 1).double() - 2 * cross.reshape(-1, n_sub).double()  # (R, J)
    log_w = -d2 + row_prior[:, None] + offset_prior[row_particle, row_translation]
    log_norm = _segment_logsumexp(log_w, row_particle, n_batch)
    weights = torch.exp(log_w - log_norm[row_particle, None])
    retained = _retain_mass(weights, row_particle, n_batch, fraction)
    weights = torch.where(retained, weights, torch.zeros_like(weights))
    flat = weights.reshape(-1)
    seg = row_particle[:, None].expand_as(weights).reshape(-1)
    pmax = torch.zeros(n_batch, dtype=flat.dtype, device=flat.device).scatter_reduce(0, seg, flat, reduce="amax", include_self=False)
    is_best = (flat == pmax[seg]) & (flat > 0)
    first = torch.full((n_batch,), flat.numel(), dtype=torch.long, device=flat.device)
    best_flat = first.scatter_reduce(0, seg[is_best], torch.nonzero(is_best).squeeze(1), reduce="amin")
    return weights, log_norm, pmax, best_flat


def fine_pass(
    batch: PreparedBatch,
    window: FourierWindow,
    hits: CoarseHits,
    projection_cache: ProjectionCache,
    grid: SearchGrid,
    log_direction_prior: torch.Tensor,
    settings: SearchSettings,
    orientation_prior=None,
) -> FineResult:
    """Evaluate the 8 orientations x J translations children of every significant coarse hypothesis
    (J = grid.n_sub_translations).

    orientation_prior: None, or a callable (rotations (R, 3, 3), particle (R,)) -> (R,) log prior
    of each row's fine orientation for its particle (local searches: estep.local.LocalPrior).

    With e_{t_c + delta_j} = e_{t_c} e_{delta_j}, a hit (particle b, coarse translation t, coarse
    orientation o) needs Y = X c q e_t e_delta (J, P) once per (b, t) and the 8 child projections
    of o (8, P) once per o; its 8 J cross terms are one small complex product Y P^H: on the CPU one
    compiled loop over hits reads both in place (estep.fine_cpu), elsewhere batched products.
    """
    device = batch.masked.device
    n_batch = hits.n_significant.shape[0]
    n_orient = grid.n_coarse_orientations
    n_trans = grid.n_coarse_translations
    n_hits = hits.particle.numel()
    blocks, hit_block = projection_cache.lookup(hits.orientation)  # (U, 8, P), (H,); keys are class * O + o already
    row_particle = hits.particle.repeat_interleave(8)
    row_translation = hits.translation.repeat_interleave(8)
    row_class = (hits.orientation // n_orient).repeat_interleave(8)
    coarse_o = (hits.orientation % n_orient).repeat_interleave(8)
    child = torch.arange(8, device=device).repeat(n_hits)
    row_orientation = coarse_o * 8 + child
    row_direction = grid.coarse_direction.to(device)[coarse_o]
    row_projection = hit_block.repeat_interleave(8) * 8 + child

    q = 0.5 * batch.inv_sigma2
    weighted = (batch.masked * batch.ctf * q).to(torch.complex64)  # (B, P)
    pairs, hit_pair = unique_bounded(hits.particle * n_trans + hits.translation, n_batch * n_trans)
    coarse_phases = shift_phases(window, grid.coarse_translations.to(device)).to(torch.complex64)  # (T_c, P)
    sub = sub_shift_phases(window, grid).to(torch.complex64)  # (J, P)
    n_sub = sub.shape[0]
    pair_images = weighted[pairs // n_trans] * coarse_phases[pairs % n_trans]  # (n_pairs, P)
    ctf2q = (batch.ctf * batch.ctf * q).float()  # (B, P)
    # the images conjugated, not the projections: Re sum P conj(Y) = Re sum conj(P) Y
    class_pixels = projection_cache.class_pixels
    narrowed = bool((class_pixels < window.n_pixels).any())
    compiled = None if fine_pass_needs_powers(device) else _compiled_fine_sums()
    if compiled is not None:
        shifted_re, shifted_im = compiled.conjugated_shifts(pair_images, sub)  # (n_pairs, J, P) each
        # a class's blocks are zero beyond its own window: its hypotheses are summed over that prefix alone
        hit_pixels = class_pixels[(hits.orientation // n_orient).cpu()] if narrowed else None
        cross, norms = compiled.fine_sums(blocks, shifted_re, shifted_im, hit_block, hit_pair, hits.particle, ctf2q, hit_pixels)
    else:
        shifted = (pair_images[:, None, :] * sub[None]).conj().resolve_conj()  # (n_pairs, J, P)
        cross, norms = _batched_fine_sums(blocks, projection_cache.powers(), shifted, hit_block, hit_pair, hits.particle, ctf2q)
    projections = blocks.reshape(-1, *blocks.shape[2:])  # (n_stored * 8, P) complex or (n_stored * 8, 2, P) planes
    fine_translations = grid.fine_translations.to(device)  # (T_c, J, 2)
    offset_prior = _offset_log_prior(batch.origin_px, fine_translations.reshape(-1, 2), settings).reshape(n_batch, -1, n_sub)
    row_prior = log_direction_prior[row_class, row_direction]
    if orientation_prior is not None:
        row_rotations = grid.fine_rotations.reshape(-1, 3, 3).to(device)[row_orientation]
        row_prior = row_prior + orientation_prior(row_rotations, row_particle)
    # double from here on: cheap (hits x 8 J values), and the weights, their per-particle cumulative
    # sums for the adaptive-fraction cut and the log-likelihood totals keep full precision; the
    # inputs carry the float32 products' rounding (~1e-4 in log-likelihood), far below what matters
    if compiled is not None:
        weights, log_norm, pmax, best_flat = compiled.fine_weights(
            norms.reshape(-1), cross.reshape(-1, n_sub), row_prior, offset_prior, row_particle, row_translation, settings.adaptive_fraction
        )
    else:
        weights, log_norm, pmax, best_flat = _fine_weights(norms, cross, row_prior, offset_prior, row_particle, row_translation, n_batch, settings.adaptive_fraction)
    best_row, best_child = best_flat // n_sub, best_flat % n_sub
    const = (power(batch.masked) * q).sum(-1).double()
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
        n_significant=hits.n_significant,
        log_likelihood=log_norm - const,
        class_pixels=class_pixels if narrowed else None,
    )
