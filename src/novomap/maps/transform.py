"""Geometric transforms and resampling of cubic volumes (z, y, x), box N, centre voxel N//2.

The physical coordinate of voxel (z, y, x) is r = (x - N//2, y - N//2, z - N//2) in px.
Rotating a volume V by a matrix R means V'(r) = V(R^T r): a feature at r0 moves to R r0.
Shifting by s (zyx, px) moves the content by +s.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from novomap.errors import InputError

# grid_sample is called on at most this many output samples at once (memory ~ 28 B per sample)
_MAX_SAMPLES = 1 << 22


def centred_coordinates(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Physical coordinates (size, size, size, 3) in px, last axis ordered (x, y, z)."""
    axis = torch.arange(size, dtype=dtype) - size // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def rotate_volume(volume: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Rotate a volume (N, N, N) by each matrix (B, 3, 3) -> (B, N, N, N); a single (3, 3) -> (N, N, N).

    Real-space trilinear interpolation, zero outside the box: output voxel r takes the value at R^T r.
    Any 3x3 matrix works (mirrors too); it is not checked for orthogonality. On the CPU a compiled
    loop (maps.rotate_cpu, several times faster than grid_sample's there), elsewhere torch grid_sample.
    """
    single = matrices.ndim == 2
    mats = matrices.reshape(-1, 3, 3).to(device=volume.device, dtype=volume.dtype)
    n = volume.shape[-1]
    compiled = _compiled_rotation() if volume.device.type == "cpu" and volume.dtype in (torch.float32, torch.float64) else None
    if compiled is not None:
        rotated = compiled.rotate(volume.reshape(n, n, n), mats)
        return rotated[0] if single else rotated
    coords, offset = _normalised_coordinates(n, volume.dtype)
    coords = coords.to(volume.device)
    source = volume.reshape(1, 1, n, n, n)
    chunk = max(1, _MAX_SAMPLES // n**3)
    outputs = []
    for start in range(0, mats.shape[0], chunk):
        block = mats[start : start + chunk]
        # rows r^T R = (R^T r)^T, already in grid_sample's [-1, 1] units once the offset is added
        grid = torch.bmm(coords.expand(block.shape[0], -1, -1), block).add_(offset)
        grid = grid.reshape(1, block.shape[0] * n, n, n, 3)
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        outputs.append(sampled.reshape(block.shape[0], n, n, n))
    rotated = torch.cat(outputs) if len(outputs) > 1 else outputs[0] if outputs else volume.new_zeros((0, n, n, n))
    return rotated[0] if single else rotated


def _compiled_rotation():
    """maps.rotate_cpu when numba is installed, else None (imported on first use, as numba is)."""
    from novomap.maps import rotate_cpu

    return rotate_cpu if rotate_cpu.available() else None


def sample_at(volume: torch.Tensor, positions_xyz: torch.Tensor) -> torch.Tensor:
    """Trilinear values of a volume (N, N, N) at physical positions (..., 3) (x, y, z px from the centre).

    Returns (...) in the volume's dtype; positions outside the box read 0.
    """
    n = volume.shape[-1]
    scale = 2.0 / (n - 1)
    positions = positions_xyz.to(device=volume.device, dtype=volume.dtype)
    grid = (positions * scale + ((n // 2) * scale - 1.0)).reshape(1, -1, 1, 1, 3)
    values = F.grid_sample(volume.reshape(1, 1, n, n, n), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=True)
    return values.reshape(positions_xyz.shape[:-1])


@lru_cache(maxsize=16)
def _normalised_coordinates(size: int, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """Centred coordinates (N^3, 3) scaled to grid_sample units, and the offset to add after rotating.

    With align_corners=True, grid_sample maps index i to 2 i / (N - 1) - 1; index = r + N//2.
    """
    scale = 2.0 / (size - 1)
    coords = (centred_coordinates(size, torch.float64).reshape(-1, 3) * scale).to(dtype)
    return coords, (size // 2) * scale - 1.0


def rfft_frequencies(size: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frequencies (cycles per voxel) of an rfftn of a cube, broadcastable as (kz, ky, kx)."""
    k = torch.fft.fftfreq(size, dtype=dtype)
    kx = torch.fft.rfftfreq(size, dtype=dtype)
    return k[:, None, None], k[None, :, None], kx[None, None, :]


def frequency_radius(size: int) -> torch.Tensor:
    """|k| in shells (1 shell = 1 / box) on an rfftn grid of a cube: shape (N, N, N//2 + 1)."""
    kz, ky, kx = rfft_frequencies(size)
    return torch.sqrt(kz**2 + ky**2 + kx**2) * size


def shift_volume(volume: torch.Tensor, shift_zyx_px: torch.Tensor | tuple[float, float, float]) -> torch.Tensor:
    """Move the content of a volume (N, N, N) by shift (3,) zyx px, sub-pixel, by a Fourier phase ramp.

    The shift is periodic (content leaving one side re-enters on the other), which is harmless for
    maps surrounded by solvent.
    """
    n = volume.shape[-1]
    s = torch.as_tensor(shift_zyx_px, dtype=torch.float64)
    kz, ky, kx = rfft_frequencies(n)
    phase = torch.exp(-2j * math.pi * (kz * s[0] + ky * s[1] + kx * s[2]))
    spectrum = torch.fft.rfftn(volume.to(torch.float64))
    return torch.fft.irfftn(spectrum * phase.to(volume.device), s=volume.shape).to(volume.dtype)


def center_of_mass(volume: torch.Tensor, positive_only: bool = True) -> torch.Tensor:
    """Centre of mass (3,) float64 on the CPU, zyx px from the centre voxel N//2; zeros if no mass.

    With positive_only, negative voxels (noise, solvent ripples) get weight 0, as in RELION.
    """
    weights = volume.detach().to(device="cpu", dtype=torch.float64)
    if positive_only:
        weights = weights.clamp(min=0.0)
    total = weights.sum()
    if total <= 0:
        return torch.zeros(3, dtype=torch.float64)
    n = volume.shape[-1]
    axis = torch.arange(n, dtype=torch.float64) - n // 2
    z = (weights.sum(dim=(1, 2)) * axis).sum() / total
    y = (weights.sum(dim=(0, 2)) * axis).sum() / total
    x = (weights.sum(dim=(0, 1)) * axis).sum() / total
    return torch.stack([z, y, x])


def _centred_block(source_size: int, target_size: int) -> tuple[slice, slice]:
    """Slices (source, target) of the overlap of two centred boxes (centre voxel at size//2)."""
    offset = target_size // 2 - source_size // 2  # target index = source index + offset
    start = max(0, -offset)
    stop = min(source_size, target_size - offset)
    return slice(start, stop), slice(start + offset, stop + offset)


def crop_or_pad(volume: torch.Tensor, new_size: int, fill: float = 0.0) -> torch.Tensor:
    """Real-space central crop or zero-pad of a cube to new_size^3, keeping the centre voxel N//2."""
    n = volume.shape[-1]
    src, dst = _centred_block(n, new_size)
    out = volume.new_full((new_size, new_size, new_size), fill)
    out[dst, dst, dst] = volume[src, src, src]
    return out


def fourier_resize(
    volume: torch.Tensor, box: int, bfactor_a2: float = 0.0, pixel_size_a: float | None = None
) -> torch.Tensor:
    """Resample a cubic map (n, n, n) to (box, box, box) over the same field of view.

    Fourier crop (box < n: a hard low-pass at the new Nyquist) or zero pad (box > n: band-limited
    interpolation); the pixel size becomes pixel * n / box. Sampled values keep their scale (a
    constant map stays constant). The phase origin is the centre voxel, so voxel n//2 maps onto
    voxel box//2 for either parity. Optionally multiplies by exp(-B s^2 / 4), s in 1/Å of the
    output grid (pixel_size_a = output pixel size); a negative B sharpens. Computed in the input's
    precision (a float32 map in single precision: an upsampling to a large output grid holds less).
    """
    n = volume.shape[-1]
    if box == n and bfactor_a2 == 0.0:
        return volume.clone()
    dtype = torch.complex128 if volume.dtype == torch.float64 else torch.complex64
    spectrum = torch.fft.fftn(torch.fft.ifftshift(volume)).to(dtype)  # phase origin at the centre voxel
    # the kept frequencies go straight to their places in the unshifted output spectrum, and each large
    # array is dropped once used: an upsampling to the output grid (128 -> 512 px) had held four full
    # 512^3 copies at once (benchmarks/results/2026-12-06-s49-posterior-mean.md, section 10)
    c = min(n, box)
    freqs = torch.arange(-(c // 2), c - c // 2)
    src, dst = freqs % n, freqs % box
    out = torch.zeros((box, box, box), dtype=dtype)
    out[dst[:, None, None], dst[None, :, None], dst[None, None, :]] = spectrum[src[:, None, None], src[None, :, None], src[None, None, :]]
    del spectrum
    if bfactor_a2 != 0.0:
        if pixel_size_a is None:
            raise ValueError("pixel_size_a is needed with a B-factor")
        k = torch.fft.ifftshift((torch.arange(box, dtype=torch.float64) - box // 2) / (box * pixel_size_a))  # unshifted order
        s2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
        out *= torch.exp(-bfactor_a2 * s2 / 4).to(out.real.dtype)
    field = torch.fft.ifftn(out)
    del out
    resized = torch.fft.fftshift(field.real)
    del field
    resized *= (box / n) ** 3
    return resized.to(volume.dtype)


def resample_map(
    volume: torch.Tensor, pixel_size_a: float, box: int, target_pixel_size_a: float, tolerance: float = 2e-3
) -> torch.Tensor:
    """A map (n, n, n) at pixel_size_a -> (box, box, box) at target_pixel_size_a, about the centre.

    Fourier resampling needs n' * pixel / target to be a whole number, so the map is first padded
    (or cropped) to a size n' for which it nearly is; the pixel size actually reached is within
    `tolerance` (relative) of the target, else InputError. Content beyond the new field of view
    is cut off; new space is filled with zeros.
    """
    ratio = pixel_size_a / target_pixel_size_a
    if abs(ratio - 1) < 1e-6:
        return crop_or_pad(volume, box)
    n = volume.shape[-1]
    # only the part of the input that ends up inside the output box matters
    needed = min(n, int(math.ceil(box / ratio)) + 4)
    for size in range(needed, 2 * needed + 64):
        target = size * ratio
        m = round(target)
        if m >= 2 and abs(target / m - 1) <= tolerance:
            return crop_or_pad(fourier_resize(crop_or_pad(volume, size), m), box)
    raise InputError(
        f"cannot resample a map from {pixel_size_a:g} to {target_pixel_size_a:g} Å/px within {tolerance:.1%}"
    )


def lowpass(volume: torch.Tensor, pixel_size_a: float, resolution_a: float, edge_shells: float = 2.0) -> torch.Tensor:
    """Low-pass a cube at resolution_a (Å) with a raised-cosine edge edge_shells wide (in Fourier shells).

    Shells below box * pixel / resolution - edge/2 pass, shells above + edge/2 are removed.
    """
    n = volume.shape[-1]
    cutoff = n * pixel_size_a / resolution_a
    radius = frequency_radius(n)
    low, high = max(cutoff - edge_shells / 2, 0.0), cutoff + edge_shells / 2
    ramp = ((radius - low) / max(high - low, 1e-9)).clamp(0.0, 1.0)
    weights = 0.5 + 0.5 * torch.cos(math.pi * ramp)
    spectrum = torch.fft.rfftn(volume.to(torch.float64))
    return torch.fft.irfftn(spectrum * weights.to(volume.device), s=volume.shape).to(volume.dtype)


def mirror_volume(volume: torch.Tensor) -> torch.Tensor:
    """Mirror image through the plane z = 0 (about the centre voxel): V'(x, y, z) = V(x, y, -z).

    Exact (no interpolation); for even N the first z slice has no source and becomes zero.
    """
    n = volume.shape[0]
    flipped = volume.flip(0)
    lag = 2 * (n // 2) - n + 1  # flip maps z to N-1-z; the centre needs z to 2(N//2)-z
    if lag == 0:
        return flipped
    out = torch.zeros_like(volume)
    out[lag:] = flipped[:-lag]
    return out


def spherical_mask(
    size: int, radius_px: float, edge_px: float = 2.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Soft sphere (size^3) around the centre voxel: 1 within radius, raised-cosine fall to 0 over edge."""
    r = centred_coordinates(size, torch.float64).norm(dim=-1)
    ramp = ((r - radius_px) / max(edge_px, 1e-9)).clamp(0.0, 1.0)
    return (0.5 + 0.5 * torch.cos(math.pi * ramp)).to(dtype)
