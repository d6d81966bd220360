"""Simulated particles for tests."""

import torch

from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.simulate import SimulationOptions, simulate


def demo_particles(out, n: int, snr: float, seed: int) -> tuple[ParticleSet, torch.Tensor]:
    """n particles of the demo map simulated into folder `out` (shifts up to 2 px, defocus 0.9-1.5 um),
    preread, and the map (float64) they were made from."""
    volume, _ = load_demo_map()
    simulate(volume, out, SimulationOptions(n=n, snr=snr, seed=seed, max_shift_px=2.0, defocus_min_a=9000, defocus_max_a=15000))
    return ParticleSet.from_star(out / "particles.star", preread=True), volume.double()
