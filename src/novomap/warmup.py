"""Compile the CPU kernels once, when novomap is set up, instead of in the user's first job.

numba compiles the compiled loops (physics.trilinear_cpu, estep.sparse_cpu, estep.fine_cpu) on
their first call and caches the machine code beside the sources (or, where that folder is read-only,
in the user's cache). Compiling takes about 10 s on 2 cores: the first job after an install was 17 s
of iterations instead of 7 s (benchmarks/results/2026-12-04-s31-gpu.md). A tiny job on simulated
particles calls every kernel with the argument types a real job uses, so scripts/setup.sh runs it:

    python -m novomap.warmup
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path


def warm_up(threads: int = 2) -> float:
    """Run a 64-particle, 12-iteration D2 job (long enough for the group to be imposed between iterations) in a temporary folder -> seconds taken."""
    from novomap.commands.main import main
    from novomap.demo_data import load_demo_map
    from novomap.simulate import SimulationOptions, simulate

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="novomap_warmup_") as folder:
        volume, pixel_size_a = load_demo_map()
        options = SimulationOptions(n=64, snr=1.0, seed=1, box=volume.shape[-1], pixel_size_a=pixel_size_a)
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            star = simulate(volume, Path(folder) / "data", options).star_path
            arguments = [
                "initial-model", "--i", str(star), "--o", str(Path(folder) / "job"), "--iter", "12", "--particle-diameter", "200",
                "--sym", "D2", "--seed", "1", "--j", str(threads), "--quiet", "--no-report",
            ]  # fmt: skip
            status = main(arguments)
        if status != 0:
            raise RuntimeError(f"the warm-up job failed:\n{quiet.getvalue()}")
    return time.perf_counter() - started


if __name__ == "__main__":
    seconds = warm_up()
    print(f"compiled novomap's CPU kernels in {seconds:.0f} s", file=sys.stderr)
