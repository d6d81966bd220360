"""Choosing the compute device and threads: the one place that knows about CPUs and GPUs.

Numerical code receives tensors already on their device and never asks which one it is.
"""

from __future__ import annotations

import torch

from novomap.blas_cpu import limit_threads
from novomap.errors import NovomapError


def parse_gpu_ids(gpu: str) -> list[int]:
    """RELION's --gpu syntax: "0,1,2,3" (also "0:1" separators); empty means every visible GPU."""
    text = gpu.replace(":", ",").strip().strip('"')
    if not text:
        return list(range(torch.cuda.device_count()))
    try:
        return [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise NovomapError(f'--gpu takes GPU numbers like "0,1", not "{gpu}"') from None


def select_device(gpu: str | None, threads: int | None) -> torch.device:
    """The first device of `select_devices`: for commands that use one device."""
    return select_devices(gpu, threads)[0]


def select_devices(gpu: str | None, threads: int | None) -> list[torch.device]:
    """The devices a job runs on: every requested GPU, or the CPU with `threads` threads.

    gpu None: CPU. An absent or unusable GPU is an error that says so, never a silent fallback.
    """
    if threads is not None:
        if threads < 1:
            raise NovomapError(f"--j must be >= 1, not {threads}")
        torch.set_num_threads(threads)
    limit_threads(torch.get_num_threads())  # numpy's BLAS (blas_cpu) as many as PyTorch's
    if gpu is None:
        return [torch.device("cpu")]
    if not torch.cuda.is_available():
        raise NovomapError("--gpu was given but PyTorch sees no CUDA GPU (check the driver, CUDA_VISIBLE_DEVICES, or run without --gpu on the CPU)")
    ids = parse_gpu_ids(gpu)
    if not ids:
        raise NovomapError("--gpu was given but no CUDA GPU is visible")
    for gpu_id in ids:
        if gpu_id < 0 or gpu_id >= torch.cuda.device_count():
            raise NovomapError(f"--gpu {gpu_id}: only {torch.cuda.device_count()} GPU(s) are visible (numbered from 0)")
    return [torch.device(f"cuda:{gpu_id}") for gpu_id in ids]
