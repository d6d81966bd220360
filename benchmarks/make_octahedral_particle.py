"""A tight octahedral test particle: 24 copies (the operators of O) of a 5-blob subunit, box 64 at 3 Å/px.

Density reaches 30 of the 32 px box radius (~94 % of the box), the hard case of
benchmarks/results/2026-11-30-local-refinement.md:

    python benchmarks/make_octahedral_particle.py --o /tmp/lr/octa_truth.mrc
    novomap simulate --map /tmp/lr/octa_truth.mrc --pixel-size 3.0 --box 64 --n 1000 --snr 0.1 \
        --o /tmp/lr/octa --seed 4 --particle-diameter 182 --max-shift 3
    novomap initial-model --i /tmp/lr/octa/particles.star --o OUT --iter 100 --particle-diameter 182 --sym O ...
"""

from __future__ import annotations

import argparse

import torch

from novomap.io.mrc import write_map
from novomap.maps.transform import centred_coordinates
from novomap.symmetry.groups import point_group


def octahedral_particle(size: int = 64, seed: int = 7) -> torch.Tensor:
    group = point_group("O")
    generator = torch.Generator().manual_seed(seed)
    centre = torch.tensor([0.62, 0.25, 0.74], dtype=torch.float64)  # off every symmetry axis
    centre = centre / centre.norm() * 0.36 * size
    blobs = centre + torch.randn(5, 3, generator=generator, dtype=torch.float64) * 2.5
    heights = torch.empty(5, dtype=torch.float64).uniform_(0.6, 1.0, generator=generator)
    widths = torch.empty(5, dtype=torch.float64).uniform_(1.6, 2.4, generator=generator)
    coords = centred_coordinates(size, torch.float64)
    volume = torch.zeros(size, size, size, dtype=torch.float64)
    for operator in group.operators:
        for c, h, w in zip(blobs @ operator.T, heights, widths):
            volume += h * torch.exp(-((coords - c) ** 2).sum(-1) / (2 * w * w))
    return volume.float()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--o", required=True, help="output map (MRC)")
    parser.add_argument("--pixel-size", type=float, default=3.0)
    args = parser.parse_args()
    write_map(args.o, octahedral_particle(), args.pixel_size)
