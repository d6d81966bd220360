"""Check: the final map's symmetry alignment refined from the axes the run imposed, against a global search.

For each finished job folder with an explicit group (`--sym` other than C1 and auto, read from the
first line of run.out), loads its last run_itNNN_state.pt, takes the largest class map and aligns it
to the group twice: globally (symmetry.align.align_to_symmetry) and from the run's imposed axes
(symmetry.choice.align_near without its score guard). Prints the scores, the seconds of each on one
thread, the angle between the two rotations modulo the group and the distance of the centres.

    python benchmarks/check_final_alignment.py JOB [JOB ...]
    python benchmarks/check_final_alignment.py $(dirname $(find /tmp -name run.out))
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from novomap.physics.euler import rotation_angle_deg
from novomap.symmetry.align import align_to_symmetry
from novomap.symmetry.choice import align_near
from novomap.symmetry.groups import point_group
from novomap.vdam.state import RunState


def requested_group(job: Path) -> str | None:
    try:
        first = (job / "run.out").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    found = re.search(r"--sym (\S+)", first)
    return found.group(1) if found and found.group(1) not in ("C1", "auto") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", nargs="+", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| job | group | iteration | global score | global s | near score | near s | rotation apart (deg) | centre apart (px) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for job in args.jobs:
        name = requested_group(job)
        states = sorted(job.glob("run_it*_state.pt"))
        if name is None or not states:
            continue
        state = RunState.load(states[-1])
        if not state.symmetry_axes:
            continue
        group = point_group(name)
        k = int(torch.argmax(state.class_fraction))
        volume = state.maps[k].float()
        t0 = time.perf_counter()
        searched = align_to_symmetry(volume, 1.0, group)
        t1 = time.perf_counter()
        near = align_near(volume, 1.0, group, state.symmetry_axes[k], max_score=float("inf"))
        t2 = time.perf_counter()
        apart = min(
            min(float(rotation_angle_deg(near.rotation.double(), op @ searched.rotation.double())),
                float(rotation_angle_deg(near.rotation.double(), searched.rotation.double() @ op)))
            for op in group.operators
        )
        centre = float((near.shift_zyx_px.double() - searched.shift_zyx_px.double()).norm())
        print(f"| {job} | {name} | {state.iteration} | {searched.score:.4f} | {t1 - t0:.2f} | {near.score:.4f} | {t2 - t1:.2f} | {apart:.2f} | {centre:.2f} |", flush=True)


if __name__ == "__main__":
    main()
