"""estep.select_cpu.largest against a full sort: every row's k largest values, in order, ties by position."""

from __future__ import annotations

import pytest
import torch

from novomap.estep import select_cpu

pytestmark = pytest.mark.skipif(not select_cpu.available(), reason="needs numba")


def _by_full_sort(log_w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest per row by a stable sort of the negated values: equal values keep position order."""
    order = torch.sort(-log_w.double(), dim=-1, stable=True).indices[:, :k]
    return torch.gather(log_w, 1, order), order


def test_the_k_largest_of_broad_sharp_and_tied_rows_in_order():
    generator = torch.Generator().manual_seed(5)
    n = 16_704  # the real job's global rows: 29 translations x 576 orientations
    rows = [
        torch.randn(n, generator=generator) * 2,  # broad
        torch.randn(n, generator=generator) * 300,  # sharp
        torch.randint(0, 40, (n,), generator=generator).float(),  # many ties at every value
        torch.full((n,), -7.0),  # all equal: the first k positions
        torch.cat([torch.full((n - 3,), -float("inf")), torch.tensor([1.0, 2.0, 1.0])]),  # fewer finite values than k
        torch.linspace(0, 1, n),  # increasing: the best at the end, rarely in the sample
    ]
    log_w = torch.stack(rows).float()
    for k in (1, 7, 100, 300):
        values, index = select_cpu.largest(log_w, k)
        expected_values, expected_index = _by_full_sort(log_w, k)
        assert torch.equal(values, expected_values), k
        assert torch.equal(index, expected_index), k


def test_a_sample_that_holds_only_the_best_values_falls_back_to_every_value():
    """The strided sample sees the largest values alone, so its thresholds keep too few: the search
    lowers them until it keeps every value, and the answer is still exact."""
    n, k = 1_700, 100
    row = torch.full((n,), -50.0)
    sampled = torch.arange(0, n, select_cpu.SAMPLE_STRIDE)
    row[sampled] = torch.arange(sampled.numel(), 0, -1).float()
    row[7] = 0.5  # between the sampled values and the rest
    values, index = select_cpu.largest(row[None], k)
    expected_values, expected_index = _by_full_sort(row[None], k)
    assert torch.equal(values, expected_values)
    assert torch.equal(index, expected_index)


def test_nan_sorts_after_every_number():
    row = torch.randn(4_000, generator=torch.Generator().manual_seed(2))
    row[[3, 500, 3_999]] = float("nan")
    values, index = select_cpu.largest(row[None], 50)
    assert not torch.isnan(values).any()
    assert torch.equal(index, _by_full_sort(torch.nan_to_num(row, nan=-float("inf"))[None], 50)[1])
    everything, _ = select_cpu.largest(row[None, :1_600], 1_600 // select_cpu.MIN_ROW_PER_KEPT)
    assert not torch.isnan(everything).any()
    few = torch.full((2_000,), float("nan"))
    few[[10, 1_000]] = torch.tensor([1.0, 2.0])
    values, index = select_cpu.largest(few[None], 100)
    assert values[0, :2].tolist() == [2.0, 1.0] and index[0, :3].tolist() == [1_000, 10, 0]
    assert torch.isnan(values[0, 2:]).all()


def test_short_rows_take_torch_topk():
    """Rows under MIN_ROW_PER_KEPT * k values go to torch.topk: the same values (tie order may differ)."""
    log_w = torch.randn(3, 520, generator=torch.Generator().manual_seed(8))
    values, index = select_cpu.largest(log_w, 100)
    assert torch.equal(values, _by_full_sort(log_w, 100)[0])
    assert torch.equal(torch.gather(log_w, 1, index), values)
