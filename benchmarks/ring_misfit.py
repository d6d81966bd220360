"""The ring-spectrum check (novomap.analysis.ring_spectra) on finished job folders, checkpoint by checkpoint.

For each job: the class-1 map of a checkpoint (run_itNNN_class001.mrc) against the particles at that
checkpoint's poses (run_itNNN_data.star, rows with a class), with the images and CTFs of the input
STAR file: the misfit, its noise floor, their ratio and whether the job would flag it. With --last
(the default) only the last checkpoint, which after a finished job holds the final pass's poses.
With --reconstruction also the map reconstructed from the largest class's particles at those poses
(as final_map.final_reconstruction makes it) against the same particles.

    python benchmarks/ring_misfit.py PARTICLES_STAR JOB_DIR [JOB_DIR ...] [--every 10] [--reconstruction] [--json OUT]

Relative image paths in PARTICLES_STAR are resolved as RELION does (from the current directory).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import mrcfile
import numpy as np
import starfile
import torch

from novomap.analysis.ring_spectra import ring_check
from novomap.io.particles import ParticleSet
from novomap.reconstruct import Poses, reconstruct_with_poses


def checkpoints(job: Path) -> list[tuple[int, Path]]:
    found = []
    for path in job.glob("run_it*_data.star"):
        match = re.fullmatch(r"run_it(\d+)_data\.star", path.name)
        if match and path.with_name(path.name.replace("_data.star", "_class001.mrc")).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def poses_of(data_star: Path) -> tuple[Poses, torch.Tensor]:
    table = starfile.read(data_star, always_dict=True)["particles"]
    column = lambda label: torch.tensor(table[label].to_numpy(), dtype=torch.float64)  # noqa: E731
    poses = Poses(column("rlnAngleRot"), column("rlnAngleTilt"), column("rlnAnglePsi"), column("rlnOriginXAngst"), column("rlnOriginYAngst"))
    placed = torch.nonzero(torch.tensor(table["rlnClassNumber"].to_numpy() > 0)).squeeze(1)
    return poses, placed


def largest_class(data_star: Path) -> tuple[int, torch.Tensor]:
    """(1-based number, rows) of the class that holds most particles at this checkpoint."""
    classes = torch.tensor(starfile.read(data_star, always_dict=True)["particles"]["rlnClassNumber"].to_numpy())
    number = int(torch.bincount(classes.clamp(min=0))[1:].argmax()) + 1
    return number, torch.nonzero(classes == number).squeeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("particles", type=Path)
    parser.add_argument("jobs", type=Path, nargs="+")
    parser.add_argument("--every", type=int, default=0, help="every N-th iteration's checkpoint (0: the last only)")
    parser.add_argument("--reconstruction", action="store_true", help="also the largest class reconstructed at the poses")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    particles = ParticleSet.from_star(args.particles)
    rows = []
    for job in args.jobs:
        found = checkpoints(job)
        chosen = [c for c in found if args.every and c[0] % args.every == 0] if args.every else found[-1:]
        for iteration, data_star in chosen:
            poses, _ = poses_of(data_star)
            number, members = largest_class(data_star)
            class_map = data_star.with_name(data_star.name.replace("_data.star", f"_class{number:03d}.mrc"))
            maps = {"vdam": torch.from_numpy(mrcfile.read(class_map).astype(np.float64))}
            if args.reconstruction:
                maps["reconstruction"] = reconstruct_with_poses(particles, members, poses, batch_size=256, single_precision=True).double()
            for kind, volume in maps.items():
                check = ring_check(particles, members, poses, volume, seed=1)
                if check is None:
                    continue
                rows.append({"job": str(job), "iteration": iteration, "map": kind, **check.to_json()})
                print(f"{job}  it{iteration:03d}  {kind:14s} misfit {check.misfit:.4f}  floor {check.noise_floor:.4f}  ratio {check.ratio:.1f}"
                      f"  {'FLAGGED' if check.flagged else 'ok'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
