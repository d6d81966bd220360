"""Each particle's CTF over the whole Fourier half-plane, computed once and cut to each E-step's window.

A particle's CTF does not change during a run, but the mini-batch iterations, the race of starts and
the final pass ask for it tens of times, on windows that change. Computing it (float64
trigonometry over every pixel of the window) took 1.1 of the 5.1 s that the real tutorial job spent
preparing batches. The table holds the values `reconstruct.particle_ctf` gives, computed over the
whole rfft half-plane and rounded to float32 as the E-step uses them, so every window reads the
numbers it would have computed. Rows are filled when a particle is first asked for.
"""

from __future__ import annotations

import threading
import weakref

import torch

from novomap.physics.fourier import image_frequencies, rfft_shells
from novomap.physics.window import FourierWindow
from novomap.reconstruct import particle_ctf

# at most this much memory per particle set (float32, N x (N//2+1) values per particle: 17 kB at
# 64 px, so 31,000 particles; 66 kB at 128 px, 8,000): beyond it each call computes its own values
TABLE_MAX_BYTES = 512 * 2**20


class CtfTable:
    """CTF values (n, N, N//2+1) float32 of a particle set on its working grid, in the rfft layout."""

    def __init__(self, particles) -> None:
        n, box = particles.n, particles.box_size
        self._particles = particles
        self._values = torch.empty((n, box, box // 2 + 1), dtype=torch.float32)
        self._filled = torch.zeros(n, dtype=torch.bool)
        ky, kx = image_frequencies(box)
        # every pixel of the half-plane, corners and the kx = 0 column's redundant half included
        self._whole = FourierWindow(box, box, torch.arange(box * (box // 2 + 1)), kx.reshape(-1).double(), ky.reshape(-1).double(), rfft_shells(box).reshape(-1))
        self._lock = threading.Lock()

    def on_window(self, index: torch.Tensor, window: FourierWindow) -> torch.Tensor:
        """CTF of the particles index (B,) on the window's pixels -> (B, P) float32 (CPU)."""
        index = index.cpu()
        with self._lock:  # the E-step's device threads may ask at once
            missing = torch.unique(index[~self._filled[index]])
            if missing.numel():
                box = self._values.shape[1]
                values = particle_ctf(self._particles, missing, self._whole).to(torch.float32)
                self._values[missing] = values.reshape(-1, box, box // 2 + 1)
                self._filled[missing] = True
        return window.take(self._values[index])


_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def table_bytes(n_particles: int, box: int) -> int:
    return n_particles * box * (box // 2 + 1) * 4


def window_ctf(particles, index: torch.Tensor, window: FourierWindow) -> torch.Tensor:
    """CTF of the particles index (B,) on a window of their working grid -> (B, P) float32 (CPU):
    read from the set's CtfTable, or computed when the table would exceed TABLE_MAX_BYTES."""
    if table_bytes(particles.n, particles.box_size) > TABLE_MAX_BYTES or window.box != particles.box_size:
        return particle_ctf(particles, index, window.to("cpu")).to(torch.float32)
    table = _tables.get(particles)
    if table is None:
        table = _tables.setdefault(particles, CtfTable(particles))
    return table.on_window(index, window)
