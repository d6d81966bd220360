"""`novomap demo`: simulate a tutorial-like beta-gal data set and reconstruct it.

Until the initial-model job exists, the reconstruction uses the true poses, so the demo shows the
data path end to end (simulate -> STAR/stacks -> read -> reconstruct -> FSC against the truth).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from novomap.commands.simulate import describe, report, run_simulation
from novomap.demo_data import load_demo_map
from novomap.io.mrc import write_map
from novomap.io.particles import ParticleSet
from novomap.maps.fsc import fsc, resolution_at
from novomap.reconstruct import reconstruct_particles
from novomap.simulate import SimulationOptions

HELP = "simulate a tutorial-like beta-gal data set from the built-in map and reconstruct it"
EXAMPLE = "novomap demo --o novomap_demo --n 2000 --snr 0.1"

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
    parser.add_argument("--seed", type=int, default=0, metavar="INT", help="random seed (default: 0)")


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

    step = time.perf_counter()
    print("reconstructing with the true poses (no initial-model job yet)", flush=True)
    with ParticleSet.from_star(result.star_path) as particles:
        reconstruction = reconstruct_particles(particles)
    path = args.o / "reconstruction.mrc"
    write_map(path, reconstruction.float(), pixel_size_a)
    print(f"wrote {path} ({time.perf_counter() - step:.1f} s)")

    curve = fsc(reconstruction, volume)
    at_05 = resolution_at(curve, 0.5, box, pixel_size_a)
    at_0143 = resolution_at(curve, 0.143, box, pixel_size_a)
    print(
        f"FSC against the truth: {at_05:.1f} Å at 0.5, {at_0143:.1f} Å at 0.143 "
        f"(Nyquist {2 * pixel_size_a:.2f} Å); total {time.perf_counter() - start:.1f} s"
    )
    return 0
