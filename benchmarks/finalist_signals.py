"""What tells a grouped run's winner from the race's runner-up at the choice (vdam.finalists)? An experiment.

Continues a finished job from a checkpoint that still carries its runner-up (e.g. run_it040 of a
run with a group of high order, whose choice falls at iteration 50), and at the choice prints, for the
run and the runner-up, the signals a choice could use -- pose agreement of the pseudo half-sets
(symmetrised about each run's axes, what vdam.finalists.choose uses), the ring misfit of the VDAM map
at the run's poses (analysis.ring_spectra), mean pmax of the last iteration -- and, as the truth,
each VDAM map's FSC 0.5 to the specimen's map (superposed: rotation, shift and hand). Then stops; the
job folder given is copied first and not changed.

    python benchmarks/finalist_signals.py JOB_DIR TRUTH.mrc [--from 40] [--json OUT.json]

JOB_DIR is the folder of the attempt (with run.out's command line in its fingerprint); run it from the
folder the job was run from (the particles' paths are relative to it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch


def signals(state, particles, half, group, truth: tuple[torch.Tensor, float] | None) -> dict:
    from novomap.analysis.ring_spectra import ring_check
    from novomap.maps.align import align_maps
    from novomap.maps.fsc import fsc, resolution_at
    from novomap.reconstruct import Poses
    from novomap.vdam import finalists

    poses = Poses(state.rot_deg, state.tilt_deg, state.psi_deg, state.origin_x_a, state.origin_y_a)
    rows = finalists.agreement_rows(particles.n, 1)
    volume = state.maps[0].detach().double().cpu()
    ring = ring_check(particles, torch.arange(particles.n), poses, volume)
    figures = {
        "pose_agreement": finalists.pose_agreement(state, particles, half, rows, group),
        "pose_agreement_c1": finalists.pose_agreement(state, particles, half, rows, None),
        "ring_misfit": ring.misfit if ring is not None else None,
        "ring_floor": ring.noise_floor if ring is not None else None,
        "pmax": state.history[-1].get("average_pmax"),
    }
    if truth is not None:
        from novomap.maps.transform import resample_map

        truth = resample_map(truth[0], truth[1], volume.shape[-1], particles.pixel_size_a, tolerance=5e-2).double()
        moved = align_maps(truth, volume, particles.pixel_size_a).volume.double()
        figures["fsc05_to_truth_a"] = resolution_at(fsc(truth, moved), 0.5, truth.shape[-1], particles.pixel_size_a)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job")
    parser.add_argument("truth")
    parser.add_argument("--from", dest="start", type=int, default=40)
    parser.add_argument("--json")
    args = parser.parse_args()

    from novomap.io.mrc import read_map
    from novomap.vdam import finalists

    volume, pixel_size_a = read_map(args.truth)
    truth = (torch.as_tensor(volume).double(), pixel_size_a)
    found = {}

    def observed_choice(state, particles, half, config, group=None):
        runner_up = state.finalists[0]["state"]
        found["iteration"] = state.iteration
        found["run"] = signals(state, particles, half, group, truth)
        found["runner_up"] = signals(runner_up, particles, half, group, truth)
        found["starts"] = [next((f["chosen_start"] for f in state.history if "chosen_start" in f), None), state.finalists[0]["start"]]
        print(json.dumps(found))
        if args.json:
            Path(args.json).write_text(json.dumps(found, indent=1))
        raise SystemExit(0)

    finalists.choose = observed_choice
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "job"
        shutil.copytree(args.job, copy, ignore=shutil.ignore_patterns("attempt*"))
        from novomap.commands.main import main as novomap_main

        sys.argv = ["novomap", "initial-model", "--continue", str(copy / f"run_it{args.start:03d}_optimiser.star"), "--o", str(copy), "--quiet", "--no-report", "--retries", "0"]
        novomap_main()
    print("no choice was reached", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
