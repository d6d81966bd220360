"""Would the particles choose a particle's group early in a `--sym auto` run? An experiment.

Continues a finished job from a checkpoint (e.g. run_it030, the race's end) and, before the next
iteration, scores candidate groups the way `--sym auto`'s choice does
(analysis.symmetry_by_particles.score_groups: each pseudo half-set's reconstruction at the
checkpoint's poses symmetrised by the group, cross-validated explained energy per sample particle),
for the groups given, whatever the map-only detection would propose. Prints the scores, best first,
and the map-only detection's choice, then stops; the job folder is copied first and not changed.

    python benchmarks/early_group_scores.py JOB_DIR --from 30 --groups C1 C2 D2 T O I [--json OUT]

Run it from the folder the job was run from (the particles' paths are relative to it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job")
    parser.add_argument("--from", dest="start", type=int, default=30)
    parser.add_argument("--groups", nargs="+", default=["C1", "C2", "T", "O", "I"])
    parser.add_argument("--json")
    args = parser.parse_args()

    import novomap.initial_model as job
    from novomap.analysis.symmetry_by_particles import score_groups
    from novomap.symmetry.detect import detect_point_group
    from novomap.symmetry.groups import point_group

    def scored_then_stop(state, particles, half, config, device, group=None):
        started = time.perf_counter()
        largest = int(state.class_fraction.argmax())
        volume = job.final_reconstruction(state, particles, largest, config)
        detection = detect_point_group(volume, particles.pixel_size_a, de_novo=True)
        scores = score_groups(volume, [point_group(name) for name in args.groups], state, particles, half, largest, config, device[0])
        found = {
            "iteration": state.iteration,
            "map_only": detection.point_group,
            "scores": [(g.name, round(score, 2)) for g, score, _ in scores],
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(found))
        if args.json:
            Path(args.json).write_text(json.dumps(found, indent=1))
        raise SystemExit(0)

    job.run_iteration = scored_then_stop
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "job"
        shutil.copytree(args.job, copy, ignore=shutil.ignore_patterns("attempt*"))
        from novomap.commands.main import main as novomap_main

        sys.argv = ["novomap", "initial-model", "--continue", str(copy / f"run_it{args.start:03d}_optimiser.star"), "--o", str(copy), "--quiet", "--no-report", "--retries", "0"]
        novomap_main()
    print("no iteration was reached", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
