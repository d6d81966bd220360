"""Benchmark: K classes on a 50/50 mixture of two complexes (issue "Speed", part 3: separation and cost).

Simulates two sets of particles on the same grid (64 px at 3.54 Å/px, SNR 0.1, the same optics):
the built-in beta-galactosidase map (D2, 465 kDa) and a second specimen of the suite
(benchmarks/specimens.py; default adk_d7, a ~340 kDa D7 double ring of adenylate kinase), merges
them into one STAR file (mixed in micrograph order), and runs

    novomap initial-model --i mixture.star --o JOB --iter 100 --K K --sym C1 --particle-diameter 200 --seed S

for each K asked (default K=1, 2 and 3, started side by side so that a busy machine slows them
alike; `--sym G` instead of C1 imposes a group both complexes have, e.g. C2 for beta-gal with adk_c4,
so that each class is searched over its own asymmetric unit once the group is imposed). It prints, per job, the wall time and, for K >= 2, the share of particles whose final class
is that of their source (best labelling of classes to sources; for K=3 each class is labelled by its
majority source), the class fractions and the K / K=1 time ratios. Issue targets: >= 98 % with K=2,
K=3 / K=1 <= 1.5.

    python benchmarks/bench_mixture.py [--n 1000] [--ks 1 2 3] [--seed 1] [--second adk_d7] [--sym C1] [--out /tmp/novomap_bench_mixture]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import starfile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def folder_particles(out: Path, name: str) -> tuple[dict, pd.DataFrame]:
    """(blocks, particle table) of out/name/particles.star, its image paths made relative to `out` and its
    micrograph names prefixed with `name`, so that tables of several folders merge into one STAR file in `out`."""
    read = starfile.read(out / name / "particles.star", always_dict=True)
    table = read["particles"].copy()
    table["rlnImageName"] = [f"{e.split('@')[0]}@{name}/{e.split('@')[1]}" for e in table["rlnImageName"]]
    table["rlnMicrographName"] = [f"{name}_{m}" for m in table["rlnMicrographName"]]
    return read, table


def simulate_sets(out: Path, n: int, second: str) -> Path:
    """The merged mixture.star (cached): n particles of beta-gal and n of `second`."""
    mixture = out / "mixture.star"
    if mixture.is_file():
        return mixture
    from novomap.io.mrc import write_map
    from specimens import SPECIMENS, build_specimen

    out.mkdir(parents=True, exist_ok=True)
    built = build_specimen(SPECIMENS[second])
    second_map = out / f"{second}.mrc"
    write_map(second_map, built.volume, built.pixel_size_a)
    common = ["--n", str(n), "--snr", "0.1", "--particle-diameter", "200", "--box", "64", "--pixel-size", "3.54"]
    for name, source, seed in (("betagal", ["--demo"], 11), (second, ["--map", str(second_map)], 12)):
        subprocess.run([sys.executable, "-m", "novomap", "simulate", *source, "--o", str(out / name), "--seed", str(seed), *common],
                       check=True, stdout=subprocess.DEVNULL)
    tables, blocks = [], None
    for name in ("betagal", second):
        read, table = folder_particles(out, name)
        blocks = blocks or read
        tables.append(table)
    merged = dict(blocks)
    merged["particles"] = pd.concat(tables, ignore_index=True)
    starfile.write(merged, mixture)
    return mixture


def separation(job: Path, second: str) -> tuple[float, list[float]]:
    """Share of particles in their source's class (each class labelled by its majority source), class fractions."""
    data = sorted(job.glob("run_it*_data.star"))[-1]
    table = starfile.read(data)["particles"]
    source = table["rlnImageName"].str.contains(f"@{second}/").astype(int)
    counts = pd.crosstab(table["rlnClassNumber"], source)
    right = int(counts.max(axis=1).sum())
    fractions = json.loads((job / "history.json").read_text())[-1]["class_fraction"]
    return right / len(table), fractions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="particles of each complex")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iter", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--j", type=int, default=1, help="threads per job (the jobs run side by side)")
    parser.add_argument("--second", default="adk_d7", help="the other complex (a name of benchmarks/specimens.py)")
    parser.add_argument("--sym", default="C1", help="point group imposed on every class (one both complexes have)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_mixture"))
    parser.add_argument("--extra-args", default="", help='passed on to initial-model, e.g. "--maxsig 100"')
    args = parser.parse_args()
    star = simulate_sets(args.out, args.n, args.second)
    jobs, started = {}, time.perf_counter()
    for k in args.ks:
        tag = "".join(part.strip("-") for part in shlex.split(args.extra_args))
        job = args.out / (f"K{k}_seed{args.seed}" + ("" if args.sym == "C1" else f"_{args.sym}") + (f"_{tag}" if tag else ""))
        command = [sys.executable, "-m", "novomap", "initial-model", "--i", str(star), "--o", str(job), "--iter", str(args.iter), "--K", str(k),
                   "--sym", args.sym, "--particle-diameter", "200", "--preread", "--j", str(args.j), "--seed", str(args.seed), "--quiet", "--no-report", *shlex.split(args.extra_args)]
        jobs[k] = (job, subprocess.Popen(command, stdout=subprocess.DEVNULL))
    wall = {}
    while len(wall) < len(jobs):
        for k, (job, process) in jobs.items():
            if k not in wall and process.poll() is not None:
                if process.returncode != 0:
                    raise SystemExit(f"K={k} failed (exit {process.returncode}); see {job}/run.err")
                wall[k] = time.perf_counter() - started
        time.sleep(1)
    for k in args.ks:
        row = {"K": k, "wall_s": round(wall[k], 1)}
        if k > 1:
            share, fractions = separation(jobs[k][0], args.second)
            row.update({"in_own_class": round(share, 4), "class_fraction": [round(f, 3) for f in fractions]})
        if 1 in wall and k != 1:
            row["time_vs_K1"] = round(wall[k] / wall[1], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
