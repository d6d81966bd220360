"""Particle STAR files: read any RELION version into one normalised table, write RELION 3.1+.

RELION 3.1, 4 and 5 files hold two tables, `data_optics` (one row per optics group) and
`data_particles` (one row per image, pointing at its optics group by `rlnOpticsGroup`).
RELION 3.0 files hold one table (`data_` or `data_images`) with the optics values repeated on
every particle; they are converted here the way RELION converts them, so that the rest of
novomap only ever sees the 3.1 layout.

Every error is an `InputError` naming the file, the 1-based data row of the table and the label.
"""

from __future__ import annotations

import os
import re
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from novomap.errors import InputError
from novomap.io.atomic import atomic_path
from novomap.io.mrc import open_stack, stack_array

#: Labels every particle row must have.
REQUIRED_PARTICLE_LABELS = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
#: CTF labels that live in the optics table (RELION 3.1+) or on each particle (RELION 3.0).
OPTICS_CTF_LABELS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
PREMULTIPLIED_LABEL = "rlnCtfDataAreCtfPremultiplied"

# Labels whose values are names: parsed as text so that e.g. a micrograph called "0001"
# keeps its leading zeros when written back.
_NAME_LABELS = [
    "rlnImageName",
    "rlnMicrographName",
    "rlnOpticsGroupName",
    "rlnGroupName",
    "rlnMtfFileName",
    "rlnMicrographMovieName",
    "rlnCtfImage",
    "rlnReferenceImage",
    "rlnImageOriginalName",
]

_IMAGE_NAME = re.compile(r"^\s*(\d+)@(\S.*?)\s*$")
_STAR_VERSION_LINE = "# version 30001"


@dataclass
class ParticleTable:
    """A particle STAR file normalised to the RELION 3.1+ layout.

    `optics` has one row per optics group with at least rlnOpticsGroup (int, 1-based),
    rlnImagePixelSize (Å/px), rlnImageSize (px), rlnVoltage (kV), rlnSphericalAberration (mm)
    and rlnAmplitudeContrast (fraction). `particles` has one row per image (row r of the file is
    `particles.iloc[r - 1]`) with rlnOpticsGroup (int); every other column is kept as read.
    `is_relion30` is True when the file had no optics table and the optics groups were built here.
    """

    path: Path
    optics: pd.DataFrame
    particles: pd.DataFrame
    is_relion30: bool


# --------------------------------------------------------------------------------------------
# Reading


def read_particle_star(path: str | os.PathLike, cryosparc=None) -> ParticleTable:
    """Read a RELION 3.0/3.1/4/5 particle STAR file and check it (see module docstring).

    Stacks are opened only when the optics table lacks rlnImageSize (one stack per optics group).
    A cryoSPARC `.cs` file is read by `novomap.io.cryosparc.read_cryosparc` into the same table;
    cryosparc: its `CryosparcOptions` (passthrough file, project folder), None for the defaults.
    """
    path = Path(path)
    if path.suffix.lower() == ".cs":
        from novomap.io.cryosparc import read_cryosparc  # imported here: that module imports this one

        return read_cryosparc(path, cryosparc.passthrough, cryosparc.project_dir) if cryosparc is not None else read_cryosparc(path)
    blocks = _read_blocks(path)
    optics, particles, block_name = _select_blocks(blocks, path)
    is_relion30 = optics is None
    particles = particles.reset_index(drop=True)
    if len(particles) == 0:
        raise InputError("the particle table has no rows", path, label=f"data_{block_name}")
    _require_labels(particles, REQUIRED_PARTICLE_LABELS, path, f"data_{block_name}")
    for label in REQUIRED_PARTICLE_LABELS[1:]:
        numeric_column(particles, label, path)
    parse_image_names(particles["rlnImageName"], path)  # only for its checks

    if optics is None:
        optics, particles = _optics_from_particles(particles, path)
    else:
        optics = _normalise_optics(optics, path)
        particles = _attach_optics_groups(particles, optics, path)
    optics = _fill_image_size(optics, particles, path)
    return ParticleTable(path=path, optics=optics, particles=particles, is_relion30=is_relion30)


def _read_blocks(path: Path) -> dict[str, pd.DataFrame]:
    """All data blocks of a STAR file as DataFrames (a non-loop block becomes one row)."""
    if not path.is_file():
        raise InputError("file not found", path)
    _check_loop_rows(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True, parse_as_string=_NAME_LABELS)
    except Exception as error:  # starfile/pandas raise many kinds of errors on garbage
        raise InputError(f"not a readable STAR file ({type(error).__name__}: {error})", path) from None
    if not blocks:
        raise InputError("not a STAR file: no data_ block found", path)
    return {
        name: pd.DataFrame([block]) if isinstance(block, dict) else block for name, block in blocks.items()
    }


def _check_loop_rows(path: Path) -> None:
    """Raise if a loop row has more or fewer fields than the loop has labels.

    starfile silently pads a short row with NaN (a truncated file) and fails with an anonymous
    pandas error on a long one; this scan names the row instead. It follows starfile's reading:
    a loop's rows run to the next `data_` line, '#' starts a comment, blank lines are skipped.
    """
    block, in_loop, n_labels, row = "data_", False, 0, 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, raw in enumerate(handle, 1):
            line = raw.strip()
            if line.startswith("data_"):
                block, in_loop = line.split()[0], False
                continue
            if line.startswith("loop_"):
                in_loop, n_labels, row = True, 0, 0
                continue
            if not in_loop:
                continue
            if line.startswith("_") and row == 0:
                n_labels += 1
                continue
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            row += 1
            n_fields = _count_fields(line)
            if n_fields != n_labels:
                raise InputError(
                    f"line {line_number} has {n_fields} fields but the loop has {n_labels} labels "
                    "(a garbled or truncated STAR file)",
                    path,
                    row,
                    block,
                )


def _count_fields(line: str) -> int:
    """Whitespace-separated fields of a STAR row; quoted strings count as one (-1: bad quoting)."""
    if '"' not in line and "'" not in line:
        return len(line.split())
    try:
        return len(shlex.split(line))
    except ValueError:
        return -1


def _select_blocks(
    blocks: dict[str, pd.DataFrame], path: Path
) -> tuple[pd.DataFrame | None, pd.DataFrame, str]:
    """(optics table or None, particle table, particle block name) from a file's blocks."""
    if "particles" in blocks:
        return blocks.get("optics"), blocks["particles"], "particles"
    for name in ("images", ""):
        if name in blocks:
            return blocks.get("optics"), blocks[name], name
    others = [name for name in blocks if name != "optics"]
    if len(others) == 1:
        return blocks.get("optics"), blocks[others[0]], others[0]
    found = ", ".join(f"data_{name}" for name in blocks)
    raise InputError(
        "no particle table: expected data_particles (RELION 3.1+) or a single data_ or data_images "
        f"block (RELION 3.0); found {found}",
        path,
    )


def _require_labels(table: pd.DataFrame, labels: tuple[str, ...] | list[str], path: Path, where: str) -> None:
    for label in labels:
        if label not in table.columns:
            raise InputError(f"required label is missing from {where}", path, label=label)


def numeric_column(table: pd.DataFrame, label: str, path: str | os.PathLike, where: str = "") -> np.ndarray:
    """A column as float64 (n,), raising at the first row that is missing, NaN, Inf or not a number.

    `where` (e.g. " in data_optics") is appended to the message so that rows of other tables
    than the particle table are not mistaken for particle rows.
    """
    raw = table[label]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"not a finite number ({shown_value(raw.iloc[i])}){where}", path, i + 1, label)
    return values


def _check_positive(values: np.ndarray, label: str, path: Path, what: str, where: str = "") -> None:
    bad = np.flatnonzero(values <= 0)
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{what} must be positive, found {values[i]:g}{where}", path, i + 1, label)


def _integer_column(table: pd.DataFrame, label: str, path: Path, where: str = "") -> np.ndarray:
    """A column of whole numbers as int64 (n,) (1.0 is accepted, 1.5 is not)."""
    values = numeric_column(table, label, path, where)
    bad = np.flatnonzero(values != np.round(values))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"must be a whole number, found {values[i]:g}{where}", path, i + 1, label)
    return values.astype(np.int64)


def parse_image_names(names: pd.Series, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Split rlnImageName values `N@stack` -> (N as int64 (n,), 1-based; stack names, object (n,)).

    Raises at the first row that does not have that form or has N < 1.
    """
    text = names.astype(object).map(lambda value: value if isinstance(value, str) else repr(value))
    parts = text.str.extract(_IMAGE_NAME)
    numbers = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~(numbers >= 1))  # also catches NaN = no match
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"image name must look like N@stack.mrcs with N >= 1, found {text.iloc[i]!r}", path, i + 1, "rlnImageName"
        )
    return numbers.astype(np.int64), parts[1].to_numpy(dtype=object)


def refuse_ctf_premultiplied(table: ParticleTable, needs: str) -> None:
    """Raise InputError (file, optics-table row, label) when an optics group holds CTF-premultiplied
    particles, which a command that `needs` particles as extracted cannot use."""
    if PREMULTIPLIED_LABEL not in table.optics.columns:
        return
    flags = numeric_column(table.optics, PREMULTIPLIED_LABEL, table.path, " in data_optics") != 0
    if flags.any():
        group = int(np.flatnonzero(flags)[0])
        raise InputError(
            f"optics group {group + 1} holds CTF-premultiplied particles; {needs}: re-extract them without premultiplying",
            table.path, group + 1, PREMULTIPLIED_LABEL,
        )


def shown_value(value) -> str:
    """A table value for an error message: text quoted, a number as written (nan, not np.float64(nan))."""
    return repr(value) if isinstance(value, str) else str(value)


def stack_candidates(stack: str, star_path: str | os.PathLike) -> list[Path]:
    """Where a stack named in a STAR file may be, in RELION's order of preference.

    RELION resolves relative names against its project directory (the current working
    directory); novomap also tries the STAR file's own folder, so that a file can be used
    from elsewhere. Absolute names are used as they are.
    """
    name = Path(stack)
    if name.is_absolute():
        return [name]
    return [Path.cwd() / name, Path(star_path).parent.absolute() / name]


def resolve_stack_path(stack: str, star_path: str | os.PathLike) -> Path | None:
    """The first existing candidate of `stack_candidates` (absolute), or None if none exists."""
    for candidate in stack_candidates(stack, star_path):
        if candidate.is_file():
            return candidate
    return None


def missing_stack_error(stack: str, star_path: str | os.PathLike, row: int) -> InputError:
    """The error for a particle whose stack exists nowhere we looked."""
    tried = " or ".join(dict.fromkeys(str(p) for p in stack_candidates(stack, star_path)))  # once each (the STAR file may sit in the current directory)
    return InputError(f"image stack {stack!r} not found (looked for {tried})", star_path, row, "rlnImageName")


# --------------------------------------------------------------------------------------------
# Optics: RELION 3.1+ tables, and building them for RELION 3.0 files


def _normalise_optics(optics: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Check a RELION 3.1+ optics table and bring it to the normalised columns (see ParticleTable)."""
    optics = optics.reset_index(drop=True)
    where = " in data_optics"
    if len(optics) == 0:
        raise InputError("the optics table has no rows", path, label="data_optics")
    if "rlnOpticsGroup" not in optics.columns:
        if len(optics) > 1:
            raise InputError("required label is missing from data_optics", path, label="rlnOpticsGroup")
        optics["rlnOpticsGroup"] = 1
    groups = _integer_column(optics, "rlnOpticsGroup", path, where)
    duplicated = np.flatnonzero(pd.Series(groups).duplicated().to_numpy())
    if duplicated.size:
        i = int(duplicated[0])
        raise InputError(f"optics group {groups[i]} is defined twice{where}", path, i + 1, "rlnOpticsGroup")
    optics["rlnOpticsGroup"] = groups

    _require_labels(optics, OPTICS_CTF_LABELS, path, "data_optics")
    for label in OPTICS_CTF_LABELS:
        numeric_column(optics, label, path, where)
    _check_positive(numeric_column(optics, "rlnVoltage", path, where), "rlnVoltage", path, "voltage", where)

    if "rlnImagePixelSize" not in optics.columns:
        pixel_size, label = _pixel_size_from_detector(optics, path, where)
        optics["rlnImagePixelSize"] = pixel_size
    else:
        label = "rlnImagePixelSize"
        pixel_size = numeric_column(optics, label, path, where)
    _check_positive(pixel_size, label, path, "pixel size", where)

    if "rlnImageSize" in optics.columns:
        size = _integer_column(optics, "rlnImageSize", path, where)
        _check_positive(size.astype(np.float64), "rlnImageSize", path, "image size", where)
        optics["rlnImageSize"] = size
    return optics


def _pixel_size_from_detector(table: pd.DataFrame, path: Path, where: str = "") -> tuple[np.ndarray, str]:
    """Pixel size (Å) = rlnDetectorPixelSize (µm) * 10^4 / rlnMagnification, as in RELION 3.0.

    Returns (pixel sizes (n,), the label to blame if they are not positive).
    """
    if "rlnDetectorPixelSize" not in table.columns or "rlnMagnification" not in table.columns:
        raise InputError(
            "no pixel size: need rlnImagePixelSize, or rlnDetectorPixelSize and rlnMagnification",
            path,
            label="rlnImagePixelSize",
        )
    detector_um = numeric_column(table, "rlnDetectorPixelSize", path, where)
    magnification = numeric_column(table, "rlnMagnification", path, where)
    _check_positive(magnification, "rlnMagnification", path, "magnification", where)
    return detector_um * 1e4 / magnification, "rlnDetectorPixelSize"


def _optics_from_particles(particles: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build optics groups for a table with optics values on every particle (RELION 3.0).

    One group per distinct (voltage, Cs, amplitude contrast, pixel size[, CTF-premultiplied]),
    numbered 1, 2, ... in order of first appearance. Those labels (and the magnification and
    detector pixel size that gave the pixel size) move to the optics table; any existing
    rlnOpticsGroup is replaced. Origins in pixels (rlnOriginX/Y[Prior]) become the Å labels of
    RELION 3.1 (rlnOriginX/YAngst[PriorAngst]), as RELION's own conversion does.
    """
    _require_labels(particles, OPTICS_CTF_LABELS, path, "the particle table (no data_optics block)")
    key = pd.DataFrame({label: numeric_column(particles, label, path) for label in OPTICS_CTF_LABELS})
    _check_positive(key["rlnVoltage"].to_numpy(), "rlnVoltage", path, "voltage")
    if "rlnImagePixelSize" in particles.columns:
        pixel_size, label = numeric_column(particles, "rlnImagePixelSize", path), "rlnImagePixelSize"
    else:
        pixel_size, label = _pixel_size_from_detector(particles, path)
    _check_positive(pixel_size, label, path, "pixel size")
    key["rlnImagePixelSize"] = pixel_size
    if PREMULTIPLIED_LABEL in particles.columns:
        key[PREMULTIPLIED_LABEL] = _integer_column(particles, PREMULTIPLIED_LABEL, path)

    codes, _ = pd.factorize(pd.MultiIndex.from_frame(key))  # numbered in order of first appearance
    first_rows = np.unique(codes, return_index=True)[1]
    optics = key.iloc[first_rows].reset_index(drop=True)
    n_groups = len(optics)
    optics.insert(0, "rlnOpticsGroup", np.arange(1, n_groups + 1, dtype=np.int64))
    optics.insert(0, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in range(1, n_groups + 1)])
    optics["rlnImageDimensionality"] = 2

    moved = [*key.columns, "rlnMagnification", "rlnDetectorPixelSize", "rlnOpticsGroup"]
    particles = particles.drop(columns=[c for c in moved if c in particles.columns])
    particles["rlnOpticsGroup"] = codes.astype(np.int64) + 1
    for old, new in (
        ("rlnOriginX", "rlnOriginXAngst"),
        ("rlnOriginY", "rlnOriginYAngst"),
        ("rlnOriginXPrior", "rlnOriginXPriorAngst"),
        ("rlnOriginYPrior", "rlnOriginYPriorAngst"),
    ):
        if old in particles.columns and new not in particles.columns:
            pixels = numeric_column(particles, old, path)
            # 999 marks an unset prior in RELION; it is a flag, not a distance.
            particles[new] = np.where(pixels >= 999.0, 999.0, pixels * pixel_size)
            particles = particles.drop(columns=[old])
    return optics, particles


def _attach_optics_groups(particles: pd.DataFrame, optics: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Check (or, with a single optics group, fill) the particles' rlnOpticsGroup."""
    defined = optics["rlnOpticsGroup"].to_numpy()
    if "rlnOpticsGroup" not in particles.columns:
        if len(defined) > 1:
            raise InputError("required label is missing from data_particles", path, label="rlnOpticsGroup")
        particles["rlnOpticsGroup"] = np.full(len(particles), defined[0], dtype=np.int64)
        return particles
    groups = _integer_column(particles, "rlnOpticsGroup", path)
    undefined = np.flatnonzero(~np.isin(groups, defined))
    if undefined.size:
        i = int(undefined[0])
        listed = ", ".join(str(g) for g in defined)
        raise InputError(
            f"optics group {groups[i]} is not defined in data_optics (defined: {listed})", path, i + 1, "rlnOpticsGroup"
        )
    particles["rlnOpticsGroup"] = groups
    return particles


def _fill_image_size(optics: pd.DataFrame, particles: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Add rlnImageSize (px) from each group's first stack when the optics table lacks it."""
    if "rlnImageSize" in optics.columns:
        return optics
    numbers, stacks = parse_image_names(particles["rlnImageName"], path)
    groups = particles["rlnOpticsGroup"].to_numpy()
    sizes = []
    for group in optics["rlnOpticsGroup"].to_numpy():
        members = np.flatnonzero(groups == group)
        row = int(members[0]) if members.size else 0  # an unused group borrows the first particle's size
        sizes.append(_stack_image_size(stacks[row], path, row + 1))
    optics["rlnImageSize"] = np.asarray(sizes, dtype=np.int64)
    return optics


def _stack_image_size(stack: str, path: Path, row: int) -> int:
    """The (square) image size in px of a stack named on particle row `row`."""
    stack_path = resolve_stack_path(stack, path)
    if stack_path is None:
        raise missing_stack_error(stack, path, row)
    try:
        mrc = open_stack(stack_path)
    except InputError as error:
        raise InputError(f"cannot read image stack ({error})", path, row, "rlnImageName") from None
    with mrc:
        _, ny, nx = stack_array(mrc).shape
    if ny != nx:
        raise InputError(f"images in {stack_path} are {nx} x {ny} px, not square", path, row, "rlnImageName")
    return int(nx)


# --------------------------------------------------------------------------------------------
# Plausibility: values that parse but cannot be right for single-particle cryo-EM

#: Defocus in Å: RELION's rlnDefocusU/V are positive for underfocus; 20 µm is far beyond any data set.
MAX_DEFOCUS_A = 200_000.0
#: Pixel size in Å: even heavily binned particles stay well below this.
MAX_PIXEL_SIZE_A = 20.0


def check_plausible(table: ParticleTable) -> None:
    """Refuse a table that reads fine but cannot be meant: the same image twice, a negative or
    huge defocus, a pixel size above MAX_PIXEL_SIZE_A. Vectorised: milliseconds for 200k rows."""
    path, particles = table.path, table.particles
    _check_unique_images(particles, path)
    for label in ("rlnDefocusU", "rlnDefocusV"):
        values = numeric_column(particles, label, path)
        bad = np.flatnonzero((values < 0) | (values > MAX_DEFOCUS_A))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"defocus {values[i]:g} Å is implausible: RELION gives it in Å, positive for underfocus, "
                f"at most {MAX_DEFOCUS_A:g} Å (20 µm); check the CTF estimation or the units",
                path,
                i + 1,
                label,
            )
    pixel_size = numeric_column(table.optics, "rlnImagePixelSize", path, " in data_optics")
    bad = np.flatnonzero(pixel_size > MAX_PIXEL_SIZE_A)
    if bad.size:
        i = int(bad[0])
        hint = f"is implausible (at most {MAX_PIXEL_SIZE_A:g} Å); check the units (Å, not nm) and the binning"
        if table.is_relion30:  # the optics table was built here: blame the first particle of the group
            group = table.optics["rlnOpticsGroup"].iloc[i]
            row = int(np.flatnonzero(particles["rlnOpticsGroup"].to_numpy() == group)[0]) + 1
            raise InputError(f"pixel size {pixel_size[i]:g} Å {hint}", path, row, "rlnImagePixelSize")
        raise InputError(f"pixel size {pixel_size[i]:g} Å in data_optics {hint}", path, i + 1, "rlnImagePixelSize")


def _check_unique_images(particles: pd.DataFrame, path: Path) -> None:
    """Raise at the first row whose image (N@stack, N and the stack's path normalised) came before.

    The names were checked by read_particle_star; a plain loop over them is several times faster
    than parsing them again with pandas' regular expressions (0.2 s for 200k rows).
    """
    first_row: dict[tuple[int, str], int] = {}
    normalised: dict[str, str] = {}
    for i, name in enumerate(particles["rlnImageName"].tolist()):
        number, _, stack = str(name).strip().partition("@")
        stack = normalised.get(stack) or normalised.setdefault(stack, os.path.normpath(stack.strip()))
        first = first_row.setdefault((int(number), stack), i)
        if first != i:
            raise InputError(
                f"image {int(number)}@{stack} is listed twice (rows {first + 1} and {i + 1}): remove the duplicate rows "
                "(e.g. a particle file joined with itself)",
                path,
                i + 1,
                "rlnImageName",
            )


# --------------------------------------------------------------------------------------------
# Writing


def write_particle_star(path: str | os.PathLike, optics: pd.DataFrame, particles: pd.DataFrame) -> None:
    """Write a RELION 3.1+ particle file (data_optics, data_particles) atomically.

    Floats are written as RELION writes them (see `format_star_float`). Each block is preceded
    by RELION's `# version 30001` line. The text is the starfile package's for the same tables (a test
    compares them) but for the first comment line: tables of floats, integers and strings are formatted
    column by column here (the real job's data.star: 39 ms per write through starfile's cell-by-cell
    formatting, 11 ms here); any other column type goes through starfile.
    """
    text = _fast_particle_text(optics, particles)
    if text is None:
        with atomic_path(path) as tmp:
            starfile.write({"optics": optics, "particles": particles}, tmp, float_format=format_star_float)
            text = re.sub(r"^(data_(?:optics|particles))$", rf"{_STAR_VERSION_LINE}\n\n\1", tmp.read_text(), flags=re.M)
            tmp.write_text(text)
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _fast_particle_text(optics: pd.DataFrame, particles: pd.DataFrame) -> str | None:
    """The particle file's text, or None where a column is of a type _formatted_column leaves to starfile."""
    from novomap import __version__

    parts = [f"# Created by novomap {__version__}\n\n\n"]
    for name, table in (("optics", optics), ("particles", particles)):
        columns = [_formatted_column(table[label]) for label in table.columns]
        if any(column is None for column in columns):
            return None
        header = "".join(f"_{label} #{i}\n" for i, label in enumerate(table.columns, 1))
        rows = "".join("\t".join(row) + "\n" for row in zip(*columns)) if columns else ""
        parts.append(f"{_STAR_VERSION_LINE}\n\ndata_{name}\n\nloop_\n{header}{rows}\n\n")
    return "".join(parts)


def _formatted_column(values: pd.Series) -> list[str] | None:
    """A column's cells as starfile writes them with float_format=format_star_float (pandas' to_csv:
    '<NA>' for a missing float, strings with a space or empty quoted), or None for a column of another
    type (booleans, mixed objects, pandas' extension types)."""
    if values.dtype == np.float64:
        array = values.to_numpy()
        magnitude = np.abs(array)
        scientific = (magnitude != 0) & ((magnitude < 1e-3) | (magnitude >= 1e6)) & np.isfinite(array)
        cells = [f"{x:.6e}" if sci else f"{x:.6f}" for x, sci in zip(array.tolist(), scientific.tolist())]
        return [cell if x == x else "<NA>" for cell, x in zip(cells, array.tolist())]
    if values.dtype.kind in "iu" and isinstance(values.dtype, np.dtype):
        return [str(x) for x in values.tolist()]
    if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        cells = values.tolist()
        if all(isinstance(x, str) for x in cells):
            return [f'"{x}"' if (" " in x or not x) else x for x in cells]
    return None


def format_star_float(value: float) -> str:
    """6 decimals, switching to 6-digit scientific notation for tiny or huge magnitudes.

    Plain '%.6f' would write a probability of 1e-9 as 0.000000; RELION switches notation too.
    """
    magnitude = abs(value)
    if magnitude != 0.0 and (magnitude < 1e-3 or magnitude >= 1e6) and np.isfinite(value):
        return f"{value:.6e}"
    return f"{value:.6f}"
