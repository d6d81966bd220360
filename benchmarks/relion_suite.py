"""RELION 4's own 3D initial model job on the suite's C1 specimens: does VDAM itself reach the bound?

Where `novomap initial-model` ends far from its true-pose bound on every seed (hb_c1_36), the question
is whether the data allow a de novo solution at all. This runs RELION's job, as its GUI writes it
(vdam-spec section 9; the tutorial's settings: 15 deg, offsets 6/2 px, pooled 30, flatten solvent),
on the very particles the suite simulated (benchmarks/bench_suite.py, cached under --out), and scores
RELION's last VDAM map, run_itNNN_class001.mrc, against the truth as the suite scores novomap's
(`novomap compare --align --json`: rotation, shift and hand), beside the same true-pose bound.

Only C1 specimens: RELION's map of a symmetric specimen would need relion_align_symmetry before it
could be held against a symmetrised bound. RELION's binaries come from RELION_BIN (a folder) or PATH.

    RELION_BIN=/path/to/relion/build/bin python benchmarks/relion_suite.py --specimens hb_c1_36 --seeds 2 \\
        --out /tmp/suite [--threads 2] [--iter 100]

Prints one JSON line per run (wall time, FSC 0.5 to the truth, its ratio to the bound, cc) and the
trajectory: each map RELION wrote (run_itNNN_class001.mrc, every 10 iterations) against the truth.
RELION's adaptive oversampling makes its late iterations slow where posteriors stay broad (hb_c1_36 at
36 px: minutes per iteration on 2 cores); `--score-only` scores the maps an unfinished or stopped job
has written so far.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_relion import initial_model_command, relion_binary, timed  # noqa: E402
from bench_suite import compare, simulate_specimen, true_pose_bound  # noqa: E402
from specimens import build_specimen, specimen_named  # noqa: E402


def trajectory(job: Path, truth: Path) -> list[dict]:
    """FSC 0.5 (Å) and cc to the truth of every class map the job has written, by iteration."""
    points = []
    for path in sorted(job.glob("run_it[0-9][0-9][0-9]_class001.mrc")):
        iteration = int(re.search(r"run_it(\d+)_", path.name).group(1))
        if iteration == 0:
            continue
        figures = compare(truth, path)
        points.append({"iteration": iteration, "fsc05_a": figures.get("fsc05_a"), "cc": figures.get("cc")})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specimens", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--iter", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sim-seed", type=int, default=7, help="the suite's simulation seed (bench_suite's default)")
    parser.add_argument("--out", type=Path, required=True, help="the suite's folder (bench_suite --out): data are reused from it")
    parser.add_argument("--score-only", action="store_true", help="score the maps already written; run nothing")
    args = parser.parse_args()
    refine = relion_binary("relion_refine")
    if refine is None and not args.score_only:
        raise SystemExit("relion_refine not found: set RELION_BIN to the folder of RELION's binaries")
    for name in args.specimens:
        built = build_specimen(specimen_named(name))
        if built.specimen.symmetry != "C1":
            raise SystemExit(f"{name} is {built.specimen.symmetry}: only C1 specimens are scored here (see the docstring)")
        folder = simulate_specimen(built, built.specimen.n_particles, args.sim_seed, args.out)
        bound = true_pose_bound(folder, "C1", built.mask_diameter_a, args.threads).get("bound_fsc05_a")
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            job = args.out / "relion" / f"{name}_seed{seed}"
            job.mkdir(parents=True, exist_ok=True)
            wall_s = None
            if not args.score_only:  # the tutorial's pooled particles (30)
                command = initial_model_command(refine, job, built.mask_diameter_a, args.iter, args.threads, seed, pool=30)
                wall_s = round(timed(command, folder, job / "relion.log"), 1)
            points = trajectory(job, folder / "truth.mrc")
            last = points[-1] if points else {}
            value = last.get("fsc05_a")
            row = {
                "specimen": name, "seed": seed, "program": "RELION relion_refine --grad (3D initial model)", "iterations": args.iter,
                "last_iteration": last.get("iteration"), "wall_s": wall_s, "fsc05_a": None if value is None else round(value, 2),
                "cc": last.get("cc"), "bound_fsc05_a": bound, "ratio": round(value / bound, 2) if value and bound else None,
                "trajectory": points,
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
