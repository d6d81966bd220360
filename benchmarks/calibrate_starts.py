"""Which early figure tells a good VDAM start from a false minimum? (issue 10: no wrong fold, any seed)

Runs VDAM from several seeds on one simulated set up to a few checkpoints (iterations 10, 20, 30 of a
100-iteration schedule) and, at each checkpoint, prints per seed the candidate criteria beside the
truth:

* ll: mean log marginal likelihood of a fixed sample of particles, every start scored with the same
  noise spectrum, window and sampling (vdam.restarts.score_starts);
* pmax: the run's own mean max posterior over its last mini-batch;
* res: the run's own half-set resolution (Å);
* sym: the symmetry score of the C1 map for the specimen's group (lower is better; 0 = perfectly symmetric);
* truth: cc and FSC 0.5 to the truth map after superposition (rotation, shift, hand).

    python benchmarks/calibrate_starts.py --star P.star --truth truth.mrc --sym D2 --diameter 200 --seeds 1 2 3 4
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

from novomap.io.mrc import read_map
from novomap.io.particles import ParticleSet
from novomap.maps.align import align_maps
from novomap.maps.fsc import fsc, resolution_at
from novomap.simulate import resample_map
from novomap.symmetry.align import align_to_symmetry
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import pseudo_halves, run_iteration
from novomap.vdam.restarts import score_starts
from novomap.vdam.start import initial_state


def truth_on_grid(path: str, particles: ParticleSet) -> torch.Tensor:
    volume, pixel = read_map(path)
    return resample_map(torch.from_numpy(volume).double(), pixel, particles.box_size, particles.pixel_size_a, tolerance=5e-3)


def to_truth(truth: torch.Tensor, volume: torch.Tensor, pixel: float) -> tuple[float, float]:
    alignment = align_maps(truth, volume, pixel)
    curve = fsc(truth.float(), alignment.volume)
    return alignment.cc, resolution_at(curve, 0.5, truth.shape[-1], pixel)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--star", required=True)
    parser.add_argument("--truth", required=True)
    parser.add_argument("--sym", default="C1")
    parser.add_argument("--diameter", type=float, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[10, 20, 30])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    particles = ParticleSet.from_star(args.star, preread=True, max_resolution_a=7.0)
    truth = truth_on_grid(args.truth, particles)
    half = pseudo_halves(particles)
    device = torch.device("cpu")
    states = {}
    for seed in args.seeds:
        config = VdamConfig(seed=seed, particle_diameter_a=args.diameter, n_starts=1)
        states[seed] = initial_state(particles, config)
    rows = []
    for checkpoint in args.checkpoints:
        t0 = time.perf_counter()
        snapshot = []
        for seed, state in states.items():
            config = VdamConfig(seed=seed, particle_diameter_a=args.diameter, n_starts=1)
            while state.iteration < checkpoint:
                figures = run_iteration(state, particles, half, config, device)
            snapshot.append((seed, copy.deepcopy(state), figures))
        seconds = time.perf_counter() - t0
        base = VdamConfig(seed=args.seeds[0], particle_diameter_a=args.diameter)
        scores = score_starts([s for _, s, _ in snapshot], particles, half, base, device)
        for (seed, state, figures), score in zip(snapshot, scores):
            volume = state.maps[0].float()
            cc, res = to_truth(truth, volume, particles.pixel_size_a)
            sym = align_to_symmetry(volume, particles.pixel_size_a, args.sym).score if args.sym != "C1" else float("nan")
            row = dict(iteration=checkpoint, seed=seed, ll=score, pmax=figures["average_pmax"], res=figures["resolution_a"],
                       sym=sym, cc=cc, fsc05=res)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        print(f"# checkpoint {checkpoint}: {seconds:.0f} s for {len(states)} seeds", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle)


if __name__ == "__main__":
    sys.exit(main())
