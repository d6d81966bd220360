"""Shared test fixtures."""

import pytest
import torch

from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.simulate import SimulationOptions, simulate


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a shared machine torch's threads mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[ParticleSet, torch.Tensor]:
    """300 particles of the demo map at SNR 1 (preread) and the map they were made from."""
    out = tmp_path_factory.mktemp("sim")
    volume, _ = load_demo_map()
    simulate(volume, out, SimulationOptions(n=300, snr=1.0, seed=5, max_shift_px=2.0, defocus_min_a=9000, defocus_max_a=15000))
    return ParticleSet.from_star(out / "particles.star", preread=True), volume.double()
