"""`novomap reconstruct`: CTF-weighted Fourier reconstruction from the poses in a STAR file.

Like relion_reconstruct: every particle is shifted by its origin (rlnOriginX/YAngst), multiplied
by its CTF and back-projected with its Euler angles; the map is the sum of the back-projections
divided by the summed CTF^2 plus a small regulariser (novomap.reconstruct).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from novomap.errors import NovomapError

HELP = "Reconstruct a 3D map from particles with known poses (CTF-weighted Fourier reconstruction, like relion_reconstruct)."
EXAMPLE = "novomap reconstruct --i Refine3D/job029/run_data.star --o reconstruction.mrc --pad 2 --j 4"

POSE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--i",
        dest="input",
        required=True,
        metavar="STAR",
        help="particle STAR file (RELION 3.0-5.0) with poses (rlnAngleRot/Tilt/Psi, degrees) and origins "
        "(rlnOriginX/YAngst, Å; absent means 0). Image paths are resolved against the current folder, "
        "then the STAR file's folder",
    )
    parser.add_argument(
        "--o", dest="output", required=True, metavar="MRC", help="output map (float32 MRC, pixel size of the particles in the header)"
    )
    parser.add_argument(
        "--pad",
        type=int,
        default=2,
        metavar="N",
        help="Fourier oversampling factor of the 3D grid (1 or more; 2 as relion_reconstruct; default: %(default)s)",
    )
    parser.add_argument(
        "--regulariser",
        type=float,
        default=0.2,
        metavar="F",
        help="Wiener constant added to the summed CTF^2, as a fraction of its mean inside the Nyquist sphere "
        "(> 0; larger is smoother; default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, metavar="N", help="particles back-projected at a time (memory only; default: %(default)s)"
    )
    parser.add_argument("--preread", action="store_true", help="read all images into RAM first (default: read on demand)")
    parser.add_argument(
        "--scratch-dir", default=None, metavar="DIR", help="copy the image stacks to this (fast) folder first (default: no copy)"
    )
    parser.add_argument(
        "--j", dest="threads", type=int, default=None, metavar="N", help="CPU threads for PyTorch (default: PyTorch's choice)"
    )


def _check_options(args: argparse.Namespace) -> None:
    if args.pad < 1:
        raise NovomapError(f"--pad must be a whole number >= 1, not {args.pad}")
    # 0 would divide by zero wherever no particle contributes (NaN map)
    if not (args.regulariser > 0 and math.isfinite(args.regulariser)):
        raise NovomapError(f"--regulariser must be a number > 0, not {args.regulariser}")
    if args.batch_size < 1:
        raise NovomapError(f"--batch-size must be >= 1, not {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise NovomapError(f"--j must be >= 1, not {args.threads}")


def run(args: argparse.Namespace) -> int:
    # imported here so that `novomap --help` stays fast
    from novomap.io.mrc import write_map
    from novomap.io.particles import ParticleSet
    from novomap.io.star import read_particle_star, refuse_ctf_premultiplied
    from novomap.io.working_grid import to_output_grid
    from novomap.reconstruct import reconstruct_particles

    _check_options(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.monotonic()

    table = read_particle_star(args.input)
    missing = [label for label in POSE_LABELS if label not in table.particles.columns]
    if missing:
        raise NovomapError(
            f"{args.input}: the particles have no poses ({', '.join(missing)} missing); "
            "reconstruct needs refined angles, e.g. a Refine3D or InitialModel run_data.star"
        )
    refuse_ctf_premultiplied(table, "reconstruct weights particles as extracted by their CTF")

    with ParticleSet(table, preread=args.preread, scratch_dir=args.scratch_dir) as particles:
        print(
            f"reconstructing {particles.n} particles, box {particles.box_size} px, {particles.pixel_size_a:g} Å/px, "
            f"pad {args.pad}, regulariser {args.regulariser:g}",
            flush=True,
        )
        volume = reconstruct_particles(particles, pad=args.pad, regulariser=args.regulariser, batch_size=args.batch_size)
        # the working grid has an even box: an odd input box (75 px) is worked at 74 px; the map is
        # written back on the input's grid, as the help says
        volume = to_output_grid(volume.float(), particles.grid, particles.pixel_size_a)
        pixel_size_a = particles.grid.output_pixel_size_a
    write_map(args.output, volume, pixel_size_a)
    print(f"wrote {args.output} ({time.monotonic() - start:.1f} s)")
    return 0
