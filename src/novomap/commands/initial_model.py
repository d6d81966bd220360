"""`novomap initial-model`: RELION 4's "3D initial model" job (VDAM + align symmetry), one command."""

from __future__ import annotations

import argparse
import math
import sys
import time

from novomap.errors import NovomapError

HELP = "Build a de novo 3D initial model from 2D particles (RELION's VDAM), then align and apply its point group."
EXAMPLE = (
    "novomap initial-model --i Select/job014/particles.star --o InitialModel/job015 --iter 100 --K 1 "
    "--particle-diameter 200 --sym D2 --flatten-solvent --sampling 15 --offset-range 6 --offset-step 2 --preread --j 2 --seed 1"
)

SAMPLING_TO_ORDER = {30.0: 0, 15.0: 1, 7.5: 2, 3.75: 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input/output")
    io.add_argument("--i", dest="input", metavar="STAR", help="particles STAR file (RELION 3.0-5.0), e.g. from Select after 2D classification")
    io.add_argument("--in_parts", dest="input", metavar="STAR", help=argparse.SUPPRESS)  # RELION External job name
    io.add_argument("--o", dest="output", required=True, metavar="DIR", help="output folder (created); RELION-style run_itNNN_* files and initial_model.mrc")
    io.add_argument("--continue", dest="continue_from", metavar="OPTIMISER_STAR", help="resume from DIR/run_itNNN_optimiser.star of an earlier run")
    opt = parser.add_argument_group("optimisation (RELION's Optimisation tab)")
    opt.add_argument("--iter", type=int, default=100, help="number of VDAM mini-batches (default: %(default)s, as in the RELION tutorial)")
    opt.add_argument("--K", dest="classes", type=int, default=1, help="number of classes (default: %(default)s)")
    opt.add_argument("--particle-diameter", type=float, default=None, metavar="A", help="mask diameter in Å (default: box size minus 5 px, as RELION)")
    opt.add_argument("--flatten-solvent", dest="flatten_solvent", action="store_true", default=True, help="multiply the map by a soft spherical mask of the particle diameter each iteration (default: on)")
    opt.add_argument("--no-flatten-solvent", dest="flatten_solvent", action="store_false", help="do not flatten the solvent")
    opt.add_argument("--sym", default="C1", help="point group applied at the end (the run itself is C1, as RELION's default); e.g. C1, C4, D2, T, O, I (default: %(default)s)")
    opt.add_argument("--tau2-fudge", type=float, default=4.0, metavar="T", help="regularisation T reached after the initial phase (default: %(default)s)")
    sampling = parser.add_argument_group("sampling (RELION's Sampling tab)")
    sampling.add_argument("--sampling", type=float, default=15.0, metavar="DEG", help="initial angular sampling in degrees: 30, 15, 7.5 or 3.75 (the fine step; default: %(default)s)")
    sampling.add_argument("--offset-range", type=float, default=6.0, metavar="PX", help="translational search range in pixels (default: %(default)s)")
    sampling.add_argument("--offset-step", type=float, default=2.0, metavar="PX", help="translational search step in pixels (default: %(default)s)")
    sampling.add_argument("--no-auto-sampling", dest="auto_sampling", action="store_false", help="keep the initial angular sampling throughout")
    compute = parser.add_argument_group("compute (RELION's Compute and Running tabs)")
    compute.add_argument("--pool", type=int, default=30, help="pooled particles (accepted for RELION compatibility; novomap sizes its batches from memory)")
    compute.add_argument("--preread", action="store_true", help="read all particles into RAM first")
    compute.add_argument("--scratch-dir", metavar="DIR", help="copy the particle stacks to this fast local folder first")
    compute.add_argument("--j", dest="threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    compute.add_argument("--gpu", nargs="?", const="", default=None, metavar="IDS", help='use CUDA GPUs, RELION syntax "0,1"; empty means all visible')
    compute.add_argument("--seed", type=int, default=1, help="random seed; the same seed on the same device gives the same result (default: %(default)s)")
    compute.add_argument("--quiet", action="store_true", help="print only the final summary")


def _healpix_order(sampling_deg: float) -> int:
    for step, order in SAMPLING_TO_ORDER.items():
        if math.isclose(sampling_deg, step, rel_tol=1e-3):
            return order
    raise NovomapError(f"--sampling must be one of 30, 15, 7.5 or 3.75 degrees, not {sampling_deg:g}")


def run(args: argparse.Namespace) -> int:
    from novomap.device import select_device
    from novomap.initial_model import run_initial_model
    from novomap.io.star import read_particle_star
    from novomap.vdam.config import VdamConfig

    if not args.input:
        raise NovomapError("--i particles.star is required")
    if args.iter < 1:
        raise NovomapError(f"--iter must be >= 1, not {args.iter}")
    if args.classes < 1:
        raise NovomapError(f"--K must be >= 1, not {args.classes}")
    if args.offset_step <= 0 or args.offset_range < 0:
        raise NovomapError("--offset-step must be > 0 and --offset-range >= 0 (pixels)")
    device = select_device(args.gpu, args.threads)
    diameter = args.particle_diameter
    if diameter is None:
        optics = read_particle_star(args.input).optics
        diameter = (float(optics["rlnImageSize"].iloc[0]) - 5) * float(optics["rlnImagePixelSize"].iloc[0])
    config = VdamConfig(
        n_iter=args.iter,
        n_classes=args.classes,
        particle_diameter_a=diameter,
        flatten_solvent=args.flatten_solvent,
        healpix_order=_healpix_order(args.sampling),
        offset_range_px=args.offset_range,
        offset_step_px=args.offset_step,
        tau2_fudge=args.tau2_fudge,
        auto_sampling=args.auto_sampling,
        seed=args.seed,
    )

    def progress(figures: dict) -> None:
        if args.quiet:
            return
        print(
            f"iter {figures['iteration']:4d}/{config.n_iter}  batch {figures['batch_size']:5d}  "
            f"res {figures['resolution_a']:5.1f} Å  step {figures['step_size']:.2f}  T {figures['tau2_fudge']:.2f}  "
            f"sampling {figures['fine_step_deg']:.1f}°  pmax {figures['average_pmax']:.2f}  {figures['seconds']:.1f} s",
            flush=True,
        )

    started = time.perf_counter()
    result = run_initial_model(
        args.input,
        args.output,
        config,
        symmetry=args.sym,
        device=device,
        preread=args.preread,
        scratch_dir=args.scratch_dir,
        continue_from=args.continue_from,
        progress=progress,
    )
    print(f"initial model: {result.initial_model} ({args.sym}, symmetry score {result.symmetry_score:.3f}) in {time.perf_counter() - started:.0f} s", file=sys.stdout)
    return 0
