"""Which start would the race pick, scored in C1 or symmetrised by the job's group? (vdam.restarts)

Runs only the race of random starts of a job (to its last round, iteration 30 of 100), as
`novomap initial-model` runs it, and at each round prints every contender's score both ways: in C1
(the maps as they are) and with the group imposed about each map's own axes (what the last round
uses when the job has an explicit group). With --truth, each contender's map is also compared with
the truth (cc and FSC 0.5 after superposition), so a changed choice can be judged right or wrong
without running the whole job. Runs whose choice is the same both ways go on identically.

    python benchmarks/race_choices.py --star P.star --sym O --diameter 230 --seeds 1 2 3 [--truth T.mrc]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from novomap.io.particles import ParticleSet
from novomap.runtime import flush_denormals
from novomap.symmetry.groups import point_group
from novomap.vdam import restarts
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import pseudo_halves, run_iteration
from novomap.vdam.start import initial_state


def race(particles: ParticleSet, config: VdamConfig, group, truth: torch.Tensor | None) -> list[dict]:
    """The rounds of one job's race, run by the job's own code (vdam.restarts.compete, reached through
    run_iteration): per round the contenders, their C1 and symmetrised scores, and (with a truth) each
    contender's (cc, FSC 0.5 Å) to it. The race itself goes on with the scores the job would use."""
    from calibrate_starts import to_truth

    half = pseudo_halves(particles)
    rounds: list[dict] = []
    job_scoring = restarts.score_starts

    def both_ways(states, particles, half, config, device, scored_with=None):
        c1 = job_scoring(states, particles, half, config, device)
        symmetrised = job_scoring(states, particles, half, config, device, group)
        row = {"iteration": states[0].iteration, "c1": c1, "symmetrised": symmetrised}
        if truth is not None:
            row["truth"] = [to_truth(truth, s.maps[0].double(), particles.pixel_size_a) for s in states]
        rounds.append(row)
        return symmetrised if scored_with is not None else c1

    restarts.score_starts = both_ways
    try:
        state = initial_state(particles, config)
        last = restarts.competition_rounds(config)[-1][0]
        while state.iteration < last:
            figures = run_iteration(state, particles, half, config, "cpu", group)
    finally:
        restarts.score_starts = job_scoring
    for row, done in zip(rounds, figures["start_rounds"]):
        row["starts"] = done["starts"]
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--star", required=True)
    parser.add_argument("--sym", required=True)
    parser.add_argument("--diameter", type=float, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--truth", default="")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-resolution", type=float, default=None, help="Å, as the job's --max-resolution (its automatic limit leaves 64 px boxes coarser than 3.5 Å/px as they are)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    flush_denormals()
    torch.set_num_threads(args.threads)
    particles = ParticleSet.from_star(args.star, preread=True, max_resolution_a=args.max_resolution)
    truth = None
    if args.truth:
        from calibrate_starts import truth_on_grid

        truth = truth_on_grid(args.truth, particles)
    group = point_group(args.sym)
    results = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        rounds = race(particles, VdamConfig(seed=seed, particle_diameter_a=args.diameter), group, truth)
        results[seed] = rounds
        last = rounds[-1]
        pick_c1 = last["starts"][restarts.ranked_starts(last["c1"])[0]]
        pick_sym = last["starts"][restarts.ranked_starts(last["symmetrised"])[0]]
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s): C1 picks start {pick_c1}, symmetrised picks start {pick_sym}"
              + (" (CHANGED)" if pick_c1 != pick_sym else ""), flush=True)
        for row in rounds:
            truth_text = ""
            if "truth" in row:
                truth_text = "; truth cc/FSC0.5 " + ", ".join(f"{cc:.2f}/{res:.1f}" for cc, res in row["truth"])
            print(f"  it {row['iteration']}: starts {row['starts']}; C1 " + ", ".join(f"{v:.1f}" for v in row["c1"])
                  + "; symmetrised " + ", ".join(f"{v:.1f}" for v in row["symmetrised"]) + truth_text, flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
