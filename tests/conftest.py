"""Shared test fixtures."""

import pytest
import torch

from _simulated import demo_particles
from novomap.io.particles import ParticleSet


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
    return demo_particles(tmp_path_factory.mktemp("sim"), n=300, snr=1.0, seed=5)
