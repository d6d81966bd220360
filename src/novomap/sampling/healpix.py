"""HEALPix directions (NEST ordering) and in-plane angles, as RELION samples them (vdam-spec 3.3).

Order n: Nside = 2^n, 12*4^n directions; psi step = 360 / (6 * 2^n) degrees. The children of
NEST pixel p at order n+1 are 4p .. 4p+3, which makes oversampling a matter of index arithmetic.

The pixel centres are computed here (Gorski et al. 2005, ApJ 622:759, section 4) rather than with
healpy, whose import pulls in matplotlib and astropy (~1 s of every command's start-up); the tests
check them against healpy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# NEST base faces: ring index of the face's corner (in units of nside) and its longitude index
_FACE_RING = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4])
_FACE_PHI = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7])


def _compress_bits(value: np.ndarray) -> np.ndarray:
    """Every other bit of value (bits 0, 2, 4, ...) packed together."""
    out = np.zeros_like(value)
    bit = 0
    while np.any(value >> (2 * bit)):
        out |= ((value >> (2 * bit)) & 1) << bit
        bit += 1
    return out


def _ring_z_phi(nside: int, ring: np.ndarray, phi_index: np.ndarray, shifted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z = cos(theta) and phi of pixels given their ring (1 .. 4 nside - 1), 1-based index along the
    ring and whether the ring's pixels are offset by half a pixel (equatorial rings of one parity)."""
    north = ring < nside
    south = ring > 3 * nside
    pixels_in_ring = np.where(north, ring, np.where(south, 4 * nside - ring, nside))  # per quarter
    z = np.where(north, 1.0 - ring.astype(np.float64) ** 2 / (3.0 * nside * nside), 0.0)
    z = np.where(south, -1.0 + (4 * nside - ring).astype(np.float64) ** 2 / (3.0 * nside * nside), z)
    z = np.where(~north & ~south, (2 * nside - ring) * 2.0 / (3.0 * nside), z)
    phi = (phi_index - 0.5 * (1 + shifted)) * (0.5 * math.pi / pixels_in_ring)
    return z, phi


def pixel_angles(nside: int, nest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Centres of all 12 nside^2 HEALPix pixels in NEST or RING order -> (theta, phi) in radians, float64
    (healpy.pix2ang(nside, arange(12 nside^2), nest))."""
    pixel = np.arange(12 * nside * nside, dtype=np.int64)
    if nest:
        face, inside = np.divmod(pixel, nside * nside)
        ix, iy = _compress_bits(inside), _compress_bits(inside >> 1)
        ring = _FACE_RING[face] * nside - ix - iy - 1
        equatorial = (ring >= nside) & (ring <= 3 * nside)
        shifted = np.where(equatorial, (ring - nside) & 1, 0)
        pixels_in_ring = np.where(ring < nside, ring, np.where(ring > 3 * nside, 4 * nside - ring, nside))
        phi_index = (_FACE_PHI[face] * pixels_in_ring + ix - iy + 1 + shifted) // 2
        phi_index = np.where(phi_index > 4 * nside, phi_index - 4 * nside, phi_index)
        phi_index = np.where(phi_index < 1, phi_index + 4 * nside, phi_index)
        z, phi = _ring_z_phi(nside, ring, phi_index, shifted)
    else:
        cap = 2 * nside * (nside - 1)
        total = 12 * nside * nside
        north = pixel < cap
        south = pixel >= total - cap
        # polar caps: ring i holds 4 i pixels, 2 i (i - 1) before it
        north_ring = ((1 + np.sqrt(1 + 2 * pixel.astype(np.float64))) // 2).astype(np.int64)
        north_ring = np.where(2 * north_ring * (north_ring - 1) > pixel, north_ring - 1, north_ring)
        north_ring = np.where(2 * (north_ring + 1) * north_ring <= pixel, north_ring + 1, north_ring)
        from_end = total - pixel  # 1-based from the south pole
        south_ring = ((1 + np.sqrt(np.maximum(2 * from_end - 1, 0).astype(np.float64))) // 2).astype(np.int64)
        south_ring = np.where(2 * south_ring * (south_ring - 1) >= from_end, south_ring - 1, south_ring)
        south_ring = np.where(2 * (south_ring + 1) * south_ring < from_end, south_ring + 1, south_ring)
        equatorial_pixel = pixel - cap
        ring = np.where(north, north_ring, np.where(south, 4 * nside - south_ring, equatorial_pixel // (4 * nside) + nside))
        phi_index = np.where(
            north,
            pixel + 1 - 2 * north_ring * (north_ring - 1),
            np.where(south, 4 * south_ring + 1 - (from_end - 2 * south_ring * (south_ring - 1)), equatorial_pixel % (4 * nside) + 1),
        )
        equatorial = ~north & ~south
        shifted = np.where(equatorial, (ring - nside) & 1, 0)
        z, phi = _ring_z_phi(nside, ring, phi_index, shifted)
    return np.arccos(np.clip(z, -1.0, 1.0)), phi


def pixel_vectors(nside: int, nest: bool = True) -> np.ndarray:
    """Unit vectors (12 nside^2, 3) of the pixel centres (healpy.pix2vec, stacked)."""
    theta, phi = pixel_angles(nside, nest)
    sin_theta = np.sin(theta)
    return np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), np.cos(theta)], axis=-1)


def mean_spacing_deg(nside: int) -> float:
    """Square root of the pixel area in degrees (healpy.nside2resol)."""
    return math.degrees(math.sqrt(4 * math.pi / (12 * nside * nside)))


def angular_step_deg(order: int) -> float:
    """Nominal angular sampling (degrees) of HEALPix order n: 60, 30, 15, 7.5, 3.75 for n = 0..4."""
    return 360.0 / (6 * 2**order)


def healpix_directions(order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rot_deg, tilt_deg), each (12*4^order,) float64: pixel centres, rot in (-180, 180], tilt in [0, 180]."""
    nside = 2**order
    theta, phi = pixel_angles(nside, nest=True)
    rot = np.degrees(phi)
    rot = np.where(rot > 180.0, rot - 360.0, rot)
    return torch.from_numpy(rot), torch.from_numpy(np.degrees(theta))


def psi_angles(order: int) -> torch.Tensor:
    """In-plane angles (degrees) j * step for j = 0 .. 6*2^order - 1 -> (n_psi,) float64."""
    n_psi = 6 * 2**order
    return torch.arange(n_psi, dtype=torch.float64) * angular_step_deg(order)


def child_psi_angles(order: int) -> torch.Tensor:
    """Psi angles of the oversampled (order+1) grid arranged (n_psi_coarse, 2): psi_j - step/4, psi_j + step/4."""
    step = angular_step_deg(order)
    coarse = psi_angles(order)
    return torch.stack([coarse - step / 4, coarse + step / 4], dim=-1)
