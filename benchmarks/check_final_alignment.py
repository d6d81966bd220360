"""Check: the final map's symmetry alignment refined from the axes the run imposed, against a global search.

For each finished job folder with an explicit group (`--sym` other than C1 and auto, read from the
first line of run.out), loads its last run_itNNN_state.pt and rebuilds the map the job aligns at its
end (final_map.final_reconstruction + final_map, from the job's own particles; default options
except --particle-diameter and --seed, the working grid from run.out's "resolution limit"), then
aligns it to the group twice: globally (symmetry.align.align_to_symmetry) and from the run's imposed
axes (symmetry.choice.align_near without its score guard). --class-map aligns the last class map
instead (no particles needed). Prints the scores, the seconds of each on one thread, the angle
between the two rotations modulo the group and the distance of the centres, as a Markdown table.

    python benchmarks/check_final_alignment.py JOB [JOB ...] [--class-map]
"""

from __future__ import annotations

import argparse
import re
import shlex
import time
from pathlib import Path

import torch

from novomap.final_map import final_map, final_reconstruction, reconstruction_onto_vdam
from novomap.io.particles import ParticleSet
from novomap.physics.euler import rotation_angle_deg
from novomap.symmetry.align import align_to_symmetry
from novomap.symmetry.choice import align_near
from novomap.symmetry.groups import point_group
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState


def job_options(job: Path) -> dict[str, str] | None:
    """The job's command-line options (--name: value) from run.out's first line, or None."""
    try:
        first = (job / "run.out").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    argv = shlex.split(first.lstrip("# "))
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


def rebuilt_final_map(job: Path, options: dict[str, str], state: RunState, k: int) -> tuple[torch.Tensor, float]:
    """The map run_initial_model aligns at its end -> (map (N, N, N), pixel size Å)."""
    text = (job / "run.out").read_text()
    star = Path(options["--i"])
    if not star.is_absolute():
        star = Path(re.search(r"^# started .* in (\S+)$", text, re.M).group(1)) / star
    limit = re.search(r"resolution limit ([\d.]+) Å", text)
    particles = ParticleSet.from_star(star, preread=True, max_resolution_a=float(limit.group(1)) if limit else None)
    config = VdamConfig(particle_diameter_a=float(options["--particle-diameter"]), seed=int(options.get("--seed", 1)))
    volume = final_reconstruction(state, particles, k, config)
    onto = reconstruction_onto_vdam(state, volume, k, config)
    return final_map(state, volume, k, config, particles.pixel_size_a, onto), particles.pixel_size_a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", nargs="+", type=Path)
    parser.add_argument("--class-map", action="store_true", help="align the last class map, not the rebuilt final map")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| job | group | iteration | global score | global s | near score | near s | rotation apart (deg) | centre apart (px) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for job in args.jobs:
        options = job_options(job)
        states = sorted(job.glob("run_it*_state.pt"))
        if options is None or options.get("--sym", "C1") in ("C1", "auto") or not states:
            continue
        state = RunState.load(states[-1])
        if not state.symmetry_axes:
            continue
        group = point_group(options["--sym"])
        k = int(torch.argmax(state.class_fraction))
        try:
            volume, pixel_size_a = (state.maps[k].float(), 1.0) if args.class_map else rebuilt_final_map(job, options, state, k)
        except Exception as error:  # e.g. a working grid run.out does not pin down to the pixel
            print(f"| {job} | {group.name} | {state.iteration} | could not be rebuilt: {error} |||||", flush=True)
            continue
        t0 = time.perf_counter()
        searched = align_to_symmetry(volume, pixel_size_a, group)
        t1 = time.perf_counter()
        near = align_near(volume, pixel_size_a, group, state.symmetry_axes[k], max_score=float("inf"))
        t2 = time.perf_counter()
        apart = min(
            min(float(rotation_angle_deg(near.rotation.double(), op @ searched.rotation.double())),
                float(rotation_angle_deg(near.rotation.double(), searched.rotation.double() @ op)))
            for op in group.operators
        )
        centre = float((near.shift_zyx_px.double() - searched.shift_zyx_px.double()).norm())
        print(f"| {job} | {group.name} | {state.iteration} | {searched.score:.4f} | {t1 - t0:.2f} | {near.score:.4f} | {t2 - t1:.2f} | {apart:.2f} | {centre:.2f} |", flush=True)


if __name__ == "__main__":
    main()
