"""Preferred orientation: a suite specimen whose particles crowd around one viewing direction.

Real particles rarely lie on the grid in every orientation alike: many adsorb on their flattest face.
The suite simulates uniform orientations, so this script makes a skewed set of one specimen: it
simulates `--pool-factor` times the particles, then keeps every particle seen within `--cone` degrees
of the specimen's z axis (rlnAngleTilt near 0 or 180) and as many of the others as makes them
`--top-share` of the kept set (true poses from the simulation's STAR file). Then, as bench_suite: the
true-pose bound of the kept particles (same group, masked), initial-model for each seed, FSC 0.5 to
the truth, the ratio and wall time.

    python benchmarks/bench_preferred_orientation.py --specimen betagal_d2 --seeds 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import starfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suite import run_seed, score, simulate_specimen, true_pose_bound  # noqa: E402
from specimens import build_specimen, specimen_named  # noqa: E402


def skewed_subset(folder: Path, out: Path, cone_deg: float, top_share: float, seed: int) -> dict:
    """Write out/particles.star (and link truth.mrc): all views within cone_deg of +-z, and others to
    make them top_share of the set -> counts. Image names are made absolute: the stacks stay put."""
    tables = starfile.read(folder / "particles.star", always_dict=True)
    particles = tables["particles"]
    tilt = np.radians(particles["rlnAngleTilt"].to_numpy())
    top = np.abs(np.cos(tilt)) >= math.cos(math.radians(cone_deg))
    others = np.flatnonzero(~top)
    n_others = min(others.size, int(round(top.sum() * (1 - top_share) / top_share)))
    chosen = np.random.default_rng(seed).choice(others, n_others, replace=False)
    keep = np.sort(np.concatenate([np.flatnonzero(top), chosen]))
    kept = particles.iloc[keep].copy()
    kept["rlnImageName"] = [
        f"{name.split('@')[0]}@{(folder / name.split('@')[1]).resolve()}" for name in kept["rlnImageName"]
    ]
    out.mkdir(parents=True, exist_ok=True)
    starfile.write({**tables, "particles": kept}, out / "particles.star", overwrite=True)
    if not (out / "truth.mrc").exists():
        (out / "truth.mrc").symlink_to((folder / "truth.mrc").resolve())
    return {"kept": int(keep.size), "top_views": int(top.sum()), "others": int(n_others)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specimen", default="betagal_d2")
    parser.add_argument("--pool-factor", type=float, default=3.0, help="simulate this many times the specimen's particles")
    parser.add_argument("--cone", type=float, default=30.0, help="top views: within this many degrees of +-z")
    parser.add_argument("--top-share", type=float, default=0.5, help="share of top views in the kept set")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--iter", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra-args", default="")
    parser.add_argument("--sim-seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_preferred"))
    args = parser.parse_args()
    args.reuse = args.score_only = False

    built = build_specimen(specimen_named(args.specimen))
    n = int(built.specimen.n_particles * args.pool_factor)
    source = simulate_specimen(built, n, args.sim_seed, args.out)
    folder = args.out / "data" / f"{args.specimen}-cone{args.cone:g}-top{args.top_share:g}-n{n}-sim{args.sim_seed}"
    counts = skewed_subset(source, folder, args.cone, args.top_share, args.sim_seed)
    print(f"{args.specimen}: {counts['kept']} particles, {counts['top_views']} within {args.cone:g}° of the z axis", flush=True)
    bound = true_pose_bound(folder, built.specimen.symmetry, built.mask_diameter_a, args.threads)
    print(f"  bound FSC 0.5 {bound.get('bound_fsc05_a')} Å", flush=True)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        job = args.out / "jobs" / f"{folder.name}_seed{seed}"
        row = run_seed(folder / "particles.star", folder, job, folder / "truth.mrc", built.specimen.symmetry, built.mask_diameter_a, seed, args)
        score(row, bound.get("bound_fsc05_a"))
        print(f"  seed {seed}: FSC 0.5 {row.get('fsc05_a')} Å, ratio {row.get('ratio')}, cc {row.get('cc')}, "
              f"wrong {row['wrong_fold']}, {row['wall_s']} s", flush=True)
        rows.append(row)
    print(json.dumps({"specimen": args.specimen, "date": time.strftime("%Y-%m-%d"), **counts, **bound, "runs": rows}))


if __name__ == "__main__":
    main()
