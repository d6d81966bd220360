"""Benchmark: novomap against RELION 4.0 (CPU) on the same short job, timed in the same run (issue "Speed").

Simulates N particles of the built-in 5A1A beta-gal map (64 px, 3.54 Å/px, SNR 0.1, the tutorial's
CTFs when at hand), then runs, one after the other on the same machine:

* RELION's 3D initial model job as its GUI writes it (vdam-spec section 9), then its symmetry step:

      relion_refine --o R/run --iter I --grad --denovo_3dref --i particles.star --ctf --K 1 --sym C1
          --flatten_solvent --zero_mask --dont_combine_weights_via_disc --preread_images --pool 3 --pad 1
          --particle_diameter 200 --oversampling 1 --healpix_order 1 --offset_range 6 --offset_step 2
          --auto_sampling --tau2_fudge 4 --j J --random_seed S
      relion_align_symmetry --i R/run_itI_model.star --o R/initial_model.mrc --sym D2 --apply_sym --select_largest_class

  (relion_align_symmetry is timed when it was built; relion_refine alone otherwise)
* `novomap initial-model --i particles.star --o N --iter I --sym D2 --particle-diameter 200 --preread --j J --seed S`

and prints both wall times, their ratio and each map's FSC 0.5 to the truth (`novomap compare --align`).
The issue's target: novomap >= 20x faster on 1,000 particles and 12 iterations. RELION's binaries
come from RELION_BIN (a folder) or PATH.

    RELION_BIN=/path/to/relion/build/bin python benchmarks/bench_relion.py [--n 1000] [--iter 12] [--j 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fixed_cost import simulate  # noqa: E402 - the same 1,000 simulated particles as the fixed-cost benchmark


def relion_binary(name: str) -> str | None:
    folder = os.environ.get("RELION_BIN")
    if folder and (Path(folder) / name).is_file():
        return str(Path(folder) / name)
    return shutil.which(name)


def timed(command: list[str], cwd: Path, log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as handle:
        subprocess.run(command, cwd=cwd, check=True, stdout=handle, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def initial_model_command(refine: str, out: Path, mask_diameter_a: float, iterations: int, threads: int, seed: int, pool: int) -> list[str]:
    """relion_refine's arguments for RELION's 3D initial model job in C1 (the GUI's command, vdam-spec
    section 9), run in the folder of particles.star, writing out/run_*."""
    return [
        refine, "--o", str(out / "run"), "--iter", str(iterations), "--grad", "--denovo_3dref", "--i", "particles.star", "--ctf",
        "--K", "1", "--sym", "C1", "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc", "--preread_images",
        "--pool", str(pool), "--pad", "1", "--particle_diameter", f"{mask_diameter_a:g}", "--oversampling", "1", "--healpix_order", "1",
        "--offset_range", "6", "--offset_step", "2", "--auto_sampling", "--tau2_fudge", "4", "--j", str(threads),
        "--random_seed", str(seed),
    ]


def fsc_to_truth(truth: Path, volume: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "novomap", "compare", str(truth), str(volume), "--align", "--json"], check=True, capture_output=True, text=True)
    figures = json.loads(out.stdout)
    figures = figures[0] if isinstance(figures, list) else figures
    return {"fsc05_a": round(figures["fsc05_a"], 1), "cc": round(figures["cc"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--iter", type=int, default=12)
    parser.add_argument("--j", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/novomap_bench_relion"))
    args = parser.parse_args()
    refine = relion_binary("relion_refine")
    if refine is None:
        raise SystemExit("relion_refine not found: set RELION_BIN to the folder of RELION's binaries")
    data = args.out / f"data_n{args.n}"
    simulate(data, args.n)
    truth = data / "truth.mrc"
    relion_out, novomap_out = args.out / f"relion_it{args.iter}", args.out / f"novomap_it{args.iter}"
    for folder in (relion_out, novomap_out):
        shutil.rmtree(folder, ignore_errors=True)
    relion_out.mkdir(parents=True)
    relion_s = timed(initial_model_command(refine, relion_out, 200.0, args.iter, args.j, args.seed, pool=3), data, args.out / "relion.log")
    relion_map = relion_out / f"run_it{args.iter:03d}_class001.mrc"
    align = relion_binary("relion_align_symmetry")
    if align is not None:
        relion_s += timed([align, "--i", str(relion_out / f"run_it{args.iter:03d}_model.star"), "--o", str(relion_out / "initial_model.mrc"),
                           "--sym", "D2", "--apply_sym", "--select_largest_class"], data, args.out / "relion_align.log")
        relion_map = relion_out / "initial_model.mrc"
    novomap_command = [sys.executable, "-m", "novomap", "initial-model", "--i", "particles.star", "--o", str(novomap_out), "--iter", str(args.iter),
                       "--sym", "D2", "--particle-diameter", "200", "--preread", "--j", str(args.j), "--seed", str(args.seed), "--quiet"]
    novomap_s = timed(novomap_command, data, args.out / "novomap.log")
    row = {
        "n": args.n, "iterations": args.iter, "threads": args.j, "cpus": os.cpu_count(),
        "relion_s": round(relion_s, 1), "relion_includes_align_symmetry": align is not None, "novomap_s": round(novomap_s, 1),
        "ratio": round(relion_s / novomap_s, 1),
        "relion_map": fsc_to_truth(truth, relion_map), "novomap_map": fsc_to_truth(truth, novomap_out / "initial_model.mrc"),
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
