"""The set of Fourier pixels an image is compared on: a half-plane disc of the rfft layout.

An image cropped in Fourier space to `size` (RELION's current_size or coarse_size) keeps the
pixels with round(|k|) < size/2. Each frequency is kept once (the redundant half of the kx = 0
column is dropped), so sums over the window count every independent Fourier component once.
Images become flat vectors (..., P) over this window: the E-step works on these vectors.

The pixels run in raster order of the rfft layout, or (by_shell) shell by shell (ascending
round(|k|), raster order within a shell), so that the pixels of any smaller window are a prefix of
a larger one's: a class whose map holds nothing beyond a smaller window is then compared on the
first `window_prefix` pixels alone (estep.search.fine_pass). Raster order stays the default: the
slices' gathers and scatters read the 3D grid 3-4 % faster in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from novomap.physics.fourier import rfft_shells, image_frequencies


@dataclass(frozen=True)
class FourierWindow:
    box: int  # N, full image size in px
    size: int  # cropped size in px (even, <= N)
    flat_index: torch.Tensor  # (P,) int64 index into the flattened (N, N//2+1) rfft array
    kx: torch.Tensor  # (P,) float64, cycles per box
    ky: torch.Tensor  # (P,) float64
    shell: torch.Tensor  # (P,) int64, round(|k|)
    by_shell: bool = False  # pixels ordered shell by shell (else raster order)

    @property
    def n_pixels(self) -> int:
        return int(self.flat_index.numel())

    def take(self, spectra: torch.Tensor) -> torch.Tensor:
        """Half transforms (..., N, N//2+1) -> window vectors (..., P)."""
        flat = spectra.reshape(*spectra.shape[:-2], -1)
        return flat[..., self.flat_index.to(flat.device)]

    def to(self, device: torch.device | str) -> "FourierWindow":
        return FourierWindow(
            self.box, self.size, self.flat_index.to(device), self.kx.to(device), self.ky.to(device), self.shell.to(device), self.by_shell
        )


def fourier_window(
    box: int, size: int, device: torch.device | str | None = None, include_dc: bool = True, by_shell: bool = False
) -> FourierWindow:
    """Window of the pixels with round(|k|) < size/2 (and > 0 unless include_dc), in raster order or
    (by_shell) shell by shell."""
    shells = rfft_shells(box, device)
    ky, kx = image_frequencies(box, device)
    keep = (shells >= 0) & (shells < size // 2)
    if not include_dc:
        keep &= shells > 0
    flat_index = torch.nonzero(keep.reshape(-1)).squeeze(1)
    if by_shell:
        flat_index = flat_index[torch.argsort(shells.reshape(-1)[flat_index], stable=True)]
    return FourierWindow(
        box=box,
        size=size,
        flat_index=flat_index,
        kx=kx.reshape(-1)[flat_index].double(),
        ky=ky.reshape(-1)[flat_index].double(),
        shell=shells.reshape(-1)[flat_index],
        by_shell=by_shell,
    )


def window_prefix(window: FourierWindow, size: int) -> int:
    """How many leading pixels of `window` (ordered by shell) form the window of `size` (round(|k|) < size/2)."""
    if not window.by_shell and size < window.size:
        raise ValueError("a smaller window is a prefix only of a window ordered by shell (fourier_window(by_shell=True))")
    return int((window.shell < size // 2).sum())


def shift_phases(window: FourierWindow, shifts_px: torch.Tensor) -> torch.Tensor:
    """Phase factors exp(-2 pi i k.s/N) that move image content by +s: shifts (..., 2) as (x, y) px -> (..., P) complex128."""
    s = shifts_px.double()
    phase = (window.kx.to(s.device) * s[..., 0:1] + window.ky.to(s.device) * s[..., 1:2]) * (-2 * torch.pi / window.box)
    return torch.polar(torch.ones_like(phase), phase)
