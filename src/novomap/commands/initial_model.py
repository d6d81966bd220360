"""`novomap initial-model`: RELION 4's "3D initial model" job (VDAM + align symmetry), one command.

Also a RELION 4/5 "External" job: `novomap initial-model --o External/jobNNN/ --in_parts particles.star --j N`
writes RELION_OUTPUT_NODES.star and RELION_JOB_EXIT_SUCCESS/FAILURE/ABORTED into its folder and stops
when RELION creates RELION_JOB_ABORT_NOW there. Progress goes to the terminal (live) and DIR/run.out,
errors to DIR/run.err; the picture report (DIR/report.html) and DIR/view.cxc are updated as it runs.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path

from novomap.errors import InputError, NovomapError

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
    sampling.add_argument(
        "--finest-sampling", type=float, default=7.5, metavar="DEG",
        help="finest angular sampling auto-sampling may reach: 7.5 or 3.75 degrees (RELION allows 3.75, which makes the coarse search 8x costlier; default: %(default)s)",
    )
    compute = parser.add_argument_group("compute (RELION's Compute and Running tabs)")
    compute.add_argument(
        "--pool", type=int, default=0, metavar="N",
        help="read and search at least N particles together (RELION's pooled particles); by default, and when "
        "N is smaller, as many as keep the E-step's arrays near 50 MB (usually 10-500)",
    )
    compute.add_argument("--preread", action="store_true", help="read all particles into RAM first")
    compute.add_argument("--scratch-dir", metavar="DIR", help="copy the particle stacks to this fast local folder first")
    compute.add_argument("--j", dest="threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    compute.add_argument("--gpu", nargs="?", const="", default=None, metavar="IDS", help='use CUDA GPUs, RELION syntax "0,1"; empty means all visible')
    compute.add_argument("--seed", type=int, default=1, help="random seed; the same seed on the same device gives the same result (default: %(default)s)")
    compute.add_argument("--quiet", action="store_true", help="print only the final summary (DIR/run.out still gets every line)")
    output = parser.add_argument_group("report and viewing")
    output.add_argument(
        "--reference",
        metavar="MAP",
        help="a known map of the same particle (any box/pixel size): the report shows the FSC of the result against it, after superposing it (rotation, shift and hand)",
    )
    output.add_argument("--reference-pixel-size", type=float, default=None, metavar="A", help="pixel size of --reference in Å when its header has none")
    output.add_argument(
        "--mass-kda",
        type=float,
        default=None,
        metavar="KDA",
        help="molecular mass in kDa: view.cxc shows the maps at the level enclosing that volume (default: mean + 1.5 sd inside the mask)",
    )
    output.add_argument("--no-report", dest="report", action="store_false", help="do not draw DIR/report.html and DIR/report/*.png")


def _healpix_order(sampling_deg: float) -> int:
    for step, order in SAMPLING_TO_ORDER.items():
        if math.isclose(sampling_deg, step, rel_tol=1e-3):
            return order
    raise NovomapError(f"--sampling must be one of 30, 15, 7.5 or 3.75 degrees, not {sampling_deg:g}")


def _check_arguments(args: argparse.Namespace) -> None:
    """Checks that need no file: a bad value is reported before anything is read or written."""
    if not args.input:
        raise NovomapError("--i particles.star is required")
    if args.iter < 1:
        raise NovomapError(f"--iter must be >= 1, not {args.iter}")
    if args.classes < 1:
        raise NovomapError(f"--K must be >= 1, not {args.classes}")
    if args.offset_step <= 0 or args.offset_range < 0:
        raise NovomapError("--offset-step must be > 0 and --offset-range >= 0 (pixels)")
    if args.particle_diameter is not None and not args.particle_diameter > 0:
        raise NovomapError(f"--particle-diameter must be a positive number of Å, not {args.particle_diameter:g}")
    if args.mass_kda is not None and not args.mass_kda > 0:
        raise NovomapError(f"--mass-kda must be positive, not {args.mass_kda:g}")
    _healpix_order(args.sampling)


def _prepare_folder(out_dir: Path) -> None:
    from novomap.outputs.pipeline import start_job

    if out_dir.exists() and not out_dir.is_dir():
        raise NovomapError(f"--o {out_dir} is a file; give a folder (it is created if needed)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NovomapError(f"cannot create the output folder {out_dir}: {error.strerror}; choose another --o") from None
    if not os.access(out_dir, os.W_OK):
        raise NovomapError(f"cannot write into {out_dir}; choose another --o")
    start_job(out_dir)


def _check_files(args: argparse.Namespace) -> None:
    """Optional input files: found and readable, before hours of work."""
    from novomap.io.mrc import read_map
    from novomap.outputs.relion import state_path_for

    if args.reference is not None:
        if not Path(args.reference).is_file():
            raise InputError("reference map not found (--reference)", args.reference)
        try:
            read_map(args.reference)
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise InputError(f"--reference is not a readable MRC map ({error})", args.reference) from None
    if args.continue_from is not None:
        if not Path(args.continue_from).is_file():
            raise InputError("file not found (--continue wants DIR/run_itNNN_optimiser.star of an earlier run)", args.continue_from)
        if not state_path_for(args.continue_from).is_file():
            raise InputError(
                f"{state_path_for(args.continue_from).name} is missing beside it: only novomap runs can be continued, from an iteration they wrote",
                args.continue_from,
            )


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text)


def _out_of_memory_message(args: argparse.Namespace) -> str:
    smaller = "a smaller box (re-extract or rescale the particles, e.g. to 64-128 px; the initial model needs no more) or fewer classes (--K)"
    if args.gpu is not None:
        return (
            "out of GPU memory: close other jobs on that GPU, choose a GPU with more memory (--gpu), "
            f"run on the CPU (leave out --gpu), or use {smaller}"
        )
    hint = "leave out --preread (or use --scratch-dir), " if args.preread else ""
    return f"out of memory (RAM): {hint}use {smaller}, or run on a machine with more memory"


def _disk_message(error: OSError) -> str | None:
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"no space left on the disk{where}: free some space or choose another --o"
    if error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write{where}: {error.strerror}; choose another --o"
    return None


def run(args: argparse.Namespace) -> int:
    from novomap.outputs.progress import RunLog

    out_dir = Path(args.output)
    log: RunLog | None = None
    previous_handler = _catch_termination()
    try:
        _check_arguments(args)
        _prepare_folder(out_dir)
        log = RunLog(out_dir, quiet=args.quiet, verbose=args.verbose)
        return _run_job(args, out_dir, log)
    except BaseException as error:  # noqa: BLE001 - every way out is recorded for RELION, then re-raised
        replacement = _record_failure(error, args, out_dir, log)
        if replacement is not None:
            raise replacement from error
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if log is not None:
            log.close()


def _catch_termination():
    """SIGTERM (a queue's time limit, `kill`) ends the job like Ctrl-C, so RELION_JOB_EXIT_FAILURE is written."""

    def terminate(signum, frame):
        raise KeyboardInterrupt("terminated (SIGTERM)")

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _record_failure(error: BaseException, args: argparse.Namespace, out_dir: Path, log) -> NovomapError | None:
    """Write run.err and the RELION exit marker (when the folder exists); the user-facing error, if it changes."""
    from novomap.outputs.pipeline import JobAborted, finish_job
    from novomap.outputs.progress import RunLog

    replacement: NovomapError | None = None
    if not isinstance(error, NovomapError):
        if _is_out_of_memory(error):
            replacement = NovomapError(_out_of_memory_message(args))
        elif isinstance(error, OSError) and _disk_message(error):
            replacement = NovomapError(_disk_message(error))
    if not out_dir.is_dir():
        return replacement
    if log is None:
        log = RunLog(out_dir, quiet=True)
        owned = True
    else:
        owned = False
    try:
        if isinstance(error, KeyboardInterrupt):
            log.error(f"novomap initial-model: {error or 'interrupted'}")
        elif isinstance(error, NovomapError) or replacement is not None:
            log.error(f"novomap initial-model: error: {replacement or error}")
        else:  # a bug: keep the whole story
            log.error("".join(traceback.format_exception(type(error), error, error.__traceback__)))
        finish_job(out_dir, "aborted" if isinstance(error, JobAborted) else "failure")
    finally:
        if owned:
            log.close()
    return replacement


REPORT_INTERVAL_S = 90.0


def _run_job(args: argparse.Namespace, out_dir: Path, log) -> int:
    from novomap.device import select_devices
    from novomap.initial_model import run_initial_model
    from novomap.io.star import read_particle_star
    from novomap.outputs.pipeline import JobAborted, abort_requested, finish_job
    from novomap.outputs.progress import ProgressDisplay, batch_plan, format_duration
    from novomap.vdam.config import VdamConfig

    started = time.perf_counter()
    log.to_file(f"# {shlex.join(['novomap', *sys.argv[1:]])}")
    log.to_file(f"# started {time.strftime('%Y-%m-%d %H:%M:%S')} in {os.getcwd()}")
    device = select_devices(args.gpu, args.threads)
    _check_files(args)
    table = read_particle_star(args.input)
    n_particles = len(table.particles)
    box = int(table.optics["rlnImageSize"].iloc[0])
    pixel_size_a = float(table.optics["rlnImagePixelSize"].iloc[0])
    diameter = args.particle_diameter
    if diameter is None:
        diameter = (box - 5) * pixel_size_a
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
        max_healpix_order=max(_healpix_order(args.sampling), _healpix_order(args.finest_sampling)),
        seed=args.seed,
        pool=max(0, args.pool),
    )
    log.info(
        f"novomap initial-model: {n_particles} particles of {box} px at {pixel_size_a:g} Å/px, mask {diameter:.0f} Å, "
        f"{config.n_iter} iterations, K = {config.n_classes}, symmetry {args.sym} at the end, on {device}"
    )
    log.info(f"output: {out_dir}/ (progress in run.out, pictures in report.html, maps in view.cxc)")

    display = ProgressDisplay(log, config.n_iter, batch_plan(config, n_particles), final_pass_particles=n_particles)
    reported: set[int] = set()
    last_report = [started]

    def report(final: bool, reference: str | None = None) -> None:
        if not args.report:
            return
        from novomap.outputs.report import build_report

        try:
            build_report(out_dir, reference=reference, reference_pixel_size_a=args.reference_pixel_size, final=final)
        except Exception as error:  # noqa: BLE001 - the pictures must never stop the job
            display.message(f"warning: the report was not updated ({error})")
            log.error(f"warning: the report was not updated: {''.join(traceback.format_exception(type(error), error, error.__traceback__))}")

    def on_write(optimiser_star: Path) -> None:
        iteration = int(optimiser_star.name[len("run_it"):].split("_")[0])
        log.detail(f"wrote {optimiser_star.parent}/run_it{iteration:03d}_*")
        # drawing the report takes seconds of CPU: during the run, refresh it at most every
        # REPORT_INTERVAL_S so that it never costs a short job a noticeable share of its time
        if iteration not in reported and time.perf_counter() - last_report[0] >= REPORT_INTERVAL_S:
            reported.add(iteration)
            report(final=False)
            last_report[0] = time.perf_counter()

    def progress(figures: dict) -> None:
        display.update(figures)
        if abort_requested(out_dir):
            raise JobAborted(f"stopped after iteration {figures['iteration']}: RELION asked to abort (RELION_JOB_ABORT_NOW)")
        if figures["iteration"] == config.n_iter:
            then = "" if args.sym.upper() == "C1" else f", then aligning the {args.sym} symmetry axes"
            display.stage(f"final pass: assigning all {n_particles} particles with the final map{then}")

    with display:
        result = run_initial_model(
            args.input,
            out_dir,
            config,
            symmetry=args.sym,
            device=device,
            preread=args.preread,
            scratch_dir=args.scratch_dir,
            continue_from=args.continue_from,
            progress=progress,
            on_write=on_write,
        )
        _finish_outputs(args, out_dir, result, diameter, display)
        if args.report:
            display.stage("drawing the report" + (" (superposing the reference for the FSC)" if args.reference else ""))
        report(final=True, reference=args.reference)

    log.summary(
        f"initial model: {result.initial_model} ({args.sym}, symmetry score {result.symmetry_score:.3f}) "
        f"in {format_duration(time.perf_counter() - started)}"
    )
    if args.report:
        log.summary(f"report: {out_dir / 'report.html'}   view: chimerax {out_dir / 'view.cxc'}")
    finish_job(out_dir, "success")
    return 0


def _finish_outputs(args: argparse.Namespace, out_dir: Path, result, diameter_a: float, display) -> None:
    """RELION_OUTPUT_NODES.star and view.cxc for the final maps."""
    from novomap.io.mrc import read_map
    from novomap.outputs.pipeline import contour_level, job_output_nodes, write_chimerax_script, write_output_nodes

    iteration = result.state.iteration
    class_maps = sorted(out_dir.glob(f"run_it{iteration:03d}_class*.mrc"))
    data_star = out_dir / f"run_it{iteration:03d}_data.star"
    nodes = job_output_nodes(args.output, result.initial_model, class_maps, data_star if data_star.is_file() else None)
    write_output_nodes(out_dir, nodes)
    views = []
    for path in [result.initial_model, *class_maps]:
        volume, pixel_size_a = read_map(path)
        views.append((path.name, contour_level(volume, pixel_size_a, diameter_a, args.mass_kda)))
    write_chimerax_script(out_dir, views)
    display.message(f"wrote {out_dir / 'RELION_OUTPUT_NODES.star'} and {out_dir / 'view.cxc'}")


def relion_external(argv: list[str] | None = None) -> int:
    """`novomap-initial-model`: the same command as one program, for RELION's External job ("External executable")."""
    from novomap.commands.main import main

    return main(["initial-model", *(sys.argv[1:] if argv is None else argv)])
