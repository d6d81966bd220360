"""Benchmark: beta-galactosidase particles with junk among them (issue "no false minima" on data as users have it).

The real tutorial's 2,374 extracted particles hold 39 % junk (outside the good 2D classes), and K=1 runs on
them settled wrong or split on about half the attempts (benchmarks/results/2026-12-03-s29-split-runs.md)
while the 1,455 good ones never did. This benchmark makes such a data set with a known truth: n good
particles of the built-in beta-gal map (D2, 64 px at 3.54 Å/px, SNR 0.1) and n_junk particles of
several random "junk" objects (clusters of Gaussian blobs of random size, count and extent, simulated
at the same SNR, grid and optics), mixed in one STAR file. Then, per seed, one at a time,

    novomap initial-model --i junk.star --o JOB --iter 100 --K K --sym D2 --particle-diameter 200 --seed S

and prints, per seed, the wall time, FSC 0.5 of initial_model.mrc to the truth and its ratio to the
true-pose bound (the good particles reconstructed at their true poses, D2, masked), the orientation
error of the good particles (median; share within 10 degrees), the evidence (ring misfit, its ratio to
the floor, the verdict, the attempts) and, for K >= 2, the share of junk outside the class that holds
most good particles.

    python benchmarks/bench_junk.py [--n 1500] [--n-junk 1000] [--junk-objects 5] [--seeds 1 2 3] [--K 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BOX, PIXEL_A, SNR, MASK_A = 64, 3.54, 0.1, 200.0


def junk_object(rng: np.random.Generator, box: int = BOX, pixel_a: float = PIXEL_A) -> np.ndarray:
    """A random cluster of Gaussian blobs (box, box, box): 5-40 blobs of 6-20 Å within 25-85 Å of the
    centre, with random weights (an aggregate, a fragment, a lump of ice or carbon)."""
    n_blobs = int(rng.integers(5, 41))
    extent_a = rng.uniform(25.0, 85.0)
    sigma_a = rng.uniform(6.0, 20.0)
    directions = rng.normal(size=(n_blobs, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    centres_a = directions * (extent_a * rng.uniform(0, 1, size=(n_blobs, 1)) ** (1 / 3))
    weights = rng.uniform(0.3, 1.0, size=n_blobs)
    axis = (np.arange(box) - box // 2) * pixel_a
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    volume = np.zeros((box, box, box))
    for (cx, cy, cz), w in zip(centres_a, weights):
        volume += w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma_a**2))
    return volume.astype(np.float32)


def simulate_data(out: Path, n_good: int, n_junk: int, n_objects: int) -> Path:
    """junk.star (cached): n_good beta-gal particles (folder betagal/, with truth.mrc) and n_junk particles
    of n_objects random objects (folders junkI/), merged."""
    merged_path = out / "junk.star"
    if merged_path.is_file():
        return merged_path
    from bench_mixture import folder_particles

    from novomap.io.mrc import write_map

    out.mkdir(parents=True, exist_ok=True)
    common = ["--snr", str(SNR), "--particle-diameter", str(MASK_A), "--box", str(BOX), "--pixel-size", str(PIXEL_A)]
    sets = [("betagal", ["--demo"], n_good, 11)]
    rng = np.random.default_rng(2026)
    per_object = [n_junk // n_objects + (1 if i < n_junk % n_objects else 0) for i in range(n_objects)]
    for i, n in enumerate(per_object):
        path = out / f"junk{i}.mrc"
        write_map(path, torch.from_numpy(junk_object(rng)), PIXEL_A)
        sets.append((f"junk{i}", ["--map", str(path)], n, 31 + i))
    tables, blocks = [], None
    for name, source, n, seed in sets:
        if n <= 0:
            continue
        subprocess.run([sys.executable, "-m", "novomap", "simulate", *source, "--o", str(out / name), "--n", str(n), "--seed", str(seed), *common],
                       check=True, stdout=subprocess.DEVNULL)
        read, table = folder_particles(out, name)
        blocks = blocks or read
        tables.append(table)
    merged = dict(blocks)
    # interleaved, as junk comes from the same micrographs as the particles
    merged["particles"] = pd.concat(tables, ignore_index=True).sample(frac=1.0, random_state=7).reset_index(drop=True)
    starfile.write(merged, merged_path)
    return merged_path


def last_particles(job: Path) -> pd.DataFrame:
    """The job's last particle table, image names relative to the data folder: the job writes them
    absolute when it found the images beside the STAR file rather than from the working directory."""
    table = starfile.read(sorted(job.glob("run_it*_data.star"))[-1])["particles"]
    table["rlnImageName"] = table["rlnImageName"].str.replace(f"@{job.parent.resolve()}/", "@", regex=False)
    return table


def orientation_figures(job: Path, out: Path) -> dict:
    """Good particles: median angle (deg) to their true poses after the best global rotation (D2, either
    hand) and the share within 10 degrees."""
    from novomap.analysis.poses import compare_orientations
    from novomap.physics.euler import euler_to_matrix
    from novomap.symmetry.groups import point_group

    ours = last_particles(job)
    ours = ours[ours["rlnImageName"].str.contains("@betagal/")].copy()
    ours["key"] = ours["rlnImageName"].str.split("@betagal/").str[0] + "@" + ours["rlnImageName"].str.split("@betagal/").str[1]
    truth = starfile.read(out / "betagal" / "particles.star")["particles"]
    truth["key"] = truth["rlnImageName"]
    both = ours.merge(truth, on="key", suffixes=("_run", "_true"))

    def poses(suffix: str) -> torch.Tensor:
        return euler_to_matrix(*(torch.tensor(both[f"rlnAngle{a}{suffix}"].to_numpy()) for a in ("Rot", "Tilt", "Psi")))

    group = point_group("D2").operators
    errors = min((compare_orientations(poses("_true"), poses("_run"), group, hand_flipped=h)[0] for h in (False, True)),
                 key=lambda e: float(e.median()))
    return {"orientation_median_deg": round(float(errors.median()), 1), "within_10_deg": round(float((errors < 10).float().mean()), 3),
            "n_good_compared": len(both)}


def junk_outside_best_class(job: Path) -> float:
    """K >= 2: share of the junk particles outside the class holding most beta-gal particles."""
    table = last_particles(job)
    good = table["rlnImageName"].str.contains("@betagal/")
    best = table.loc[good, "rlnClassNumber"].value_counts().idxmax()
    junk = table[~good]
    return float((junk["rlnClassNumber"] != best).mean()) if len(junk) else math.nan


def run_seed(star: Path, out: Path, seed: int, k: int, threads: int, bound_a: float, extra: list[str], tag: str = "") -> dict:
    import bench_suite

    job = out / f"K{k}_seed{seed}{tag}"
    command = [sys.executable, "-m", "novomap", "initial-model", "--i", str(star), "--o", str(job), "--iter", "100", "--K", str(k),
               "--sym", "D2", "--particle-diameter", str(MASK_A), "--preread", "--j", str(threads), "--seed", str(seed), "--quiet", "--no-report", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    row = {"seed": seed, "K": k, "wall_s": round(time.perf_counter() - started, 1)}
    compared = bench_suite.compare(out / "betagal" / "truth.mrc", job / "initial_model.mrc")
    row.update({"fsc05_a": round(compared.get("fsc05_a", math.nan), 2), "ratio": round(compared.get("fsc05_a", math.nan) / bound_a, 2),
                "cc": round(compared.get("cc", math.nan), 3)})
    row.update(orientation_figures(job, out))
    evidence = json.loads((job / "evidence.json").read_text())
    ring = evidence.get("ring") or {}
    row.update({"ring_misfit": round(ring.get("misfit", math.nan), 4), "ring_x_floor": round(ring.get("ratio", math.nan), 1),
                "weak": bool(evidence.get("weak")), "attempts": len(evidence.get("attempts") or [1])})
    if k > 1:
        row["junk_outside_best_class"] = round(junk_outside_best_class(job), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1500, help="beta-gal particles")
    parser.add_argument("--n-junk", type=int, default=1000, help="junk particles")
    parser.add_argument("--junk-objects", type=int, default=5, help="distinct random junk objects")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--K", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_junk"))
    parser.add_argument("--extra-args", default="", help='passed on to initial-model, e.g. "--retries 0"')
    parser.add_argument("--tag", default="", help="suffix of the job folders (K{K}_seed{S}{tag}), to keep runs of other settings apart")
    args = parser.parse_args()
    import bench_suite

    star = simulate_data(args.out, args.n, args.n_junk, args.junk_objects)
    bound = bench_suite.true_pose_bound(args.out / "betagal", "D2", MASK_A, args.threads)
    print(json.dumps({"data": str(star), "good": args.n, "junk": args.n_junk, "junk_objects": args.junk_objects, **bound}), flush=True)
    for seed in args.seeds:
        print(json.dumps(run_seed(star, args.out, seed, args.K, args.threads, bound["bound_fsc05_a"], shlex.split(args.extra_args), args.tag)), flush=True)


if __name__ == "__main__":
    main()
