"""RELION's Fourier conventions, in one place (vdam-spec 1.3).

* Forward transforms are normalised by 1/N^2 (images) and centred: the phase origin is the box
  centre N//2, so a real-space shift of the content by +s multiplies F(k) by exp(-2 pi i k.s/N).
* Image transforms are half-complex (rfft layout): shape (..., N, N//2+1), ky in FFT order.
* The 3D reference transform used for projection lives on a full, centred (pad*N)^3 grid
  (zero frequency at index pad*N//2) and is scaled so that its central slice equals the
  RELION-normalised 2D transform of the line-integral projection: F3 = sum_r V(r) e^{-2 pi i k.r/(pad N)} / N^2.
* Resolution shells are ires = round(|k|), k in pixels of the N-box (for padded grids |k|/pad).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from novomap.physics.grid_cache import cached_grid


def rfft_image(images: torch.Tensor) -> torch.Tensor:
    """Real images (..., N, N), centre at N//2 -> RELION-normalised half transforms (..., N, N//2+1)."""
    n = images.shape[-1]
    centred = torch.fft.ifftshift(images, dim=(-2, -1))
    return torch.fft.rfft2(centred) / (n * n)


def irfft_image(spectra: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of rfft_image: half transforms (..., N, N//2+1) -> real images (..., N, N)."""
    images = torch.fft.irfft2(spectra * (n * n), s=(n, n))
    return torch.fft.fftshift(images, dim=(-2, -1))


def image_frequencies(n: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frequencies (ky, kx) of the rfft layout, each (N, N//2+1), in cycles per box."""
    ky = torch.fft.fftfreq(n, d=1.0 / n, device=device)
    kx = torch.arange(n // 2 + 1, device=device, dtype=ky.dtype)
    grid_y, grid_x = torch.meshgrid(ky, kx, indexing="ij")
    return grid_y, grid_x


def volume_to_centred_ft(volume: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Real map (N, N, N), centre at N//2 -> full centred transform (pad*N,)*3 on RELION's scale."""
    n = volume.shape[-1]
    m = pad * n
    # the map goes straight to where ifftshift would move it inside the zero-padded cube: the very
    # array the transform reads, without the padded copy and the shift's second copy of it
    if pad == 1:
        shifted = torch.fft.ifftshift(volume)
    else:
        shifted = volume.new_zeros((m, m, m))
        at = _shifted_positions(n, m, volume.device)
        shifted[at[:, None, None], at[None, :, None], at[None, None, :]] = volume
    spectrum = torch.fft.fftn(shifted) / (n * n)
    return torch.fft.fftshift(spectrum)


def centred_ft_to_volume(spectrum: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of volume_to_centred_ft: centred (M, M, M) transform -> real map (N, N, N), M = pad*N."""
    m = spectrum.shape[-1]
    uncentred = torch.fft.ifftn(torch.fft.ifftshift(spectrum)).real
    if m == n:
        return torch.fft.fftshift(uncentred) * (n * n)
    # the central N^3 of the fftshifted result, read from where the shift would have taken it
    at = _shifted_positions(n, m, spectrum.device)
    return uncentred[at[:, None, None], at[None, :, None], at[None, None, :]] * (n * n)


@lru_cache(maxsize=16)
def _shifted_positions(n: int, m: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(N,) index along one axis of an (M,)^3 uncentred grid of each voxel of the central N^3 of its
    centred (fftshifted) form: centred index m//2 - n//2 + i sits at (that - m//2) mod M."""
    return (torch.arange(n, device=device) - n // 2) % m


@cached_grid
def centred_radius(m: int, pad: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """|k| in pixels of the unpadded box for every voxel of a centred (M, M, M) grid (shared: read-only)."""
    k = (torch.arange(m, device=device, dtype=torch.float64) - m // 2) / pad
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.sqrt(kx * kx + ky * ky + kz * kz)


def hermitian_partner(grid: torch.Tensor) -> torch.Tensor:
    """Value at -k for every k of a centred grid (..., M, M, M) with M even (index 0 has no partner -> wraps)."""
    m = grid.shape[-1]
    # one gather through a fixed permutation: a flip and a roll over three axes copied the grid 4-7 times
    flat = grid.reshape(*grid.shape[:-3], m**3)
    return flat[..., _partner_index(m, str(grid.device))].reshape(grid.shape)


def hermitian_sum_at(grid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """physics.projection.hermitian_symmetrise of one grid at some voxels alone: grid (M, M, M) and flat
    indices (V,) -> (V,) grid(k) + conj(grid(-k)) (grid(-k) for a real grid), the very sums the whole
    grid's symmetrisation holds there."""
    flat = grid.reshape(-1)
    partner = flat.index_select(0, _partner_index(grid.shape[-1], str(grid.device)).index_select(0, index))
    return flat.index_select(0, index) + (partner.conj() if partner.is_complex() else partner)


@lru_cache(maxsize=8)
def _partner_index(m: int, device: str) -> torch.Tensor:
    """(M^3,) flat index of -k for every k of a centred (M, M, M) grid: (M - i) mod M along each axis."""
    partner = (-torch.arange(m, device=device)) % m
    return ((partner[:, None, None] * m + partner[None, :, None]) * m + partner[None, None, :]).reshape(-1)


def power(values: torch.Tensor) -> torch.Tensor:
    """|z|^2 of a complex tensor as re^2 + im^2 (no square root, unlike abs().square()); x^2 of a real one."""
    if not values.is_complex():
        return values.square()
    pairs = torch.view_as_real(values.resolve_conj())  # a conjugate view has no real view of its own
    return pairs[..., 0].square() + pairs[..., 1].square()


def shell_average(values: torch.Tensor, shells: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Mean of real values (...,) per integer shell index (same shape), shells outside [0, n_shells) ignored -> (n_shells,)."""
    shells = shells.reshape(-1).long()
    values = values.reshape(-1)
    # shells outside [0, n_shells) go to one extra bin, dropped: bincount takes no negative index, and
    # it sums without the boolean selections that made this 5x slower (the M-step calls it per class)
    bins = torch.where((shells >= 0) & (shells < n_shells), shells, n_shells)
    sums = torch.bincount(bins, weights=values, minlength=n_shells + 1)[:n_shells]
    counts = torch.bincount(bins, minlength=n_shells + 1)[:n_shells]
    return (sums / counts.clamp(min=1)).to(values.dtype)


def rfft_shells(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Shell index round(|k|) of every rfft pixel (N, N//2+1), with -1 on the redundant half of the kx=0 column.

    The kx=0 column holds each frequency twice (ky and -ky are conjugates); counting it once
    keeps per-shell averages and pixel counts equal to those of the full transform.
    """
    ky, kx = image_frequencies(n, device)
    shells = torch.round(torch.sqrt(kx * kx + ky * ky)).long()
    shells[(kx == 0) & (ky < 0)] = -1
    return shells


def power_spectrum_images(spectra: torch.Tensor, n: int) -> torch.Tensor:
    """Per-shell power spectrum mean |F|^2 / 2 of half transforms (..., N, N//2+1) -> (..., N//2+1)."""
    shells = rfft_shells(n, spectra.device)
    keep = (shells >= 0) & (shells <= n // 2)
    power = spectra.abs().square()[..., keep] / 2
    index = shells[keep]
    sums = torch.zeros((*power.shape[:-1], n // 2 + 1), dtype=power.dtype, device=power.device)
    sums.index_add_(-1, index, power)
    counts = torch.zeros(n // 2 + 1, dtype=power.dtype, device=power.device).index_add_(0, index, torch.ones_like(index, dtype=power.dtype))
    return sums / counts.clamp(min=1)
