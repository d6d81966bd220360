"""Translational search grids in pixels (vdam-spec 3.3)."""

from __future__ import annotations

import torch


def translation_grid(range_px: float, step_px: float) -> torch.Tensor:
    """All (ix*step, iy*step) with (ix^2 + iy^2) step^2 <= range^2 -> (T, 2) float64 as (x, y) px.

    Range 6 / step 2 gives RELION's 29 translations.
    """
    if step_px <= 0:
        return torch.zeros((1, 2), dtype=torch.float64)
    n = int(range_px // step_px)
    ix = torch.arange(-n, n + 1, dtype=torch.float64)
    gx, gy = torch.meshgrid(ix, ix, indexing="xy")
    keep = (gx * gx + gy * gy) * step_px**2 <= range_px**2 + 1e-3
    return torch.stack([gx[keep], gy[keep]], dim=-1) * step_px


def child_translations(coarse: torch.Tensor, step_px: float) -> torch.Tensor:
    """Each coarse translation t -> its 2x2 oversampled children t - step/4 and t + step/4 per axis.

    coarse (T, 2) -> (T, 4, 2): children at half the coarse step.
    """
    offsets = torch.tensor([-0.25, 0.25], dtype=torch.float64) * step_px
    ox, oy = torch.meshgrid(offsets, offsets, indexing="xy")
    sub = torch.stack([ox.reshape(-1), oy.reshape(-1)], dim=-1)  # (4, 2)
    return coarse[:, None, :] + sub[None, :, :]
