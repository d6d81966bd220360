"""RELION pipeline bookkeeping of a job folder, and a ChimeraX command file to look at the maps.

RELION 4 and 5 run an "External" job as `PROGRAM --o External/jobNNN/ --in_parts particles.star --j N
[--option value ...]` from the project folder, with stdout/stderr sent to run.out/run.err. The program
then tells the pipeline what it made and how it ended, inside its folder only:

  * RELION_OUTPUT_NODES.star: table data_output_nodes with _rlnPipeLineNodeName (path as seen from
    the project folder) and _rlnPipeLineNodeTypeLabel (RELION 4 node type labels: "DensityMap.mrc"
    for 3D maps, offered as references to Class3D/Refine3D; "ParticleGroupMetadata.star.relion"
    for a particle STAR file);
  * RELION_JOB_EXIT_SUCCESS, RELION_JOB_EXIT_FAILURE or RELION_JOB_EXIT_ABORTED (empty files);
  * RELION asks a running job to stop by creating RELION_JOB_ABORT_NOW in its folder.

Nothing here writes outside the job folder.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from novomap.errors import NovomapError
from novomap.io.atomic import write_text_atomic

OUTPUT_NODES = "RELION_OUTPUT_NODES.star"
EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
EXIT_MARKERS = (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED)

#: RELION 4/5 node type labels (pipeline_jobs.h): a 3D map and a RELION particle STAR file.
NODE_MAP = "DensityMap.mrc"
NODE_PARTICLES = "ParticleGroupMetadata.star.relion"

VIEW_CXC = "view.cxc"
#: Protein: about 1.21 Å^3 per dalton (0.81 Da/Å^3).
PROTEIN_A3_PER_DA = 1.21
#: Without a mass: threshold at mean + this many standard deviations inside the particle mask.
SIGMA_ABOVE_MEAN = 1.5


def node_name(out_dir_as_given: str | os.PathLike, file_name: str) -> str:
    """A node's name as RELION wants it: the --o folder as given (relative to the project) + the file."""
    folder = os.path.normpath(str(out_dir_as_given))
    return file_name if folder == "." else f"{folder}/{file_name}"


def start_job(out_dir: Path) -> None:
    """Clear the markers and nodes of an earlier run in the same folder (RELION_JOB_ABORT_NOW stays)."""
    for name in (*EXIT_MARKERS, OUTPUT_NODES):
        path = out_dir / name
        if path.is_file():
            path.unlink()


def finish_job(out_dir: Path, status: str) -> Path | None:
    """Write RELION_JOB_EXIT_<status> (status: success, failure, aborted) if the folder exists."""
    names = {"success": EXIT_SUCCESS, "failure": EXIT_FAILURE, "aborted": EXIT_ABORTED}
    if status not in names:
        raise ValueError(f"status must be one of {sorted(names)}, not {status!r}")
    if not out_dir.is_dir():
        return None
    for name in EXIT_MARKERS:
        if name != names[status] and (out_dir / name).is_file():
            (out_dir / name).unlink()
    if status == "aborted" and (out_dir / ABORT_NOW).is_file():
        (out_dir / ABORT_NOW).unlink()
    marker = out_dir / names[status]
    marker.touch()
    return marker


def abort_requested(out_dir: Path) -> bool:
    return (out_dir / ABORT_NOW).is_file()


def write_output_nodes(out_dir: Path, nodes: list[tuple[str, str]]) -> Path:
    """RELION_OUTPUT_NODES.star with (node name, type label) rows."""
    lines = ["", "# version 30001", "", "data_output_nodes", "", "loop_", "_rlnPipeLineNodeName #1", "_rlnPipeLineNodeTypeLabel #2"]
    for name, label in nodes:
        if any(ch.isspace() for ch in name):
            name = f'"{name}"'
        lines.append(f"{name} {label}")
    path = out_dir / OUTPUT_NODES
    write_text_atomic(path, "\n".join(lines) + "\n\n")
    return path


def job_output_nodes(out_dir_as_given: str | os.PathLike, initial_model: Path, class_maps: list[Path], data_star: Path | None) -> list[tuple[str, str]]:
    """The nodes of an initial-model job: initial_model.mrc, the class maps, the final data STAR."""
    nodes = [(node_name(out_dir_as_given, initial_model.name), NODE_MAP)]
    nodes += [(node_name(out_dir_as_given, path.name), NODE_MAP) for path in class_maps]
    if data_star is not None:
        nodes.append((node_name(out_dir_as_given, data_star.name), NODE_PARTICLES))
    return nodes


def _sphere_mask(n: int, radius_px: float) -> np.ndarray:
    centre = n // 2
    z, y, x = np.ogrid[:n, :n, :n]
    return (z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2 <= radius_px**2


def contour_level(volume: np.ndarray, pixel_size_a: float, particle_diameter_a: float | None = None, mass_kda: float | None = None) -> float:
    """A surface threshold for viewing a map.

    With mass_kda: the level enclosing the expected molecular volume (1.21 Å^3/Da). Otherwise
    mean + 1.5 standard deviations of the map inside the particle mask (the whole box without a
    diameter), which outlines the particle when it fills up to about a third of the mask.
    """
    volume = np.asarray(volume, dtype=np.float64)
    n = volume.shape[-1]
    if mass_kda is not None and mass_kda > 0:
        voxels = int(round(mass_kda * 1000 * PROTEIN_A3_PER_DA / pixel_size_a**3))
        values = np.sort(volume.ravel())[::-1]
        voxels = min(max(voxels, 1), values.size)
        return float(values[voxels - 1])
    inside = volume
    if particle_diameter_a and particle_diameter_a > 0:
        mask = _sphere_mask(n, 0.5 * particle_diameter_a / pixel_size_a)
        if mask.sum() > 10:
            inside = volume[mask]
    level = float(inside.mean() + SIGMA_ABOVE_MEAN * inside.std())
    return level if math.isfinite(level) else 0.0


def write_chimerax_script(out_dir: Path, maps: list[tuple[str, float]], title: str = "novomap initial model") -> Path:
    """DIR/view.cxc opening the maps (file names inside DIR, level) as surfaces; the first one shown.

    ChimeraX runs a .cxc file from its own folder, so the names stay relative: `open DIR/view.cxc`
    (or `chimerax DIR/view.cxc`) works wherever the folder is moved.
    """
    lines = [f"# {title}: open in UCSF ChimeraX with  chimerax {VIEW_CXC}  (or: open {VIEW_CXC})", "# levels: see docs/report.md (mean + 1.5 sd inside the mask, or the level enclosing the molecular volume)"]
    colours = ["lightsteelblue", "wheat", "lightgreen", "salmon", "lightblue", "plum"]
    for index, (name, level) in enumerate(maps, start=1):
        colour = colours[(index - 1) % len(colours)]
        lines.append(f"open {name}")
        lines.append(f"volume #{index} style surface level {level:.6g} color {colour} step 1")
        if index > 1:
            lines.append(f"hide #{index} models")
    lines += ["view", "lighting soft", ""]
    path = out_dir / VIEW_CXC
    write_text_atomic(path, "\n".join(lines))
    return path


class JobAborted(NovomapError):
    """The job stopped because RELION asked it to (RELION_JOB_ABORT_NOW)."""
