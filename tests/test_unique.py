"""estep.unique.unique_bounded against torch.unique."""

from __future__ import annotations

import pytest
import torch

from novomap.estep.unique import unique_bounded


@pytest.mark.parametrize(("n", "bound"), [(1000, 50), (1000, 4000), (300, 5000), (1, 1), (7, 3)])
def test_unique_bounded_is_torch_unique_with_inverse(n, bound):
    keys = torch.randint(0, bound, (n,), generator=torch.Generator().manual_seed(n + bound))
    values, inverse = unique_bounded(keys, bound)
    expected_values, expected_inverse = torch.unique(keys, return_inverse=True)
    assert torch.equal(values, expected_values) and torch.equal(inverse, expected_inverse)
    assert values.dtype == expected_values.dtype and inverse.dtype == expected_inverse.dtype
    assert torch.equal(values[inverse], keys)


def test_unique_bounded_of_no_keys_is_empty():
    values, inverse = unique_bounded(torch.zeros(0, dtype=torch.long), 10)
    assert values.numel() == 0 and inverse.numel() == 0


def test_the_largest_key_of_the_range_is_kept():
    values, inverse = unique_bounded(torch.tensor([9, 0, 9, 3]), 10)
    assert values.tolist() == [0, 3, 9] and inverse.tolist() == [2, 0, 2, 1]
