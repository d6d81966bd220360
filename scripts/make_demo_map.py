#!/usr/bin/env python
"""Build novomap's built-in demo map, src/novomap/data/betagal_5a1a_64.mrc, from PDB 5A1A.

E. coli beta-galactosidase (D2), 64 px at 3.54 Å/px (the RELION tutorial's initial-model size),
float16 MRC with the pixel size in the header (0.5 MB).

* Frame and hand: those of the RELION tutorial map betaGal.mrc, i.e. RELION's standard D2 frame
  (2-folds along x, y, z). The 5A1A atoms (Å) are moved before the density is computed, using
  the mapping verified in /work/shared/data/README.md:
  x' = y - 93, y' = -(z - 93), z' = -(x - 93), in Å from the box centre (voxel 32).
* Density: gemmi's electron-scattering potential, band-limited to Nyquist (7.08 Å), with a
  B-factor of 100 Å^2 (damps the Gibbs ringing of the hard cut-off and the high-resolution
  signal, as in real maps).
* Greyscale: scaled so that its CTF-modulated projections (random orientations, the tutorial's
  defocus values) have a mean variance of 0.1 inside the 200 Å particle circle. Real tutorial
  particles (normalised, 64 px) measure SNR 0.103 against betaGal.mrc, whose greyscale matches
  them (fitted scale 1.04), so with this map `novomap simulate --snr 0.1` adds noise of std ~1,
  like real data before normalisation.

Usage (from the repository root, with the data folder beside it):
    python scripts/make_demo_map.py [--data ../shared/data] [--out src/novomap/data/betagal_5a1a_64.mrc]
Rerunning gives the same file (everything is seeded).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import torch

from novomap.io.atomic import atomic_path
from novomap.simulate import (
    SimulationOptions,
    draw_parameters,
    fourier_resize,
    make_projector,
    noise_sigma_for,
    particle_mask,
    structure_density,
)

BOX = 64
PIXEL_SIZE_A = 3.54
BFACTOR_A2 = 100.0
TARGET_SIGNAL_VARIANCE = 0.1
PARTICLE_DIAMETER_A = 200.0
# 5A1A (Å) -> betaGal.mrc frame (Å from the box centre): rows give x', y', z' from (x, y, z)
FRAME_ROTATION = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
FRAME_CENTRE_A = (93.0, 93.0, 93.0)

ROOT = Path(__file__).resolve().parents[1]


def build_map(model_path: Path) -> torch.Tensor:
    """(64, 64, 64) float32 potential of 5A1A in the betaGal.mrc frame, B-factor applied, unscaled."""
    structure = gemmi.read_structure(str(model_path))
    volume = structure_density(structure, BOX, PIXEL_SIZE_A, FRAME_CENTRE_A, FRAME_ROTATION)
    return fourier_resize(volume.double(), BOX, BFACTOR_A2, PIXEL_SIZE_A).float()


def greyscale_factor(volume: torch.Tensor, ctf_star: Path | None) -> float:
    """Factor that brings the mean masked variance of the map's CTF-modulated projections to 0.1."""
    options = SimulationOptions(
        n=500,
        snr=1.0,
        box=BOX,
        pixel_size_a=PIXEL_SIZE_A,
        defocus_min_a=8000.0,
        defocus_max_a=13000.0,
        ctf_from=ctf_star,
        particle_diameter_a=PARTICLE_DIAMETER_A,
    )
    generator = torch.Generator().manual_seed(0)
    parameters = draw_parameters(options, generator)
    mask = particle_mask(BOX, PARTICLE_DIAMETER_A / PIXEL_SIZE_A)
    _, signal = noise_sigma_for(make_projector(volume, PIXEL_SIZE_A), parameters, 1.0, mask)
    return math.sqrt(TARGET_SIGNAL_VARIANCE / signal)


def write_float16_map(path: Path, volume: torch.Tensor, pixel_size_a: float) -> None:
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(volume.numpy().astype(np.float16))
            mrc.voxel_size = pixel_size_a
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.update_header_stats()
            # a fixed label instead of mrcfile's time stamp, so that reruns give the same bytes
            mrc.header.label[0] = b"novomap demo map: PDB 5A1A beta-galactosidase, RELION D2 frame"
            mrc.header.nlabl = 1
    path.chmod(0o644)  # package data: readable by everyone (temporary files are created 0600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "novomap" / "data" / "betagal_5a1a_64.mrc")
    args = parser.parse_args()
    model = args.data / "betagal_5a1a_model" / "5a1a.cif.gz"
    ctf_star = args.data / "betagal_relion31_tutorial_metadata" / "Extract" / "job018" / "particles.star"
    volume = build_map(model)
    factor = greyscale_factor(volume, ctf_star if ctf_star.is_file() else None)
    volume = volume * factor
    write_float16_map(args.out, volume, PIXEL_SIZE_A)
    print(
        f"wrote {args.out}: {BOX}^3 at {PIXEL_SIZE_A} Å/px, scale factor {factor:.4g}, "
        f"min {volume.min():.4g} max {volume.max():.4g} std {volume.std():.4g}"
    )


if __name__ == "__main__":
    main()
