"""final_map.fine_final_map: particles finer than the working grid give initial_model.mrc the detail
beyond the working Nyquist that their final poses support.

Ground truth: a map of sharp blobs (content up to the fine grid's Nyquist), particles simulated from it at
96 px and known poses, worked on at 64 px. The final poses are the true ones, the VDAM map sits off
centre (the frame every final map is in), so the fine map must equal the truth moved by that offset at
frequencies the working grid cannot hold, and equal the working grid's map below its Nyquist.
"""

from __future__ import annotations

import pytest
import torch

from novomap.final_map import FINE_FADE_FROM, fine_final_map, final_map, final_reconstruction, reconstruction_onto_vdam
from novomap.io.particles import ParticleSet
from novomap.io.working_grid import final_grid_max_resolution_a
from novomap.maps.fsc import fsc
from novomap.maps.transform import centred_coordinates, frequency_radius, shift_volume
from novomap.symmetry.choice import apply_point_group
from novomap.symmetry.groups import point_group
from novomap.vdam.config import VdamConfig
from novomap.vdam.start import initial_state

FINE_BOX, FINE_PIXEL_A = 96, 1.5
WORKING_RESOLUTION_A = 4.5  # -> 64 px at 2.25 Å/px, Nyquist shell 32 of either box
VDAM_OFFSET_PX = torch.tensor([2.0, -1.0, 1.5], dtype=torch.float64)  # zyx, working pixels


def _sharp_blobs(seed: int = 1) -> torch.Tensor:
    """(96, 96, 96) random Gaussian blobs of 1-1.4 px, inside a 30 px radius."""
    g = torch.Generator().manual_seed(seed)
    coords = centred_coordinates(FINE_BOX, torch.float64)
    volume = torch.zeros((FINE_BOX,) * 3, dtype=torch.float64)
    for _ in range(40):
        centre = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * 40
        width = 1.0 + 0.4 * float(torch.rand(1, generator=g))
        volume += torch.exp(-((coords - centre) ** 2).sum(-1) / (2 * width**2))
    return volume


@pytest.fixture(scope="module")
def fine_job(tmp_path_factory):
    from novomap.simulate import SimulationOptions, simulate

    truth = _sharp_blobs()
    out = tmp_path_factory.mktemp("fine")
    options = SimulationOptions(n=400, snr=3.0, seed=4, box=FINE_BOX, pixel_size_a=FINE_PIXEL_A, max_shift_px=2.0,
                                defocus_min_a=8000, defocus_max_a=15000, particle_diameter_a=130)  # fmt: skip
    simulate(truth.float(), out, options)
    particles = ParticleSet.from_star(out / "particles.star", preread=True, max_resolution_a=WORKING_RESOLUTION_A)
    fine_resolution = final_grid_max_resolution_a(particles.grid)
    fine_particles = ParticleSet.from_star(out / "particles.star", max_resolution_a=fine_resolution)
    return truth, particles, fine_particles


def test_the_fine_grid_is_the_input_grid(fine_job):
    _, particles, fine_particles = fine_job
    assert (particles.box_size, particles.pixel_size_a) == (64, pytest.approx(2.25))
    assert (fine_particles.box_size, fine_particles.pixel_size_a) == (96, pytest.approx(FINE_PIXEL_A))


def test_fine_map_holds_the_truth_beyond_the_working_nyquist(fine_job):
    truth, particles, fine_particles = fine_job
    config = VdamConfig(particle_diameter_a=130.0)
    state = initial_state(particles, config)  # poses: the true ones, copied from the table
    state.class_number[:] = 1
    volume = final_reconstruction(state, particles, 0, config)
    state.maps = shift_volume(volume.double(), VDAM_OFFSET_PX)[None].to(state.maps.dtype)  # the VDAM map, off centre
    state.map_snapshots = {}
    combined = final_map(state, volume, 0, config, particles.pixel_size_a)
    applied = apply_point_group(combined, particles.pixel_size_a, point_group("C1"), config)

    fine = fine_final_map(applied.volume, reconstruction_onto_vdam(state, volume, 0, config), state, particles, fine_particles, 0, config, applied)

    assert fine.shape == (FINE_BOX,) * 3
    ratio = particles.pixel_size_a / fine_particles.pixel_size_a
    expected = shift_volume(truth, VDAM_OFFSET_PX * ratio)
    beyond = fsc(fine, expected)[33:41]  # shells the 64 px working grid cannot hold
    # what the data give there: the same particles reconstructed at the fine grid, true poses, no mask
    limit = fsc(final_reconstruction(state, fine_particles, 0, config).double(), truth)[33:41]
    assert float(limit.mean()) > 0.2
    assert bool((beyond >= limit - 0.02).all())
    # the offset, scaled to the fine grid, matters there: the unmoved truth does not match
    assert float(fsc(fine, truth)[33:41].mean()) < float(beyond.mean()) - 0.2
    # below the cross-fade the map is the working grid's, unchanged
    from novomap.maps.transform import resample_map

    upsampled = resample_map(applied.volume.double(), particles.pixel_size_a, FINE_BOX, fine_particles.pixel_size_a)
    radius = frequency_radius(FINE_BOX)
    below = radius < FINE_FADE_FROM * 32 - 1
    difference = (torch.fft.rfftn(fine) - torch.fft.rfftn(upsampled))[below].abs().max()
    assert float(difference) < 1e-6 * float(torch.fft.rfftn(upsampled)[below].abs().max())
