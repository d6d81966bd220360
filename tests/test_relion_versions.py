"""RELION_OUTPUT_NODES.star speaks the node type labels of the RELION that runs the job (4 or 5).

The expected labels are copied by hand from RELION's source, not from novomap:
  * RELION 4.0, branch ver4.0, src/pipeline_jobs.h: LABEL_MAP_CPIPE "DensityMap.mrc",
    LABEL_PARTS_CPIPE "ParticlesData.star.relion"; src/metadata_table.h: CURRENT_MDT_VERSION 30001.
  * RELION 5.0, branch ver5.0, src/pipeline_jobs.h: LABEL_MAP_CPIPE "DensityMap.mrc",
    LABEL_PARTS_CPIPE "ParticleGroupMetadata.star.relion"; src/metadata_table.h: CURRENT_MDT_VERSION 50001.
RELION reads the file in PipeLine::getOutputNodesFromStarFile (src/pipeliner.cpp) without
converting labels, so a RELION 5 label in a RELION 4 project is a node of an unknown type.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import starfile
import torch
from _star_fixtures import make_dataset

from novomap.commands.main import main
from novomap.outputs import pipeline

# label -> what RELION's source calls it, per version (see the module docstring for the files)
RELION4_LABELS = {"map": "DensityMap.mrc", "particles": "ParticlesData.star.relion"}  # ver4.0 src/pipeline_jobs.h
RELION5_LABELS = {"map": "DensityMap.mrc", "particles": "ParticleGroupMetadata.star.relion"}  # ver5.0 src/pipeline_jobs.h
RELION4_STAR_VERSION = 30001  # ver4.0 src/metadata_table.h
RELION5_STAR_VERSION = 50001  # ver5.0 src/metadata_table.h


def pipeline_star(version_line: int) -> str:
    """A default_pipeline.star as RELION writes it (one Import job), with its `# version` line."""
    return (
        f"\n# version {version_line}\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter                       2\n\n"
        f"\n# version {version_line}\n\ndata_pipeline_processes\n\nloop_ \n_rlnPipeLineProcessName #1 \n"
        "_rlnPipeLineProcessAlias #2 \n_rlnPipeLineProcessTypeLabel #3 \n_rlnPipeLineProcessStatusLabel #4 \n"
        "Import/job001/       None relion.import.other  Succeeded \n\n"
    )


def read_nodes(path: Path) -> tuple[int | None, list[tuple[str, str]]]:
    nodes = starfile.read(path, always_dict=True)["output_nodes"]
    return pipeline.read_star_version(path), list(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeTypeLabel"]))


@pytest.mark.parametrize(
    "version, labels, version_line",
    [(4, RELION4_LABELS, RELION4_STAR_VERSION), (5, RELION5_LABELS, RELION5_STAR_VERSION)],
)
def test_output_nodes_use_the_labels_of_each_version(tmp_path, version, labels, version_line):
    nodes = pipeline.job_output_nodes(
        "External/job007/", tmp_path / "initial_model.mrc", [tmp_path / "run_it100_class001.mrc"], tmp_path / "run_it100_data.star", version
    )
    path = pipeline.write_output_nodes(tmp_path, nodes, version)
    line, rows = read_nodes(path)
    assert line == version_line
    assert rows == [
        ("External/job007/initial_model.mrc", labels["map"]),
        ("External/job007/run_it100_class001.mrc", labels["map"]),
        ("External/job007/run_it100_data.star", labels["particles"]),
    ]


def test_label_tables_match_relion_source():
    assert pipeline.NODE_LABELS[4] == RELION4_LABELS
    assert pipeline.NODE_LABELS[5] == RELION5_LABELS
    assert pipeline.STAR_VERSION == {4: RELION4_STAR_VERSION, 5: RELION5_STAR_VERSION}


def test_version_is_detected_from_the_project_pipeline_then_the_particles(tmp_path):
    particles4 = tmp_path / "p4.star"
    particles4.write_text("\n# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n1@a.mrcs\n")
    particles5 = tmp_path / "p5.star"
    particles5.write_text("\n# version 50001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n1@a.mrcs\n")
    old = tmp_path / "p30.star"
    old.write_text("data_\n\nloop_\n_rlnImageName #1\n1@a.mrcs\n")  # RELION 3.0: no version line

    project = tmp_path / "project"
    project.mkdir()
    assert pipeline.detect_relion_version(particles4, project)[0] == 4
    assert pipeline.detect_relion_version(particles5, project)[0] == 5
    assert pipeline.detect_relion_version(old, project)[0] == pipeline.DEFAULT_RELION_VERSION == 5
    assert pipeline.detect_relion_version(None, project)[0] == 5
    # the project's pipeline wins over the particles file (particles made by RELION 4, project now in 5)
    (project / "default_pipeline.star").write_text(pipeline_star(RELION5_STAR_VERSION))
    version, why = pipeline.detect_relion_version(particles4, project)
    assert version == 5 and "default_pipeline.star" in why and "50001" in why
    (project / "default_pipeline.star").write_text(pipeline_star(RELION4_STAR_VERSION))
    assert pipeline.detect_relion_version(particles5, project)[0] == 4


def _run_in_project(project: Path, star: Path, out: str, *extra: str) -> int:
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(project)
    try:
        return main(
            ["initial-model", "--o", out, "--in_parts", str(star), "--j", "1", "--iter", "1", "--particle-diameter", "12", "--no-report", "--quiet", *extra]
        )
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


@pytest.mark.parametrize("pipeline_version, option, expected", [(30001, [], 4), (50001, [], 5), (30001, ["--relion-version", "5"], 5), (50001, ["--relion-version", "4"], 4)])
def test_external_job_in_a_relion_project_writes_that_versions_labels(tmp_path, pipeline_version, option, expected):
    project = tmp_path / "project"
    star, _ = make_dataset(project / "Select" / "job002")
    (project / "default_pipeline.star").write_text(pipeline_star(pipeline_version))
    assert _run_in_project(project, star, "External/job003/", *option) == 0
    line, rows = read_nodes(project / "External" / "job003" / pipeline.OUTPUT_NODES)
    labels = RELION4_LABELS if expected == 4 else RELION5_LABELS
    assert line == (RELION4_STAR_VERSION if expected == 4 else RELION5_STAR_VERSION)
    assert [label for _, label in rows] == [labels["map"], labels["map"], labels["particles"]]
    assert rows[-1][0] == "External/job003/run_it001_data.star"
    for name, _ in rows:
        assert (project / name).is_file(), name
