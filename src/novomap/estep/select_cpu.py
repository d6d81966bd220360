"""The coarse pass's largest log weights per particle on the CPU, compiled with numba.

search.significant keeps, per particle, the fewest best coarse hypotheses holding 99.9 % of the
posterior, at most `cap` (100 K) of them, so it needs each row's `cap` largest log weights in
order. In the global iterations of the real tutorial job a chunk holds 200 particles x 16,704
hypotheses (29 translations x 576 orientations), and torch.topk took ~6 ms for it (2.9 s of the
78 s job, 449 calls). Here a strided sample of each row gives a threshold that about 2 cap values
pass, one pass collects those, a partition finds the k largest of them, and only those are sorted.

Ties are ordered by position, lowest first, so the result is deterministic (torch.topk leaves the
order of equal values unspecified). NaN sorts after every number (torch.topk puts it first).

Imported on first use on the CPU, like estep.fine_cpu; on other devices torch.topk stays.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; without it torch.topk is used
    njit = None

from novomap.physics import trilinear_cpu

SAMPLE_STRIDE = 16
# rows shorter than this many times the count asked for are left to torch.topk: sampling gains
# nothing when most of a row is kept
MIN_ROW_PER_KEPT = 16


def available() -> bool:
    return njit is not None


if njit is not None:

    @njit(cache=True)
    def _collect(row, threshold, values, index):  # pragma: no cover - compiled
        """Store the values at or above threshold, in position order, while they fit; -> how many there are."""
        count = 0
        room = values.shape[0]
        for i in range(row.shape[0]):
            if row[i] >= threshold:
                if count < room:
                    values[count] = row[i]
                    index[count] = i
                count += 1
        return count

    @njit(cache=True)
    def _candidates(row, k, sample):  # pragma: no cover - compiled
        """(values, index, count): every value not below a threshold at or below the row's k-th largest,
        in position order. The threshold is a high rank of a strided sample, so that about 2-4 k values
        pass; lowered if fewer than k do, down to -inf (every value but NaN)."""
        n_sample = sample.shape[0]
        for j in range(n_sample):
            sample[j] = row[j * SAMPLE_STRIDE]
        rank = 2 * (k // SAMPLE_STRIDE) + 8  # ~rank * stride values are at or above the rank-th sample
        room = 4 * rank * SAMPLE_STRIDE
        values = np.empty(room, dtype=row.dtype)
        index = np.empty(room, dtype=np.int64)
        while True:
            threshold = np.partition(sample, n_sample - rank)[n_sample - rank] if rank < n_sample else -np.inf
            count = _collect(row, threshold, values, index)
            if count > values.shape[0]:  # more than expected: collect again with room for all
                values = np.empty(count, dtype=row.dtype)
                index = np.empty(count, dtype=np.int64)
                _collect(row, threshold, values, index)
            if count >= k or rank >= n_sample:
                return values, index, count
            rank *= 4

    @njit(parallel=True, cache=True)
    def _largest(log_w, out_values, out_index):  # pragma: no cover - compiled
        n_rows, n = log_w.shape
        k = out_values.shape[1]
        n_sample = (n + SAMPLE_STRIDE - 1) // SAMPLE_STRIDE
        for b in prange(n_rows):
            row = log_w[b]
            values, index, count = _candidates(row, k, np.empty(n_sample, dtype=log_w.dtype))
            if count < k:  # fewer numbers than k: NaN, in position order, makes up the rest
                for i in range(n):
                    if count == k:
                        break
                    if np.isnan(row[i]):
                        values[count] = row[i]
                        index[count] = i
                        count += 1
                order = np.argsort(-values[:k], kind="mergesort")  # NaN sorts last
                for j in range(k):
                    out_values[b, j] = values[order[j]]
                    out_index[b, j] = index[order[j]]
                continue
            # the k largest of the candidates (the k-th value's ties by position), then those k in order
            negated = -values[:count]
            kth = np.partition(negated, k - 1)[k - 1]
            kept_values = np.empty(k, dtype=log_w.dtype)
            kept_index = np.empty(k, dtype=np.int64)
            m = 0
            for j in range(count):
                if negated[j] < kth:
                    kept_values[m] = negated[j]
                    kept_index[m] = index[j]
                    m += 1
            for j in range(count):
                if m == k:
                    break
                if negated[j] == kth:
                    kept_values[m] = negated[j]
                    kept_index[m] = index[j]
                    m += 1
            order = np.argsort(kept_values, kind="mergesort")  # stable: equal values keep position order
            for j in range(k):
                out_values[b, j] = -kept_values[order[j]]
                out_index[b, j] = kept_index[order[j]]


def largest(log_w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each row, largest first: log_w (B, N) float32 -> (values (B, k), index (B, k) int64).

    Needs numba (`available()`) and 1 <= k <= N; rows shorter than MIN_ROW_PER_KEPT * k go to torch.topk.
    """
    n_rows, n = log_w.shape
    if n < MIN_ROW_PER_KEPT * k:
        return torch.topk(log_w, k, dim=-1, sorted=True)
    values = np.empty((n_rows, k), dtype=np.float32)
    index = np.empty((n_rows, k), dtype=np.int64)
    with trilinear_cpu.numba_threads():
        _largest(log_w.detach().to(torch.float32).contiguous().numpy(), values, index)
    return torch.from_numpy(values), torch.from_numpy(index)
