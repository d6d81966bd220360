"""cryoSPARC particle files (`.cs`): read into the same normalised `ParticleTable` as a STAR file.

A `.cs` file is a NumPy structured array (one row per particle) saved with `numpy.save`. Its
fields are converted to the RELION 3.1 labels that `read_particle_star` returns, so everything
downstream (ParticleSet, the E-step, the outputs) works unchanged:

=================================  =================================================================
cryoSPARC field                    RELION label (conversion)
=================================  =================================================================
blob/idx (0-based), blob/path      rlnImageName = `idx+1` (6 digits) `@` the stack's absolute path
blob/psize_A, blob/shape[0]        rlnImagePixelSize, rlnImageSize (optics table)
ctf/accel_kv, cs_mm, amp_contrast  rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast (optics)
ctf/df1_A, ctf/df2_A               rlnDefocusU, rlnDefocusV (Å, unchanged)
ctf/df_angle_rad                   rlnDefocusAngle (radians -> degrees)
ctf/phase_shift_rad                rlnPhaseShift (radians -> degrees; default 0)
ctf/bfactor                        rlnCtfBfactor (Å², unchanged; default 0)
ctf/scale x blob/sign              rlnCtfScalefactor (default scale 1, sign +1; see below)
ctf/exp_group_id                   rlnOpticsGroup (one group per distinct exposure group, voltage,
                                   Cs, amplitude contrast, pixel size and box, numbered 1, 2, ...
                                   in order of first appearance)
location/micrograph_path           rlnMicrographName
alignments3D/pose                  rlnAngleRot/Tilt/Psi (see below)
alignments3D/shift (px)            rlnOriginXAngst/YAngst = shift x alignments3D/psize_A (else
                                   x blob/psize_A); same sign
=================================  =================================================================

Poses. `alignments3D/pose` is a rotation vector (axis x angle, radians). Its Rodrigues matrix R
is the transpose of RELION's matrix A = Rz(psi) Ry(tilt) Rz(rot) (novomap.physics.euler), as in
pyem's csparc2star and cryoDRGN's parsers; equivalently R is the active rotation
Rz(rot) Ry(tilt) Rz(psi) (intrinsic ZYZ). Shifts are the RELION origins in pixels.

Contrast. novomap, like RELION, models an image as CTF x projection with a CTF that is positive
at low frequency: particles white on a dark background. `blob/sign` is cryoSPARC's sign of the
particle data: +1 for white particles (e.g. extracted by RELION), -1 for dark ones (cryoSPARC's
own extraction keeps the micrograph's contrast). The sign is folded into rlnCtfScalefactor
(image = sign x scale x CTF x projection), so dark particles are modelled without rewriting
their stacks. A file without blob/sign is taken as +1.

Passthrough. Fields the main file lacks are taken, row by row matched by `uid`, from a
passthrough file: the one given, else one found beside the main file by cryoSPARC's naming
(`X_particles.cs` -> `X_passthrough_particles.cs`, `JNN_passthrough_*.cs`, or the only
`*passthrough*.cs` there).

Stacks. blob/path is relative to the cryoSPARC project folder (older versions prefix it with
'>'). It is looked for under the given project folder, then the `.cs` file's folder and up to
five folders above it, then the current folder.

Every error is an `InputError` naming the `.cs` file, the 1-based row and the field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from novomap.errors import InputError
from novomap.io.mrc import open_stack, stack_array
from novomap.io.star import ParticleTable, shown_value
from novomap.physics.euler import matrix_to_euler

SUFFIX = ".cs"

#: Fields every particle needs (from the main file or its passthrough).
REQUIRED_FIELDS = (
    "blob/path",
    "blob/idx",
    "blob/psize_A",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
)
#: Fields used when present.
OPTIONAL_FIELDS = (
    "blob/shape",
    "blob/sign",
    "ctf/phase_shift_rad",
    "ctf/scale",
    "ctf/bfactor",
    "ctf/exp_group_id",
    "location/micrograph_path",
    "alignments3D/pose",
    "alignments3D/shift",
    "alignments3D/psize_A",
)
_USED_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
_NUMPY_MAGIC = b"\x93NUMPY"
_PARENT_LEVELS = 5


@dataclass(frozen=True)
class CryosparcOptions:
    """Where the parts of a `.cs` input that it does not name are (None: found as described above)."""

    passthrough: Path | None = None  # the passthrough .cs file with the fields the main file lacks
    project_dir: Path | None = None  # the cryoSPARC project folder that blob/path is relative to

    @staticmethod
    def from_args(args) -> "CryosparcOptions":
        """From the options `add_cryosparc_arguments` adds (absent ones: None)."""
        passthrough, project_dir = getattr(args, "cs_passthrough", None), getattr(args, "cs_project_dir", None)
        return CryosparcOptions(None if passthrough is None else Path(passthrough), None if project_dir is None else Path(project_dir))


def is_cryosparc_file(path: str | os.PathLike) -> bool:
    """True for a path ending in .cs (any case)."""
    return Path(path).suffix.lower() == SUFFIX


def read_cryosparc(
    path: str | os.PathLike,
    passthrough: str | os.PathLike | None = None,
    project_dir: str | os.PathLike | None = None,
) -> ParticleTable:
    """Read a cryoSPARC particle `.cs` file (and its passthrough) as a RELION 3.1 `ParticleTable`.

    passthrough: file with the fields the main file lacks (default: found beside it, see module).
    project_dir: the cryoSPARC project folder that blob/path is relative to (default: searched).
    """
    path = Path(path)
    main = _load(path)
    fields = _Fields(main, path)
    missing = [name for name in _USED_FIELDS if name not in main.dtype.names]
    if passthrough is not None:
        fields.add_passthrough(_load(Path(passthrough)), Path(passthrough))
    elif missing:
        found = find_passthrough(path)
        if found is not None:
            fields.add_passthrough(_load(found), found)
    for name in REQUIRED_FIELDS:
        if not fields.has(name):
            hint = "" if fields.extra is not None else "; no passthrough file was found beside it (give one with --passthrough)"
            raise InputError(f"required field is missing{fields.looked_in()}{hint}", path, label=name)

    n = len(main)
    pixel_size = fields.positive("blob/psize_A")
    stacks = _StackResolver(path, project_dir)
    image_names = _image_names(fields, stacks)
    box = _box_sizes(fields, image_names, path)
    voltage = fields.positive("ctf/accel_kv")
    cs_mm = fields.numbers("ctf/cs_mm")
    amplitude = fields.numbers("ctf/amp_contrast")
    bad = np.flatnonzero((amplitude < 0) | (amplitude >= 1))
    if bad.size:
        raise fields.error(f"amplitude contrast must lie in [0, 1), found {amplitude[bad[0]]:g}", bad[0], "ctf/amp_contrast")

    particles = pd.DataFrame({"rlnImageName": image_names})
    if fields.has("location/micrograph_path"):
        particles["rlnMicrographName"] = fields.texts("location/micrograph_path", allow_empty=True)
    particles["rlnDefocusU"] = fields.numbers("ctf/df1_A")
    particles["rlnDefocusV"] = fields.numbers("ctf/df2_A")
    particles["rlnDefocusAngle"] = np.rad2deg(fields.numbers("ctf/df_angle_rad"))
    particles["rlnPhaseShift"] = np.rad2deg(fields.numbers("ctf/phase_shift_rad", default=0.0))
    particles["rlnCtfBfactor"] = fields.numbers("ctf/bfactor", default=0.0)
    particles["rlnCtfScalefactor"] = fields.numbers("ctf/scale", default=1.0) * _signs(fields)
    if fields.has("alignments3D/pose") or fields.has("alignments3D/shift"):
        rot, tilt, psi, origin_x, origin_y = _poses(fields, pixel_size)
        particles["rlnAngleRot"], particles["rlnAngleTilt"], particles["rlnAnglePsi"] = rot, tilt, psi
        particles["rlnOriginXAngst"], particles["rlnOriginYAngst"] = origin_x, origin_y

    key = pd.DataFrame(
        {
            "exp_group": fields.whole("ctf/exp_group_id", minimum=0, default=0),
            "rlnVoltage": voltage,
            "rlnSphericalAberration": cs_mm,
            "rlnAmplitudeContrast": amplitude,
            "rlnImagePixelSize": pixel_size,
            "rlnImageSize": box,
        }
    )
    codes, _ = pd.factorize(pd.MultiIndex.from_frame(key))  # numbered in order of first appearance
    first_rows = np.unique(codes, return_index=True)[1]
    optics = key.iloc[first_rows].reset_index(drop=True)
    numbers = np.arange(1, len(optics) + 1, dtype=np.int64)
    names = [f"exp_group{int(g)}" for g in optics["exp_group"]]
    if len(set(names)) < len(names) or not fields.has("ctf/exp_group_id"):
        names = [f"opticsGroup{g}" for g in numbers]
    optics = optics.drop(columns=["exp_group"])
    optics.insert(0, "rlnOpticsGroup", numbers)
    optics.insert(0, "rlnOpticsGroupName", names)
    optics["rlnImageSize"] = optics["rlnImageSize"].astype(np.int64)
    optics["rlnImageDimensionality"] = 2
    optics["rlnCtfDataAreCtfPremultiplied"] = 0
    particles["rlnOpticsGroup"] = codes.astype(np.int64) + 1
    assert len(particles) == n
    return ParticleTable(path=path, optics=optics, particles=particles, is_relion30=False)


def find_passthrough(path: str | os.PathLike) -> Path | None:
    """The passthrough file beside a `.cs` file by cryoSPARC's naming, or None (see module)."""
    path = Path(path)
    folder, name = path.parent, path.name
    if "passthrough" in name or not folder.is_dir():
        return None
    candidates: list[Path] = []
    if "particles" in name:
        candidates.append(folder / name.replace("particles", "passthrough_particles", 1))
    job = re.search(r"(?:^|_)(J\d+)_", name)
    if job:
        candidates += sorted(folder.glob(f"*{job.group(1)}_passthrough*{SUFFIX}"))
    others = sorted(folder.glob(f"*passthrough*{SUFFIX}"))
    if len(others) == 1:
        candidates.append(others[0])
    for candidate in candidates:
        if candidate.is_file() and candidate != path:
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# Loading and field access


def _load(path: Path) -> np.ndarray:
    """The structured array of a `.cs` file, checked to be one (n > 0,) table with named fields."""
    if not path.is_file():
        raise InputError("file not found", path)
    with open(path, "rb") as handle:
        magic = handle.read(len(_NUMPY_MAGIC))
    if magic != _NUMPY_MAGIC:
        raise InputError(
            "not a cryoSPARC .cs file in NumPy format (numpy.save); a file in cryoSPARC's newer compressed "
            "format must first be saved in NumPy format with cryosparc-tools",
            path,
        )
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error):
            raise InputError("the file holds Python objects, which novomap does not unpickle", path) from None
        raise InputError(f"not a readable .cs file ({error})", path) from None
    except Exception as error:  # a truncated or garbled file raises many kinds of errors
        raise InputError(f"not a readable .cs file ({type(error).__name__}: {error})", path) from None
    if not isinstance(array, np.ndarray) or array.dtype.names is None or array.ndim != 1:
        raise InputError("not a cryoSPARC particle table: expected a 1-D structured array with named fields", path)
    if len(array) == 0:
        raise InputError("the particle table has no rows", path)
    return array


class _Fields:
    """The used fields of a main `.cs` file, completed from a passthrough file matched by uid."""

    def __init__(self, main: np.ndarray, path: Path) -> None:
        self.main, self.path = main, path
        self.extra: np.ndarray | None = None
        self.extra_path: Path | None = None
        self._extra_rows: np.ndarray | None = None  # (n,) row of the passthrough for each main row

    def add_passthrough(self, extra: np.ndarray, extra_path: Path) -> None:
        for array, where in ((self.main, self.path), (extra, extra_path)):
            if "uid" not in array.dtype.names:
                raise InputError("required field is missing (needed to match passthrough rows)", where, label="uid")
            if array["uid"].dtype.kind not in "iu":
                raise InputError(f"must hold integers, found {array['uid'].dtype}", where, label="uid")
        uids = pd.Index(extra["uid"])
        duplicated = np.flatnonzero(uids.duplicated())
        if duplicated.size:
            i = int(duplicated[0])
            raise InputError(f"uid {extra['uid'][i]} appears twice", extra_path, i + 1, "uid")
        rows = uids.get_indexer(self.main["uid"])
        absent = np.flatnonzero(rows < 0)
        if absent.size:
            i = int(absent[0])
            raise InputError(
                f"uid {self.main['uid'][i]} is not in the passthrough file {extra_path} ({absent.size} particles are not)",
                self.path,
                i + 1,
                "uid",
            )
        self.extra, self.extra_path, self._extra_rows = extra, extra_path, rows

    def has(self, name: str) -> bool:
        return name in self.main.dtype.names or (self.extra is not None and name in self.extra.dtype.names)

    def raw(self, name: str) -> np.ndarray:
        """(n, ...) values of a field, from the main file if it has it, else from the passthrough."""
        if name in self.main.dtype.names:
            return self.main[name]
        assert self.extra is not None and self._extra_rows is not None
        return self.extra[name][self._extra_rows]

    def looked_in(self) -> str:
        return "" if self.extra is None else f" (also from the passthrough file {self.extra_path})"

    def error(self, message: str, row: int, name: str) -> InputError:
        """An error at 0-based `row` of the main file; says so when the value came from the passthrough."""
        source = ""
        if name not in self.main.dtype.names and self.extra_path is not None:
            source = f" (taken from the passthrough file {self.extra_path}, row {int(self._extra_rows[row]) + 1})"
        return InputError(message + source, self.path, int(row) + 1, name)

    def numbers(self, name: str, shape: tuple[int, ...] = (), default: float | None = None) -> np.ndarray:
        """(n, *shape) float64, checked finite; `default` fills a missing optional field."""
        if not self.has(name):
            if default is None:
                raise InputError(f"required field is missing{self.looked_in()}", self.path, label=name)
            return np.full((len(self.main), *shape), default, dtype=np.float64)
        raw = self.raw(name)
        if raw.dtype.kind not in "biuf":
            raise InputError(f"must hold numbers, found values of type {raw.dtype}", self.path, label=name)
        if raw.shape[1:] != shape:
            want = "one number" if not shape else f"{shape[0]} numbers"
            raise InputError(f"must hold {want} per particle, found shape {raw.shape[1:]}", self.path, label=name)
        values = raw.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        if bad.size:
            i = int(bad[0])
            raise self.error(f"not a finite number ({shown_value(raw[i])})", i, name)
        return values

    def positive(self, name: str) -> np.ndarray:
        values = self.numbers(name)
        bad = np.flatnonzero(values <= 0)
        if bad.size:
            raise self.error(f"must be positive, found {values[bad[0]]:g}", bad[0], name)
        return values

    def whole(self, name: str, minimum: int, default: int | None = None) -> np.ndarray:
        """(n,) int64 whole numbers >= minimum."""
        values = self.numbers(name, default=None if default is None else float(default))
        bad = np.flatnonzero((values != np.round(values)) | (values < minimum))
        if bad.size:
            raise self.error(f"must be a whole number >= {minimum}, found {values[bad[0]]:g}", bad[0], name)
        return values.astype(np.int64)

    def texts(self, name: str, allow_empty: bool = False) -> list[str]:
        """(n,) names, decoded (UTF-8) and stripped of cryoSPARC's '>' project-relative prefix."""
        raw = self.raw(name)
        if raw.dtype.kind not in "SU" or raw.ndim != 1:
            raise InputError(f"must hold text, found values of type {raw.dtype}", self.path, label=name)
        out = []
        for i, value in enumerate(raw):
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise self.error(f"not UTF-8 text ({value!r})", i, name) from None
            text = value.strip().lstrip(">").strip()
            if not text and not allow_empty:
                raise self.error("is empty", i, name)
            out.append(text)
        return out


# --------------------------------------------------------------------------------------------
# Conversions


class _StackResolver:
    """Finds stacks named relative to the cryoSPARC project folder (see module docstring)."""

    def __init__(self, cs_path: Path, project_dir: str | os.PathLike | None) -> None:
        folder = cs_path.parent.absolute()
        bases = [] if project_dir is None else [Path(project_dir).absolute()]
        bases += [folder, *list(folder.parents)[:_PARENT_LEVELS], Path.cwd()]
        self.bases = list(dict.fromkeys(bases))

    def resolve(self, name: str) -> Path | None:
        stack = Path(name)
        if stack.is_absolute():
            return stack if stack.is_file() else None
        for number, base in enumerate(self.bases):
            if (base / stack).is_file():
                if number:  # the folder that worked is tried first for the next stack
                    self.bases.insert(0, self.bases.pop(number))
                return base / stack
        return None


def _image_names(fields: _Fields, stacks: _StackResolver) -> list[str]:
    """rlnImageName of each particle: `NNNNNN@/absolute/stack/path`."""
    paths = fields.texts("blob/path")
    index = fields.whole("blob/idx", minimum=0)
    resolved: dict[str, Path] = {}
    for row, name in enumerate(paths):
        if name in resolved:
            continue
        found = stacks.resolve(name)
        if found is None:
            tried = ", ".join(str(base) for base in stacks.bases)
            raise fields.error(
                f"image stack {name!r} not found (looked in {tried}; give the cryoSPARC project folder with --cs-project-dir)",
                row,
                "blob/path",
            )
        resolved[name] = found
    return [f"{i + 1:06d}@{resolved[name]}" for i, name in zip(index, paths)]


def _box_sizes(fields: _Fields, image_names: list[str], path: Path) -> np.ndarray:
    """(n,) int64 box sizes: blob/shape (checked square), else read from each stack's header."""
    n = len(image_names)
    if fields.has("blob/shape"):
        shape = fields.numbers("blob/shape", shape=(2,))
        bad = np.flatnonzero((shape[:, 0] != shape[:, 1]) | (shape[:, 0] < 1) | (shape != np.round(shape)).any(axis=1))
        if bad.size:
            i = int(bad[0])
            raise fields.error(f"images must be square with a positive whole size, found {shape[i].tolist()}", i, "blob/shape")
        return shape[:, 0].astype(np.int64)
    sizes: dict[str, int] = {}
    out = np.empty(n, dtype=np.int64)
    for row, name in enumerate(image_names):
        stack = name.split("@", 1)[1]
        if stack not in sizes:
            try:
                with open_stack(stack) as mrc:
                    _, ny, nx = stack_array(mrc).shape
            except InputError as error:
                raise fields.error(f"cannot read image stack ({error})", row, "blob/path") from None
            if nx != ny:
                raise fields.error(f"images in {stack} are {nx} x {ny} px, not square", row, "blob/path")
            sizes[stack] = int(nx)
        out[row] = sizes[stack]
    return out


def _signs(fields: _Fields) -> np.ndarray:
    """(n,) blob/sign, checked to be +1 or -1 (default +1)."""
    sign = fields.numbers("blob/sign", default=1.0)
    bad = np.flatnonzero(np.abs(sign) != 1)
    if bad.size:
        raise fields.error(f"must be +1 or -1, found {sign[bad[0]]:g}", bad[0], "blob/sign")
    return sign


def rotation_vectors_to_matrices(vectors: np.ndarray) -> np.ndarray:
    """Rotation vectors (n, 3) (axis x angle in radians) -> active right-handed matrices (n, 3, 3)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    theta = np.linalg.norm(vectors, axis=1)
    axis = vectors / np.where(theta > 0, theta, 1.0)[:, None]
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    zero = np.zeros_like(x)
    k = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def _poses(fields: _Fields, blob_pixel_size: np.ndarray) -> tuple[np.ndarray, ...]:
    """(rot, tilt, psi in degrees, origin x, y in Å), each (n,), from alignments3D."""
    for name in ("alignments3D/pose", "alignments3D/shift"):
        if not fields.has(name):
            other = "alignments3D/shift" if name == "alignments3D/pose" else "alignments3D/pose"
            raise InputError(f"required field is missing (the file has {other}){fields.looked_in()}", fields.path, label=name)
    pose = fields.numbers("alignments3D/pose", shape=(3,))
    shift_px = fields.numbers("alignments3D/shift", shape=(2,))
    if fields.has("alignments3D/psize_A"):
        pixel_size = fields.positive("alignments3D/psize_A")
    else:
        pixel_size = blob_pixel_size
    relion = np.swapaxes(rotation_vectors_to_matrices(pose), -1, -2)  # A = R^T
    rot, tilt, psi = (t.numpy() for t in matrix_to_euler(torch.from_numpy(relion)))
    return rot, tilt, psi, shift_px[:, 0] * pixel_size, shift_px[:, 1] * pixel_size


# --------------------------------------------------------------------------------------------
# Command-line options


def add_cryosparc_arguments(group) -> None:
    """--passthrough and --cs-project-dir on an argparse parser or group (for `.cs` inputs);
    `CryosparcOptions.from_args` turns them into what the readers take."""
    group.add_argument(
        "--passthrough", dest="cs_passthrough", metavar="CS",
        help="with a cryoSPARC .cs input: the passthrough .cs file that holds the fields the main file lacks "
        "(default: found beside it)",
    )
    group.add_argument(
        "--cs-project-dir", dest="cs_project_dir", metavar="DIR",
        help="with a cryoSPARC .cs input: the cryoSPARC project folder that its blob paths are relative to "
        "(default: the .cs file's folder or one above it)",
    )
