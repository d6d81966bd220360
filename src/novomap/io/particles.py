"""ParticleSet: per-particle CTF and pose parameters as tensors, and access to the images.

Images are read on demand from memory-mapped stacks (the default), from copies of the stacks
on a fast scratch disk (`scratch_dir`), or once into RAM (`preread`). Input files are only
ever opened for reading.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from novomap.errors import InputError, NovomapError
from novomap.io.mrc import open_stack, stack_array
from novomap.io.working_grid import WorkingGrid, choose_working_grid, to_working_grid
from novomap.io.star import (
    PREMULTIPLIED_LABEL,
    ParticleTable,
    missing_stack_error,
    numeric_column,
    parse_image_names,
    read_particle_star,
    resolve_stack_path,
)

IndexLike = Sequence[int] | np.ndarray | torch.Tensor

#: Resampled (working-grid) images are kept in RAM once read when they all fit in this many bytes.
WORKING_CACHE_BYTES = 2 * 1024**3
#: Images read and resampled together (bounds the temporaries: 128 x 256^2 x 8 B = 67 MB per spectrum).
READ_SLICE = 128


class ParticleSet:
    """The particles of one STAR file: parameters as float64 CPU tensors of shape (n,), and images.

    Per-particle attributes (units in the names): defocus_u_a, defocus_v_a, defocus_angle_deg,
    voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg, bfactor_a2, ctf_scale, origin_x_a,
    origin_y_a, rot_deg, tilt_deg, psi_deg, and optics_group (int64, 0-based row of
    `table.optics`). CTF values on a particle override its optics group's (as in RELION).
    Particle i is row i + 1 of the STAR table.
    """

    def __init__(
        self,
        table: ParticleTable,
        *,
        preread: bool = False,
        scratch_dir: str | os.PathLike | None = None,
        validate: bool = True,
        max_open_stacks: int = 32,
        max_resolution_a: float | None = None,
        output_pixel_size_a: float | None = None,
    ) -> None:
        """Build from a read table; stack paths are resolved against the current directory now.

        validate: check every stack up front (`validate_images`); preread implies it.
        preread: read all images into RAM now (on the working grid); then scratch_dir is not used.
        scratch_dir: copy every stack into a new folder inside it and read from the copies.
        max_resolution_a: work on a grid whose Nyquist frequency is this resolution (images are
        Fourier-cropped as they are read; see io.working_grid). None: the finest input pixel.
        output_pixel_size_a: pixel size of the maps written (default: the widest group's).
        """
        self.table = table
        self._path = table.path
        self._max_open_stacks = max(1, int(max_open_stacks))
        self._open: OrderedDict[int, object] = OrderedDict()
        self._preread: torch.Tensor | None = None
        self._scratch_cleanup: weakref.finalize | None = None

        self._group_row = _optics_rows(table)
        self.grid = working_grid_of(table, max_resolution_a, output_pixel_size_a)
        self._box_size, self._pixel_size_a = self.grid.box, self.grid.pixel_size_a
        self._working_cache: torch.Tensor | None = None
        self._working_cached: np.ndarray | None = None
        self._set_parameters()

        numbers, names = parse_image_names(table.particles["rlnImageName"], self._path)
        codes, unique_names = pd.factorize(pd.Series(names, dtype=object))
        self._stack_of = codes.astype(np.int64)  # (n,) which stack holds each particle
        self._index_in_stack = numbers - 1  # (n,) 0-based position inside that stack
        self._first_row_of_stack = np.unique(self._stack_of, return_index=True)[1]
        self._stack_names = list(unique_names)  # as written in the STAR file
        self._stack_paths = self._resolve_stacks(self._stack_names)
        self._source_paths = tuple(self._stack_paths)
        self._output_names: list[str] | None = None

        if validate or preread:
            self.validate_images()
        if preread:
            self._preread = self.images(np.arange(self.n))
            self.close()
        else:
            if scratch_dir is not None:
                self._copy_to_scratch(Path(scratch_dir))
            if self.grid.resamples and self.n * self._box_size**2 * 4 <= WORKING_CACHE_BYTES:
                # resampled images are small: keep each one once it has been read and cropped
                self._working_cache = torch.empty((self.n, self._box_size, self._box_size), dtype=torch.float32)
                self._working_cached = np.zeros(self.n, dtype=bool)

    @classmethod
    def from_star(
        cls,
        path: str | os.PathLike,
        preread: bool = False,
        scratch_dir: str | os.PathLike | None = None,
        *,
        validate: bool = True,
        max_resolution_a: float | None = None,
        output_pixel_size_a: float | None = None,
        cryosparc=None,
    ) -> ParticleSet:
        """Read a particle STAR file (see `read_particle_star`; cryosparc: its CryosparcOptions for a `.cs`) and its stacks."""
        return cls(
            read_particle_star(path, cryosparc),
            preread=preread,
            scratch_dir=scratch_dir,
            validate=validate,
            max_resolution_a=max_resolution_a,
            output_pixel_size_a=output_pixel_size_a,
        )

    # ----------------------------------------------------------------------------------------
    # Parameters

    def _set_parameters(self) -> None:
        particles, optics = self.table.particles, self.table.optics
        self.optics_group = torch.from_numpy(self._group_row.copy())
        self.defocus_u_a = self._values("rlnDefocusU")
        self.defocus_v_a = self._values("rlnDefocusV")
        self.defocus_angle_deg = self._values("rlnDefocusAngle")
        self.voltage_kv = self._values("rlnVoltage")
        self.cs_mm = self._values("rlnSphericalAberration")
        self.amplitude_contrast = self._values("rlnAmplitudeContrast")
        self.phase_shift_deg = self._values("rlnPhaseShift", 0.0)
        self.bfactor_a2 = self._values("rlnCtfBfactor", 0.0)
        self.ctf_scale = self._values("rlnCtfScalefactor", 1.0)
        self.rot_deg = self._values("rlnAngleRot", 0.0)
        self.tilt_deg = self._values("rlnAngleTilt", 0.0)
        self.psi_deg = self._values("rlnAnglePsi", 0.0)
        pixel_size = numeric_column(optics, "rlnImagePixelSize", self._path, " in data_optics")[self._group_row]
        self.origin_x_a = self._origin("X", pixel_size)
        self.origin_y_a = self._origin("Y", pixel_size)
        if "rlnMicrographName" in particles.columns:
            self._micrograph_names = [str(name) for name in particles["rlnMicrographName"].tolist()]
        else:
            self._micrograph_names = [""] * len(particles)
        if PREMULTIPLIED_LABEL in optics.columns:
            flags = numeric_column(optics, PREMULTIPLIED_LABEL, self._path, " in data_optics") != 0
        else:
            flags = np.zeros(len(optics), dtype=bool)
        self._ctf_premultiplied = torch.from_numpy(flags)

    def _values(self, label: str, default: float | None = None) -> torch.Tensor:
        """(n,) float64: the particle column, else the optics group's value, else `default`."""
        particles, optics = self.table.particles, self.table.optics
        if label in particles.columns:
            values = numeric_column(particles, label, self._path)
        elif label in optics.columns:
            values = numeric_column(optics, label, self._path, " in data_optics")[self._group_row]
        elif default is not None:
            values = np.full(len(particles), default, dtype=np.float64)
        else:
            raise InputError("required label is missing", self._path, label=label)
        # A copy: pandas may hand out read-only views of its data, and the tensors are the set's own.
        return torch.from_numpy(np.array(values, dtype=np.float64, copy=True))

    def _origin(self, axis: str, pixel_size_a: np.ndarray) -> torch.Tensor:
        """(n,) Å: rlnOrigin{axis}Angst, else rlnOrigin{axis} (RELION 3.0, px) times the pixel size."""
        particles = self.table.particles
        if f"rlnOrigin{axis}Angst" in particles.columns:
            return self._values(f"rlnOrigin{axis}Angst")
        if f"rlnOrigin{axis}" in particles.columns:
            return torch.from_numpy(numeric_column(particles, f"rlnOrigin{axis}", self._path) * pixel_size_a)
        return torch.zeros(len(particles), dtype=torch.float64)

    @property
    def n(self) -> int:
        """Number of particles."""
        return len(self.table.particles)

    def __len__(self) -> int:
        return self.n

    @property
    def box_size(self) -> int:
        """Image size N in px of the working grid (`images` returns N x N images)."""
        return self._box_size

    @property
    def pixel_size_a(self) -> float:
        """Pixel size in Å of the working grid (images as `images` returns them)."""
        return self._pixel_size_a

    @property
    def micrograph_names(self) -> list[str]:
        """rlnMicrographName of each particle ('' where the table has none)."""
        return self._micrograph_names

    @property
    def ctf_premultiplied(self) -> torch.Tensor:
        """(n_optics_groups,) bool: rlnCtfDataAreCtfPremultiplied of each optics-table row."""
        return self._ctf_premultiplied

    def output_image_names(self) -> list[str]:
        """rlnImageName of each particle for the STAR files a job writes, which RELION (and novomap)
        read from the current directory, the project directory.

        A stack found there keeps its name. One found only beside the input STAR file (novomap's
        fallback) is named by its path from the current directory (relative below it, else
        absolute); kept as given, the output would name an image that neither RELION nor novomap
        finds from here.
        """
        if self._output_names is None:
            names = self.table.particles["rlnImageName"].astype(str).tolist()
            renamed = [_name_from_cwd(name, source) for name, source in zip(self._stack_names, self._source_paths)]
            self._output_names = [
                names[row] if renamed[stack] == self._stack_names[stack] else f"{names[row].split('@', 1)[0]}@{renamed[stack]}"
                for row, stack in enumerate(self._stack_of.tolist())
            ]
        return list(self._output_names)

    def background_std(self, max_images: int = 256) -> float:
        """How the images are scaled: the median, over up to max_images particles spread through the
        set, of each image's standard deviation in its corners (outside the inscribed circle), on the
        input grid. ~1 for RELION-normalised particles (mean 0, std 1 outside the particle)."""
        rows = np.unique(np.linspace(0, self.n - 1, min(self.n, max(1, max_images))).round().astype(np.int64))
        stds = []
        for row in rows.tolist():
            stack = int(self._stack_of[row])
            self._check_in_stack(stack, np.array([row]), self._stack_array(stack).shape[0])
            image = np.asarray(self._stack_array(stack)[self._index_in_stack[row]], dtype=np.float64)
            size = image.shape[-1]
            axis = np.arange(size) - size // 2
            corners = image[np.hypot(axis[:, None], axis[None, :]) > size / 2]
            stds.append(float(corners.std() if corners.size >= 16 else image.std()))
        return float(np.median(stds))

    @property
    def stack_paths(self) -> list[Path]:
        """Absolute paths of the stacks images are read from (scratch copies when in use)."""
        return list(self._stack_paths)

    # ----------------------------------------------------------------------------------------
    # Images

    def images(self, indices: IndexLike) -> torch.Tensor:
        """Images of particles `indices` (0-based rows) on the working grid, as float32 (len(indices), N, N).

        Reads are grouped by stack and sorted within each, so that a mini-batch touches each
        file once and moves forward through it. Images of a group not on the working grid are
        Fourier-resized as they are read (never all at full size in memory).
        """
        rows = _as_rows(indices, self.n)
        if self._preread is not None:
            return self._preread[torch.from_numpy(rows)]
        if self._working_cache is not None:
            missing = rows[~self._working_cached[rows]]
            if missing.size:
                missing = np.unique(missing)
                self._working_cache[torch.from_numpy(missing)] = self._read(missing)
                self._working_cached[missing] = True
            return self._working_cache[torch.from_numpy(rows)]
        return self._read(rows)

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        """Images of `rows` read from the stacks and brought onto the working grid -> (k, N, N) float32."""
        size = self._box_size
        out = torch.empty((len(rows), size, size), dtype=torch.float32)
        if rows.size == 0:
            return out
        stacks = self._stack_of[rows]
        order = np.argsort(stacks, kind="stable")
        starts = np.flatnonzero(np.diff(stacks[order], prepend=-1))
        for positions in np.split(order, starts[1:]):
            stack = int(stacks[positions[0]])
            array = self._stack_array(stack)
            local = self._index_in_stack[rows[positions]]
            self._check_in_stack(stack, rows[positions], array.shape[0])
            ascending = positions[np.argsort(local, kind="stable")]
            # in slices: a whole stack at full size, and its resampling spectra, could be large
            for part in np.array_split(ascending, max(1, -(-ascending.size // READ_SLICE))):
                native = np.asarray(array[self._index_in_stack[rows[part]]], dtype=np.float32)
                self._check_pixels(native, rows[part], stack)
                groups = self._group_row[rows[part]]
                for group in np.unique(groups):
                    members = groups == group
                    resized = to_working_grid(torch.from_numpy(native[members]), self.grid, int(group))
                    out[torch.from_numpy(part[members])] = resized
        return out

    def validate_images(self) -> None:
        """Check every stack once, cheaply: it opens, its images are N x N with N = box size,
        and it holds as many images as the particles ask for. Pixel values are not read."""
        most = np.zeros(len(self._stack_paths), dtype=np.int64)
        np.maximum.at(most, self._stack_of, self._index_in_stack)
        for stack in range(len(self._stack_paths)):
            count = self._stack_array(stack).shape[0]
            if most[stack] >= count:
                self._check_in_stack(stack, np.flatnonzero(self._stack_of == stack), count)

    def _stack_array(self, stack: int) -> np.ndarray:
        """The (count, N, N) memory-mapped array of a stack, from a small cache of open files."""
        if stack in self._open:
            self._open.move_to_end(stack)
            return stack_array(self._open[stack])
        row = int(self._first_row_of_stack[stack]) + 1
        try:
            mrc = open_stack(self._stack_paths[stack])
        except InputError as error:
            raise InputError(f"cannot read image stack ({error})", self._path, row, "rlnImageName") from None
        array = stack_array(mrc)
        _, ny, nx = array.shape
        where = self._stack_paths[stack]
        if ny != nx:
            mrc.close()
            raise InputError(f"images in {where} are {nx} x {ny} px, not square", self._path, row, "rlnImageName")
        expected = self.grid.group_box[int(self._group_row[row - 1])]
        if nx != expected:
            mrc.close()
            raise InputError(
                f"images in {where} are {nx} px but rlnImageSize is {expected} px (box size mismatch)",
                self._path,
                row,
                "rlnImageName",
            )
        self._open[stack] = mrc
        while len(self._open) > self._max_open_stacks:
            self._open.popitem(last=False)[1].close()
        return array

    def _check_in_stack(self, stack: int, rows: np.ndarray, count: int) -> None:
        """Raise for the first of `rows` (particles of `stack`) whose image is beyond its end."""
        beyond = rows[self._index_in_stack[rows] >= count]
        if beyond.size:
            row = int(beyond.min())
            raise InputError(
                f"image {self._index_in_stack[row] + 1} is beyond the end of {self._stack_paths[stack]}, "
                f"which holds {count} images",
                self._path,
                row + 1,
                "rlnImageName",
            )

    def _check_pixels(self, images: np.ndarray, rows: np.ndarray, stack: int) -> None:
        """Raise for the first of `rows` (read from `stack`; images (k, N, N)) whose image has a NaN or
        Inf pixel or is constant (blank): a per-image min and max, cheap beside the read itself."""
        if images.size == 0:
            return
        low, high = images.min(axis=(1, 2)), images.max(axis=(1, 2))  # NaN propagates into both
        nonfinite = ~(np.isfinite(low) & np.isfinite(high))
        constant = ~nonfinite & (low == high)
        for bad, what in ((nonfinite, "has NaN or Inf pixels"), (constant, None)):
            if bad.any():
                row = int(rows[bad].min())
                if what is None:
                    value = float(low[np.flatnonzero(rows == row)[0]])
                    what = f"is blank (every pixel is {value:g}); remove the particle or re-extract it"
                where = f"image {self._index_in_stack[row] + 1} of {self._source_paths[stack]}"
                raise InputError(f"{where} {what}", self._path, row + 1, "rlnImageName")

    # ----------------------------------------------------------------------------------------
    # Stack files

    def _resolve_stacks(self, names: list[str]) -> list[Path]:
        paths = []
        for stack, name in enumerate(names):
            path = resolve_stack_path(name, self._path)
            if path is None:
                raise missing_stack_error(name, self._path, int(self._first_row_of_stack[stack]) + 1)
            paths.append(path)
        return paths

    def _copy_to_scratch(self, scratch_dir: Path) -> None:
        """Copy each stack once into a new folder under `scratch_dir`; it is removed by `close`.

        Names get a running number, since stacks from different folders may share a name.
        """
        try:
            scratch_dir.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="novomap_stacks_", dir=scratch_dir))
        except OSError as error:
            raise NovomapError(f"--scratch-dir {scratch_dir}: cannot make a folder there ({error.strerror}); give a writable folder") from None
        self._scratch_cleanup = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        copies = []
        for number, source in enumerate(self._stack_paths):
            target = folder / f"{number:06d}_{source.name}"
            try:
                shutil.copyfile(source, target)
            except OSError as error:  # a full or vanished scratch disk: the copies made so far go too
                self._scratch_cleanup()
                raise NovomapError(f"--scratch-dir {scratch_dir}: cannot copy {source.name} there ({error.strerror}); free space or give another folder") from None
            copies.append(target)
        while self._open:  # handles on the originals are no longer wanted
            self._open.popitem()[1].close()
        self._stack_paths = copies

    def close(self) -> None:
        """Close open stacks and delete the scratch copies, if any.

        The set stays usable: later reads reopen the original stacks (or use RAM if preread).
        """
        while self._open:
            self._open.popitem()[1].close()
        if self._scratch_cleanup is not None:
            self._scratch_cleanup()
            self._scratch_cleanup = None
            self._stack_paths = list(self._source_paths)

    def __enter__(self) -> ParticleSet:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _optics_rows(table: ParticleTable) -> np.ndarray:
    """(n,) int64: for each particle, the 0-based row of its optics group in `table.optics`."""
    numbers = table.optics["rlnOpticsGroup"].to_numpy(dtype=np.int64)
    lookup = pd.Series(np.arange(len(numbers), dtype=np.int64), index=numbers)
    return lookup.reindex(table.particles["rlnOpticsGroup"].to_numpy(dtype=np.int64)).to_numpy(dtype=np.int64)


def working_grid_of(table: ParticleTable, max_resolution_a: float | None, output_pixel_size_a: float | None) -> WorkingGrid:
    """The working grid of the table's optics groups (io.working_grid), after checking their sizes."""
    optics, path = table.optics, table.path
    sizes = numeric_column(optics, "rlnImageSize", path, " in data_optics")
    pixel_sizes = numeric_column(optics, "rlnImagePixelSize", path, " in data_optics")
    for row in range(len(optics)):
        if not (sizes[row] >= 2 and sizes[row] == int(sizes[row])):
            raise InputError(f"image size must be a whole number of pixels >= 2, not {sizes[row]:g}", path, row + 1, "rlnImageSize")
        if not pixel_sizes[row] > 0:
            raise InputError(f"pixel size must be positive, not {pixel_sizes[row]:g} Å", path, row + 1, "rlnImagePixelSize")
    return choose_working_grid(sizes.astype(np.int64), pixel_sizes, max_resolution_a, output_pixel_size_a=output_pixel_size_a)


def _name_from_cwd(name: str, source: Path) -> str:
    """A stack's name as given if it leads from the current directory to `source`, else a path that
    does: relative for a stack under the current directory (RELION's convention), else absolute."""
    stripped = name.strip()
    as_given = Path(stripped)
    if not as_given.is_absolute():
        as_given = Path.cwd() / as_given
    try:
        if as_given.is_file() and as_given.samefile(source):
            return name
    except OSError:
        pass
    tidy = os.path.normpath(source)  # "work/../data" -> "data", where that is still the same file (no symlink in between)
    try:
        if not Path(tidy).samefile(source):
            tidy = str(source)
    except OSError:
        tidy = str(source)
    try:
        relative = os.path.relpath(tidy, Path.cwd())
    except ValueError:  # another drive (Windows)
        return tidy
    return tidy if relative.startswith("..") else relative


def _as_rows(indices: IndexLike, n: int) -> np.ndarray:
    """0-based particle indices as an int64 (k,) array, checked to lie in [0, n)."""
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    rows = np.asarray(indices)
    if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
        raise TypeError(f"particle indices must be a 1-D sequence of integers, got shape {rows.shape} {rows.dtype}")
    rows = rows.astype(np.int64, copy=False)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"particle indices must lie in [0, {n}); got {rows.min()}..{rows.max()}")
    return rows

