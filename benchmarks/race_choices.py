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
import dataclasses
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
    """The rounds of one job's race: per round the contenders, their C1 and symmetrised scores, and
    (with a truth) each contender's (cc, FSC 0.5 Å) to it."""
    from calibrate_starts import to_truth

    half = pseudo_halves(particles)

    def own_config(start: int) -> VdamConfig:
        return dataclasses.replace(config, seed=restarts.start_seed(config, start), n_starts=1)

    contenders = [(s, initial_state(particles, own_config(s))) for s in range(config.starts())]
    rounds = []
    for iteration, survivors in restarts.competition_rounds(config):
        for start, state in contenders:
            while state.iteration < iteration:
                run_iteration(state, particles, half, own_config(start), "cpu")
        states = [c for _, c in contenders]
        c1 = restarts.score_starts(states, particles, half, config, "cpu")
        symmetrised = restarts.score_starts(states, particles, half, config, "cpu", group)
        row = {"iteration": iteration, "starts": [s for s, _ in contenders], "c1": c1, "symmetrised": symmetrised}
        if truth is not None:
            row["truth"] = [to_truth(truth, s.maps[0].double(), particles.pixel_size_a) for s in states]
        rounds.append(row)
        # the job's own rule: C1 scores before the last round, symmetrised in it
        used = symmetrised if survivors == 1 else c1
        contenders = [contenders[i] for i in restarts.ranked_starts(used)[:survivors]]
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
