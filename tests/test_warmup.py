"""scripts/setup.sh's warm-up job calls every compiled CPU kernel, so that none compiles in a user's first job."""

from __future__ import annotations

import pytest

from novomap.estep import fine_cpu, sparse_cpu
from novomap.maps import rotate_cpu
from novomap.physics import trilinear_cpu
from novomap.warmup import warm_up


def _cached_kernels() -> dict[str, object]:
    kernels = {}
    for module in (trilinear_cpu, sparse_cpu, fine_cpu, rotate_cpu):
        for name, value in vars(module).items():
            options = getattr(value, "targetoptions", None)  # a numba dispatcher
            if options is not None and getattr(value, "_cache", None) is not None and type(value._cache).__name__ != "NullCache":
                kernels[f"{module.__name__}.{name}"] = value
    return kernels


@pytest.mark.skipif(not trilinear_cpu.available(), reason="numba is not installed")
def test_warm_up_calls_every_cached_kernel():
    kernels = _cached_kernels()
    assert len(kernels) >= 9  # the gather, scatter, operator average, row sums, fine sums, ... loops
    warm_up(threads=1)
    missing = [name for name, kernel in kernels.items() if not kernel.signatures]
    assert not missing, f"compiled in the first job instead: {missing}"
