"""Small synthetic STAR files and stacks for the io tests.

STAR text is written by hand here (not with starfile or novomap) so that the tests can write
exactly the broken files they need, and so that reading is not checked against its own writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from novomap.io.mrc import write_stack

BOX = 8
PIXEL_SIZE = 2.0


def shared_data_dir() -> Path:
    """/work/shared/data beside the repository (CI puts it beside the clone); skip if absent."""
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not data.is_dir():
        pytest.skip(f"real test data not found at {data}")
    return data


def loop_block(name: str, columns: dict[str, list]) -> str:
    """A `data_<name>` loop block; values are written with str(), one row per list position."""
    lines = [f"data_{name}", "", "loop_"]
    lines += [f"_{label} #{i}" for i, label in enumerate(columns, 1)]
    n_rows = len(next(iter(columns.values())))
    for row in range(n_rows):
        lines.append("\t".join(str(values[row]) for values in columns.values()))
    return "\n".join(lines) + "\n\n"


def star_text(optics: dict[str, list] | None, particles: dict[str, list], particle_block: str = "particles") -> str:
    text = "\n# version 30001\n\n"
    if optics is not None:
        text += loop_block("optics", optics)
    return text + loop_block(particle_block, particles)


def write_star(path: Path, optics: dict[str, list] | None, particles: dict[str, list], **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(star_text(optics, particles, **kwargs))
    return path


def optics_columns(n_groups: int = 1, **overrides) -> dict[str, list]:
    """A RELION 3.1 optics table with `n_groups` identical groups (200 kV, 2 Å/px, 8 px)."""
    columns = {
        "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, n_groups + 1)],
        "rlnOpticsGroup": list(range(1, n_groups + 1)),
        "rlnVoltage": [200.0] * n_groups,
        "rlnSphericalAberration": [1.4] * n_groups,
        "rlnAmplitudeContrast": [0.1] * n_groups,
        "rlnImagePixelSize": [PIXEL_SIZE] * n_groups,
        "rlnImageSize": [BOX] * n_groups,
        "rlnImageDimensionality": [2] * n_groups,
    }
    columns.update(overrides)
    return columns


def particle_columns(n: int, stack: str = "stack.mrcs", **overrides) -> dict[str, list]:
    """`n` particles, image k (1-based) of `stack`, in optics group 1, distinct defocus values."""
    columns = {
        "rlnImageName": [f"{k:06d}@{stack}" for k in range(1, n + 1)],
        "rlnMicrographName": [f"mic{k % 2}.mrc" for k in range(n)],
        "rlnDefocusU": [10000.0 + 100 * k for k in range(n)],
        "rlnDefocusV": [9000.0 + 100 * k for k in range(n)],
        "rlnDefocusAngle": [10.0 + k for k in range(n)],
        "rlnOpticsGroup": [1] * n,
    }
    columns.update(overrides)
    return columns


def random_images(n: int, box: int = BOX, seed: int = 0) -> np.ndarray:
    """(n, box, box) float32 noise with a different mean per image, so images are easy to tell apart."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, box, box)) + np.arange(n)[:, None, None]).astype(np.float32)


def write_images(path: Path, images: np.ndarray, dtype: str = "float32") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_stack(path, images, PIXEL_SIZE, dtype=dtype)
    return path


def make_dataset(folder: Path, n: int = 5, **particle_overrides) -> tuple[Path, np.ndarray]:
    """A valid RELION 3.1 STAR file with one float32 stack beside it -> (STAR path, images (n, 8, 8))."""
    images = random_images(n)
    write_images(folder / "stack.mrcs", images)
    star = write_star(folder / "particles.star", optics_columns(), particle_columns(n, **particle_overrides))
    return star, images
