"""Wall time of align-symmetry (64^3 D2 and I maps), detect-symmetry and compare --align (64^3 maps).

Usage: python benchmarks/bench_symmetry.py [--threads 2] [--repeats 3]
Prints one line per case (median and min of the repeats). The machine may be shared: the load
average before and after is printed so that numbers taken under load can be recognised.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from novomap.io.mrc import read_map
from novomap.maps.align import align_maps
from novomap.maps.transform import centred_coordinates, crop_or_pad, rotate_volume, shift_volume
from novomap.physics.euler import euler_to_matrix
from novomap.symmetry.align import align_to_symmetry
from novomap.symmetry.detect import detect_point_group
from novomap.symmetry.groups import point_group

BETAGAL = Path("/work/shared/data/betagal_relion_tutorial_map/betaGal.mrc")


def icosahedral_map(size: int = 64) -> torch.Tensor:
    """Gaussian blobs at one random point per asymmetric unit of I (60 blobs), box 64."""
    generator = torch.Generator().manual_seed(1)
    centre = torch.randn(3, dtype=torch.float64, generator=generator)
    centre = centre / centre.norm() * 0.3 * size
    coords = centred_coordinates(size, torch.float64)
    volume = torch.zeros(size, size, size, dtype=torch.float64)
    for g in point_group("I").operators:
        volume += torch.exp(-((coords - g @ centre) ** 2).sum(-1) / (2 * (0.04 * size) ** 2))
    return volume.float()


def betagal_64() -> torch.Tensor:
    volume, _ = read_map(BETAGAL)
    return crop_or_pad(torch.from_numpy(volume), 64)


def rotated(volume: torch.Tensor) -> torch.Tensor:
    rotation = euler_to_matrix(torch.tensor(47.0, dtype=torch.float64), torch.tensor(71.0, dtype=torch.float64),
                               torch.tensor(-133.0, dtype=torch.float64))
    return shift_volume(rotate_volume(volume, rotation), (1.5, -2.0, 1.0))


def timed(label: str, action, repeats: int) -> None:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    median, fastest = statistics.median(times), min(times)
    print(f"{label:<44} median {median:6.2f} s   min {fastest:6.2f} s   ({repeats} runs)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"novomap symmetry benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    d2 = rotated(betagal_64())
    ico = rotated(icosahedral_map())
    reference = betagal_64()
    timed("align-symmetry D2 (beta-gal 64^3, 3.54 A)", lambda: align_to_symmetry(d2, 3.54, "D2"), args.repeats)
    timed("align-symmetry I (synthetic 64^3)", lambda: align_to_symmetry(ico, 3.0, "I"), args.repeats)
    timed("detect-symmetry (beta-gal 64^3)", lambda: detect_point_group(d2, 3.54), args.repeats)
    timed("compare --align (beta-gal 64^3 vs rotated)", lambda: align_maps(reference, d2, 3.54), args.repeats)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
