"""The coarse pass of a local search: each particle against its own window of orientations.

Same likelihood as the global coarse pass (estep.search), restricted per particle to the L
coarse orientations of its window (sampling.local), with a Gaussian prior on the angle to its
previous pose. Batched as dense products: the chunk's images at every translation (B, T, 2Pc)
times each particle's gathered candidate projections (B, 2Pc, L), one batched matrix product.
The significant hypotheses then go to the unchanged fine pass, with the same prior on the fine
orientations.
"""

from __future__ import annotations

import math

import torch

from novomap.estep.prepare import PreparedBatch
from novomap.estep.search import CoarseHits, CoarseReferences, SearchSettings, _offset_log_prior, batch_caps, significant
from novomap.physics.window import shift_phases
from novomap.sampling.grid import SearchGrid

_EXCLUDED = -1e30  # log weight of an empty candidate slot (finite: no inf - inf)


class LocalPrior:
    """log prior -angle(previous_b, R)^2 / (2 sigma^2) (angle in degrees) for rows of particles b."""

    def __init__(self, previous: torch.Tensor, sigma_deg: float) -> None:
        self.previous = previous  # (B, 3, 3) float64, on the search's device
        self.sigma_deg = sigma_deg

    def __call__(self, rotations: torch.Tensor, particle: torch.Tensor) -> torch.Tensor:
        trace = (self.previous[particle] * rotations.to(self.previous.dtype)).sum(dim=(-2, -1))
        angle = torch.rad2deg(torch.arccos(((trace - 1) / 2).clamp(-1.0, 1.0)))
        return -angle.square() / (2 * self.sigma_deg**2)


def local_coarse_pass(
    batch: PreparedBatch,
    coarse: CoarseReferences,
    grid: SearchGrid,
    candidates: torch.Tensor,
    used: torch.Tensor,
    prior: LocalPrior,
    log_direction_prior: torch.Tensor,
    settings: SearchSettings,
    classes: torch.Tensor | None = None,
) -> CoarseHits:
    """Significant hypotheses among each particle's candidates.

    used (u,): the grid's coarse orientations this chunk needs; coarse.projections (K*u, Pc) are
    every class at those; candidates (B, L) index into `used` (-1 = empty slot). Every class is
    searched at every candidate orientation, or with classes (B,) (0-based) only each particle's own.
    """
    device = batch.masked.device
    n_batch, n_slots = candidates.shape
    n_used = used.numel()
    n_classes = coarse.projections.shape[0] // max(1, n_used)
    valid = candidates >= 0
    local_index = candidates.clamp(min=0)
    orientation = used[local_index]  # (B, L) index into the grid
    searched = torch.arange(n_classes, device=device)[None, :].expand(n_batch, -1) if classes is None else classes.to(device)[:, None]  # (B, C)
    n_searched = searched.shape[1]
    # rows of coarse.projections, class * u + local index, slots ordered (class, slot)
    class_index = searched[:, :, None].expand(n_batch, n_searched, n_slots)
    keys = (class_index * n_used + local_index[:, None, :]).reshape(n_batch, -1)
    grid_keys = (class_index * grid.n_coarse_orientations + orientation[:, None, :]).reshape(n_batch, -1)
    valid = valid[:, None, :].expand(n_batch, n_searched, n_slots).reshape(n_batch, -1)

    x = batch.masked[:, coarse.pixels]
    ctf = batch.ctf[:, coarse.pixels]
    q = 0.5 * batch.inv_sigma2[:, coarse.pixels]
    phases = shift_phases(coarse.window, grid.coarse_translations.to(device)).to(x.dtype)
    shifted = (x * ctf * (2 * q))[:, None, :] * phases[None, :, :]  # (B, T, Pc); the cross terms' factor 2 (exact, as in search.coarse_log_weights)
    images = torch.cat([shifted.real, shifted.imag], -1).float()  # (B, T, 2Pc)
    refs = coarse.planes[keys]  # (B, KL, 2Pc): the chunk's planes made once, then gathered
    log_w = torch.bmm(images, refs.transpose(1, 2))  # (B, T, KL)
    norm = torch.bmm(coarse.power[keys], (ctf * ctf * q).float()[:, :, None]).squeeze(-1)  # (B, KL)
    direction = grid.coarse_direction.to(device)[orientation]  # (B, L)
    direction_prior = log_direction_prior[class_index, direction[:, None, :].expand_as(class_index)].reshape(n_batch, -1)
    rotations = grid.coarse_rotations.to(device)[orientation.reshape(-1)]
    angle_prior = prior(rotations, torch.arange(n_batch, device=device).repeat_interleave(n_slots)).reshape(n_batch, 1, n_slots)
    per_slot = direction_prior.float() - norm + angle_prior.expand(n_batch, n_searched, n_slots).reshape(n_batch, -1).float()
    per_slot = torch.where(valid, per_slot, torch.full_like(per_slot, _EXCLUDED))
    log_w.add_(per_slot[:, None, :])
    log_w.add_(_offset_log_prior(batch.origin_px, grid.coarse_translations.to(device), settings).float()[:, :, None])
    particle, index, n_sig = significant(log_w, settings, batch_caps(settings, batch))
    slot = index % keys.shape[1]
    return CoarseHits(particle=particle, translation=index // keys.shape[1], orientation=grid_keys[particle, slot], n_significant=n_sig)


def local_chunk_size(n_slots: int, n_classes: int, n_translations: int, n_pixels: int, requested: int = 0) -> int:
    """Particles per chunk of a local search: the gathered (B, K*L, 2Pc) projections near 64 MB."""
    if requested > 0:
        return requested
    per_particle = max(1, n_slots * n_classes * 2 * n_pixels * 4 + n_translations * 2 * n_pixels * 4)
    return int(max(8, min(512, 64 * 2**20 // per_particle)))


def expected_prior_width(acc_rot_deg: float, coarse_step_deg: float) -> float:
    """Width (deg) of the prior on the angle to the previous pose: the model's expected angular
    error, but never below the local coarse step (a prior narrower than the grid would pin poses)."""
    if not math.isfinite(acc_rot_deg):
        return coarse_step_deg
    return max(acc_rot_deg, coarse_step_deg)
