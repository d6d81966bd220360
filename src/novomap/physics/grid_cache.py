"""A memo for functions that build the same small grid over and over (radii, masks, corrections).

Every iteration of a run asked for the same (64, 64, 64) radius grids, solvent masks and gridding
corrections a few times each, and built them afresh: ~10 ms per iteration of the real tutorial job,
over 1 s of it. The grids depend only on hashable arguments (sizes, radii, device, dtype), so the
last few are kept. Results are shared between callers: treat them as read-only. Grids larger than
MAX_VOXELS are not kept (a final reconstruction on a fine grid would hold hundreds of MB).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Callable, TypeVar

import torch

MAX_VOXELS = 128**3
MAX_ENTRIES = 8

F = TypeVar("F", bound=Callable[..., torch.Tensor])


def cached_grid(function: F) -> F:
    """Memoise `function` (hashable arguments -> tensor) for its last MAX_ENTRIES small results."""
    store: OrderedDict = OrderedDict()
    lock = threading.Lock()

    @functools.wraps(function)
    def call(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        with lock:
            if key in store:
                store.move_to_end(key)
                return store[key]
        result = function(*args, **kwargs)
        if result.numel() <= MAX_VOXELS:
            with lock:
                store[key] = result
                while len(store) > MAX_ENTRIES:
                    store.popitem(last=False)
        return result

    return call  # type: ignore[return-value]
