"""Benchmark: the RELION tutorial's real beta-gal particles (issue 3 acceptance 1, 3 and 4).

Runs `novomap initial-model` on the 1,455 good-class particles (or scores an existing output
folder with --evaluate DIR), then reports wall time, peak memory, the FSC of initial_model.mrc
against betaGal.mrc (64^3 centre crop, aligned, either hand), and the median angle between
novomap's final orientations and RELION's refined ones for the particles in both STAR files.

    python benchmarks/bench_real_betagal.py --seed 1 [--iter 100] [--out /tmp/bench_real] [--gpu 0]
    python benchmarks/bench_real_betagal.py --evaluate /tmp/bench_real/seed1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import starfile
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PARTICLES = DATA / "betagal_relion5_tutorial_particles"
REFERENCE = DATA / "betagal_relion_tutorial_map" / "betaGal.mrc"


def run_job(out: Path, seed: int, n_iter: int, threads: int, gpu: str | None = None) -> dict:
    command = [
        sys.executable, "-m", "novomap", "initial-model",
        "--i", "particles_ctf_from_relion31_tutorial_goodclasses.star",
        "--o", str(out), "--iter", str(n_iter), "--K", "1", "--particle-diameter", "200", "--sym", "D2",
        "--sampling", "15", "--offset-range", "6", "--offset-step", "2", "--preread",
        "--j", str(threads), "--seed", str(seed), "--quiet",
    ]
    command += ["--gpu", gpu] if gpu is not None else []
    started = time.perf_counter()
    subprocess.run(command, cwd=PARTICLES, check=True)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_s": round(seconds, 1), "peak_memory_mb": round(peak_mb)}


def evaluate(out: Path) -> dict:
    from novomap.analysis.poses import compare_orientations
    from novomap.io.mrc import read_map
    from novomap.maps.align import align_maps
    from novomap.maps.fsc import fsc, resolution_at
    from novomap.physics.euler import euler_to_matrix
    from novomap.symmetry.groups import point_group

    reference, pixel = read_map(REFERENCE)
    reference = torch.tensor(reference[18:82, 18:82, 18:82])
    model, _ = read_map(out / "initial_model.mrc")
    alignment = align_maps(reference, torch.tensor(model), pixel)
    curve = fsc(reference, alignment.volume)
    figures = {
        "cc": round(float(alignment.cc), 3),
        "hand_flipped": bool(alignment.hand_flipped),
        "fsc05_a": round(float(resolution_at(curve, 0.5, 64, pixel)), 1),
        "fsc0143_a": round(float(resolution_at(curve, 0.143, 64, pixel)), 1),
    }
    data_stars = sorted(out.glob("run_it*_data.star"))
    ours = starfile.read(data_stars[-1])["particles"]
    relion = starfile.read(PARTICLES / "particles_with_relion_refined_poses.star")["particles"]
    both = ours.merge(relion, on="rlnImageName", suffixes=("_novomap", "_relion"))

    def poses(suffix: str) -> torch.Tensor:
        return euler_to_matrix(*(torch.tensor(both[f"rlnAngle{a}{suffix}"].to_numpy()) for a in ("Rot", "Tilt", "Psi")))

    d2 = point_group("D2").operators
    errors, _ = compare_orientations(poses("_relion"), poses("_novomap"), d2, hand_flipped=False)
    errors_mirror, _ = compare_orientations(poses("_relion"), poses("_novomap"), d2, hand_flipped=True)
    best = errors if errors.median() <= errors_mirror.median() else errors_mirror
    figures.update({"n_common_particles": len(both), "median_orientation_error_deg": round(float(best.median()), 1)})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--iter", type=int, default=100)
    parser.add_argument("--j", type=int, default=2)
    parser.add_argument("--gpu", default=None, metavar="IDS", help='run the job on these CUDA GPUs ("0"; default: CPU)')
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_real"))
    parser.add_argument("--evaluate", type=Path, default=None, help="score an existing output folder instead of running")
    args = parser.parse_args()
    torch.set_num_threads(args.j)
    if args.evaluate is not None:
        out, figures = args.evaluate, {}
    else:
        out = args.out / f"seed{args.seed}"
        figures = run_job(out, args.seed, args.iter, args.j, args.gpu)
    figures.update(evaluate(out))
    figures.update({"benchmark": "real beta-gal good classes (1,455 particles)", "seed": args.seed, "threads": args.j, "gpu": args.gpu, "date": str(date.today()), "host_cpus": os.cpu_count()})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
