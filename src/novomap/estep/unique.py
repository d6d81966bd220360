"""Unique integer keys from a known range, without sorting.

The E-step groups its rows by small integer keys (particle x translation pairs, stored
projections, (half, class, fine orientation) slices) with `torch.unique(..., return_inverse=True)`,
which sorts: on the real tutorial's early chunks (~140,000 rows) each call took ~10 ms, and 2.3 s
of a 20-iteration run went to it. Where the keys' range is not much larger than their count, a
presence mask and its running count give the same ascending keys and the same inverse in one
pass (~1.5 ms).
"""

from __future__ import annotations

import torch

# a presence mask pays while the range is at most this many times the number of keys
_MASK_RANGE_PER_KEY = 4


def unique_bounded(keys: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ascending distinct keys (U,), inverse (N,)) of keys (N,) int64 in [0, bound): exactly
    torch.unique(keys, return_inverse=True)."""
    if bound > _MASK_RANGE_PER_KEY * keys.numel() or keys.numel() == 0:
        return torch.unique(keys, return_inverse=True)
    present = torch.zeros(bound, dtype=torch.bool, device=keys.device)
    present[keys] = True
    rank = torch.cumsum(present, 0) - 1
    return torch.nonzero(present).squeeze(1), rank[keys]
