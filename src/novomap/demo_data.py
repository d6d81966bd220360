"""The built-in demo map: beta-galactosidase (PDB 5A1A, D2) at 64 px and 3.54 Å/px.

In RELION's standard D2 frame (2-folds along x, y, z) and the hand of the RELION tutorial map.
Its greyscale is that of real normalised particles: its CTF-modulated projections have a mean
variance of about 0.1 inside a 200 Å circle, like real tutorial particles (noise std 1).
Built by scripts/make_demo_map.py.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from novomap.errors import NovomapError
from novomap.io.mrc import read_map

DEMO_MAP_NAME = "betagal_5a1a_64.mrc"


def demo_map_path() -> Path:
    """Path of the demo map file inside the installed package."""
    path = Path(str(resources.files("novomap") / "data" / DEMO_MAP_NAME))
    if not path.is_file():
        raise NovomapError(f"the demo map is missing from the installation ({path}); run scripts/make_demo_map.py")
    return path


def load_demo_map() -> tuple[torch.Tensor, float]:
    """(volume (64, 64, 64) float32 in (z, y, x) order, pixel size in Å)."""
    volume, pixel_size_a = read_map(demo_map_path())
    # the header stores float32 (3.5399999...); give back the intended value
    return torch.from_numpy(volume), round(pixel_size_a, 4)
