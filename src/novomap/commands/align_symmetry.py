"""`novomap align-symmetry`: put a map's symmetry axes where RELION expects them (relion_align_symmetry)."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import starfile
import torch

from novomap.commands.detect_symmetry import format_table, read_cubic_map
from novomap.errors import InputError
from novomap.io.mrc import write_map
from novomap.maps.transform import shift_volume
from novomap.symmetry.align import align_to_symmetry
from novomap.symmetry.detect import detect_point_group
from novomap.symmetry.groups import point_group
from novomap.symmetry.symmetrise import symmetrise

HELP = "rotate a map so that its point-group axes lie in RELION's standard frame (relion_align_symmetry)"
EXAMPLE = (
    "novomap align-symmetry --i InitialModel/job015/run_it150_model.star --o initial_model.mrc --sym D2 --apply-sym"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--i", dest="input", required=True,
                        help="input map (.mrc) or run_itNNN_model.star (its largest class is used)")
    parser.add_argument("--o", dest="output", required=True, help="output map (.mrc)")
    parser.add_argument("--sym", default="C1", help="point group in RELION's naming (C4, D2, I1, ...) or 'auto'")
    parser.add_argument("--apply-sym", action="store_true", help="also impose the symmetry on the aligned map")


def largest_class_map(star_path: Path) -> Path:
    """The rlnReferenceImage with the largest rlnClassDistribution of a model.star's data_model_classes.

    Relative names are looked up from the current directory (RELION's project directory), then
    from the STAR file's folder.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(star_path, always_dict=True, parse_as_string=["rlnReferenceImage"])
    except Exception as error:  # starfile raises many kinds of errors on garbage
        raise InputError(f"not a readable STAR file ({type(error).__name__}: {error})", star_path) from None
    table = blocks.get("model_classes")
    if table is None or isinstance(table, dict):
        raise InputError("no data_model_classes table (expected a run_itNNN_model.star)", star_path)
    for label in ("rlnReferenceImage", "rlnClassDistribution"):
        if label not in table.columns:
            raise InputError("missing column", star_path, label=label)
    distribution = np.asarray(table["rlnClassDistribution"], dtype=np.float64)
    row = int(np.argmax(distribution))
    name = Path(str(table["rlnReferenceImage"].iloc[row]).strip())
    candidates = [name] if name.is_absolute() else [Path.cwd() / name, star_path.parent.absolute() / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise InputError(f"class map {name} not found (tried {tried})", star_path, row=row + 1, label="rlnReferenceImage")


def _input_map(path_text: str) -> Path:
    path = Path(path_text)
    if path.suffix.lower() == ".star":
        if not path.is_file():
            raise InputError("file not found", path)
        chosen = largest_class_map(path)
        print(f"largest class: {chosen}")
        return chosen
    return path


def run(args: argparse.Namespace) -> int:
    automatic = args.sym.strip().lower() == "auto"
    group = None if automatic else point_group(args.sym)  # a bad name fails before any work
    source = _input_map(args.input)
    volume, pixel_size = read_cubic_map(str(source))
    if pixel_size <= 0:
        print("note: the input header has no pixel size; the output will have none either")
    if group is None:
        detection = detect_point_group(volume, pixel_size)
        for line in format_table(detection):
            print(line)
        print(f"detected point group: {detection.point_group}")
        group = point_group(detection.point_group)
    tensor = torch.from_numpy(volume)
    if group.order == 1:
        write_map(args.output, tensor, pixel_size)
        print(f"point group C1: {args.output} is a copy of the input")
        return 0
    result = align_to_symmetry(tensor, pixel_size, group)
    shift = ", ".join(f"{value:.2f}" for value in result.shift_zyx_px.tolist())
    print(f"point group: {group.name} (order {group.order})")
    print(f"re-centring shift (z, y, x px): {shift}")
    print(f"rotation (RELION Euler angles, deg): rot {result.rot:.2f} tilt {result.tilt:.2f} psi {result.psi:.2f}")
    print(f"score: {result.score:.5f} (0 = perfectly symmetric)")
    output = result.volume
    if args.apply_sym:
        # symmetrise the re-centred input with the rotation folded into each operator: one interpolation
        output = symmetrise(shift_volume(tensor, result.shift_zyx_px), group, result.rotation)
    write_map(args.output, output, pixel_size)
    print(f"wrote {args.output}" + (f" (symmetrised with {group.name})" if args.apply_sym else ""))
    return 0
