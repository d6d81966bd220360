"""Per-iteration stores that let chunks of a mini-batch share work.

ProjectionCache: each (class, fine orientation) is projected at most once per iteration, however
many chunks need it. SliceBuffer: back-projection slices are summed per (half, class, fine
orientation) across chunks and inserted into the 3D grids once, when the buffer is flushed.
"""

from __future__ import annotations

import math
import threading

import torch

from novomap.physics.projection import extract_slice_planes, extract_slices, insert_slice_rows
from novomap.physics.window import FourierWindow


class ProjectionCache:
    """Projections of the fine orientations, made in blocks of the 8 children of one coarse orientation.

    The fine pass needs all 8 children of every significant coarse hypothesis, so a block is the
    natural unit: one key per (class, coarse orientation), stored contiguously as (8, P) complex, or
    as (8, 2, P) real and imaginary planes (with_planes).
    """

    def __init__(
        self,
        references: torch.Tensor,
        rotations: torch.Tensor,
        window: FourierWindow,
        pad: int,
        budget_bytes: int = 1 << 30,
        with_power: bool = True,
        with_planes: bool = False,
        class_pixels: list[int] | None = None,
    ) -> None:
        """references (K, M, M, M) complex; rotations (n_coarse, 8, 3, 3): the iteration's fine orientations.

        class_pixels: per class, how many leading pixels of the (shell-ordered) window its blocks
        hold; the rest of each block is zero (the class's map holds nothing beyond its own window:
        vdam.iterate.class_sizes). None: every pixel for every class.

        with_power: also keep |block|^2 (`powers()`), for the fine pass's batched products; its
        compiled CPU loop forms the power from the values it reads and needs none.
        with_planes: store each block as its real and imaginary parts, in planes of their own
        (8, 2, P), which the compiled CPU loop reads unit-stride (estep.fine_cpu.fine_sums); the
        compiled gather writes them directly (physics.projection.extract_slice_planes).

        budget_bytes bounds the blocks kept: a lookup that would exceed it first empties the store.
        Local searches at fine orders share few blocks between chunks, so without a bound the store
        grew with the number of particles (the final pass's finest stage: 2.5 GB for 1,455 particles).
        """
        self.max_blocks = max(1, int(budget_bytes // (8 * max(1, window.n_pixels) * (12 if with_power else 8))))  # complex64 (+ float32 power)
        self.references = references
        self.rotations = rotations.to(references.device)
        self.window = window.to(references.device)
        self.pad = pad
        self.n_coarse = rotations.shape[0]
        n_pixels = window.n_pixels
        if class_pixels is not None and not window.by_shell and min(class_pixels) < n_pixels:
            raise ValueError("classes of narrower windows need a window ordered by shell (fourier_window(by_shell=True))")
        self.class_pixels = torch.tensor([min(n_pixels, n) for n in class_pixels] if class_pixels is not None else [n_pixels] * references.shape[0], dtype=torch.long)
        self.slot = torch.full((references.shape[0] * self.n_coarse,), -1, dtype=torch.long, device=references.device)
        # on CPU, room for every block the budget allows at once: untouched memory commits nothing, so only
        # the blocks an iteration needs cost memory and the store never moves; its storage is handed on to
        # the next cache (release), whose rows then need no page faults. A GPU allocator would reserve it
        # all, so there the store grows by doubling instead
        n_blocks = min(self.slot.numel(), self.max_blocks) if references.device.type == "cpu" else 0
        block_shape = (8, 2, window.n_pixels) if with_planes else (8, window.n_pixels)
        dtype = torch.float32 if with_planes else torch.complex64
        self._storage: torch.Tensor | None = None  # flat float32 storage behind a CPU store
        if n_blocks:
            self.store = self._store_from_pool(n_blocks, block_shape, dtype)
        else:
            self.store = torch.empty((0, *block_shape), dtype=dtype, device=references.device)
        self.power = torch.empty((n_blocks if with_power else 0, 8, window.n_pixels), dtype=torch.float32, device=references.device)  # |store|^2
        self.with_power = with_power
        self.with_planes = with_planes
        self.count = 0

    def _store_from_pool(self, n_blocks: int, block_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised (n_blocks, *block_shape) store on the spare projection storage of the device, or a new one."""
        n_floats = n_blocks * math.prod(block_shape) * (2 if dtype.is_complex else 1)
        device = self.references.device
        storage = _take_storage(device, n_floats, kind="projections")
        if storage is None:
            storage = torch.empty(n_floats, dtype=torch.float32, device=device)
        self._storage = storage
        flat = storage[:n_floats]
        return (flat.view(torch.complex64) if dtype.is_complex else flat).view(n_blocks, *block_shape)

    def release(self) -> None:
        """Hand the store's storage to the next ProjectionCache on its device (call when done with this one)."""
        if self._storage is not None:
            _give_storage(self._storage, kind="projections")
        self._storage = None
        self.store = self.store[:0]
        self.slot.fill_(-1)
        self.count = 0

    def lookup(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (R,) = class * n_coarse + coarse orientation -> (store, block index (R,)); the store
        (n_stored, 8, P) complex64, or (n_stored, 8, 2, P) float32 planes (with_planes).

        The store is returned as it is (no copy); rows not asked for may be in it.
        """
        unique = torch.unique(keys)
        missing = unique[self.slot[unique] < 0]
        if missing.numel() and self.count + missing.numel() > self.max_blocks and self.count:
            # full: start again (only this lookup's blocks are needed from here on)
            self.slot.fill_(-1)
            self.count = 0
            missing = unique
        if missing.numel():
            self._reserve(missing.numel())
            for k in torch.unique(missing // self.n_coarse).tolist():
                these = missing[missing // self.n_coarse == k]
                rotations = self.rotations[these % self.n_coarse].reshape(-1, 3, 3).to(self.references.real.dtype)
                rows = slice(self.count, self.count + these.numel())
                out = self.store[rows].view(-1, *self.store.shape[2:])
                self._project(k, rotations, out)
                real, imag = (out[:, 0], out[:, 1]) if self.with_planes else (out.real, out.imag)
                if self.with_power:
                    power = self.power[rows].view(-1, self.power.shape[-1])
                    torch.mul(real, real, out=power).addcmul_(imag, imag)
                self.slot[these] = torch.arange(rows.start, rows.stop, device=keys.device)
                self.count = rows.stop
        return self.store[: self.count], self.slot[keys]

    def _project(self, k: int, rotations: torch.Tensor, out: torch.Tensor) -> None:
        """Class k's slices at rotations (R, 3, 3) into out (R, 2, P) planes or (R, P) complex: its
        first class_pixels[k] pixels projected, the others zero."""
        n = int(self.class_pixels[k])
        kx, ky = self.window.kx[:n], self.window.ky[:n]
        if n == self.window.n_pixels:
            target = out
        else:  # the gathers write contiguous rows: project the prefix apart, then place it
            target = torch.empty((*out.shape[:-1], n), dtype=out.dtype, device=out.device)
        if self.with_planes:
            extract_slice_planes(self.references[k], rotations, kx, ky, self.pad, target)
        else:
            extract_slices(self.references[k], rotations, kx, ky, self.pad, out=target)
        if target is not out:
            out[..., :n] = target
            out[..., n:] = 0

    def powers(self) -> torch.Tensor:
        """|store|^2 of the stored blocks (n_stored, 8, P) float32; needs with_power."""
        if not self.with_power:
            raise ValueError("this projection cache keeps no powers (with_power=False)")
        return self.power[: self.count]

    def _reserve(self, n_more: int) -> None:
        """Room for n_more blocks; capacity doubles so that chunk after chunk costs O(total) copying."""
        needed = self.count + n_more
        if needed <= self.store.shape[0]:
            return
        capacity = min(max(needed, 2 * self.store.shape[0], 256), self.slot.numel())
        store = torch.empty((capacity, *self.store.shape[1:]), dtype=self.store.dtype, device=self.store.device)
        store[: self.count] = self.store[: self.count]
        self.store = store
        if self.with_power:
            power = torch.empty((capacity, *self.power.shape[1:]), dtype=self.power.dtype, device=self.power.device)
            power[: self.count] = self.power[: self.count]
            self.power = power


# the storage of a released SliceBuffer or ProjectionCache, per kind and device, for the next one (vdam
# iterations make one of each per E-step): a fresh allocation of a few hundred MB is paid again in page
# faults on first touch, which was half the time of adding an early iteration's slices
# (benchmarks/results/2026-12-04-s32-slice-buffer.md), and 0.2-1.2 s of system time per late iteration
# of a three-class run writing its projections (benchmarks/results/2026-12-05-s38-k-classes.md)
_SPARE_STORAGE: dict[tuple[str, str], torch.Tensor] = {}
_SPARE_LOCK = threading.Lock()


def _take_storage(device: torch.device, n_values: int, kind: str) -> torch.Tensor | None:
    """The spare flat float32 storage of `kind` on `device` if it holds at least n_values (it is then no longer spare)."""
    with _SPARE_LOCK:
        spare = _SPARE_STORAGE.get((kind, str(device)))
        if spare is None or spare.numel() < n_values:
            return None
        return _SPARE_STORAGE.pop((kind, str(device)))


def _give_storage(storage: torch.Tensor, kind: str) -> None:
    """Keep `storage` as the spare of `kind` on its device, unless the spare there is already as large."""
    with _SPARE_LOCK:
        spare = _SPARE_STORAGE.get((kind, str(storage.device)))
        if spare is None or spare.numel() < storage.numel():
            _SPARE_STORAGE[(kind, str(storage.device))] = storage


def compiled_sparse_cpu():
    """estep.sparse_cpu when numba is installed, else None (imported on first use, as numba is); the
    slice buffer's adds and estep.accumulate's sparse products use it on the CPU."""
    from novomap.estep import sparse_cpu

    return sparse_cpu if sparse_cpu.available() else None


class SliceBuffer:
    """Sums of 2D slices per key = (half * K + class) * n_fine + orientation, inserted on flush.

    Single precision (each row sums at most a few thousand terms), kept as three channels (3, N, P):
    the gradient slices' real and imaginary parts and their weights, the layout the compiled scatter
    reads in place (physics.projection.insert_slice_rows). Storage grows on demand up to max_slices
    rows, by default as many as fit in `budget_bytes`: the larger the buffer, the fewer orientations
    are inserted more than once per iteration. The owner flushes when it is full, and releases the
    buffer when done: its storage then serves the next buffer on the device.
    """

    def __init__(
        self, n_keys: int, n_pixels: int, device, max_slices: int = 0, budget_bytes: int = 384 * 2**20, class_pixels: list[int] | None = None,
    ) -> None:
        """class_pixels: per class, the leading pixels its slices hold (zero beyond: ProjectionCache); flush
        inserts only those. None: all n_pixels."""
        self.class_pixels = class_pixels
        self.slot = torch.full((n_keys,), -1, dtype=torch.long, device=device)
        self.max_slices = max_slices if max_slices > 0 else int(min(n_keys, max(1024, budget_bytes // (12 * max(1, n_pixels)))))
        self.n_pixels = n_pixels
        self.keys = torch.empty(0, dtype=torch.long, device=device)
        self.channels = torch.zeros((3, 0, n_pixels), dtype=torch.float32, device=device)
        self._storage: torch.Tensor | None = None  # flat float32 storage behind channels
        self.count = 0

    def room_for(self, keys: torch.Tensor) -> bool:
        return self.count + int((self.slot[keys] < 0).sum()) <= self.max_slices

    def _grow(self, needed: int) -> None:
        capacity = min(self.max_slices, max(needed, 2 * self.keys.numel(), 1024))
        device = self.keys.device
        row_values = 3 * self.n_pixels
        storage = _take_storage(device, capacity * row_values, kind="slices")
        if storage is None:
            storage = torch.empty(capacity * row_values, dtype=torch.float32, device=device)
        else:  # use all of it: fewer grows later
            capacity = min(self.max_slices, storage.numel() // row_values)
        keys = torch.empty(capacity, dtype=torch.long, device=device)
        # rows past count are written (not added to) when their key first arrives: no zero fill
        channels = storage[: capacity * row_values].view(3, capacity, self.n_pixels)
        keys[: self.count], channels[:, : self.count] = self.keys[: self.count], self.channels[:, : self.count]
        if self._storage is not None:
            _give_storage(self._storage, kind="slices")
        self.keys, self.channels, self._storage = keys, channels, storage

    def release(self) -> None:
        """Hand this buffer's storage to the next SliceBuffer on its device (call when flushed and done)."""
        if self._storage is not None:
            _give_storage(self._storage, kind="slices")
        self._storage = None
        self.keys = torch.empty(0, dtype=torch.long, device=self.keys.device)
        self.channels = torch.zeros((3, 0, self.n_pixels), dtype=torch.float32, device=self.keys.device)
        self.count = 0

    def add(
        self, keys: torch.Tensor, data: torch.Tensor, weight: torch.Tensor, reference: torch.Tensor | None = None, reference_rows: torch.Tensor | None = None,
    ) -> None:
        """keys (S,) unique; data (S, P) complex; weight (S, P) real. Check room_for first.
        With reference (R, P) complex, or its rows as planes (R, 2, P) real, and reference_rows (S,):
        the slices added are data - reference[reference_rows] * weight (the gradient's model term,
        estep.accumulate)."""
        is_new = self.slot[keys] < 0
        new = keys[is_new]
        if new.numel():
            if self.count + new.numel() > self.keys.numel():
                self._grow(self.count + new.numel())
            self.slot[new] = torch.arange(self.count, self.count + new.numel(), device=keys.device)
            self.keys[self.count : self.count + new.numel()] = new
            self.count += new.numel()
        rows = self.slot[keys]
        compiled = compiled_sparse_cpu() if self.channels.device.type == "cpu" else None
        if compiled is not None:
            if reference is None:
                reference, reference_rows = torch.zeros((1, data.shape[1]), dtype=torch.complex64), torch.zeros(keys.numel(), dtype=torch.long)
            compiled.buffer_slices(self.channels, rows, is_new, data, reference, reference_rows, weight)
            return
        if reference is not None:
            model = reference[reference_rows]
            if not model.is_complex():
                model = torch.complex(model[:, 0], model[:, 1])
            data = data - model * weight
        data = data.resolve_conj()
        # a new key's row is copied in (it holds stale values from an earlier flush or none at all);
        # keys are unique, so each new row is written once
        fresh, seen = torch.nonzero(is_new).squeeze(1), torch.nonzero(~is_new).squeeze(1)
        for channel, values in zip(self.channels, (data.real, data.imag, weight)):
            values = values.to(torch.float32)
            if fresh.numel() == keys.numel():
                channel.index_copy_(0, rows, values)
                continue
            if fresh.numel():
                channel.index_copy_(0, rows[fresh], values[fresh])
            if seen.numel():
                channel.index_add_(0, rows[seen], values[seen])

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
            # the grid's rotations live on the CPU: index them there, move only the rows
            orientation = rotations[(keys[rows] % n_fine).to(rotations.device)].to(device=keys.device, dtype=torch.float32)
            n = self.n_pixels if self.class_pixels is None else self.class_pixels[c]
            insert_slice_rows(self.channels, rows, orientation, kx[:n], ky[:n], pad, gradient_grids[h, c], weight_grids[h, c])
        self.slot[keys] = -1
        self.count = 0
