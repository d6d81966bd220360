"""`novomap compare`: FSC resolution between two maps, optionally after superposing the second."""

from __future__ import annotations

import argparse
import json
import math

import torch

from novomap.errors import InputError
from novomap.io.mrc import read_map
from novomap.maps.align import align_maps
from novomap.maps.fsc import fsc, resolution_at
from novomap.maps.transform import crop_or_pad, fourier_resize

HELP = "FSC between two maps (0.5 and 0.143 resolutions); --align superposes B onto A first (rotation, shift, hand)"
EXAMPLE = "novomap compare reference.mrc initial_model.mrc --align --json"
_PIXEL_TOLERANCE = 1e-3  # relative difference below which two pixel sizes count as equal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map_a", metavar="A.mrc", help="reference map")
    parser.add_argument("map_b", metavar="B.mrc", help="map compared with A (moved onto A with --align)")
    parser.add_argument("--align", action="store_true", help="find the rotation, shift and hand that best fit B onto A")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _read_cube(path: str) -> tuple[torch.Tensor, float]:
    volume, pixel_size = read_map(path)
    if len(set(volume.shape)) != 1:
        raise InputError(f"expected a cubic map, found shape {volume.shape}", path)
    return torch.from_numpy(volume), pixel_size


def _common_pixel_size(pixel_a: float, pixel_b: float, notes: list[str]) -> tuple[float, float]:
    """(pixel size of the comparison, B's pixel size to resample from); notes what was assumed."""
    if pixel_a <= 0 and pixel_b <= 0:
        notes.append("neither header has a pixel size: using 1 Å/px")
        return 1.0, 1.0
    if pixel_a <= 0 or pixel_b <= 0:
        known = max(pixel_a, pixel_b)
        notes.append(f"only one header has a pixel size: using {known:.4f} Å/px for both maps")
        return known, known
    return pixel_a, pixel_b


def match_maps(
    a: torch.Tensor, pixel_a: float, b: torch.Tensor, pixel_b: float
) -> tuple[torch.Tensor, torch.Tensor, float, list[str]]:
    """Bring B to A's pixel size (Fourier resampling) and both to the smaller box (central crop/pad).

    Returns (A, B, pixel size Å, notes saying what was done).
    """
    notes: list[str] = []
    pixel, pixel_b = _common_pixel_size(pixel_a, pixel_b, notes)
    if abs(pixel_b - pixel) > _PIXEL_TOLERANCE * pixel:
        size = max(2, round(b.shape[-1] * pixel_b / pixel))
        notes.append(
            f"B resampled in Fourier space from {pixel_b:.4f} to {b.shape[-1] * pixel_b / size:.4f} Å/px "
            f"(box {b.shape[-1]} -> {size}) to match A's {pixel:.4f} Å/px"
        )
        b = fourier_resize(b.double(), size).to(b.dtype)
    if a.shape[-1] != b.shape[-1]:
        box = min(a.shape[-1], b.shape[-1])
        notes.append(f"boxes differ ({a.shape[-1]} and {b.shape[-1]}): both cropped centrally to {box}")
        a, b = crop_or_pad(a, box), crop_or_pad(b, box)
    return a, b, pixel, notes


def _finite(value: float, box_a: float = math.inf) -> float | None:
    """A resolution, or None where there is none: infinite, or coarser than the box itself."""
    return value if math.isfinite(value) and value <= box_a * (1 + 1e-9) else None


def run(args: argparse.Namespace) -> int:
    a, pixel_a = _read_cube(args.map_a)
    b, pixel_b = _read_cube(args.map_b)
    a, b, pixel, notes = match_maps(a, pixel_a, b, pixel_b)
    report: dict = {"box": a.shape[-1], "pixel_size_a": pixel}
    if args.align:
        alignment = align_maps(a, b, pixel)
        b = alignment.volume
        report.update(
            cc=alignment.cc,
            hand_flipped=alignment.hand_flipped,
            rotation=alignment.rotation.tolist(),
            euler_deg=[alignment.rot, alignment.tilt, alignment.psi],
            shift_zyx_px=alignment.shift_zyx_px.tolist(),
        )
    curve = fsc(a, b)
    # a crossing before shell 1 (interpolated beyond the box) is no resolution at all: reported as None
    box_a = a.shape[-1] * pixel
    report["fsc05_a"] = _finite(resolution_at(curve, 0.5, a.shape[-1], pixel), box_a)
    report["fsc0143_a"] = _finite(resolution_at(curve, 0.143, a.shape[-1], pixel), box_a)
    report["notes"] = notes
    if args.json:
        print(json.dumps(report))
    else:
        _print_text(report)
    return 0


def _print_text(report: dict) -> None:
    for note in report["notes"]:
        print(f"note: {note}")
    if "cc" in report:
        rot, tilt, psi = report["euler_deg"]
        hand = "mirror image of B" if report["hand_flipped"] else "B as given"
        print(f"aligned {hand}: rot {rot:.2f} tilt {tilt:.2f} psi {psi:.2f} deg, correlation {report['cc']:.4f}")

    def show(value: float | None) -> str:
        return f"{value:.2f} Å" if value is not None else "lower than the box (FSC below threshold at shell 1)"

    print(f"FSC 0.5:   {show(report['fsc05_a'])}")
    print(f"FSC 0.143: {show(report['fsc0143_a'])}")
