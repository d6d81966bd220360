"""Process-wide numerical settings (novomap.runtime)."""

import pytest
import torch

from novomap.physics.projection import insert_slices
from novomap.runtime import flush_denormals


@pytest.fixture
def flushing():
    applied = flush_denormals()
    yield applied
    torch.set_flush_denormal(False)


def test_subnormal_results_become_zero(flushing):
    if not flushing:
        pytest.skip("this CPU cannot flush subnormals")
    tiny = torch.tensor([1e-30], dtype=torch.float32)
    assert float(tiny * 1e-10) == 0.0  # 1e-40 is subnormal in float32
    assert float(tiny * 1e-5) == pytest.approx(1e-35, rel=1e-5)  # normal values are untouched


def test_back_projection_unchanged_by_flushing(flushing):
    """The back-projection of ordinary values is the same with and without flushing."""
    generator = torch.Generator().manual_seed(3)
    n, n_slices = 16, 40
    values = torch.randn(n_slices, 50, dtype=torch.complex64, generator=generator)
    weights = torch.rand(n_slices, 50, generator=generator)
    q, _ = torch.linalg.qr(torch.randn(n_slices, 3, 3, generator=generator))
    kx = torch.randint(-7, 8, (50,)).float()
    ky = torch.randint(0, 8, (50,)).float()

    def back_project():
        data = torch.zeros((n, n, n), dtype=torch.complex128)
        weight = torch.zeros((n, n, n), dtype=torch.float64)
        insert_slices(values, weights, q, kx, ky, 1, data, weight)
        return data, weight

    flushed = back_project()
    torch.set_flush_denormal(False)
    exact = back_project()
    assert torch.allclose(flushed[0], exact[0], atol=1e-6)
    assert torch.allclose(flushed[1], exact[1], atol=1e-6)


def _limit_in_fresh_interpreter(function: str, variable: str, library: str, cleared: tuple[str, ...], extra_env: dict) -> str:
    """Run runtime.<function>() then import <library> in a fresh interpreter (without the `cleared`
    variables, plus extra_env): "<what it returned> <variable's value>"."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in cleared}
    env.update(extra_env)
    code = f"import os; from novomap.runtime import {function}; applied = {function}(); import {library}; print(applied, os.environ.get('{variable}'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_openmp_spinning_is_limited_before_torch_loads_and_a_users_setting_kept():
    from novomap.runtime import limit_openmp_spinning

    def spinning(extra_env: dict) -> str:
        return _limit_in_fresh_interpreter("limit_openmp_spinning", "GOMP_SPINCOUNT", "torch", ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"), extra_env)

    assert spinning({}) == "True 10000"
    assert spinning({"GOMP_SPINCOUNT": "5"}) == "False 5"
    assert spinning({"OMP_WAIT_POLICY": "ACTIVE"}) == "False None"
    assert limit_openmp_spinning() is False  # here torch is loaded already: too late to matter


def test_blas_spinning_is_limited_before_numpy_loads_and_a_users_setting_kept():
    from novomap.runtime import limit_blas_spinning

    def timeout(extra_env: dict) -> str:
        return _limit_in_fresh_interpreter("limit_blas_spinning", "OPENBLAS_THREAD_TIMEOUT", "numpy", ("OPENBLAS_THREAD_TIMEOUT",), extra_env)

    assert timeout({}) == "True 4"
    assert timeout({"OPENBLAS_THREAD_TIMEOUT": "20"}) == "False 20"
    assert limit_blas_spinning() is False  # numpy is loaded here already: too late to matter
