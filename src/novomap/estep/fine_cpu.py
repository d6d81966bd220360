"""The fine pass's per-hypothesis sums on the CPU, compiled with numba.

Each significant coarse hypothesis (particle b, coarse translation t, coarse orientation o) needs
8 J cross terms (8 child orientations x J sub-translations, J = 4 or 1) and 8 norms:

    cross[h, c, j] = Re sum_p P_c(p) S_j(p)      (P: the block of o's children, S: b's image at t, conjugated)
    norms[h, c]    = sum_p |P_c(p)|^2 w_b(p)      (w = c^2 / (2 sigma^2))

As batched tensor products these first copy every hypothesis's (8, P) block out of the projection
store: on the real tutorial's late iterations (~9 hypotheses per particle, nearly all with their own
block) that copy and the small products took 70-90 ms per chunk of 89 particles; read in place, in
one loop per hypothesis, the same sums take ~11 ms (2 threads).

The weights that follow (fine_weights: normalised per particle, then cut to the adaptive fraction
of its mass) are formed one particle at a time in a thread of their own. As one global argsort over
the chunk's (hit x 32) weights the cut alone took ~185 ms for a chunk of 200 particles with 100 hits
each (the global searches of the early iterations), sorted per particle in parallel ~40 ms; as
tensor operations the whole of it took ~13 passes over the weights, 2.5-3.8x the compiled loop's
time (benchmarks/results/2026-12-06-s56-fused-fine-weights.md).

Imported on first use on the CPU (estep.search.fine_pass), like physics.trilinear_cpu; on other
devices the batched products and the global sort stay.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; without it fine_pass uses tensor products
    njit = None

from novomap.physics import trilinear_cpu


def available() -> bool:
    return njit is not None


if njit is not None:

    @njit(parallel=True, fastmath=True, cache=True)
    def _fine_sums(planes, shifted_re, shifted_im, hit_block, hit_pair, hit_particle, hit_pixels, ctf2q, cross, norms):  # pragma: no cover - compiled
        for h in prange(hit_block.shape[0]):
            u, s, b, n_pixels = hit_block[h], hit_pair[h], hit_particle[h], hit_pixels[h]
            for c in range(8):
                # double accumulators: ~1,000-pixel sums of single-precision products
                a0 = 0.0
                a1 = 0.0
                a2 = 0.0
                a3 = 0.0
                norm = 0.0
                for p in range(n_pixels):
                    re, im = planes[u, c, 0, p], planes[u, c, 1, p]
                    a0 += re * shifted_re[s, 0, p] - im * shifted_im[s, 0, p]
                    a1 += re * shifted_re[s, 1, p] - im * shifted_im[s, 1, p]
                    a2 += re * shifted_re[s, 2, p] - im * shifted_im[s, 2, p]
                    a3 += re * shifted_re[s, 3, p] - im * shifted_im[s, 3, p]
                    norm += (re * re + im * im) * ctf2q[b, p]
                cross[h, c, 0] = a0
                cross[h, c, 1] = a1
                cross[h, c, 2] = a2
                cross[h, c, 3] = a3
                norms[h, c] = norm

    @njit(parallel=True, fastmath=True, cache=True)
    def _fine_sums_single(planes, shifted_re, shifted_im, hit_block, hit_pair, hit_particle, hit_pixels, ctf2q, cross, norms):  # pragma: no cover - compiled
        # _fine_sums for one sub-translation (no translational oversampling): 5 instead of 11
        # operations per pixel, so a loop of its own rather than _fine_sums with unused accumulators
        for h in prange(hit_block.shape[0]):
            u, s, b, n_pixels = hit_block[h], hit_pair[h], hit_particle[h], hit_pixels[h]
            for c in range(8):
                a0 = 0.0
                norm = 0.0
                for p in range(n_pixels):
                    re, im = planes[u, c, 0, p], planes[u, c, 1, p]
                    a0 += re * shifted_re[s, 0, p] - im * shifted_im[s, 0, p]
                    norm += (re * re + im * im) * ctf2q[b, p]
                cross[h, c, 0] = a0
                norms[h, c] = norm

    @njit(parallel=True, cache=True)
    def _conjugated_shifts(images, phases, out_re, out_im):  # pragma: no cover - compiled
        # out[s, j] = conj(images[s] * phases[j]) as real and imaginary planes, in one pass over the
        # output; images, phases interleaved (re, im). No fastmath: the float32 products and sums of
        # a complex multiplication, as torch forms them
        n_pixels = out_re.shape[2]
        for s in prange(out_re.shape[0]):
            for j in range(out_re.shape[1]):
                for p in range(n_pixels):
                    ar, ai = images[s, 2 * p], images[s, 2 * p + 1]
                    br, bi = phases[j, 2 * p], phases[j, 2 * p + 1]
                    out_re[s, j, p] = ar * br - ai * bi
                    out_im[s, j, p] = -(ar * bi + ai * br)

    @njit(parallel=True, cache=True)
    def _fine_weights(norms, cross, row_prior, offset_prior, row_translation, order, segment_start, fraction, weights, log_norm, pmax, best):  # pragma: no cover - compiled
        # one particle's rows (a segment) at a time, in its own thread: log weights, their log-sum-exp,
        # the normalised weights, the adaptive-fraction cut and the best, each a loop over data in cache
        n_sub = cross.shape[1]
        for s in prange(log_norm.shape[0]):
            first, last = segment_start[s], segment_start[s + 1]
            if first == last:
                continue
            top = -np.inf
            for i in range(first, last):
                r = order[i]
                for j in range(n_sub):
                    d2 = np.float64(norms[r]) - 2 * np.float64(cross[r, j])
                    value = -d2 + row_prior[r] + offset_prior[s, row_translation[r], j]
                    weights[r, j] = value
                    top = max(top, value)
            total = 0.0
            for i in range(first, last):
                r = order[i]
                for j in range(n_sub):
                    total += np.exp(weights[r, j] - top)
            norm = top + np.log(total)
            log_norm[s] = norm
            mass = 0.0
            for i in range(first, last):
                r = order[i]
                for j in range(n_sub):
                    w = np.exp(weights[r, j] - norm)
                    weights[r, j] = w
                    mass += w
            threshold = _mass_threshold(weights, order, first, last, fraction, mass)
            best_weight = 0.0
            best_flat = -1
            for i in range(first, last):
                r = order[i]
                for j in range(n_sub):
                    w = weights[r, j]
                    if w < threshold or not w > 0:
                        weights[r, j] = 0.0
                    elif w > best_weight or (w == best_weight and r * n_sub + j < best_flat):
                        best_weight = w
                        best_flat = r * n_sub + j
            pmax[s] = best_weight
            if best_flat >= 0:
                best[s] = best_flat

    @njit(inline="always")
    def _mass_threshold(weights, order, first, last, fraction, total):  # pragma: no cover - compiled
        """The smallest of the largest weights of rows order[first:last] whose sum first reaches
        `fraction` of their `total` (inf when none is positive)."""
        n_columns = weights.shape[1]
        n = (last - first) * n_columns
        # A weight w with n w < (1 - fraction) total is never reached: all the weights up to w
        # hold less than 1 - fraction of the total, so those above it already hold the fraction.
        # Sorting only the others (about half of the real job's weights over a run) gives
        # the same threshold: the same largest weights summed in the same order. Half the bound
        # leaves room for rounding.
        floor = 0.5 * (1.0 - fraction) * total / n
        values = np.empty(n)
        k = 0
        for i in range(first, last):
            for j in range(n_columns):
                w = weights[order[i], j]
                if w >= floor:
                    values[k] = w
                    k += 1
        values = np.sort(values[:k])[::-1]
        threshold = np.inf
        before = 0.0
        for i in range(k):
            if values[i] <= 0 or before >= fraction * total:
                break
            threshold = values[i]
            before += values[i]
        return threshold

def planes_of(blocks: torch.Tensor) -> torch.Tensor:
    """Complex blocks (U, 8, P) as the real and imaginary planes fine_sums reads: (U, 8, 2, P) float32."""
    return torch.stack([blocks.real, blocks.imag], dim=2).to(torch.float32)


def conjugated_shifts(images: torch.Tensor, phases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The conjugated products conj(images[s] * phases[j]) as the planes fine_sums reads.

    images (S, P), phases (J, P) complex64 -> (real (S, J, P), imaginary (S, J, P)) float32. Formed
    straight into the planes: as a complex (S, J, P) product, conjugated and split, the same values
    took four passes over the largest array of the fine pass. Needs numba (`available()`).
    """
    n_images, n_phases, n_pixels = images.shape[0], phases.shape[0], images.shape[1]
    out_re = torch.empty((n_images, n_phases, n_pixels), dtype=torch.float32)
    out_im = torch.empty((n_images, n_phases, n_pixels), dtype=torch.float32)
    with trilinear_cpu.numba_threads():
        _conjugated_shifts(
            torch.view_as_real(images.resolve_conj().to(torch.complex64).contiguous()).reshape(n_images, -1).numpy(),
            torch.view_as_real(phases.resolve_conj().to(torch.complex64).contiguous()).reshape(n_phases, -1).numpy(),
            out_re.numpy(),
            out_im.numpy(),
        )
    return out_re, out_im


def fine_sums(
    planes: torch.Tensor,
    shifted_re: torch.Tensor,
    shifted_im: torch.Tensor,
    hit_block: torch.Tensor,
    hit_pair: torch.Tensor,
    hit_particle: torch.Tensor,
    ctf2q: torch.Tensor,
    hit_pixels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross terms and norms of every hypothesis, read in place.

    planes (U, 8, 2, P) float32: the child projections' real and imaginary parts (planes_of; the
    cache stores them so, estep.cache.ProjectionCache(with_planes=True)): with real and imaginary
    parts in rows of their own the pixel loop reads unit-stride and vectorises, 1.8-4.8x faster
    than on interleaved complex values, with the same sums (benchmarks/results/2026-12-03-s26-fine-planes.md);
    their power |.|^2 is formed here, from the values read for the cross terms, so the CPU needs no power store;
    shifted_re, shifted_im (n_pairs, J, P) float32: the conjugated weighted images at the J = 4 or 1
    sub-translations, as planes (conjugated_shifts);
    hit_block, hit_pair, hit_particle (H,) int64 rows of planes, shifted and ctf2q;
    ctf2q (B, P) float32 -> (cross (H, 8, J), norms (H, 8)) float32;
    hit_pixels (H,) int64: each hypothesis summed over its first hit_pixels pixels only (its class's
    window, a prefix of the shell-ordered window: physics.window); None: all P. Needs numba (`available()`).
    """
    n_sub = shifted_re.shape[1]
    if n_sub not in (1, 4) or shifted_im.shape[1] != n_sub:  # the compiled loops read exactly 4, or 1
        raise ValueError(f"fine_sums takes 4 or 1 sub-translations, got {tuple(shifted_re.shape)} and {tuple(shifted_im.shape)}")
    n_hits = hit_block.shape[0]
    n_pixels = planes.shape[3]
    if hit_pixels is None:
        hit_pixels = torch.full((n_hits,), n_pixels, dtype=torch.int64)
    elif n_hits and int(hit_pixels.max()) > n_pixels:
        raise ValueError(f"fine_sums: hit_pixels reach {int(hit_pixels.max())} of {n_pixels} pixels")
    cross = np.empty((n_hits, 8, n_sub), dtype=np.float32)
    norms = np.empty((n_hits, 8), dtype=np.float32)
    kernel = _fine_sums if n_sub == 4 else _fine_sums_single
    with trilinear_cpu.numba_threads():
        kernel(
            planes.contiguous().numpy(),
            shifted_re.to(torch.float32).contiguous().numpy(),
            shifted_im.to(torch.float32).contiguous().numpy(),
            hit_block.contiguous().numpy(),
            hit_pair.contiguous().numpy(),
            hit_particle.contiguous().numpy(),
            hit_pixels.to(torch.int64).contiguous().numpy(),
            ctf2q.to(torch.float32).contiguous().numpy(),
            cross,
            norms,
        )
    return torch.from_numpy(cross), torch.from_numpy(norms)


def fine_weights(
    norms: torch.Tensor,
    cross: torch.Tensor,
    row_prior: torch.Tensor,
    offset_prior: torch.Tensor,
    row_particle: torch.Tensor,
    row_translation: torch.Tensor,
    fraction: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fine pass's normalised, cut weights and each particle's best, in one compiled pass per particle.

    log w[r, j] = -(norms[r] - 2 cross[r, j]) + row_prior[r] + offset_prior[b, row_translation[r], j]
    (b = row_particle[r]) is normalised over each particle's rows (log_norm = log sum exp); then, per
    particle, the largest weights holding `fraction` of its mass are kept (ties kept) and the others
    set to 0, as search._retain_mass does.

    norms (R,) and cross (R, J) float32; row_prior (R,) float64; offset_prior (B, T, J) float64;
    row_particle, row_translation (R,) int64 -> (weights (R, J) float64, log_norm (B,) float64,
    pmax (B,) float64, best (B,) int64: the first flat index r * J + j holding pmax; R * J for a
    particle without rows). Needs numba (`available()`).
    """
    from novomap.estep.sparse_cpu import grouped_order

    n_rows, n_sub = cross.shape
    n_batch = offset_prior.shape[0]
    order, segment_start = grouped_order(row_particle, n_batch)
    weights = np.empty((n_rows, n_sub))
    log_norm = np.full(n_batch, -np.inf)
    pmax = np.zeros(n_batch)
    best = np.full(n_batch, n_rows * n_sub, dtype=np.int64)
    with trilinear_cpu.numba_threads():
        _fine_weights(
            norms.to(torch.float32).contiguous().numpy(),
            cross.to(torch.float32).contiguous().numpy(),
            row_prior.to(torch.float64).contiguous().numpy(),
            offset_prior.to(torch.float64).contiguous().numpy(),
            row_translation.contiguous().numpy(),
            order.numpy(),
            segment_start.numpy(),
            float(fraction),
            weights,
            log_norm,
            pmax,
            best,
        )
    return torch.from_numpy(weights), torch.from_numpy(log_norm), torch.from_numpy(pmax), torch.from_numpy(best)
