"""Would `--sym auto` have named the right group? Checked on finished `initial-model` jobs, offline.

`--sym auto` detects the group on the final C1 reconstruction (the largest class at the final
pass's poses) and then aligns and symmetrises exactly as the explicit group does, so the map is the
explicit group's whenever the detection names that group (symmetry.choice.apply_point_group). This
script rebuilds that C1 reconstruction from each job's last checkpoint (run_itNNN_state.pt, written
after the final pass) and its particles, runs the same de novo detection, and prints the group
found beside the job's own group. With --cache DIR the rebuilt reconstruction is saved there
(DIR/<jobs folder>__<job>.pt: volume, pixel size, the job's group) and read back on the next run, so
the detection can be re-run on the same maps without the particles.

With --particles the group is chosen as `initial-model --sym auto` chooses it since session 6: the
detection's plausible groups are scored by the particles (analysis.symmetry_by_particles), which
needs each job's particles and checkpoint (no cache).

    python benchmarks/bench_sym_auto.py /tmp/novomap_suite/jobs/starts-a-it100/*_seed*
    python benchmarks/bench_sym_auto.py --cache /tmp/symcal2/maps /tmp/novomap_suite/jobs/starts-*-it100/*_seed*
    python benchmarks/bench_sym_auto.py --particles /tmp/novomap_suite/jobs/starts-*-it100/*_seed*
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from novomap.analysis.symmetry_by_particles import choose_group_by_particles
from novomap.final_map import final_reconstruction
from novomap.io.particles import ParticleSet, working_grid_of
from novomap.io.star import read_particle_star
from novomap.io.working_grid import auto_max_resolution_a
from novomap.symmetry.choice import choose_group
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import pseudo_halves
from novomap.vdam.state import RunState


def job_group(job: Path) -> str:
    """The group the job applied (its symmetry.txt record, else C1)."""
    for line in (job / "run.out").read_text().splitlines():
        if line.startswith("symmetry: "):
            return line.split()[1]
    return "C1"


def load_job(job: Path, iteration: int | None = None) -> tuple[RunState, ParticleSet, VdamConfig]:
    """The job's last checkpoint (written after the final pass), or that of `iteration`, its particles and its settings."""
    state_path = sorted(job.glob("run_it*_state.pt"))[-1] if iteration is None else job / f"run_it{iteration:03d}_state.pt"
    state = RunState.load(state_path)
    options = dict(state.fingerprint["options"])
    star = Path(state.fingerprint["particles_file"])
    if not star.is_absolute():  # relative to where the job was started (run.out's second line)
        started_in = next(line for line in (job / "run.out").read_text().splitlines() if line.startswith("# started"))
        star = Path(started_in.split(" in ", 1)[1]) / star
    table = read_particle_star(star)
    max_resolution = options.pop("max_resolution", None)
    if max_resolution is None:
        auto = working_grid_of(table, None, None)
        max_resolution = auto_max_resolution_a(auto.group_box, auto.group_pixel_size_a)
    options.pop("output_pixel_size", None)
    names = {f.name for f in dataclasses.fields(VdamConfig)}
    config = VdamConfig(**{k: v for k, v in options.items() if k in names})
    particles = ParticleSet.from_star(star, preread=True, max_resolution_a=max_resolution)
    return state, particles, config


def rebuild(job: Path) -> tuple[torch.Tensor, float]:
    """The job's final C1 reconstruction (N, N, N) and its pixel size (Å), as `--sym auto` sees it."""
    state, particles, config = load_job(job)
    largest = int(torch.argmax(state.class_fraction))
    return final_reconstruction(state, particles, largest, config), particles.pixel_size_a


def cached_rebuild(job: Path, cache: Path | None) -> tuple[torch.Tensor, float]:
    """rebuild(), read from / written to cache (a folder) when one is given."""
    if cache is None:
        return rebuild(job)
    path = cache / f"{job.parent.name}__{job.name}.pt"
    if path.exists():
        saved = torch.load(path)
        return saved["volume"], saved["pixel_size_a"]
    volume, pixel_size_a = rebuild(job)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"volume": volume.float().cpu(), "pixel_size_a": float(pixel_size_a), "job": str(job), "applied": job_group(job)}, path)
    return volume, pixel_size_a


def detect_on_job(job: Path, cache: Path | None = None) -> dict:
    volume, pixel_size_a = cached_rebuild(job, cache)
    started = time.perf_counter()
    group, detection = choose_group(volume, pixel_size_a, None)
    rows = [f"{r.group} {r.score:.3f}/{r.null_score or 0:.3f} {'yes' if r.accepted else 'no'} {r.note}".strip()
            for r in detection.table if r.group in ("C2", "C3", "C4", "D2", "D3", "D4", "T", "O", "I", job_group(job))]
    return {"job": job.name, "applied": job_group(job), "auto": group.name, "seconds": round(time.perf_counter() - started, 1), "table": rows}


def choose_on_job(job: Path, iteration: int | None = None) -> dict:
    """The group `--sym auto` names now: the detection's plausible groups scored by the particles
    (at the job's end, or on the checkpoint of `iteration`)."""
    state, particles, config = load_job(job, iteration)
    largest = int(torch.argmax(state.class_fraction))
    volume = final_reconstruction(state, particles, largest, config)
    choice = choose_group_by_particles(volume, state, particles, pseudo_halves(particles), largest, config)
    return {"job": job.name, "applied": job_group(job), "auto": choice.group.name, "map_only": choice.detection.point_group,
            "seconds": round(choice.seconds, 1), "margins": [f"{name} {margin:+.2f}" for name, margin in choice.margins()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, default=None, help="folder for the rebuilt C1 reconstructions (written once, then read)")
    parser.add_argument("--particles", action="store_true", help="choose as initial-model does: the detection's plausible groups scored by the particles")
    parser.add_argument("--iteration", type=int, default=None, help="with --particles: choose on this iteration's checkpoint (default: the job's last)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for job in args.jobs:
        if not (job / "initial_model.mrc").exists():
            continue
        row = choose_on_job(job, args.iteration) if args.particles else detect_on_job(job, args.cache)
        row["same"] = row["auto"].upper() == row["applied"].upper()
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
