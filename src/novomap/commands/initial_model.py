"""`novomap initial-model`: RELION 4's "3D initial model" job (VDAM + align symmetry), one command.

Also a RELION 4/5 "External" job: `novomap initial-model --o External/jobNNN/ --in_parts particles.star --j N`
writes RELION_OUTPUT_NODES.star and RELION_JOB_EXIT_SUCCESS/FAILURE/ABORTED into its folder and stops
when RELION creates RELION_JOB_ABORT_NOW there. Progress goes to the terminal (live) and DIR/run.out,
errors to DIR/run.err; the picture report (DIR/report.html) and DIR/view.cxc are updated as it runs.
"""

from __future__ import annotations

import argparse
import errno
import functools
import math
import os
import shlex
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from novomap.errors import InputError, NovomapError, Terminated

if TYPE_CHECKING:  # the job's modules load lazily (a short --help)
    from novomap.vdam.config import VdamConfig

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
    from novomap.io.cryosparc import add_cryosparc_arguments

    add_cryosparc_arguments(io)  # --passthrough, --cs-project-dir: for a cryoSPARC .cs given as --i
    io.add_argument("--o", dest="output", required=True, metavar="DIR", help="output folder (created); RELION-style run_itNNN_* files and initial_model.mrc")
    io.add_argument("--continue", dest="continue_from", metavar="OPTIMISER_STAR", help="resume from DIR/run_itNNN_optimiser.star of an earlier run (without --i: the particles it was started with)")
    io.add_argument(
        "--relion-version", choices=["4", "5", "auto"], default="auto",
        help="RELION whose node type labels RELION_OUTPUT_NODES.star uses; auto: from ./default_pipeline.star, "
        "else the particles file's '# version' line, else 5 (default: %(default)s)",
    )
    opt = parser.add_argument_group("optimisation (RELION's Optimisation tab)")
    opt.add_argument("--iter", type=int, default=100, help="number of VDAM mini-batches (default: %(default)s, as in the RELION tutorial)")
    opt.add_argument("--K", dest="classes", type=int, default=1, help="number of classes (default: %(default)s)")
    opt.add_argument("--particle-diameter", type=float, default=None, metavar="A", help="mask diameter in Å (default: box size minus 5 px, as RELION)")
    opt.add_argument("--flatten-solvent", dest="flatten_solvent", action="store_true", default=True, help="multiply the map by a soft spherical mask of the particle diameter each iteration (default: on)")
    opt.add_argument("--no-flatten-solvent", dest="flatten_solvent", action="store_false", help="do not flatten the solvent")
    opt.add_argument("--sym", default="C1", help="point group: imposed on the class maps every 5 iterations once the race of starts has chosen (RELION's job runs in C1 throughout), and applied to the final map; e.g. C1, C4, D2, T, O, I, or auto: at 70 %% of the run the C1 map proposes groups and its particles choose one, imposed from there (if they keep C1, the final map is judged the same way; a group chosen at the end of the run is checked once more against larger groups), and it is applied; when that map's evidence is weak, the job runs again with each polyhedral group containing the group found (I, O, T) imposed until one fits, and keeps the map that fits the particles best; when its evidence holds but its fold changed after the race of starts, only the polyhedral group the particles scored best is tried (--retries 0: no trials) (DIR/symmetry.txt says which and why) (default: %(default)s)")
    opt.add_argument(
        "--starts", type=int, default=-1, metavar="N",
        help="random starts raced at the beginning: the best two (and any start the particles cannot tell from the "
        "second) go on after a tenth of the iterations, the best one after three tenths, by the likelihood of the same particles (1: a single start, as RELION; default: 5 for "
        "--K 1, 2 for --K 2, 1 from --K 3 on, where the classes are themselves random starts)",
    )
    opt.add_argument(
        "--finalists", type=int, default=4, metavar="N",
        help="a --K 1 run without a group (C1, or auto until a group is chosen) carries the race's N best other starts on "
        "beside the winner, those the particles could not tell clearly from it; at 70 %% of --iter the two runs whose pseudo "
        "half-sets agree best at their poses go on, at --iter the better one (a start that splits its particles between "
        "a pose and its mate about a pseudo-symmetry axis agrees worse); each costs up to ~40 %% of the run's time after "
        "the race. With a group of high order (T, O, I) every start races to the race's last round, and the best other "
        "start goes on, whatever the winner's lead, to half of --iter, where the better run is kept "
        "(0: none; default: %(default)s)",
    )
    opt.add_argument(
        "--max-extra-iter", type=int, default=-1, metavar="N",
        help="when the map still changes at --iter (its agreement with the map of 20 iterations before, up to the run's "
        "resolution, is below 0.95), go on in the final phase's settings until it settles, at most N more iterations "
        "(-1: as many as --iter with --K 1, none with several classes, whose maps move more between iterations; "
        "0: stop at --iter, as RELION; default: %(default)s)",
    )
    opt.add_argument(
        "--retries", type=int, default=1, metavar="N",
        help="when the evidence flags the map as a likely wrong fold (its projections lack angular structure the "
        "particles have: 'ring misfit' in run.out), run again from new random starts, at most N times, and keep the "
        "attempt whose map fits the particles best (a --K 1 run's retries run with --retry-classes classes, so that junk can take one); the others stay in DIR/attemptN (with several classes, the largest class's map is judged; with --sym auto, a weak map runs with the polyhedral groups containing its group instead; 0: never; default: %(default)s)",
    )
    opt.add_argument(
        "--retry-classes", type=int, default=2, metavar="N",
        help="classes of a --K 1 run's retries (--retries): with 2, particles the map cannot explain (junk) can take a class of their own, "
        "which turned real runs that blended junk into the map right; on clean particles the classes share the particles and the larger "
        "class's map is a little coarser (1: one class again; default: %(default)s)",
    )
    for name, which, auto in (
        ("ini", "first", "0.5 %% of the particles, 200 to 5,000"),
        ("fin", "last", "10 %% of the particles, 1,000 to 50,000, and at most half of them (RELION: no cap): with all of a small "
         "data set in every late mini-batch the run loses the batches' randomness"),
    ):
        opt.add_argument(
            f"--grad-{name}-subset", f"--grad_{name}_subset", dest=f"grad_{name}_subset", type=int, default=-1, metavar="N",
            help=f"particles in the {which} mini-batches (RELION's --grad_{name}_subset; -1: automatic, {auto}; default: %(default)s)",
        )
    opt.add_argument("--tau2-fudge", type=float, default=4.0, metavar="T", help="regularisation T reached after the initial phase (default: %(default)s)")
    sampling = parser.add_argument_group("sampling (RELION's Sampling tab)")
    sampling.add_argument("--sampling", type=float, default=15.0, metavar="DEG", help="initial angular sampling in degrees: 30, 15, 7.5 or 3.75 (the fine step; default: %(default)s)")
    sampling.add_argument("--offset-range", type=float, default=6.0, metavar="PX", help="translational search range in pixels of the input images (default: %(default)s)")
    sampling.add_argument("--offset-step", type=float, default=2.0, metavar="PX", help="translational search step in pixels of the input images (default: %(default)s)")
    sampling.add_argument(
        "--maxsig", type=int, default=-1, metavar="N",
        help="most coarse hypotheses (class, orientation, translation) per particle taken on to the fine pass (RELION's --maxsig; "
        "-1: 100 whatever the number of classes, where RELION's is 100 x K: the same separation of junk in less time, "
        "benchmarks/results/2026-12-05-s37-classes.md; default: %(default)s)",
    )
    sampling.add_argument("--no-auto-sampling", dest="auto_sampling", action="store_false", help="keep the initial angular sampling throughout")
    sampling.add_argument(
        "--finest-sampling", type=float, default=7.5, metavar="DEG",
        help="finest angular sampling auto-sampling may reach: 7.5 or 3.75 degrees (RELION allows 3.75, which makes the coarse search 8x costlier; default: %(default)s)",
    )
    sampling.add_argument(
        "--max-resolution", type=float, default=None, metavar="A",
        help="highest resolution the job works to, in Å: particles are Fourier-cropped as they are read to a box whose "
        "Nyquist frequency is this (default: 7 Å, finer for a small box so that at least 64 px remain; never finer than the data)",
    )
    sampling.add_argument(
        "--final-at-working-grid", dest="final_fine_grid", action="store_false",
        help="make initial_model.mrc on the working grid alone (up to --max-resolution), as RELION would; by default, "
        "particles finer than the working grid are also reconstructed at their final poses on a grid up to twice as fine, "
        "which gives the map the detail beyond --max-resolution that the poses support",
    )
    io.add_argument(
        "--output-pixel-size", type=float, default=None, metavar="A",
        help="pixel size in Å of the maps written (default: that of the optics group with the largest box, at its box size)",
    )
    compute = parser.add_argument_group("compute (RELION's Compute and Running tabs)")
    compute.add_argument(
        "--pool", type=int, default=0, metavar="N",
        help="read and search at least N particles together (RELION's pooled particles); by default (0), and when "
        "N is smaller, as many as keep the E-step's arrays near 50 MB (usually 10-500)",
    )
    compute.add_argument("--preread", action="store_true", help="read all particles into RAM first")
    compute.add_argument("--scratch-dir", metavar="DIR", help="copy the particle stacks to this fast local folder first")
    compute.add_argument("--j", dest="threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    compute.add_argument("--gpu", nargs="?", const="", default=None, metavar="IDS", help='use CUDA GPUs, RELION syntax "0,1"; empty means all visible')
    compute.add_argument("--seed", type=int, default=1, help="random seed; the same seed on the same device gives the same result, to the bit when nothing else runs on the machine (default: %(default)s)")
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


#: Options that --continue takes from the checkpoint's run where the command line leaves them out (as
#: RELION's --continue reads them from the optimiser file), with the flag that sets each; the compute
#: options (--j, --gpu, --pool, --preread, --scratch-dir), --o and the messages' are the new command line's.
RUN_OPTIONS = {
    "iter": "--iter", "classes": "--K", "particle_diameter": "--particle-diameter", "flatten_solvent": "--flatten-solvent",
    "sym": "--sym", "starts": "--starts", "finalists": "--finalists", "max_extra_iter": "--max-extra-iter", "retries": "--retries",
    "retry_classes": "--retry-classes", "grad_ini_subset": "--grad-ini-subset", "grad_fin_subset": "--grad-fin-subset",
    "tau2_fudge": "--tau2-fudge", "sampling": "--sampling", "offset_range": "--offset-range", "offset_step": "--offset-step",
    "maxsig": "--maxsig", "auto_sampling": "--no-auto-sampling", "finest_sampling": "--finest-sampling",
    "max_resolution": "--max-resolution", "final_fine_grid": "--final-at-working-grid", "output_pixel_size": "--output-pixel-size",
    "seed": "--seed", "reference": "--reference", "reference_pixel_size": "--reference-pixel-size", "mass_kda": "--mass-kda",
    "cs_passthrough": "--passthrough", "cs_project_dir": "--cs-project-dir",
}  # fmt: skip
#: the switches among them: the value each flag sets (the other value is the default)
_SWITCHES = {"flatten_solvent": ("--flatten-solvent", "--no-flatten-solvent"), "auto_sampling": ("(auto-sampling)", "--no-auto-sampling"),
             "final_fine_grid": ("(final fine grid)", "--final-at-working-grid")}  # fmt: skip
_PATHS = ("reference", "cs_passthrough", "cs_project_dir")  # restored only where they still exist


#: a working grid whose Nyquist is coarser than this (Å) gets a warning: an initial model is wanted at
#: 7-10 Å, and 32 px particles at 7.08 Å/px (Nyquist 14.2 Å) gave 47.7 Å from 300 particles
#: (benchmarks/results/2026-12-04-s33-new-user.md), while 40 px at 5.83 Å/px (11.7 Å) reached its bound
COARSE_GRID_A = 12.0


def coarse_grid_warning(grid, max_resolution_a: float) -> str | None:
    """A warning when the working grid cannot carry an initial model's detail, naming the cause (None: fine)."""
    from novomap.io.working_grid import DEFAULT_MAX_BOX

    nyquist_a = 2 * grid.pixel_size_a
    if nyquist_a <= COARSE_GRID_A:
        return None
    field_a = grid.box * grid.pixel_size_a
    if grid.pixel_size_a <= min(grid.group_pixel_size_a) * (1 + 1e-6):
        cause = "the particles' own pixel size sets it (binned particles: extract them at a finer pixel size for this job)"
    elif grid.box >= DEFAULT_MAX_BOX:
        cause = f"the working box is capped at {DEFAULT_MAX_BOX} px, here across a {field_a:.0f} Å field of view (a smaller extraction box helps)"
    else:
        cause = f"--max-resolution {max_resolution_a:g} Å sets it ({COARSE_GRID_A:g} Å or finer keeps the detail 3D classification starts from)"
    return (
        f"warning: the working grid ({grid.box} px at {grid.pixel_size_a:.3g} Å/px) stops at {nyquist_a:.3g} Å, coarser than "
        f"an initial model is usually made ({COARSE_GRID_A:g} Å); {cause}"
    )


def _check_arguments(args: argparse.Namespace) -> None:
    """Checks that need no file: a bad value is reported before anything is read or written."""
    if args.continue_from is not None:
        if not args.input:
            args.input = _input_of_checkpoint(args.continue_from)
        args.restored_options = _restore_run_options(args)
    if not args.input:
        raise NovomapError("--i particles.star is required")
    if args.iter < 1:
        raise NovomapError(f"--iter must be >= 1, not {args.iter}")
    if args.classes < 1:
        raise NovomapError(f"--K must be >= 1, not {args.classes}")
    if args.starts < 1 and args.starts != -1:
        raise NovomapError(f"--starts must be >= 1, not {args.starts}")
    for option, value, automatic in (
        ("--maxsig", args.maxsig, "100"),
        ("--grad-ini-subset", args.grad_ini_subset, "automatic"),
        ("--grad-fin-subset", args.grad_fin_subset, "automatic"),
    ):
        if value < 1 and value != -1:
            raise NovomapError(f"{option} must be >= 1 (or -1: {automatic}), not {value}")
    if args.finalists < 0:
        raise NovomapError(f"--finalists must be >= 0, not {args.finalists}")
    if args.retries < 0:
        raise NovomapError(f"--retries must be >= 0, not {args.retries}")
    if args.pool < 0:
        raise NovomapError(f"--pool must be >= 1 (or 0: chosen from memory), not {args.pool}")
    if args.retry_classes < 1:
        raise NovomapError(f"--retry-classes must be >= 1, not {args.retry_classes}")
    if args.max_extra_iter < -1:
        raise NovomapError(f"--max-extra-iter must be >= 0 (or -1: as many as --iter), not {args.max_extra_iter}")
    if abs(args.seed) >= 2**62:  # the random generators take 64-bit seeds, and retries add to it
        raise NovomapError(f"--seed must be smaller than 2^62 in size, not {args.seed}")
    if args.offset_step <= 0 or args.offset_range < 0:
        raise NovomapError("--offset-step must be > 0 and --offset-range >= 0 (pixels)")
    if args.particle_diameter is not None and not args.particle_diameter > 0:
        raise NovomapError(f"--particle-diameter must be a positive number of Å, not {args.particle_diameter:g}")
    if args.mass_kda is not None and not args.mass_kda > 0:
        raise NovomapError(f"--mass-kda must be positive, not {args.mass_kda:g}")
    _healpix_order(args.sampling)
    if args.max_resolution is not None and not args.max_resolution > 0:
        raise NovomapError(f"--max-resolution must be a positive number of Å, not {args.max_resolution:g}")
    if args.output_pixel_size is not None and not args.output_pixel_size > 0:
        raise NovomapError(f"--output-pixel-size must be a positive number of Å, not {args.output_pixel_size:g}")


def _stored_fingerprint(optimiser_star: str) -> dict:
    """The fingerprint in the checkpoint beside DIR/run_itNNN_optimiser.star (outputs.continuation)."""
    from novomap.outputs.relion import state_path_for

    state_file = state_path_for(optimiser_star)
    try:
        stat = state_file.stat()
        return _read_fingerprint(str(state_file), stat.st_mtime_ns, stat.st_size)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file is the user's to replace
        raise InputError(f"cannot read the checkpoint {state_file.name} beside it ({type(error).__name__}); continue from an earlier iteration", optimiser_star) from None


@functools.lru_cache(maxsize=4)
def _read_fingerprint(state_file: str, mtime_ns: int, size: int) -> dict:
    """Read once per version of the file (keyed by its time and size): the state file also holds the
    maps and moments (16 MB for the real tutorial job), and --continue without --i reads it early."""
    import torch

    del mtime_ns, size
    return torch.load(state_file, map_location="cpu", weights_only=False).get("fingerprint") or {}


def _restore_run_options(args: argparse.Namespace) -> list[str]:
    """Set the RUN_OPTIONS that the command line left out to the checkpoint's run's values -> the
    restored ones as flags with values, for run.out. Only where the command line is known
    (args.given_options, set by novomap.commands.main) and the checkpoint recorded its arguments
    (runs since session 34; older ones: every option as given, checked against the run's settings)."""
    given = getattr(args, "given_options", None)
    if given is None:
        return []
    restored = []
    for name, value in (_early_fingerprint(args.continue_from).get("arguments") or {}).items():
        if name not in RUN_OPTIONS or name in given or getattr(args, name, None) == value:
            continue
        if name in _PATHS and value is not None and not Path(value).exists():
            continue  # given relative to another folder, or gone: the option as this command line has it
        setattr(args, name, value)
        if name in _SWITCHES:
            restored.append(_SWITCHES[name][0 if value else 1])
        else:
            restored.append(f"{RUN_OPTIONS[name]} {value:g}" if isinstance(value, float) else f"{RUN_OPTIONS[name]} {value}")
    return restored


def _input_of_checkpoint(optimiser_star: str) -> str | None:
    """The particles file a checkpoint's run was started with, if it is still there (as RELION's
    --continue reads it from the optimiser file); None otherwise."""
    particles_file = _early_fingerprint(optimiser_star).get("particles_file")
    return particles_file if particles_file and Path(particles_file).is_file() else None


def _early_fingerprint(optimiser_star: str) -> dict:
    """_stored_fingerprint for the argument checks, {} where the checkpoint is missing or foreign: that is
    reported later (_check_files, _check_continue), with its own message."""
    try:
        return _stored_fingerprint(optimiser_star)
    except InputError:
        return {}


def _prepare_folder(out_dir: Path) -> None:
    """Create the output folder (checked writable). Its earlier run's exit marker and nodes stay until
    the job is accepted (_run_job calls pipeline.start_job): a refused run leaves them as they were."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NovomapError(f"--o {out_dir} is a file; give a folder (it is created if needed)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NovomapError(f"cannot create the output folder {out_dir}: {error.strerror}; choose another --o") from None
    if not os.access(out_dir, os.W_OK):
        raise NovomapError(f"cannot write into {out_dir}; choose another --o")


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


def _fingerprint(args: argparse.Namespace, config) -> dict:
    """What a run's checkpoints record of its particles and settings (outputs.continuation)."""
    from novomap.outputs.continuation import run_fingerprint

    fingerprint = run_fingerprint(args.input, config, {name: getattr(args, name, None) for name in ("max_resolution", "output_pixel_size")})
    fingerprint["arguments"] = {name: getattr(args, name, None) for name in RUN_OPTIONS}  # what a --continue restores
    return fingerprint


def _check_continue(args: argparse.Namespace, fingerprint: dict) -> None:
    """Refuse --continue from a run made from other particles or with other settings (one line)."""
    from novomap.outputs.continuation import check_continuation

    check_continuation(_stored_fingerprint(args.continue_from), fingerprint, args.input, args.continue_from)


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


def _still_moving_line(figures: dict, more: int, config: VdamConfig) -> str:
    """run.out's line when the run goes on past --iter (vdam.convergence: a run goes on only after a
    measured agreement, never None here)."""
    agreement, threshold = figures["map_agreement"], config.convergence_min_fsc
    compared = f"agreement with iteration {figures['iteration'] - config.convergence_lag}: {agreement:.3f}"
    plural = "s" if more > 1 else ""
    if agreement >= threshold:
        before = figures.get("map_agreement_before")
        moved = f" ({before:.3f} at iteration {figures['iteration'] - config.convergence_check_every})" if before is not None else ""
        return (
            f"the map agrees now ({compared} >= {threshold}) but had moved at the check before{moved}: "
            f"{more} more iteration{plural} to confirm"
        )
    return f"the map is still changing ({compared} < {threshold}): {more} more iteration{plural}"


def _stopped_as_symmetric_line(figures: dict, config: VdamConfig) -> str:
    """run.out's line when a C1 run stops at --iter unsettled because its map looks symmetric (initial_model.stops_as_symmetric)."""
    looks = figures["c1_map_looks"]
    return (
        f"the map is still changing (agreement with iteration {figures['iteration'] - config.convergence_lag}: "
        f"{figures['map_agreement']:.3f} < {config.convergence_min_fsc}), but it looks {looks}-symmetric: a symmetric particle's "
        f"C1 map keeps changing between its equivalent poses, so the run stops at --iter (--sym {looks} or --sym auto if the particle is {looks})"
    )


def _symmetry_phrase(sym: str, config: VdamConfig) -> str:
    """How the job treats the group, for run.out's first line."""
    from novomap.symmetry.choice import is_auto

    if is_auto(sym) and config.auto_symmetry_at > 0:
        return f"symmetry auto (chosen by the particles at {config.auto_symmetry_at} % of the run, and again later if they keep C1)"
    if is_auto(sym):
        return "symmetry auto (chosen by the particles: during the run if the C1 map is slow to settle, else at the end)"
    if sym.strip().upper() == "C1":
        return "symmetry C1"
    if config.impose_symmetry_every <= 0:
        return f"symmetry {sym} (applied to the final map)"
    from novomap.vdam.imposition import imposition_starts_after

    return f"symmetry {sym} (imposed on the class maps after iteration {imposition_starts_after(config)} and applied to the final map)"


def _auto_symmetry_line(figures: dict) -> str:
    """run.out's line when `--sym auto` chose its group during the run (auto_symmetry.group_mid_run)."""
    group, before = figures["auto_symmetry"], figures.get("auto_symmetry_from")
    if before == group:
        return f"--sym auto: at iteration {figures['iteration']} the map still moves in {group}, and no larger group containing {group} wins with the particles: {group} stays"
    if before is not None:
        return (
            f"--sym auto: at iteration {figures['iteration']} the map still moved in {before}, and the particles chose {group}, which contains it "
            f"(symmetry.txt in the job folder says why); {group} is imposed from here and the map must settle in it"
        )
    if group == "C1":
        return f"--sym auto: at iteration {figures['iteration']} the particles keep C1; the group is chosen again later"
    dropped = figures.get("finalists_dropped") or []
    stopped = f"; the race's runners-up (start {', '.join(map(str, dropped))}) stop, they are for C1 particles" if dropped else ""
    return (
        f"--sym auto: at iteration {figures['iteration']} the particles chose {group} (symmetry.txt in the job folder says why); "
        f"{group} is imposed from here and the map must settle in it (at the end only a larger group containing {group} can replace it){stopped}"
    )


def run(args: argparse.Namespace) -> int:
    from novomap.outputs.progress import RunLog

    out_dir = Path(args.output)
    log: RunLog | None = None
    stage = _JobStage()
    previous_handler = _catch_termination()
    try:
        _check_arguments(args)
        _prepare_folder(out_dir)
        log = RunLog(out_dir, quiet=args.quiet, verbose=args.verbose)
        return _run_job(args, out_dir, log, stage)
    except BaseException as error:  # noqa: BLE001 - every way out is recorded for RELION, then re-raised
        replacement = _record_failure(error, args, out_dir, log, stage)
        if replacement is not None:
            raise replacement from error
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if log is not None:
            _close_quietly(log)


@dataclass
class _JobStage:
    """started: the job was accepted (arguments, inputs and any --continue checked) and owns the folder's
    exit marker; before that, a refusal leaves an earlier run's marker as it was."""

    started: bool = False


def _catch_termination():
    """SIGTERM (a queue's time limit, `kill`) ends the job like Ctrl-C, so RELION_JOB_EXIT_FAILURE is written."""

    def terminate(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _record_failure(error: BaseException, args: argparse.Namespace, out_dir: Path, log, stage: _JobStage) -> NovomapError | None:
    """Write run.err and the RELION exit marker (when the folder exists; before the job started, only where
    no earlier run left a marker: a refused --continue keeps a finished run's SUCCESS); the user-facing
    error, if it changes."""
    from novomap.outputs.pipeline import EXIT_MARKERS, JobAborted, finish_job
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
            checkpoint = _last_checkpoint(out_dir)
            then = f"; continue with --continue {checkpoint}" if checkpoint is not None else ""
            log.error(f"novomap initial-model: {str(error) or 'interrupted'}{then}")
        elif isinstance(error, NovomapError) or replacement is not None:
            log.error(f"novomap initial-model: error: {replacement or error}")
        else:  # a bug: keep the whole story
            log.error("".join(traceback.format_exception(type(error), error, error.__traceback__)))
        if stage.started or not any((out_dir / name).is_file() for name in EXIT_MARKERS):
            finish_job(out_dir, "aborted" if isinstance(error, JobAborted) else "failure")
    except OSError:  # a full or vanished disk: the terminal still gets the one line
        pass
    finally:
        if owned:
            _close_quietly(log)
    return replacement


def _close_quietly(log) -> None:
    try:
        log.close()
    except OSError:  # flushing onto a full disk
        pass


def _last_checkpoint(out_dir: Path) -> Path | None:
    """The newest DIR/run_itNNN_optimiser.star with its state file beside it (what --continue reads)."""
    from novomap.outputs.relion import state_path_for

    written = {}
    for path in out_dir.glob("run_it*_optimiser.star"):
        number = path.name[len("run_it"):-len("_optimiser.star")]
        if number.isdigit() and state_path_for(path).is_file():
            written[int(number)] = path
    return written[max(written)] if written else None


REPORT_INTERVAL_S = 90.0


def mid_run_report_due(since_last_s: float, left_s: float | None) -> bool:
    """Whether to redraw the report at a written iteration, since_last_s after the last drawing (or
    the start), with left_s estimated to go (None: not known yet).

    Drawing takes seconds of CPU: at most every REPORT_INTERVAL_S, so that it never costs a short job
    a noticeable share of its time, and not when the final report is due within a third of that (the
    real tutorial job drew one at iteration 90, ~10 s before the final one)."""
    if left_s is not None and left_s < REPORT_INTERVAL_S / 3:
        return False
    return since_last_s >= REPORT_INTERVAL_S


def _working_grid(table, args: argparse.Namespace):
    """(WorkingGrid, max resolution in Å) of the job: --max-resolution, else the automatic limit."""
    from novomap.io.particles import working_grid_of
    from novomap.io.working_grid import auto_max_resolution_a

    if args.max_resolution is not None:
        max_resolution_a = args.max_resolution
    else:
        auto = working_grid_of(table, None, None)
        max_resolution_a = auto_max_resolution_a(auto.group_box, auto.group_pixel_size_a)
    return working_grid_of(table, max_resolution_a, args.output_pixel_size), max_resolution_a


def _run_job(args: argparse.Namespace, out_dir: Path, log, stage: _JobStage) -> int:
    from novomap.device import select_devices
    from novomap.initial_model import run_initial_model
    from novomap.io.cryosparc import CryosparcOptions
    from novomap.io.star import check_plausible, read_particle_star
    from novomap.outputs.attempts import set_aside_earlier_run
    from novomap.outputs.pipeline import JobAborted, abort_requested, finish_job, start_job
    from novomap.outputs.progress import ProgressDisplay, batch_plan, format_duration
    from novomap.symmetry.choice import is_auto, requested_group
    from novomap.vdam.config import VdamConfig, starts_for_classes
    from novomap.vdam.finalists import race_for_group
    from novomap.vdam.iterate import final_pass_size

    started = time.perf_counter()
    log.to_file(f"# {shlex.join(['novomap', *sys.argv[1:]])}")
    log.to_file(f"# started {time.strftime('%Y-%m-%d %H:%M:%S')} in {os.getcwd()}")
    device = select_devices(args.gpu, args.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.threads is not None and args.threads > cores:
        log.error(
            f"warning: --j {args.threads} asks for more threads than the {cores} core(s) this job may use; "
            f"they compete for the cores and the job runs slower (--j {cores} suits this machine)",
            to_stderr=True,
        )
    _check_files(args)
    cryosparc = CryosparcOptions.from_args(args)  # a .cs input's passthrough and project folder
    table = read_particle_star(args.input, cryosparc)
    check_plausible(table)
    n_particles = len(table.particles)
    grid, max_resolution_a = _working_grid(table, args)
    # offsets are given in the input's pixels (those of the output grid's group), as RELION reads them
    input_to_working = grid.input_pixel_size_a / grid.pixel_size_a
    diameter = args.particle_diameter
    if diameter is None:  # RELION's default, in the smallest box of any group
        diameter = min((b - 5) * p for b, p in zip(grid.group_box, grid.group_pixel_size_a))
    config = VdamConfig(
        n_iter=args.iter,
        n_classes=args.classes,
        particle_diameter_a=diameter,
        flatten_solvent=args.flatten_solvent,
        healpix_order=_healpix_order(args.sampling),
        offset_range_px=args.offset_range * input_to_working,
        offset_step_px=args.offset_step * input_to_working,
        tau2_fudge=args.tau2_fudge,
        auto_sampling=args.auto_sampling,
        max_healpix_order=max(_healpix_order(args.sampling), _healpix_order(args.finest_sampling)),
        seed=args.seed,
        pool=args.pool,
        n_starts=args.starts if args.starts > 0 else starts_for_classes(args.classes),
        runners_up=args.finalists,
        max_extra_iterations=args.max_extra_iter,
        retries=args.retries,
        retry_classes=args.retry_classes,
        final_fine_grid=args.final_fine_grid,
        max_significant=args.maxsig,
        initial_subset=args.grad_ini_subset,
        final_subset=args.grad_fin_subset,
    )
    fingerprint = _fingerprint(args, config)
    if args.continue_from is not None:
        _check_continue(args, fingerprint)
        if getattr(args, "restored_options", None):
            log.info(f"--continue: options left out taken from the run's checkpoint: {', '.join(args.restored_options)}")
    else:
        earlier = set_aside_earlier_run(out_dir)
        if earlier is not None:
            log.info(f"an earlier run's files in {out_dir} were moved to {earlier}/, so that this run's outputs stand alone")
    start_job(out_dir)  # the earlier run's exit marker and nodes go only now: the job is accepted
    stage.started = True
    inputs = ", ".join(sorted({f"{b} px at {p:g} Å/px" for b, p in zip(grid.group_box, grid.group_pixel_size_a)}))
    log.info(
        f"novomap initial-model: {n_particles} particles of {inputs}, mask {diameter:.0f} Å, "
        f"{config.n_iter} iterations, K = {config.n_classes}, {_symmetry_phrase(args.sym, config)}, on {device}"
    )
    nyquist_a = 2 * min(grid.group_pixel_size_a)
    if max_resolution_a < nyquist_a:  # the data stop first
        log.info(f"{grid.describe()}; resolution limit {nyquist_a:.3g} Å (the particles' Nyquist; --max-resolution {max_resolution_a:.3g} Å)")
    else:
        log.info(f"{grid.describe()}; resolution limit {max_resolution_a:.3g} Å (--max-resolution)")
    coarse = coarse_grid_warning(grid, max_resolution_a)
    if coarse:
        log.error(coarse, to_stderr=True)
    fine_line = final_grid_line(grid) if config.final_fine_grid else None
    if fine_line:
        log.info(fine_line)
    log.info(f"output: {out_dir}/ (progress in run.out, pictures in report.html, maps in view.cxc)")

    final_pass_particles = final_pass_size(n_particles, config)
    raced = race_for_group(config, requested_group(args.sym))  # the race as the job runs it (initial_model)
    display = ProgressDisplay(log, config.n_iter, batch_plan(raced, n_particles), final_pass_particles=final_pass_particles, config=raced)
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
        if iteration not in reported and mid_run_report_due(time.perf_counter() - last_report[0], display.eta_seconds(iteration)):
            reported.add(iteration)
            report(final=False)
            last_report[0] = time.perf_counter()

    chosen_mid_run: list[str] = []  # --sym auto: the group the particles chose during the run (auto_symmetry.group_mid_run)

    def progress(figures: dict) -> None:
        more = figures.get("more_iterations", 0)
        if more:
            display.extend(figures["iteration"] + more)
        display.update(figures)
        if more:
            display.message(_still_moving_line(figures, more, config))
        elif figures.get("c1_map_looks"):
            display.message(_stopped_as_symmetric_line(figures, config))
        if figures.get("auto_symmetry"):
            chosen_mid_run.append(figures["auto_symmetry"])
            display.message(_auto_symmetry_line(figures))
        if abort_requested(out_dir):
            raise JobAborted(f"stopped after iteration {figures['iteration']}: RELION asked to abort (RELION_JOB_ABORT_NOW)")
        if figures["iteration"] >= config.n_iter and "more_iterations" in figures and not more:
            # the group as far as it is known: --sym's, or the one --sym auto chose during the run
            group = chosen_mid_run[-1] if chosen_mid_run and chosen_mid_run[-1] != "C1" else args.sym
            then = "" if group.upper() == "C1" else f", then aligning the {group} symmetry axes"
            if is_auto(group):
                then = ", then choosing the point group (the map proposes, the particles decide: up to a minute) and aligning its axes"
            which = f"all {n_particles} particles" if final_pass_particles == n_particles else f"{final_pass_particles} of the {n_particles} particles (a random sample and the last mini-batch's)"
            display.stage(f"final pass: assigning {which} with the final map{then}")

    def warn(line: str) -> None:  # run.out and run.err, and the terminal even with --quiet
        display.message(line)
        log.error(line, to_stderr=display.mode == "quiet")

    def on_retry(line: str, attempt_config: VdamConfig) -> None:
        display.message(line)
        display.restart(attempt_config, n_particles)

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
            max_resolution_a=max_resolution_a,
            output_pixel_size_a=args.output_pixel_size,
            fingerprint=fingerprint,
            cryosparc=cryosparc,
            on_retry=on_retry,
            notify=warn,
        )
        _finish_outputs(args, out_dir, result, diameter, display)

    log.summary(
        f"initial model: {result.initial_model} ({result.symmetry}, symmetry score {result.symmetry_score:.3f}) "
        f"in {format_duration(time.perf_counter() - started)}"
    )
    _summarise_confidence(log, result)
    if args.report:
        log.summary(f"report: {out_dir / 'report.html'}   view: chimerax {shlex.quote(str(out_dir / 'view.cxc'))}")
    finish_job(out_dir, "success")
    # the final report is drawn after the exit marker: RELION and scripts waiting for the marker need not
    # wait for the pictures (1-2 s, up to a minute with --reference), and no error or interrupt while
    # drawing them can turn the finished job into a failed one
    if args.report:
        display.message("drawing the report" + (" (superposing the reference for the FSC)" if args.reference else ""))
        try:
            report(final=True, reference=args.reference)
        except KeyboardInterrupt:
            log.error("novomap initial-model: the report was interrupted; the job itself had finished (`novomap report DIR` draws it)")
    return 0


def final_grid_line(grid) -> str | None:
    """What initial_model.mrc takes from a grid finer than the working grid, or None when there is none."""
    from novomap.io.working_grid import final_grid

    fine = final_grid(grid)
    if fine is None:
        return None
    return (
        f"initial_model.mrc: beyond {2 * grid.pixel_size_a:.3g} Å from the particles reconstructed at their final poses on "
        f"{fine.box} px at {fine.pixel_size_a:.4g} Å/px (Nyquist {2 * fine.pixel_size_a:.3g} Å; --final-at-working-grid: none)"
    )


def _summarise_confidence(log, result) -> None:
    """The symmetry decision and the evidence line (and a warning when weak) on the terminal and in run.out."""
    from novomap.symmetry.choice import summary_line, table_lines

    if result.symmetry_record is not None:
        log.summary(summary_line(result.symmetry_record))
        for line in table_lines(result.symmetry_record):
            log.to_file(f"  {line}")
    for pooled in result.pooled:
        log.summary(
            f"pooled: class {pooled.class_number}'s {pooled.n_particles} particles joined class {int(result.state.class_fraction.argmax()) + 1} "
            f"for initial_model.mrc (the same structure{', mirrored' if pooled.hand_flipped else ''}: map correlation {pooled.cc:.2f} after alignment)"
        )
    if result.evidence is not None:
        log.summary(result.evidence.line())
        if result.evidence.weak:
            log.summary(
                "warning: the evidence that this map is right is weak; check it before using it "
                "(report.html, 'How sure is the run'; docs/guide.md, 'When it fails')"
            )


def _finish_outputs(args: argparse.Namespace, out_dir: Path, result, diameter_a: float, display) -> None:
    """RELION_OUTPUT_NODES.star and view.cxc for the final maps."""
    from novomap.io.mrc import read_map
    from novomap.outputs.pipeline import contour_level, job_output_nodes, write_chimerax_script, write_output_nodes

    iteration = result.state.iteration
    class_maps = sorted(out_dir.glob(f"run_it{iteration:03d}_class*.mrc"))
    data_star = out_dir / f"run_it{iteration:03d}_data.star"
    relion_version, why = _relion_version(args)
    nodes = job_output_nodes(args.output, result.initial_model, class_maps, data_star if data_star.is_file() else None, relion_version)
    write_output_nodes(out_dir, nodes, relion_version)
    views = []
    for path in [result.initial_model, *class_maps]:
        volume, pixel_size_a = read_map(path)
        views.append((path.name, contour_level(volume, pixel_size_a, diameter_a, args.mass_kda)))
    write_chimerax_script(out_dir, views)
    display.message(f"wrote {out_dir / 'RELION_OUTPUT_NODES.star'} (RELION {relion_version} node labels: {why}) and {out_dir / 'view.cxc'}")


def _relion_version(args: argparse.Namespace) -> tuple[int, str]:
    """(RELION major version, why): --relion-version, or with auto detected from the project folder or the particles file."""
    from novomap.outputs.pipeline import detect_relion_version

    if args.relion_version != "auto":
        return int(args.relion_version), "--relion-version"
    return detect_relion_version(args.input, Path.cwd())


def relion_external(argv: list[str] | None = None) -> int:
    """`novomap-initial-model`: the same command as one program, for RELION's External job ("External executable")."""
    from novomap.commands.main import main

    return main(["initial-model", *(sys.argv[1:] if argv is None else argv)])
