import math

import pytest
import torch

from novomap.estep import ctf_table
from novomap.estep.ctf_table import CtfTable, window_ctf
from novomap.physics.ctf import electron_wavelength_a
from novomap.physics.window import fourier_window
from novomap.reconstruct import particle_ctf


def test_table_gives_the_values_computed_on_each_window(simulated):
    particles, _ = simulated
    table = CtfTable(particles)
    index = torch.tensor([5, 0, 299, 5, 17])
    for size, by_shell in ((particles.box_size, False), (12, False), (20, True)):
        window = fourier_window(particles.box_size, size, by_shell=by_shell)
        expected = particle_ctf(particles, index, window).to(torch.float32)
        assert torch.equal(table.on_window(index, window), expected)
    # rows are filled only for the particles asked for
    assert int(table._filled.sum()) == 4


def test_table_value_is_the_textbook_ctf(simulated):
    particles, _ = simulated
    i, ky, kx = 7, -3, 5  # one pixel of one particle
    window = fourier_window(particles.box_size, particles.box_size)
    pixel = int(torch.nonzero((window.kx == kx) & (window.ky == ky)).squeeze())
    got = float(CtfTable(particles).on_window(torch.tensor([i]), window)[0, pixel])
    fx, fy = kx / (particles.box_size * particles.pixel_size_a), ky / (particles.box_size * particles.pixel_size_a)
    u2 = fx * fx + fy * fy
    angle = math.atan2(fy, fx) - math.radians(float(particles.defocus_angle_deg[i]))
    defocus = float(particles.defocus_u_a[i]) * math.cos(angle) ** 2 + float(particles.defocus_v_a[i]) * math.sin(angle) ** 2
    wavelength = float(electron_wavelength_a(particles.voltage_kv[i]))
    q0 = float(particles.amplitude_contrast[i])
    cs_a = float(particles.cs_mm[i]) * 1e7
    gamma = -math.pi * wavelength * defocus * u2 + 0.5 * math.pi * cs_a * wavelength**3 * u2 * u2 - math.radians(float(particles.phase_shift_deg[i])) - math.atan(q0 / math.sqrt(1 - q0 * q0))
    expected = -math.sin(gamma) * math.exp(-float(particles.bfactor_a2[i]) * u2 / 4) * float(particles.ctf_scale[i])
    assert got == pytest.approx(expected, abs=1e-6)


def test_window_ctf_computes_directly_beyond_the_memory_limit(simulated, monkeypatch):
    particles, _ = simulated
    window = fourier_window(particles.box_size, 16)
    index = torch.tensor([1, 2, 3])
    cached = window_ctf(particles, index, window)
    monkeypatch.setattr(ctf_table, "TABLE_MAX_BYTES", 0)
    monkeypatch.setattr(ctf_table, "CtfTable", None)  # building a table now would fail
    assert torch.equal(window_ctf(particles, index, window), cached)
