"""The working grid: one box and pixel size for all particles, chosen from the resolution the job needs.

An initial model needs nothing finer than ~7 Å, so particles extracted at full size (say 256 px at
0.885 Å/px) are Fourier-cropped as they are read to a box whose Nyquist frequency is the maximum
resolution (64 px at 3.54 Å/px): the search then costs what a re-extracted set costs. Optics groups
with different pixel sizes or boxes are brought onto the same grid the same way, so the rest of
the program sees one box and one pixel size (each group keeps its own CTF and noise spectrum).

Rules (`choose_working_grid`):
* field of view L = the smallest group's box in Å (larger boxes are cropped in real space after
  Fourier resampling; nothing of the particle is lost when the mask fits the smallest box);
* target pixel = max(max_resolution / 2, finest input pixel): never finer than the data;
* working box = the largest even number <= L / target pixel (at most `max_box`), and the working
  pixel = L / working box exactly, so the smallest group needs no real-space cropping;
* each group g is Fourier-resized to M_g = round(N_g p_g / pixel) px and then centre-cropped (or
  zero-padded) to the working box. Its effective pixel N_g p_g / M_g differs from the working one by
  at most 1/(2 M_g) (relative), which is a magnification error of < 1 % in the worst case.
A group that already matches the grid is passed through untouched (bit-identical images).

Outputs are written on the output grid: by default the box and pixel size of the group with the
largest field of view (ties: the finest pixel), else the box that keeps that field of view at a
chosen output pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from novomap.maps.transform import resample_map

#: Default working-box cap: a 128-px search covers a 450 Å box at 3.5 Å/px.
DEFAULT_MAX_BOX = 128
#: Default resolution limit of the job (Å): RELION's tutorial particles (64 px, 3.54 Å/px) reach it.
DEFAULT_MAX_RESOLUTION_A = 7.0
#: ... unless the field of view is small: a small particle keeps at least this many pixels across.
MIN_AUTO_BOX = 64


def auto_max_resolution_a(group_box: np.ndarray, group_pixel_size_a: np.ndarray) -> float:
    """The default --max-resolution (Å): 7 Å, finer where the smallest field of view would have < 64 px.

    A small particle in a small box needs finer detail to be aligned; 64 px cost what the
    tutorial's particles cost, so nothing is gained by working on fewer.
    """
    field_a = float((np.asarray(group_box, dtype=np.float64) * np.asarray(group_pixel_size_a, dtype=np.float64)).min())
    return min(DEFAULT_MAX_RESOLUTION_A, 2.0 * field_a / MIN_AUTO_BOX)


@dataclass(frozen=True)
class WorkingGrid:
    """Box/pixel size the job works on, how each optics group gets there, and the output grid.

    box, pixel_size_a: the working grid. group_resized_box: (G,) M_g, the Fourier-resized size of
    each optics group before centre-cropping to `box`. output_box, output_pixel_size_a: the grid of
    every map written (set by the group with the widest field of view).
    """

    box: int
    pixel_size_a: float
    group_box: tuple[int, ...]
    group_pixel_size_a: tuple[float, ...]
    group_resized_box: tuple[int, ...]
    output_box: int
    output_pixel_size_a: float
    widest_group: int  # 0-based optics row whose field of view sets the output grid

    @property
    def input_pixel_size_a(self) -> float:
        """The input's pixel size, as options in pixels (offsets) are read: the widest group's."""
        return self.group_pixel_size_a[self.widest_group]

    def group_is_identity(self, group: int) -> bool:
        """True when group `group`'s images are used exactly as read."""
        return self.group_resized_box[group] == self.group_box[group] == self.box

    @property
    def resamples(self) -> bool:
        return not all(self.group_is_identity(g) for g in range(len(self.group_box)))

    def describe(self) -> str:
        """One line for the log: what was read, what is worked on, what is written."""
        inputs = ", ".join(f"{n} px at {p:g} Å/px" for n, p in sorted(set(zip(self.group_box, self.group_pixel_size_a))))
        if not self.resamples:
            return f"working grid: {self.box} px at {self.pixel_size_a:.4g} Å/px (the particles' own; Nyquist {2 * self.pixel_size_a:.3g} Å)"
        return (
            f"working grid: {self.box} px at {self.pixel_size_a:.4g} Å/px (Nyquist {2 * self.pixel_size_a:.3g} Å), "
            f"Fourier-cropped from {inputs}; maps written at {self.output_box} px, {self.output_pixel_size_a:.4g} Å/px"
        )


def choose_working_grid(
    group_box: np.ndarray,
    group_pixel_size_a: np.ndarray,
    max_resolution_a: float | None = None,
    max_box: int = DEFAULT_MAX_BOX,
    output_pixel_size_a: float | None = None,
) -> WorkingGrid:
    """The working grid for optics groups of boxes (G,) px and pixel sizes (G,) Å (see module doc).

    max_resolution_a None: work at the finest input pixel size (no coarsening, no box cap).
    """
    boxes = np.asarray(group_box, dtype=np.int64)
    pixels = np.asarray(group_pixel_size_a, dtype=np.float64)
    fields = boxes * pixels
    field_a = float(fields.min())
    finest = float(pixels.min())
    target = finest if max_resolution_a is None else max(max_resolution_a / 2.0, finest)
    # 1e-6: L / p is N up to rounding when the target is the data's own pixel
    box = 2 * int(math.floor(field_a / target / 2 + 1e-6))
    if max_box > 0 and max_resolution_a is not None:
        box = min(box, 2 * (max_box // 2))
    box = max(box, 2)
    smallest = int(np.argmin(fields))
    if box == boxes[smallest] and math.isclose(target, pixels[smallest], rel_tol=1e-6):
        pixel = float(pixels[smallest])  # the data's own grid, exactly as read
    else:
        pixel = field_a / box
    resized = tuple(int(round(f / pixel)) for f in fields)

    widest = max(range(len(boxes)), key=lambda g: (fields[g], -pixels[g]))
    if output_pixel_size_a is None:
        out_box, out_pixel = int(boxes[widest]), float(pixels[widest])
    else:
        out_box = max(2, 2 * int(round(fields[widest] / output_pixel_size_a / 2)))
        out_pixel = float(output_pixel_size_a)
    return WorkingGrid(
        box=box,
        pixel_size_a=pixel,
        group_box=tuple(int(b) for b in boxes),
        group_pixel_size_a=tuple(float(p) for p in pixels),
        group_resized_box=resized,
        output_box=out_box,
        output_pixel_size_a=out_pixel,
        widest_group=int(widest),
    )


#: initial_model's final reconstruction may use a grid up to this many times finer than the working grid
FINAL_GRID_FACTOR = 2.0


def final_grid(grid: WorkingGrid) -> WorkingGrid | None:
    """The grid of initial_model's final reconstruction, or None when it would be the working grid:
    the input's finest pixel, at most FINAL_GRID_FACTOR times finer than the working pixel and at most
    DEFAULT_MAX_BOX px across. `final_grid_max_resolution_a` is the max resolution that reads particles onto it.

    The final pass's poses were found on the working grid, so the data beyond its Nyquist frequency
    took no part in finding them: reconstructed at those poses, that data adds detail the alignment
    cannot have fitted to noise. Particles extracted finer than the working grid then give
    initial_model.mrc the detail their poses support instead of stopping at the working Nyquist.
    """
    fine = choose_working_grid(np.asarray(grid.group_box), np.asarray(grid.group_pixel_size_a), _final_grid_resolution_a(grid))
    return fine if fine.box > grid.box else None


def final_grid_max_resolution_a(grid: WorkingGrid) -> float | None:
    """The max resolution (Å) that puts particles on `final_grid(grid)`, or None when there is none."""
    return None if final_grid(grid) is None else _final_grid_resolution_a(grid)


def _final_grid_resolution_a(grid: WorkingGrid) -> float:
    return 2.0 * max(min(grid.group_pixel_size_a), grid.pixel_size_a / FINAL_GRID_FACTOR)


def _centre_slices(source: int, target: int) -> tuple[slice, slice]:
    """(source, target) slices of the overlap of two centred axes (centre index at size // 2)."""
    offset = target // 2 - source // 2
    start, stop = max(0, -offset), min(source, target - offset)
    return slice(start, stop), slice(start + offset, stop + offset)


def centre_crop_or_pad_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Real-space crop (or zero-pad) of images (B, N, N) to (B, size, size) about the centre N // 2."""
    n = images.shape[-1]
    if n == size:
        return images
    src, dst = _centre_slices(n, size)
    out = images.new_zeros((images.shape[0], size, size))
    out[:, dst, dst] = images[:, src, src]
    return out


def fourier_resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, N, N) -> (B, size, size) by cropping (or zero-padding) the centred spectrum.

    The field of view is kept (pixel becomes pixel * N / size) and so is the real-space greyscale:
    a constant image stays the same constant. Computed in the input's precision (float32 images:
    single-precision spectra, half the memory; their noise is far above its rounding).

    The kept frequencies -min(N, size)//2 .. min(N - 1, size - 1)//2 of each axis are read from the
    real-input transform (negative x frequencies as conjugates), and the move of the centre from N//2
    to size//2 is a phase ramp (none between even sizes), rather than shifting the images and spectra
    about: the same images to rounding, 2x faster (a large box's particles are resized every time
    they are read: benchmarks/results/2026-12-06-s48-checks.md).
    """
    n = images.shape[-1]
    if n == size:
        return images
    real = images if images.dtype in (torch.float32, torch.float64) else images.to(torch.float32)
    half = torch.fft.rfft2(real)  # (B, N, N//2+1), centre of the image at pixel 0
    freqs = torch.arange(-min(n // 2, size // 2), min((n - 1) // 2, (size - 1) // 2) + 1, device=images.device)
    positive = freqs >= 0
    kept = half.new_empty((images.shape[0], freqs.numel(), freqs.numel()))  # (B, ky, kx) of the kept frequencies
    kept[:, :, positive] = half[:, freqs % n][:, :, freqs[positive]]
    kept[:, :, ~positive] = half[:, (-freqs) % n][:, :, -freqs[~positive]].conj()  # X(-k) = conj X(k)
    shift = (n // 2) / n - (size // 2) / size  # the centre's move, in fields of view
    if shift != 0.0:
        ramp = torch.exp((2j * math.pi * shift) * freqs.to(torch.float64)).to(kept.dtype)
        kept *= ramp[:, None] * ramp[None, :]
    spectrum = half.new_zeros((images.shape[0], size, size))
    index = freqs % size
    spectrum[:, index[:, None], index[None, :]] = kept
    return (torch.fft.ifft2(spectrum).real * (size / n) ** 2).to(images.dtype)


def to_working_grid(images: torch.Tensor, grid: WorkingGrid, group: int) -> torch.Tensor:
    """Images (B, N_g, N_g) of optics group `group` (0-based row) -> (B, box, box) on the working grid."""
    if grid.group_is_identity(group):
        return images
    return centre_crop_or_pad_images(fourier_resize_images(images, grid.group_resized_box[group]), grid.box)


def to_output_grid(volume: torch.Tensor, grid: WorkingGrid, pixel_size_a: float | None = None) -> torch.Tensor:
    """A map (n, n, n) at pixel_size_a (default: the working pixel) -> (output_box,)*3 at the output pixel, about the centre."""
    pixel_size_a = grid.pixel_size_a if pixel_size_a is None else pixel_size_a
    if volume.shape[-1] == grid.output_box and math.isclose(pixel_size_a, grid.output_pixel_size_a, rel_tol=1e-6):
        return volume
    return resample_map(volume, pixel_size_a, grid.output_box, grid.output_pixel_size_a, tolerance=5e-3)
