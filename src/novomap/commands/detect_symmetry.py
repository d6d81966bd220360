"""`novomap detect-symmetry`: which point group (Cn, Dn, T, O, I) does a map have?"""

from __future__ import annotations

import argparse

from novomap.errors import InputError
from novomap.io.mrc import read_map
from novomap.symmetry.detect import DetectionResult, detect_point_group

HELP = "detect the point group of a map: Cn and Dn up to --max-order, T, O and I (RELION frames)"
EXAMPLE = "novomap detect-symmetry initial_model.mrc"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", help="input map (.mrc)")
    parser.add_argument("--max-order", type=int, default=24, help="largest n tried for Cn and Dn (default 24)")


def format_table(result: DetectionResult) -> list[str]:
    """The detection table as text lines (one group per line, then the noise terms)."""
    lines = [f"{'group':<6} {'order':>5} {'score':>9} {'threshold':>9}  refined  accepted"]
    for row in result.table:
        lines.append(
            f"{row.group:<6} {row.order:>5} {row.score:>9.4f} {row.threshold:>9.4f}  "
            f"{'yes' if row.refined else 'no':<7}  {'yes' if row.accepted else 'no'}"
        )
    lines.append(f"noise fraction {result.noise_fraction:.4f}, resampling floor {result.resampling_floor:.5f}")
    if result.note:
        lines.append(result.note)
    return lines


def read_cubic_map(path: str):
    """(volume (N, N, N) float32, pixel size Å) or InputError for a non-cubic map."""
    volume, pixel_size = read_map(path)
    if len(set(volume.shape)) != 1:
        raise InputError(f"expected a cubic map, found shape {volume.shape}", path)
    if volume.shape[0] < 8:
        raise InputError(f"map too small for symmetry analysis ({volume.shape[0]}^3)", path)
    return volume, pixel_size


def run(args: argparse.Namespace) -> int:
    if args.max_order < 2:
        raise InputError(f"--max-order must be at least 2, got {args.max_order}")
    volume, pixel_size = read_cubic_map(args.map)
    result = detect_point_group(volume, pixel_size, max_order=args.max_order)
    for line in format_table(result):
        print(line)
    print(f"point group: {result.point_group}")
    return 0
