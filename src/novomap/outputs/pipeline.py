"""RELION pipeline bookkeeping of a job folder, and a ChimeraX command file to look at the maps.

RELION 4 and 5 run an "External" job as `PROGRAM --o External/jobNNN/ --in_parts particles.star --j N
[--option value ...]` from the project folder, with stdout/stderr sent to run.out/run.err. The program
then tells the pipeline what it made and how it ended, inside its folder only:

  * RELION_OUTPUT_NODES.star: table data_output_nodes with _rlnPipeLineNodeName (path as seen from
    the project folder) and _rlnPipeLineNodeTypeLabel. The labels differ between versions
    (src/pipeline_jobs.h, LABEL_*_CPIPE): 3D maps are "DensityMap.mrc" in both (offered as
    references to Class3D/Refine3D); a particle STAR file is "ParticlesData.star.relion" in
    RELION 4.0 and "ParticleGroupMetadata.star.relion" in RELION 5.0. Neither converts the other's
    label when it reads this file (PipeLine::getOutputNodesFromStarFile), and the GUI offers a node
    as input by the label's first word (.Nodes/ParticlesData/ in 4.0), so the labels must be those
    of the RELION that runs the job: see `detect_relion_version`;
  * RELION_JOB_EXIT_SUCCESS, RELION_JOB_EXIT_FAILURE or RELION_JOB_EXIT_ABORTED (empty files);
  * RELION asks a running job to stop by creating RELION_JOB_ABORT_NOW in its folder.

Nothing here writes outside the job folder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
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

#: Node type labels by RELION major version (src/pipeline_jobs.h of branches ver4.0 and ver5.0:
#: LABEL_MAP_CPIPE and LABEL_PARTS_CPIPE), and the `# version` line RELION writes in STAR files
#: (CURRENT_MDT_VERSION in src/metadata_table.h).
NODE_LABELS = {
    4: {"map": "DensityMap.mrc", "particles": "ParticlesData.star.relion"},
    5: {"map": "DensityMap.mrc", "particles": "ParticleGroupMetadata.star.relion"},
}
STAR_VERSION = {4: 30001, 5: 50001}
RELION_VERSIONS = tuple(NODE_LABELS)
#: Without a pipeline file or a version line to go by: the current release.
DEFAULT_RELION_VERSION = 5
PIPELINE_STAR = "default_pipeline.star"
NODE_MAP = NODE_LABELS[DEFAULT_RELION_VERSION]["map"]
NODE_PARTICLES = NODE_LABELS[DEFAULT_RELION_VERSION]["particles"]

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


def read_star_version(path: str | os.PathLike, max_lines: int = 200) -> int | None:
    """The number of the first `# version N` line of a STAR file (RELION writes it above each block), or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for _, line in zip(range(max_lines), handle):
                words = line.split()
                if len(words) == 3 and words[0] == "#" and words[1] == "version" and words[2].isdigit():
                    return int(words[2])
    except OSError:
        return None
    return None


def relion_version_of_star(version_line: int) -> int:
    """RELION major version whose node labels go with a STAR `# version` number (50001 -> 5, else 4)."""
    return 5 if version_line >= STAR_VERSION[5] else 4


def detect_relion_version(particles_star: str | os.PathLike | None = None, project_dir: str | os.PathLike = ".") -> tuple[int, str]:
    """(RELION major version, why) for the node labels of RELION_OUTPUT_NODES.star.

    RELION sets no environment variable for the jobs it runs, but it runs them from the project
    folder, whose default_pipeline.star it rewrites with its own `# version` line (30001 in
    RELION 3.1/4.0, 50001 in 5.0). Without one, the version line of the input particles STAR
    file (written by the RELION that made them); without that, DEFAULT_RELION_VERSION.
    """
    pipeline_star = Path(project_dir) / PIPELINE_STAR
    for source in (pipeline_star, particles_star):
        if source is None or not Path(source).is_file():
            continue
        number = read_star_version(source)
        if number is not None:
            return relion_version_of_star(number), f"{source} has '# version {number}'"
    return DEFAULT_RELION_VERSION, "no default_pipeline.star here and no version line in the particles file"


def write_output_nodes(out_dir: Path, nodes: list[tuple[str, str]], relion_version: int = DEFAULT_RELION_VERSION) -> Path:
    """RELION_OUTPUT_NODES.star with (node name, type label) rows, with the version line of that RELION."""
    version_line = f"# version {STAR_VERSION[relion_version]}"
    lines = ["", version_line, "", "data_output_nodes", "", "loop_", "_rlnPipeLineNodeName #1", "_rlnPipeLineNodeTypeLabel #2"]
    for name, label in nodes:
        if any(ch.isspace() for ch in name):
            name = f'"{name}"'
        lines.append(f"{name} {label}")
    path = out_dir / OUTPUT_NODES
    write_text_atomic(path, "\n".join(lines) + "\n\n")
    return path


def job_output_nodes(
    out_dir_as_given: str | os.PathLike,
    initial_model: Path,
    class_maps: list[Path],
    data_star: Path | None,
    relion_version: int = DEFAULT_RELION_VERSION,
) -> list[tuple[str, str]]:
    """The nodes of an initial-model job: initial_model.mrc, the class maps, the final data STAR."""
    labels = NODE_LABELS[relion_version]
    nodes = [(node_name(out_dir_as_given, initial_model.name), labels["map"])]
    nodes += [(node_name(out_dir_as_given, path.name), labels["map"]) for path in class_maps]
    if data_star is not None:
        nodes.append((node_name(out_dir_as_given, data_star.name), labels["particles"]))
    return nodes


def _slab_masks(n: int, radius_px: float | None) -> Iterator[tuple[int, np.ndarray]]:
    """(z, (n, n) bool) for each z-slab of an n^3 box that holds voxels within radius_px of the centre
    voxel n//2 (every voxel where radius_px is None), made one at a time."""
    squared = (np.arange(n) - n // 2) ** 2
    in_plane = squared[:, None] + squared[None, :]
    for z in range(n):
        if radius_px is None:
            yield z, np.ones((n, n), dtype=bool)
        elif squared[z] <= radius_px**2:
            yield z, in_plane <= radius_px**2 - squared[z]


def _masked_mean_sd(volume: np.ndarray, radius_px: float | None) -> tuple[float, float, int]:
    """(mean, standard deviation, count) of the voxels within radius_px of the centre, in float64,
    two passes slab by slab: a 512^3 output map needs neither a float64 copy nor a full-size mask
    (those had taken ~3 GB beyond the map itself)."""
    n = volume.shape[-1]
    count = sum(int(mask.sum()) for _, mask in _slab_masks(n, radius_px))
    if count == 0:
        return math.nan, math.nan, 0
    mean = sum(float(volume[z][mask].sum(dtype=np.float64)) for z, mask in _slab_masks(n, radius_px)) / count
    squares = sum(float(np.square(volume[z][mask].astype(np.float64) - mean).sum()) for z, mask in _slab_masks(n, radius_px))
    return mean, math.sqrt(squares / count), count


def contour_level(volume: np.ndarray, pixel_size_a: float, particle_diameter_a: float | None = None, mass_kda: float | None = None) -> float:
    """A surface threshold for viewing a map (n, n, n).

    With mass_kda: the level enclosing the expected molecular volume (1.21 Å^3/Da). Otherwise
    mean + 1.5 standard deviations of the map inside the particle mask (the whole box without a
    diameter), which outlines the particle when it fills up to about a third of the mask.
    """
    volume = np.asarray(volume)
    if mass_kda is not None and mass_kda > 0:
        values = volume.ravel()
        voxels = int(round(mass_kda * 1000 * PROTEIN_A3_PER_DA / pixel_size_a**3))
        voxels = min(max(voxels, 1), values.size)
        return float(np.partition(values, values.size - voxels)[values.size - voxels])  # the voxels-th largest
    stats = None
    if particle_diameter_a and particle_diameter_a > 0:
        stats = _masked_mean_sd(volume, 0.5 * particle_diameter_a / pixel_size_a)
    if stats is None or stats[2] <= 10:
        stats = _masked_mean_sd(volume, None)
    level = stats[0] + SIGMA_ABOVE_MEAN * stats[1]
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
