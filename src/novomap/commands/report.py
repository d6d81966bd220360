"""`novomap report`: (re)draw the picture report of an initial-model job folder, running or finished."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "draw DIR/report.html (maps, convergence, orientations, FSC against a reference) for a running or finished job"
EXAMPLE = "novomap report InitialModel/job015 --reference emd_1234.mrc"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="the --o folder of `novomap initial-model` (or of a RELION InitialModel job)")
    parser.add_argument(
        "--reference",
        metavar="MAP",
        help="a known map of the particle (any box/pixel size): adds the FSC of the result against it, after superposing it (rotation, shift, hand); takes up to a minute",
    )
    parser.add_argument("--reference-pixel-size", type=float, default=None, metavar="A", help="pixel size of --reference in Å when its header has none")


def run(args: argparse.Namespace) -> int:
    from novomap.errors import InputError
    from novomap.outputs.report import build_report

    if args.reference is not None and not Path(args.reference).is_file():
        raise InputError("reference map not found (--reference)", args.reference)
    page = build_report(args.folder, reference=args.reference, reference_pixel_size_a=args.reference_pixel_size)
    print(f"report: {page}  (pictures in {page.parent / 'report'}/)")
    return 0
