"""`novomap demo`: simulate a tutorial-like beta-gal data set and build its initial model de novo.

The whole path a user takes, on data whose answer is known: simulate -> STAR/stacks ->
`novomap initial-model` (VDAM from random blobs, D2 applied at the end) -> FSC of
initial_model.mrc against the truth after aligning it (rotation, shift and hand).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from novomap.commands.simulate import describe, report, run_simulation
from novomap.demo_data import load_demo_map
from novomap.io.mrc import read_map
from novomap.maps.align import align_maps
from novomap.maps.fsc import fsc, resolution_at
from novomap.simulate import SimulationOptions

HELP = "simulate a tutorial-like beta-gal data set from the built-in map and build its initial model de novo"
EXAMPLE = "novomap demo --o novomap_demo --n 2000 --snr 0.1 --iter 100 --j 2"

#: The RELION 3.1 tutorial's particles (defocus 0.83-1.31 µm), looked for relative to the current folder.
TUTORIAL_STAR = Path("../shared/data/betagal_relion31_tutorial_metadata/Extract/job018/particles.star")
#: Without it: the tutorial's defocus range (Å).
TUTORIAL_DEFOCUS_A = (8000.0, 13000.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--o", type=Path, default=Path("novomap_demo"), metavar="DIR", help="output folder (default: novomap_demo)")
    parser.add_argument("--n", type=int, default=2000, metavar="N", help="number of particles (default: 2000)")
    parser.add_argument(
        "--snr",
        type=float,
        default=0.1,
        metavar="SNR",
        help="signal-to-noise ratio as in `novomap simulate` (default: 0.1, about that of the real tutorial data)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="INT", help="random seed of the simulation and the job (default: 0)")
    parser.add_argument("--iter", type=int, default=100, metavar="N", help="VDAM iterations of the initial-model job (default: 100)")
    parser.add_argument("--j", dest="threads", type=int, default=None, metavar="N", help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--gpu", nargs="?", const="", default=None, metavar="IDS", help='run the job on CUDA GPUs, RELION syntax "0,1"; empty means all visible (default: CPU)')


def demo_options(n: int, snr: float, seed: int, box: int, pixel_size_a: float) -> SimulationOptions:
    """Tutorial-like settings: the tutorial's CTFs if its STAR file is at hand, else its defocus range."""
    ctf_from = TUTORIAL_STAR if TUTORIAL_STAR.is_file() else None
    return SimulationOptions(
        n=n,
        snr=snr,
        box=box,
        pixel_size_a=pixel_size_a,
        seed=seed,
        defocus_min_a=TUTORIAL_DEFOCUS_A[0],
        defocus_max_a=TUTORIAL_DEFOCUS_A[1],
        ctf_from=ctf_from,
        particle_diameter_a=200.0,
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    volume, pixel_size_a = load_demo_map()
    box = volume.shape[-1]
    print(f"built-in map: beta-galactosidase (PDB 5A1A, D2), {box} px at {pixel_size_a:g} Å/px")
    options = demo_options(args.n, args.snr, args.seed, box, pixel_size_a)
    options.check()
    print(describe(options), flush=True)
    result = run_simulation(options, volume, args.o)
    report(result, time.perf_counter() - start)

    from novomap.commands.main import main as novomap_main

    job_dir = args.o / "InitialModel"
    command = [
        "initial-model", "--i", str(result.star_path), "--o", str(job_dir), "--iter", str(args.iter),
        "--particle-diameter", "200", "--sym", "D2", "--preread", "--seed", str(args.seed + 1),
    ]
    command += ["--j", str(args.threads)] if args.threads else []
    command += ["--gpu", args.gpu] if args.gpu is not None else []
    print("running: novomap " + " ".join(command), flush=True)
    status = novomap_main(command)
    if status != 0:
        return status

    model, _ = read_map(job_dir / "initial_model.mrc")
    alignment = align_maps(volume, model, pixel_size_a)
    curve = fsc(volume, alignment.volume)
    at_05 = resolution_at(curve, 0.5, box, pixel_size_a)
    at_0143 = resolution_at(curve, 0.143, box, pixel_size_a)
    hand = "mirror image (the hand is not determined by the data)" if alignment.hand_flipped else "same hand"
    print(
        f"initial_model.mrc against the truth: correlation {alignment.cc:.3f}, {hand}; FSC {at_05:.1f} Å at 0.5, "
        f"{at_0143:.1f} Å at 0.143 (Nyquist {2 * pixel_size_a:.2f} Å); total {time.perf_counter() - start:.0f} s"
    )
    return 0
