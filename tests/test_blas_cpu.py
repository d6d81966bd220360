"""blas_cpu: the coarse pass's products through numpy's BLAS or PyTorch's, the same values either way."""

import pytest
import torch

from novomap import blas_cpu


@pytest.fixture
def backend(monkeypatch):
    """Force one backend: backend("numpy") or backend("torch")."""

    def force(name: str) -> None:
        monkeypatch.setenv(blas_cpu.ENVIRONMENT_VARIABLE, name)
        blas_cpu.numpy_preferred.cache_clear()

    yield force
    blas_cpu.numpy_preferred.cache_clear()


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_product_nt_is_a_times_b_transposed(backend, name):
    backend(name)
    generator = torch.Generator().manual_seed(3)
    a = torch.randn((37, 50), generator=generator)
    b = torch.randn((23, 50), generator=generator)
    product = blas_cpu.product_nt(a, b)
    assert product.dtype == torch.float32 and product.shape == (37, 23)
    torch.testing.assert_close(product.double(), a.double() @ b.double().T, rtol=1e-5, atol=1e-4)


def test_product_nt_reads_views_of_larger_tensors(backend):
    backend("numpy")
    generator = torch.Generator().manual_seed(4)
    a = torch.randn((40, 60), generator=generator)[::2, :50]  # not contiguous
    b = torch.randn((30, 50), generator=generator)
    torch.testing.assert_close(blas_cpu.product_nt(a, b), a @ b.T, rtol=1e-5, atol=1e-4)


def test_environment_forces_the_backend(backend):
    backend("torch")
    assert not blas_cpu.numpy_preferred()
    backend("numpy")
    assert blas_cpu.numpy_preferred()


@pytest.mark.parametrize(
    ("vendor", "blas", "expected"),
    [("AuthenticAMD", "scipy-openblas", True), ("GenuineIntel", "scipy-openblas", False), ("AuthenticAMD", "mkl", False), ("", "openblas", False)],
)
def test_numpy_only_where_openblas_meets_a_cpu_not_intels(monkeypatch, vendor, blas, expected):
    monkeypatch.delenv(blas_cpu.ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setattr(blas_cpu, "_cpu_vendor", lambda: vendor)
    monkeypatch.setattr(blas_cpu, "_numpy_blas", lambda: blas)
    blas_cpu.numpy_preferred.cache_clear()
    try:
        assert blas_cpu.numpy_preferred() is expected
    finally:
        blas_cpu.numpy_preferred.cache_clear()


def test_limit_threads_sets_numpys_blas_pool():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pools = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    if not pools:
        pytest.skip("numpy's BLAS keeps no thread pool that threadpoolctl sees")
    before = pools[0]["num_threads"]
    try:
        blas_cpu.limit_threads(1)
        assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")
    finally:
        blas_cpu.limit_threads(before)
