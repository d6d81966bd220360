"""`novomap simulate`: a particle data set (RELION STAR + MRC stacks) with known poses and CTFs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from novomap.demo_data import load_demo_map
from novomap.errors import NovomapError
from novomap.maps.transform import resample_map
from novomap.simulate import (
    SimulationOptions,
    SimulationResult,
    load_input_map,
    model_map,
    simulate,
)

HELP = "simulate particles (RELION 3.1 STAR + stacks) from a map, an atomic model or the built-in beta-gal map"
EXAMPLE = "novomap simulate --demo --o sim --n 5000 --snr 0.1 --ctf-from Extract/job018/particles.star"

SNR_HELP = (
    "signal-to-noise ratio: mean variance of the clean CTF-modulated particle inside the circle of "
    "--particle-diameter, over the variance of the white Gaussian noise (real beta-gal at 64 px and "
    "3.54 Å/px measures about 0.1)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--map", type=Path, metavar="M.mrc", help="input map; resampled in Fourier space to --box/--pixel-size")
    source.add_argument(
        "--model", type=Path, metavar="M.pdb", help="atomic model (PDB or mmCIF), its centre of mass put at the box centre"
    )
    source.add_argument(
        "--demo", action="store_true", help="the built-in beta-galactosidase map (PDB 5A1A, D2, 64 px at 3.54 Å/px)"
    )
    parser.add_argument("--o", type=Path, required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--n", type=int, required=True, metavar="N", help="number of particles")
    parser.add_argument("--snr", type=float, required=True, metavar="SNR", help=SNR_HELP)
    parser.add_argument("--box", type=int, default=64, metavar="PX", help="image size in px (default: 64)")
    parser.add_argument("--pixel-size", type=float, default=3.54, metavar="Å", help="pixel size in Å (default: 3.54)")
    parser.add_argument(
        "--map-pixel-size", type=float, default=None, metavar="Å", help="pixel size of --map in Å (default: from its header)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="INT", help="random seed; the same seed gives the same files (default: 0)")
    parser.add_argument(
        "--defocus-min",
        type=float,
        default=None,
        metavar="Å",
        help="smallest mean defocus in Å, positive = underfocus (default: 8000); mean defocus is uniform in [min, max]",
    )
    parser.add_argument("--defocus-max", type=float, default=None, metavar="Å", help="largest mean defocus in Å (default: 25000)")
    parser.add_argument(
        "--astigmatism",
        type=float,
        default=600.0,
        metavar="Å",
        help="largest defocus difference U - V in Å, uniform in [0, this], random angle (default: 600)",
    )
    parser.add_argument(
        "--ctf-from",
        type=Path,
        default=None,
        metavar="P.star",
        help="draw defocus U/V/angle from the particle rows of this STAR file (with replacement), and use its "
        "voltage, Cs and amplitude contrast; replaces --defocus-min/--defocus-max",
    )
    parser.add_argument("--voltage", type=float, default=None, metavar="KV", help="acceleration voltage in kV (default: 200, or that of --ctf-from)")
    parser.add_argument("--cs", type=float, default=None, metavar="MM", help="spherical aberration in mm (default: 1.4, or that of --ctf-from)")
    parser.add_argument(
        "--amplitude-contrast",
        type=float,
        default=None,
        metavar="Q0",
        help="amplitude contrast as a fraction (default: 0.1, or that of --ctf-from)",
    )
    parser.add_argument(
        "--max-shift",
        type=float,
        default=3.0,
        metavar="PX",
        help="particles are displaced uniformly within this radius in px from the box centre (default: 3)",
    )
    parser.add_argument(
        "--particle-diameter",
        type=float,
        default=200.0,
        metavar="Å",
        help="diameter in Å of the circle inside which the SNR is measured; outside it, images are normalised "
        "to mean 0 and std 1 (default: 200)",
    )
    parser.add_argument("--float16", action="store_true", help="write stacks as float16 (MRC mode 12) instead of float32")
    parser.add_argument(
        "--particles-per-stack", type=int, default=1000, metavar="N", help="images per .mrcs file (default: 1000)"
    )


def options_from_args(args: argparse.Namespace) -> SimulationOptions:
    """Check the command line and turn it into SimulationOptions."""
    if args.ctf_from is not None and (args.defocus_min is not None or args.defocus_max is not None):
        raise NovomapError("use either --ctf-from or --defocus-min/--defocus-max, not both")
    if args.ctf_from is not None and not args.ctf_from.is_file():
        raise NovomapError(f"--ctf-from: file not found: {args.ctf_from}")
    return SimulationOptions(
        n=args.n,
        snr=args.snr,
        box=args.box,
        pixel_size_a=args.pixel_size,
        seed=args.seed,
        defocus_min_a=8000.0 if args.defocus_min is None else args.defocus_min,
        defocus_max_a=25000.0 if args.defocus_max is None else args.defocus_max,
        astigmatism_a=args.astigmatism,
        ctf_from=args.ctf_from,
        voltage_kv=args.voltage,
        cs_mm=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        max_shift_px=args.max_shift,
        particle_diameter_a=args.particle_diameter,
        float16=args.float16,
        particles_per_stack=args.particles_per_stack,
    )


def input_volume(args: argparse.Namespace, box: int, pixel_size_a: float) -> torch.Tensor:
    """The map to simulate from, at (box, box, box) and pixel_size_a."""
    if args.demo:
        volume, demo_pixel = load_demo_map()
        return resample_map(volume, demo_pixel, box, pixel_size_a)
    if args.model is not None:
        return model_map(args.model, box, pixel_size_a)
    return load_input_map(args.map, box, pixel_size_a, args.map_pixel_size)


def run_simulation(options: SimulationOptions, volume: torch.Tensor, out_dir: Path) -> SimulationResult:
    """simulate() with progress lines on stdout (about ten)."""
    start = time.perf_counter()
    n_stacks = -(-options.n // options.particles_per_stack)
    every = max(1, n_stacks // 10)
    written = [0]

    def progress(done: int, total: int) -> None:
        written[0] += 1
        if written[0] % every == 0 or done == total:
            print(f"  {done}/{total} particles ({time.perf_counter() - start:.1f} s)", flush=True)

    return simulate(volume, out_dir, options, progress=progress)


def describe(options: SimulationOptions) -> str:
    if options.ctf_from is not None:
        ctf = f"defocus drawn from {options.ctf_from}"
    else:
        ctf = f"defocus {options.defocus_min_a:g}-{options.defocus_max_a:g} Å"
    return (
        f"simulating {options.n} particles: {options.box} px at {options.pixel_size_a:g} Å/px, SNR {options.snr:g}, "
        f"{ctf}, shifts up to {options.max_shift_px:g} px, seed {options.seed}"
    )


def report(result: SimulationResult, elapsed_s: float) -> None:
    print(
        f"noise std {result.noise_sigma:.4g} (map greyscale) for a mean signal variance of "
        f"{result.mean_signal_variance:.4g}"
    )
    print(f"wrote {result.star_path} ({len(result.stack_paths)} stacks) and {result.truth_path} in {elapsed_s:.1f} s")


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    options.check()
    start = time.perf_counter()
    volume = input_volume(args, options.box, options.pixel_size_a)
    print(describe(options), flush=True)
    result = run_simulation(options, volume, args.o)
    report(result, time.perf_counter() - start)
    return 0
