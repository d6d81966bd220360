"""Single-precision matrix products on the CPU through the faster of the two BLAS libraries at hand.

PyTorch's CPU wheels multiply through Intel's MKL, numpy's wheels through OpenBLAS. MKL is the
library tuned for Intel processors; on AMD ones its sgemm ran at ~60 % of OpenBLAS's for the coarse
pass's products (2-core AMD EPYC, Zen 2, 2 threads: (13,000 x 350) @ (350 x 5,000) 113 GFlop/s
through torch, 181 through numpy; (6,500 x 350) @ (350 x 415) 75 against 167;
benchmarks/results/2026-12-05-s44-openblas.md). So on a CPU that is not Intel's, and where numpy is
built on OpenBLAS, the E-step's large products go through numpy (the same float32 sums in another
order). NOVOMAP_CPU_BLAS=torch or =numpy forces either.

Both libraries keep their own thread pool: limit_threads gives numpy's the job's thread count.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

ENVIRONMENT_VARIABLE = "NOVOMAP_CPU_BLAS"


def _cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...), or "" where /proc/cpuinfo does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _numpy_blas() -> str:
    """The name of the BLAS numpy was built with (lower case), or "" where numpy does not say."""
    try:
        config = np.show_config(mode="dicts")
        return str(config["Build Dependencies"]["blas"]["name"]).lower()
    except Exception:  # older numpy: no dicts mode
        return ""


@functools.cache
def numpy_preferred() -> bool:
    """Whether large float32 CPU products go through numpy (see the module's docstring)."""
    forced = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if forced in ("torch", "numpy"):
        return forced == "numpy"
    return "openblas" in _numpy_blas() and _cpu_vendor() not in ("GenuineIntel", "")


def product_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for float32 matrices a (M, K), b (N, K) -> (M, N) float32, on a's device."""
    if a.device.type != "cpu" or a.dtype != torch.float32 or b.dtype != torch.float32 or not numpy_preferred():
        return a @ b.T
    # numpy reads b's transpose as a view (BLAS's transpose flag): no copy
    return torch.from_numpy(np.matmul(a.contiguous().numpy(), b.contiguous().numpy().T))


def limit_threads(n_threads: int) -> None:
    """Give numpy's BLAS thread pool n_threads threads (PyTorch's own is set by torch.set_num_threads)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then numpy keeps its default: every core
        return
    threadpool_limits(limits=n_threads, user_api="blas")
