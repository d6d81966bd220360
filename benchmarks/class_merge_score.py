"""Would a smaller class's particles be explained as well by the largest class's structure?

For a finished K=2 run: 300 particles of the smaller class are scored (one global E-step, no sums, as
vdam.restarts.score_starts scores random starts) under the run's class maps, then with the largest
class's map superposed onto the smaller class's map (maps.align.align_maps: rotation, shift, hand) and
put in its slot. Prints the mean difference in log likelihood per particle, its standard error, and
the share of particles that the moved map explains better. Near 0: one structure in two frames
(analysis.pool_classes could pool them); strongly negative: distinct solutions.

    python benchmarks/class_merge_score.py --star particles.star --state JOB/run_it100_state.pt --particle-diameter 200

Run it from the folder the STAR file's image paths are relative to (as the job was run).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from novomap.io.particles import ParticleSet
from novomap.maps.align import align_maps
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import as_devices, expectation, pseudo_halves, search_setup
from novomap.vdam.state import RunState


def scores(state: RunState, maps: torch.Tensor, particles: ParticleSet, half: torch.Tensor, sample: torch.Tensor, config: VdamConfig) -> torch.Tensor:
    """Log marginal likelihood (n_sample,) float64 of the sample under `maps` (K, N, N, N) in the state's place."""
    trial = state.scratch_copy()
    trial.maps = maps
    grid, current_size, coarse_size = search_setup(trial, particles, config, advance=False)
    expectation(trial, particles, sample, half, grid, current_size, coarse_size, config, as_devices("cpu"), {}, with_sums=False)
    return trial.log_likelihood[sample].double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--star", required=True)
    parser.add_argument("--state", required=True, help="a K=2 run's run_itNNN_state.pt")
    parser.add_argument("--particle-diameter", type=float, required=True, help="the job's --particle-diameter (Å)")
    parser.add_argument("--n", type=int, default=300, help="particles of the smaller class scored")
    parser.add_argument("--j", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.j)
    particles = ParticleSet.from_star(args.star, preread=True)
    state = RunState.load(args.state)
    if state.n_classes != 2:
        raise SystemExit(f"{args.state}: {state.n_classes} classes; this compares the two classes of a K=2 run")
    config = dataclasses.replace(VdamConfig(particle_diameter_a=args.particle_diameter, n_classes=2), local_searches=False)
    largest = int(torch.argmax(state.class_fraction))
    other = 1 - largest
    members = torch.nonzero(state.class_number == other + 1).squeeze(1)
    order = torch.randperm(members.numel(), generator=torch.Generator().manual_seed(3))
    sample = members[order[: args.n]].sort().values
    half = pseudo_halves(particles)
    own = scores(state, state.maps, particles, half, sample, config)
    alignment = align_maps(state.maps[other], state.maps[largest], particles.pixel_size_a)
    moved = state.maps.clone()
    moved[other] = alignment.volume.double()
    difference = scores(state, moved, particles, half, sample, config) - own
    print(
        f"class {other + 1} ({members.numel()} particles, {sample.numel()} scored) against class {largest + 1}'s map moved onto it "
        f"(cc {float(alignment.cc):.3f}, hand flipped: {alignment.hand_flipped}): log L per particle {float(difference.mean()):+.2f} "
        f"± {float(difference.std()) / difference.numel() ** 0.5:.2f}; explained better by the moved map: {float((difference > 0).double().mean()):.2f}"
    )


if __name__ == "__main__":
    main()
