"""K = 2 separates a 50/50 mixture of two different particles (beta-gal and a synthetic blob complex).

Small on purpose: 2 x 150 particles of 32 px (the built-in map Fourier-cropped to 7.08 Å/px) at
SNR 3, 100 mini-batches (the default schedule), one start; then the final pass assigns every particle. Every particle's
class must agree with its source for >= 98 % of the particles (under either labelling).
"""

from __future__ import annotations

import math

import pytest
import starfile
import torch

from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.simulate import SimulationOptions, fourier_resize, simulate
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import assign_all, pseudo_halves, run_iteration
from novomap.vdam.start import initial_state

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

BOX = 32
N_EACH = 150


def blob_complex(reference: torch.Tensor) -> torch.Tensor:
    """An elongated, bent chain of five Gaussian blobs (unlike beta-gal's compact D2 body), on the reference's scale."""
    n = reference.shape[-1]
    coords = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(coords, coords, coords, indexing="ij")
    volume = torch.zeros((n, n, n), dtype=torch.float64)
    for cx, cy, cz, size in ((-9, 0, 0, 3.0), (-4, 1, 0, 3.5), (1, 0, 1, 3.5), (5, 4, 1, 3.0), (7, 9, 2, 2.5)):
        volume += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * size**2))
    return (volume * reference.std() / volume.std()).to(reference.dtype)


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    volume, pixel = load_demo_map()
    small = fourier_resize(volume.double(), BOX).float()
    pixel = pixel * volume.shape[-1] / BOX
    out = tmp_path_factory.mktemp("mixture")
    tables = []
    for source, (name, shape) in enumerate((("betagal", small), ("blobs", blob_complex(small)))):
        options = SimulationOptions(n=N_EACH, snr=3.0, seed=20 + source, box=BOX, pixel_size_a=pixel, particle_diameter_a=200.0)
        result = simulate(shape, out / name, options)
        blocks = starfile.read(result.star_path, always_dict=True)
        particles = blocks["particles"]
        # image paths relative to the merged file's folder
        particles["rlnImageName"] = [f"{entry.split('@')[0]}@{name}/{entry.split('@')[1]}" for entry in particles["rlnImageName"]]
        particles["rlnMicrographName"] = [f"{name}_{m}" for m in particles["rlnMicrographName"]]
        tables.append(particles)
    import pandas as pd

    merged = dict(blocks)
    merged["particles"] = pd.concat(tables, ignore_index=True)
    star = out / "mixture.star"
    starfile.write(merged, star)
    source = torch.cat([torch.zeros(N_EACH, dtype=torch.long), torch.ones(N_EACH, dtype=torch.long)])
    return star, source


def test_two_classes_separate_a_mixture_of_two_particles(mixture):
    star, source = mixture
    particles = ParticleSet.from_star(star, preread=True)
    # VDAM's whole schedule: after 20 mini-batches only 81-85 % were in their own class (2026-11-30).
    # With the race of random starts a K=2 job runs by default (2 starts): a single start of this small
    # mixture ended with 52-57 % on this session's machine (the code of 21d55ef, which passed elsewhere,
    # too), while the default run put 100 % in their own class on seeds 3 and 1 (session 25)
    config = VdamConfig(n_iter=100, n_classes=2, particle_diameter_a=200.0, seed=3)
    state = initial_state(particles, config)
    half = pseudo_halves(particles)
    while state.iteration < config.n_iter:  # the race (at iteration 10) advances the run to iteration 30
        run_iteration(state, particles, half, config, "cpu")
    assign_all(state, particles, half, config, "cpu")
    assigned = state.class_number - 1
    agreement = max(float((assigned == source).double().mean()), float((assigned == 1 - source).double().mean()))
    assert agreement >= 0.98, f"only {agreement:.1%} of the particles in their own class (fractions {state.class_fraction.tolist()})"
    assert math.isclose(float(state.class_fraction.sum()), 1.0, rel_tol=1e-9)
