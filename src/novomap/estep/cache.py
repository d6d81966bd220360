"""Per-iteration stores that let chunks of a mini-batch share work.

ProjectionCache: each (class, fine orientation) is projected at most once per iteration, however
many chunks need it. SliceBuffer: back-projection slices are summed per (half, class, fine
orientation) across chunks and inserted into the 3D grids once, when the buffer is flushed.
"""

from __future__ import annotations

import torch

from novomap.physics.projection import extract_slices, insert_slices
from novomap.physics.window import FourierWindow


class ProjectionCache:
    def __init__(self, references: torch.Tensor, rotations: torch.Tensor, window: FourierWindow, pad: int) -> None:
        """references (K, M, M, M) complex; rotations (n_fine, 3, 3): the iteration's fine orientations."""
        self.references = references
        self.rotations = rotations.to(references.device)
        self.window = window.to(references.device)
        self.pad = pad
        self.n_orientations = rotations.shape[0]
        self.slot = torch.full((references.shape[0] * self.n_orientations,), -1, dtype=torch.long, device=references.device)
        self.store = torch.empty((0, window.n_pixels), dtype=torch.complex64, device=references.device)

    def lookup(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (R,) = class * n_fine + orientation -> (projections (n_unique, P) complex64, row index (R,))."""
        unique, inverse = torch.unique(keys, return_inverse=True)
        missing = unique[self.slot[unique] < 0]
        if missing.numel():
            parts = []
            for k in torch.unique(missing // self.n_orientations).tolist():
                these = missing[missing // self.n_orientations == k]
                rotations = self.rotations[these % self.n_orientations].to(self.references.real.dtype)
                parts.append((these, extract_slices(self.references[k], rotations, self.window.kx, self.window.ky, self.pad)))
            new_keys = torch.cat([p[0] for p in parts])
            self.slot[new_keys] = torch.arange(self.store.shape[0], self.store.shape[0] + new_keys.numel(), device=keys.device)
            self.store = torch.cat([self.store] + [p[1].to(torch.complex64) for p in parts])
        return self.store[self.slot[unique]], inverse


class SliceBuffer:
    """Sums of 2D slices per key = (half * K + class) * n_fine + orientation, inserted on flush.

    Storage is allocated once (max_slices rows, single precision: each row sums at most a few
    thousand terms); the owner flushes when `full`.
    """

    def __init__(self, n_keys: int, n_pixels: int, device, max_slices: int = 8192) -> None:
        self.slot = torch.full((n_keys,), -1, dtype=torch.long, device=device)
        self.keys = torch.empty(max_slices, dtype=torch.long, device=device)
        self.data = torch.zeros((max_slices, n_pixels), dtype=torch.complex64, device=device)
        self.weight = torch.zeros((max_slices, n_pixels), dtype=torch.float32, device=device)
        self.count = 0

    def room_for(self, keys: torch.Tensor) -> bool:
        return self.count + int((self.slot[keys] < 0).sum()) <= self.keys.numel()

    def add(self, keys: torch.Tensor, data: torch.Tensor, weight: torch.Tensor) -> None:
        """keys (S,) unique; data (S, P) complex; weight (S, P) real. Check room_for first."""
        new = keys[self.slot[keys] < 0]
        if new.numel():
            self.slot[new] = torch.arange(self.count, self.count + new.numel(), device=keys.device)
            self.keys[self.count : self.count + new.numel()] = new
            self.count += new.numel()
        rows = self.slot[keys]
        self.data.index_add_(0, rows, data.to(self.data.dtype))
        self.weight.index_add_(0, rows, weight.to(self.weight.dtype))

    def flush(self, rotations: torch.Tensor, n_classes: int, window: FourierWindow, pad: int, gradient_grids: torch.Tensor, weight_grids: torch.Tensor) -> None:
        """Insert every buffered slice into gradient/weight grids (2, K, M, M, M) and empty the buffer."""
        if self.count == 0:
            return
        keys = self.keys[: self.count]
        n_fine = rotations.shape[0]
        grid_index = keys // n_fine
        kx, ky = window.kx.to(keys.device), window.ky.to(keys.device)
        for hk in torch.unique(grid_index).tolist():
            rows = torch.nonzero(grid_index == hk).squeeze(1)
            h, c = divmod(hk, n_classes)
            orientation = rotations[keys[rows] % n_fine].to(device=keys.device, dtype=torch.float32)
            insert_slices(self.data[rows], self.weight[rows], orientation, kx, ky, pad, gradient_grids[h, c], weight_grids[h, c])
        self.slot[keys] = -1
        self.data[: self.count] = 0
        self.weight[: self.count] = 0
        self.count = 0
