"""Soft masks with RELION's raised-cosine edge and background filling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from novomap.physics.masks import mask_images_with_background, mask_volume_with_background, soft_edge_mask


def _radius(shape):
    axes = [np.arange(n) - n // 2 for n in shape]
    return np.sqrt(sum(g.astype(float) ** 2 for g in np.meshgrid(*axes, indexing="ij")))


@pytest.mark.parametrize("shape", [(64, 64), (40, 40, 40), (33, 33)])
def test_soft_edge_profile(shape):
    radius, edge = 10.0, 6.0
    mask = soft_edge_mask(shape, radius, edge).numpy()
    r = _radius(shape)
    assert (mask[r <= radius] == 1).all()
    assert (mask[r >= radius + edge] == 0).all()
    ring = (r > radius) & (r < radius + edge)
    assert ring.any()
    expected = 0.5 + 0.5 * np.cos(math.pi * (r[ring] - radius) / edge)  # raised cosine from 1 to 0
    np.testing.assert_allclose(mask[ring], expected, atol=1e-12)
    # value 0.5 half-way through the edge: pixel (n//2, n//2 + 13) sits at r = 13 = radius + edge/2
    centre = tuple(n // 2 for n in shape)
    index = centre[:-1] + (centre[-1] + 13,)
    assert mask[index] == pytest.approx(0.5, abs=1e-12)
    assert mask[centre] == 1.0


def test_hard_mask_without_edge():
    mask = soft_edge_mask((32, 32), 5.0, 0.0).numpy()
    assert set(np.unique(mask).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(mask, (_radius((32, 32)) <= 5.0).astype(float))


def test_constant_background_image_stays_constant():
    images = torch.full((2, 48, 48), 3.25, dtype=torch.float64)
    torch.testing.assert_close(mask_images_with_background(images, 15.0, 5.0), images, atol=1e-12, rtol=0)
    volume = torch.full((24, 24, 24), -1.5, dtype=torch.float64)
    torch.testing.assert_close(mask_volume_with_background(volume, 8.0, 3.0), volume, atol=1e-12, rtol=0)


def test_outside_filled_with_weighted_background_mean():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 40, 40, generator=g, dtype=torch.float64) + torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)[:, None, None]
    radius, edge = 12.0, 4.0
    out = mask_images_with_background(images, radius, edge).numpy()
    data = images.numpy()
    r = _radius((40, 40))
    inside = np.where(r <= radius, 1.0, np.where(r >= radius + edge, 0.0, 0.5 + 0.5 * np.cos(math.pi * (r - radius) / edge)))
    for i in range(3):
        bg = ((1 - inside) * data[i]).sum() / (1 - inside).sum()
        np.testing.assert_allclose(out[i], data[i] * inside + bg * (1 - inside), atol=1e-12)
        np.testing.assert_allclose(out[i][r >= radius + edge], bg, atol=1e-12)
        np.testing.assert_array_equal(out[i][r <= radius], data[i][r <= radius])
    # each image uses its own background: means differ by the offsets added above
    corner = out[:, 0, 0]
    assert corner[1] - corner[0] == pytest.approx(2.0, abs=0.2)
