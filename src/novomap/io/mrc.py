"""MRC maps and stacks: read (memory-mapped for stacks), write atomically with the pixel size.

Arrays are numpy-ordered (z, y, x) for maps and (n, y, x) for stacks, as mrcfile returns them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import torch

from novomap.errors import InputError
from novomap.io.atomic import atomic_path

_SUPPORTED_MODES = {0, 1, 2, 6, 12}


def _open(path: str | os.PathLike, mmap: bool):
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = opener(path, mode="r", permissive=True)
    except Exception as error:  # mrcfile raises ValueError/OSError/struct errors for garbage
        raise InputError(f"not a readable MRC file ({error})", path) from None
    if mrc.data is None:
        mrc.close()
        raise InputError("not a readable MRC file (no data block)", path)
    mode = int(mrc.header.mode)
    if mode not in _SUPPORTED_MODES:
        mrc.close()
        raise InputError(f"unsupported MRC mode {mode} (supported: 0, 1, 2, 6, 12)", path)
    return mrc


def read_pixel_size_a(mrc) -> float:
    """Pixel size (Å) from the header's cell and grid (x axis); 0 if unset."""
    mx = int(mrc.header.mx) or int(mrc.header.nx)
    cell_x = float(mrc.header.cella.x)
    return cell_x / mx if mx > 0 else 0.0


def read_map(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a 3D map -> (volume (z, y, x) float32, pixel size in Å; 0 if the header has none)."""
    with _open(path, mmap=False) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
        pixel_size_a = read_pixel_size_a(mrc)
    if data.ndim != 3:
        raise InputError(f"expected a 3D map, found an array of shape {data.shape}", path)
    bad = ~np.isfinite(data)
    if bad.any():  # every use (FSC, alignment, symmetry) would give NaN or a meaningless answer
        z, y, x = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"the map has {int(bad.sum())} NaN or infinite voxel(s), the first at (x, y, z) = ({x}, {y}, {z})", path)
    return data.copy(), pixel_size_a


def write_map(path: str | os.PathLike, volume: np.ndarray | torch.Tensor, pixel_size_a: float) -> None:
    """Write a 3D map (z, y, x) as float32 MRC with the pixel size in the header, atomically."""
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().numpy()
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(volume)
            mrc.voxel_size = float(pixel_size_a)
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
            mrc.update_header_stats()


def write_stack(
    path: str | os.PathLike, images: np.ndarray | torch.Tensor, pixel_size_a: float, dtype: str = "float32"
) -> None:
    """Write an image stack (n, y, x) as .mrcs (float32 or float16 = mode 12), atomically."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, not {dtype}")
    images = np.ascontiguousarray(images, dtype=np.dtype(dtype))
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(images)
            mrc.set_image_stack()
            mrc.voxel_size = float(pixel_size_a)
            mrc.update_header_stats()


def open_stack(path: str | os.PathLike):
    """Open an image stack memory-mapped, read-only. Returns the mrcfile object (caller closes).

    A single 2D image is returned as a stack of one by `stack_array`.
    """
    return _open(path, mmap=True)


def stack_array(mrc) -> np.ndarray:
    """The (n, y, x) view of an open stack (a lone 2D image becomes n = 1)."""
    data = mrc.data
    return data[None] if data.ndim == 2 else data
