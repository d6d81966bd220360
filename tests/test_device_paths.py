"""The code a GPU runs. On a GPU every step takes the torch paths (grid_sample, batched products,
sparse sums) instead of the CPU's compiled loops, and every tensor must meet the others on one
device. The first test runs those torch paths on the CPU, with the compiled loops switched off, so
that CI (no GPU) still covers them; the second runs the job on a CUDA GPU where there is one.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from _synthetic_maps import correlation

from novomap.commands.main import main
from novomap.demo_data import load_demo_map
from novomap.estep import fine_cpu, select_cpu, sparse_cpu
from novomap.physics import trilinear_cpu
from novomap.simulate import SimulationOptions, simulate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    volume, pixel = load_demo_map()
    out = tmp_path_factory.mktemp("device_paths")
    return simulate(volume, out, SimulationOptions(n=240, snr=1.0, seed=3, box=64, pixel_size_a=pixel)).star_path


def _run(star: Path, out: Path, *extra: str) -> np.ndarray:
    arguments = [
        "initial-model", "--i", str(star), "--o", str(out), "--iter", "8", "--particle-diameter", "200",
        "--seed", "2", "--sym", "D2", "--quiet", "--no-report", *extra,
    ]  # fmt: skip
    assert main(arguments) == 0
    with mrcfile.open(out / "initial_model.mrc", permissive=True) as mrc:
        return np.asarray(mrc.data, dtype=np.float64)


@pytest.fixture(scope="module")
def compiled_map(dataset, tmp_path_factory) -> np.ndarray:
    return _run(dataset, tmp_path_factory.mktemp("compiled") / "job", "--j", "2")


def test_job_on_the_torch_paths_matches_the_compiled_paths(dataset, compiled_map, tmp_path, monkeypatch):
    """The whole job (race of starts, local searches, final pass, symmetry) with the compiled loops
    off, on 5 threads so that grid_sample's batches split unevenly: the same map."""
    if not trilinear_cpu.available():
        pytest.skip("numba is not installed: every run already takes the torch paths")
    for module in (trilinear_cpu, sparse_cpu, fine_cpu, select_cpu):
        monkeypatch.setattr(module, "available", lambda: False)
    torch_map = _run(dataset, tmp_path / "job", "--j", "5")
    assert correlation(torch.from_numpy(torch_map), torch.from_numpy(compiled_map)) > 0.97  # 0.999 measured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_job_on_a_cuda_gpu_matches_the_cpu(dataset, compiled_map, tmp_path):
    gpu_map = _run(dataset, tmp_path / "job", "--gpu", "0")
    assert correlation(torch.from_numpy(gpu_map), torch.from_numpy(compiled_map)) > 0.97
