"""Process-wide settings for a numerical job, applied once by the command line."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def limit_openmp_spinning(spin_count: int = 10_000) -> bool:
    """Let PyTorch's OpenMP threads (GNU libgomp) wait by spinning only briefly; True if set here.

    After each parallel region libgomp's idle threads spin, by default for 300,000 rounds, before
    they sleep. The compiled loops (numba's own thread pool: physics.trilinear_cpu, estep.fine_cpu)
    usually start right after a PyTorch operation, and on a machine with as many cores as threads
    the spinning threads take cores from them: a fine-pass loop ran in 14-18 ms after PyTorch work
    against 10.5 ms back to back. With 10,000 rounds the real tutorial job's first 30 iterations
    took 3-4 % less (benchmarks/results/2026-12-03-s26-fine-planes.md); not spinning at all
    (OMP_WAIT_POLICY=PASSIVE) made PyTorch's own small operations wait for their threads to wake,
    11 % more. libgomp reads the setting when it is loaded, so this must run before torch is
    imported; a value the user set is kept.
    """
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = str(spin_count)
    return True


def limit_blas_spinning(timeout_exponent: int = 4) -> bool:
    """Let numpy's OpenBLAS threads wait by spinning only briefly (2^timeout_exponent cycles); True if set here.

    On CPUs where the coarse pass multiplies through numpy (blas_cpu), OpenBLAS's idle threads spin,
    by default for up to 2^28 cycles, after each product, and take the cores from the PyTorch and
    compiled work that follows: a PyTorch reduction took 47 instead of 30 ms right after a product
    (2 cores), and the real tutorial job 93 instead of 68 s. With 2^4 cycles: 26 against 25 ms.
    OpenBLAS reads the setting when it is loaded (numpy loads it, and torch imports numpy), so this
    must run before either is imported; a value the user set is kept.
    """
    if "numpy" in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(timeout_exponent)
    return True


def tune_allocator() -> bool:
    """Let glibc keep freed large blocks for reuse instead of unmapping them; True if applied.

    Every E-step chunk allocates and frees arrays of tens to hundreds of MB. By default glibc
    serves each from a fresh mmap and unmaps it on free, so the next chunk page-faults the same
    memory in again: on the 2-core benchmark machine that was 0.8 million faults and ~15 % of the
    wall time per late iteration. Raising the mmap and trim thresholds keeps those pages in the
    heap; the price is some fragmentation (peak memory of the real benchmark 1.4 -> 1.5-1.6 GB).
    No-op outside Linux/glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1
    applied &= mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    applied &= mallopt(_M_TOP_PAD, 64 << 20) == 1
    return bool(applied)


def flush_denormals() -> bool:
    """Flush subnormal floats to zero in CPU arithmetic; True if the CPU supports it.

    Early VDAM iterations spread each particle over up to a hundred poses, and float32 arithmetic on
    their sums then meets many values below the normal range (~1e-38): on x86 each such operation
    takes a slow microcode path. Measured with grid_sample's back-projection (the CPU path before
    `physics.trilinear_cpu`): iteration 1 of the real tutorial job 1.28 s against 0.19 s in a profile,
    the whole job 354 -> 325 s with the same map. Values that small are ~1e-30 of the sums they are
    added to, so flushing them changes no result that matters.
    """
    import torch  # here: `novomap --help` should not pay for importing it

    return bool(torch.set_flush_denormal(True))
