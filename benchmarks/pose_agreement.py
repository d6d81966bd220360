"""How many particles a simulated job has placed right, iteration by iteration.

A VDAM run from random blobs does not find the fold all at once: the share of particles whose
orientation agrees with the truth (after the one global rotation, and hand, that relate the run's
frame to the truth's) grows from a few per cent over tens of iterations, and a run that ends on a
wrong map is one where that share stopped growing. For each checkpoint of a job (run_itNNN_data.star)
this prints, over the particles the run has placed, the share within 15 degrees of the truth, the median error and the share among the 10 %
of particles with the highest pmax (is the right subset visible without the truth?).

The truth is the simulated particles.star (true rlnAngle*), rows in the same order as the job's.

    python benchmarks/pose_agreement.py TRUE_PARTICLES_STAR JOB_DIR [JOB_DIR ...] [--every 10] [--sym C1]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import starfile
import torch

from novomap.analysis.poses import compare_orientations
from novomap.physics.euler import euler_to_matrix
from novomap.symmetry.groups import point_group

RIGHT_DEG = 15.0


def orientations(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(poses (n, 3, 3), pmax (n,) or None, placed (n,) bool) of a particles table. placed: the row
    has a pose from the run (rlnClassNumber > 0); the others keep the input's angles, which for
    simulated particles are the true ones."""
    table = starfile.read(path, always_dict=True)
    particles = table["particles"] if "particles" in table else next(iter(table.values()))
    angles = [torch.tensor(particles[label].to_numpy(), dtype=torch.float64) for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")]
    pmax = particles.get("rlnMaxValueProbDistribution")
    classes = particles.get("rlnClassNumber")
    placed = torch.tensor(classes.to_numpy() > 0) if classes is not None else torch.ones(len(particles), dtype=torch.bool)
    return euler_to_matrix(*angles), (torch.tensor(pmax.to_numpy(), dtype=torch.float64) if pmax is not None else None), placed


def agreement(truth: torch.Tensor, estimated: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Per-particle error (deg) to the truth in the frame (and hand) that fits most particles -> (n,)."""
    best = None
    for hand_flipped in (False, True):
        errors, _ = compare_orientations(truth, estimated, group, hand_flipped)
        if best is None or (errors < RIGHT_DEG).sum() > (best < RIGHT_DEG).sum():
            best = errors
    return best


def checkpoint_rows(truth: torch.Tensor, job: Path, every: int, group: torch.Tensor) -> list[str]:
    rows = []
    for path in sorted(job.glob("run_it*_data.star")):
        iteration = int(re.search(r"run_it(\d+)_data", path.name).group(1))
        if iteration == 0 or iteration % every:
            continue
        estimated, pmax, placed = orientations(path)
        if estimated.shape[0] != truth.shape[0]:
            raise SystemExit(f"{path}: {estimated.shape[0]} particles, the truth has {truth.shape[0]}")
        errors = agreement(truth[placed], estimated[placed], group)
        right = (errors < RIGHT_DEG).double()
        top = "-"
        if pmax is not None:
            pmax = pmax[placed]
            top = f"{float(right[torch.argsort(pmax, descending=True)[: max(1, len(pmax) // 10)]].mean()):.2f}"
        rows.append(f"| {iteration} | {int(placed.sum())} | {float(right.mean()):.2f} | {float(errors.median()):.1f} | {top} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("truth", type=Path, help="simulated particles.star with the true orientations")
    parser.add_argument("jobs", type=Path, nargs="+")
    parser.add_argument("--every", type=int, default=10, help="checkpoints whose iteration is a multiple of this")
    parser.add_argument("--sym", default="C1", help="the map's point group (poses agree up to it)")
    args = parser.parse_args()
    truth, _, _ = orientations(args.truth)
    group = point_group(args.sym).operators.double()
    for job in args.jobs:
        print(f"\n{job}\n\n| iteration | placed | share within {RIGHT_DEG:g}° | median error (°) | share in the top 10 % by pmax |\n|---|---|---|---|---|")
        print("\n".join(checkpoint_rows(truth, job, args.every, group)))


if __name__ == "__main__":
    main()
