"""The search grid of one iteration: coarse orientations x translations and their oversampled children.

Coarse orientation index o = dir * n_psi + psi_index. Each coarse orientation has 8 fine
children (4 HEALPix child directions x 2 child psi angles) and each coarse translation 4 fine
children (a 2x2 sub-grid at half the step): 32 fine hypotheses per coarse one (vdam-spec 3.3).
Where the map's resolution is too coarse for the fine step to matter, a grid keeps one child per
coarse translation, the translation itself (without_sub_translations): 8 fine hypotheses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from novomap.physics.euler import euler_to_matrix
from novomap.sampling.healpix import angular_step_deg, child_psi_angles, healpix_directions, psi_angles
from novomap.sampling.translations import child_translations, translation_grid


@dataclass(frozen=True)
class SearchGrid:
    healpix_order: int
    offset_range_px: float
    offset_step_px: float
    coarse_rotations: torch.Tensor  # (O, 3, 3) float64
    coarse_direction: torch.Tensor  # (O,) int64, HEALPix pixel of each coarse orientation
    fine_rotations: torch.Tensor  # (O, 8, 3, 3) float64
    coarse_translations: torch.Tensor  # (T, 2) float64 px (x, y), perturbation included
    fine_translations: torch.Tensor  # (T, J, 2) float64 px: J = 4 children, or 1 (without_sub_translations)
    direction_order: int = -1  # HEALPix order of coarse_direction when not healpix_order (local grids)

    @property
    def n_directions(self) -> int:
        return 12 * 4 ** (self.direction_order if self.direction_order >= 0 else self.healpix_order)

    @property
    def n_coarse_orientations(self) -> int:
        return int(self.coarse_rotations.shape[0])

    @property
    def n_coarse_translations(self) -> int:
        return int(self.coarse_translations.shape[0])

    @property
    def n_sub_translations(self) -> int:
        """Fine translations per coarse one: 4, or 1 without translational oversampling."""
        return int(self.fine_translations.shape[1])

    @property
    def coarse_step_deg(self) -> float:
        return angular_step_deg(self.healpix_order)

    @property
    def fine_step_deg(self) -> float:
        return angular_step_deg(self.healpix_order + 1)


def perturbation_matrix(order: int, perturbation: float) -> torch.Tensor | None:
    """The rotation (3, 3) by rot = tilt = psi = perturbation x the order's angular step that shifts a
    whole grid of that order (RELION's random perturbation of the sampling); None when it is zero."""
    delta = perturbation * angular_step_deg(order)
    if delta == 0.0:
        return None
    d = torch.tensor(delta, dtype=torch.float64)
    return euler_to_matrix(d, d, d)


def build_search_grid(healpix_order: int, offset_range_px: float, offset_step_px: float, perturbation: float = 0.0) -> SearchGrid:
    """Grid for coarse HEALPix order n with oversampling 1; perturbation in [-0.5, 0.5] (fraction of a step).

    The perturbation right-multiplies every rotation by E(d, d, d), d = perturbation * coarse step,
    and shifts every translation by perturbation * offset step in x and y, as RELION does, so
    that successive iterations see slightly different grids.
    """
    rot, tilt = healpix_directions(healpix_order)
    psi = psi_angles(healpix_order)
    n_dir, n_psi = rot.numel(), psi.numel()
    coarse = euler_to_matrix(rot[:, None].expand(n_dir, n_psi), tilt[:, None].expand(n_dir, n_psi), psi[None, :].expand(n_dir, n_psi))
    coarse = coarse.reshape(-1, 3, 3)
    direction = torch.arange(n_dir).repeat_interleave(n_psi)

    child_rot, child_tilt = healpix_directions(healpix_order + 1)
    child_rot = child_rot.reshape(n_dir, 4)
    child_tilt = child_tilt.reshape(n_dir, 4)
    child_psi = child_psi_angles(healpix_order)  # (n_psi, 2)
    fine = euler_to_matrix(
        child_rot[:, None, :, None].expand(n_dir, n_psi, 4, 2),
        child_tilt[:, None, :, None].expand(n_dir, n_psi, 4, 2),
        child_psi[None, :, None, :].expand(n_dir, n_psi, 4, 2),
    ).reshape(n_dir * n_psi, 8, 3, 3)

    e = perturbation_matrix(healpix_order, perturbation)
    if e is not None:
        coarse, fine = coarse @ e, fine @ e

    translations = translation_grid(offset_range_px, offset_step_px) + perturbation * offset_step_px
    return SearchGrid(
        healpix_order=healpix_order,
        offset_range_px=offset_range_px,
        offset_step_px=offset_step_px,
        coarse_rotations=coarse,
        coarse_direction=direction,
        fine_rotations=fine,
        coarse_translations=translations,
        fine_translations=child_translations(translations, offset_step_px),
    )


def narrowed(grid: SearchGrid, offset_range_px: float) -> SearchGrid:
    """The same grid with only its translations within offset_range_px of the (perturbed) centre:
    same orientations, same perturbation, fewer translations (range 4 / step 2: 13 of 29)."""
    if offset_range_px >= grid.offset_range_px or grid.offset_step_px <= 0:
        return grid
    centre = grid.coarse_translations.mean(0)  # the grid is symmetric about its perturbed centre
    keep = (grid.coarse_translations - centre).square().sum(-1) <= offset_range_px**2 + 1e-3
    return dataclasses.replace(
        grid,
        offset_range_px=offset_range_px,
        coarse_translations=grid.coarse_translations[keep],
        fine_translations=grid.fine_translations[keep],
    )


# the map's resolution, in coarse offset steps, from which on translations are oversampled
SUB_TRANSLATION_RESOLUTION_STEPS = 4.0


def without_sub_translations(grid: SearchGrid) -> SearchGrid:
    """The same grid with each coarse translation its own single fine translation (T, 1, 2): the
    fine pass then searches 8 child orientations x 1 translation per coarse hypothesis."""
    return dataclasses.replace(grid, fine_translations=grid.coarse_translations[:, None, :].clone())


def sub_translations_needed(offset_step_a: float, resolution_a: float) -> bool:
    """Whether translations need their 4 children at half the step, at the map's current resolution.

    Without them a particle's translation is off by up to half a coarse step per axis (uniform: an
    rms error of step / sqrt(12)), which damps the map's amplitudes like a B-factor: at the
    resolution limit by exp(-2 pi^2 (step / sqrt(12))^2 / resolution^2), 0.90 while the step is a
    quarter of the resolution or less, where the early iterations' maps are (real beta-gal,
    7.1 Å steps: 45-32 Å in iterations 1-30). Finer than that, the children are searched as before.
    """
    return SUB_TRANSLATION_RESOLUTION_STEPS * offset_step_a > resolution_a

