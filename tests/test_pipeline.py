"""`novomap initial-model` as a RELION External job: output nodes, exit markers, view.cxc, one-line errors.

small_job() runs one short job (150 simulated particles, 3 iterations) per test session, the way
RELION starts an External job: from the project folder, with --o External/job001/ --in_parts --j.
test_report.py and test_progress.py use the same run.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from _star_fixtures import make_dataset, optics_columns, particle_columns, random_images, write_images, write_star

from novomap.commands.main import main
from novomap.demo_data import load_demo_map
from novomap.outputs import pipeline
from novomap.simulate import SimulationOptions, simulate

N_PARTICLES = 150
N_ITER = 3
JOB = "External/job001/"
_CACHE: dict = {}


def small_job(tmp_path_factory) -> dict:
    """Run the short job once per session -> project, job folder, star, truth, rc, stdout, stderr, before."""
    if "job" in _CACHE:
        return _CACHE["job"]
    project = tmp_path_factory.mktemp("project")
    volume, _ = load_demo_map()
    result = simulate(volume, project / "Simulated", SimulationOptions(n=N_PARTICLES, snr=1.0))
    # a RELION 5 project: its pipeline's version line chooses the node labels (test_relion_versions.py)
    (project / "default_pipeline.star").write_text("\n# version 50001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 2\n\n")
    before = sorted(os.listdir(project))
    stdout, stderr = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(project)
    threads = torch.get_num_threads()
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            rc = main(["initial-model", "--o", JOB, "--in_parts", "Simulated/particles.star", "--j", "1", "--iter", str(N_ITER)])
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    _CACHE["job"] = {
        "project": project,
        "dir": project / JOB,
        "star": result.star_path,
        "truth": result.truth_path,
        "rc": rc,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "before": before,
    }
    return _CACHE["job"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return small_job(tmp_path_factory)


# ---------------------------------------------------------------------------------------------
# A finished job


def test_job_succeeds_and_writes_only_inside_its_folder(job):
    assert job["rc"] == 0, job["stderr"]
    assert job["stderr"] == ""
    assert sorted(os.listdir(job["project"])) == sorted(job["before"] + ["External"])
    assert os.listdir(job["project"] / "External") == ["job001"]
    folder = job["dir"]
    assert (folder / pipeline.EXIT_SUCCESS).is_file()
    assert not (folder / pipeline.EXIT_FAILURE).exists()
    for name in ("initial_model.mrc", "view.cxc", "report.html", "history.json", "run.out", "run.err", pipeline.OUTPUT_NODES):
        assert (folder / name).is_file(), name
    assert (folder / "run.err").read_text() == ""


def test_output_nodes_name_the_maps_and_particles_from_the_project_folder(job):
    nodes = starfile.read(job["dir"] / pipeline.OUTPUT_NODES, always_dict=True)["output_nodes"]
    rows = list(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeTypeLabel"]))
    last = f"run_it{N_ITER:03d}"
    assert rows == [
        ("External/job001/initial_model.mrc", "DensityMap.mrc"),
        (f"External/job001/{last}_class001.mrc", "DensityMap.mrc"),
        (f"External/job001/{last}_data.star", "ParticleGroupMetadata.star.relion"),
    ]
    for name, _ in rows:
        assert (job["project"] / name).is_file(), name


def test_initial_model_has_the_particles_box_and_pixel_size(job):
    optics = starfile.read(job["star"], always_dict=True)["optics"]
    box, pixel = int(optics["rlnImageSize"][0]), float(optics["rlnImagePixelSize"][0])
    with mrcfile.open(job["dir"] / "initial_model.mrc", permissive=True) as mrc:
        assert mrc.data.shape == (box, box, box)
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (box, box, box)
        for size in (mrc.voxel_size.x, mrc.voxel_size.y, mrc.voxel_size.z):
            assert size == pytest.approx(pixel, rel=1e-5)
        assert np.isfinite(mrc.data).all() and mrc.data.std() > 0


def test_view_cxc_opens_the_maps_at_a_level_inside_their_range(job):
    folder = job["dir"]
    lines = (folder / "view.cxc").read_text().splitlines()
    opened = [line.split(maxsplit=1)[1] for line in lines if line.startswith("open ")]
    assert opened == ["initial_model.mrc", f"run_it{N_ITER:03d}_class001.mrc"]
    levels = [float(line.split(" level ")[1].split()[0]) for line in lines if line.startswith("volume #")]
    assert len(levels) == 2
    for name, level in zip(opened, levels):
        with mrcfile.open(folder / name, permissive=True) as mrc:
            data = np.asarray(mrc.data)
        assert math.isfinite(level)
        assert data.mean() < level < data.max()
        fraction = float((data > level).mean())
        assert 0.002 < fraction < 0.3, fraction


def test_run_out_holds_the_progress_and_the_terminal_its_plain_lines(job):
    run_out = (job["dir"] / "run.out").read_text()
    for i in range(1, N_ITER + 1):
        assert f"iter {i:4d}/{N_ITER}" in run_out
    assert run_out.count(" | ETA ") == N_ITER
    # not a terminal: the same plain lines on stdout, and the final summary
    assert job["stdout"].count(" | ETA ") == N_ITER
    assert "initial model: External/job001/initial_model.mrc" in job["stdout"]


# ---------------------------------------------------------------------------------------------
# Pipeline helpers


def test_node_names_keep_the_folder_as_given():
    assert pipeline.node_name("External/job004/", "a.mrc") == "External/job004/a.mrc"
    assert pipeline.node_name("./out", "a.mrc") == "out/a.mrc"
    assert pipeline.node_name(".", "a.mrc") == "a.mrc"
    assert pipeline.node_name("/data/p/job1", "a.mrc") == "/data/p/job1/a.mrc"


def test_exit_markers_replace_each_other(tmp_path):
    pipeline.finish_job(tmp_path, "failure")
    pipeline.finish_job(tmp_path, "success")
    assert sorted(p.name for p in tmp_path.iterdir()) == [pipeline.EXIT_SUCCESS]
    (tmp_path / pipeline.ABORT_NOW).touch()
    pipeline.finish_job(tmp_path, "aborted")
    assert sorted(p.name for p in tmp_path.iterdir()) == [pipeline.EXIT_ABORTED]
    pipeline.start_job(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert pipeline.finish_job(tmp_path / "absent", "failure") is None
    assert not (tmp_path / "absent").exists()


def test_contour_level_encloses_the_molecular_volume():
    n, pixel = 32, 2.0
    z, y, x = np.indices((n, n, n)) - n // 2
    ball = (np.sqrt(x * x + y * y + z * z) <= 6).astype(np.float32)
    voxels = int(ball.sum())
    mass_kda = voxels * pixel**3 / pipeline.PROTEIN_A3_PER_DA / 1000
    smooth = ball + 0.01 * np.random.default_rng(0).standard_normal(ball.shape).astype(np.float32)
    level = pipeline.contour_level(smooth, pixel, mass_kda=mass_kda)
    assert abs(int((smooth >= level).sum()) - voxels) <= 1
    # without a mass: mean + 1.5 sd inside the mask outlines the ball
    level = pipeline.contour_level(smooth, pixel, particle_diameter_a=40.0)
    assert 0.1 < level < 0.9


@pytest.mark.parametrize("n, diameter_a", [(17, 20.0), (24, 30.0), (24, None), (9, 0.5), (24, 500.0)])
def test_contour_level_is_mean_plus_1_5_sd_inside_the_sphere(n, diameter_a):
    """Slab by slab (no full-size mask or float64 copy) the same as a whole-box mask: voxels within the
    radius of the centre voxel n//2; a mask of 10 voxels or fewer falls back to the whole box."""
    pixel = 2.0
    volume = (3.0 + np.random.default_rng(n).standard_normal((n, n, n))).astype(np.float32)
    z, y, x = np.indices((n, n, n)) - n // 2
    inside = volume.astype(np.float64)
    if diameter_a is not None:
        mask = x * x + y * y + z * z <= (diameter_a / 2 / pixel) ** 2
        if mask.sum() > 10:
            inside = inside[mask]
    expected = inside.mean() + 1.5 * inside.std()
    assert pipeline.contour_level(volume, pixel, particle_diameter_a=diameter_a) == pytest.approx(expected, rel=1e-9)


def test_contour_level_for_a_mass_is_the_right_order_statistic():
    volume = np.random.default_rng(3).standard_normal((20, 20, 20)).astype(np.float32)
    pixel = 1.5
    for voxels in (1, 37, 8000, 9000):
        mass_kda = voxels * pixel**3 / pipeline.PROTEIN_A3_PER_DA / 1000
        expected = np.sort(volume.ravel())[::-1][min(voxels, volume.size) - 1]
        assert pipeline.contour_level(volume, pixel, mass_kda=mass_kda) == expected


# ---------------------------------------------------------------------------------------------
# Errors a user can act on: one line, non-zero exit, no traceback, RELION_JOB_EXIT_FAILURE


def _bad_cases(root: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments after `initial-model --o DIR`, a word the one-line message must contain)."""
    cases: dict[str, tuple[list[str], str]] = {}
    folder = root / "missing_label"
    star, _ = make_dataset(folder)
    columns = particle_columns(5)
    del columns["rlnDefocusU"]
    write_star(star, optics_columns(), columns)
    cases["missing label"] = (["--i", str(star)], "rlnDefocusU")
    folder = root / "missing_stack"
    write_images(folder / "stack.mrcs", random_images(5))
    names = ["1@stack.mrcs", "2@stack.mrcs", "1@gone.mrcs", "2@gone.mrcs", "3@stack.mrcs"]
    star = write_star(folder / "p.star", optics_columns(), particle_columns(5, rlnImageName=names))
    cases["missing stack"] = (["--i", str(star)], "gone.mrcs")
    folder = root / "nan"
    images = random_images(5)
    images[3, 2, 5] = np.nan
    write_images(folder / "stack.mrcs", images)
    star = write_star(folder / "p.star", optics_columns(), particle_columns(5))
    cases["NaN pixels"] = (["--i", str(star), "--particle-diameter", "12"], "NaN")
    empty = root / "empty.star"
    empty.write_text("")
    cases["empty STAR"] = (["--i", str(empty)], "no data_ block")
    cases["absent STAR"] = (["--i", str(root / "absent.star")], "not found")
    good, _ = make_dataset(root / "good")
    cases["too few particles"] = (["--i", str(good), "--K", "4", "--particle-diameter", "12"], "too few")
    cases["mask larger than box"] = (["--i", str(good), "--particle-diameter", "100"], "at most 16")
    cases["unknown symmetry"] = (["--i", str(good), "--sym", "X7", "--particle-diameter", "12"], "point group")
    cases["bad sampling"] = (["--i", str(good), "--sampling", "10"], "--sampling")
    cases["no input"] = ([], "--i")
    cases["missing reference"] = (["--i", str(good), "--reference", str(root / "none.mrc")], "reference")
    cases["missing continue"] = (["--i", str(good), "--continue", str(root / "run_it010_optimiser.star")], "--continue")
    if not torch.cuda.is_available():
        cases["GPU absent"] = (["--i", str(good), "--gpu", "0", "--particle-diameter", "12"], "GPU")
    return cases


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile warns when writing the NaN stack
def test_each_bad_input_ends_in_one_line(tmp_path, capsys):
    for name, (arguments, word) in _bad_cases(tmp_path / "inputs").items():
        out_dir = tmp_path / "jobs" / name.replace(" ", "_")
        out_dir.mkdir(parents=True)  # RELION creates the job folder before it starts the job
        capsys.readouterr()
        rc = main(["initial-model", "--o", str(out_dir), "--iter", "2", *arguments])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert rc != 0, name
        assert len(lines) == 1 and lines[0].startswith("novomap initial-model: error: "), (name, captured.err)
        assert word in lines[0], (name, lines[0])
        assert "Traceback" not in captured.err + captured.out
        assert (out_dir / pipeline.EXIT_FAILURE).is_file(), name
        assert not (out_dir / pipeline.EXIT_SUCCESS).exists()
        assert lines[0] in (out_dir / "run.err").read_text(), name


def test_bad_input_in_a_fresh_process_prints_no_traceback(tmp_path):
    out_dir = tmp_path / "job"
    command = [sys.executable, "-m", "novomap", "initial-model", "--i", str(tmp_path / "absent.star"), "--o", str(out_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "absent.star" in done.stderr and "not found" in done.stderr
    assert "Traceback" not in done.stderr
    assert (out_dir / pipeline.EXIT_FAILURE).is_file()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), MemoryError()], ids=["torch", "python"])
def test_out_of_memory_says_what_to_change(tmp_path, capsys, monkeypatch, error):
    import novomap.initial_model

    def run_out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(novomap.initial_model, "run_initial_model", run_out_of_memory)
    star, _ = make_dataset(tmp_path)
    out_dir = tmp_path / "job"
    rc = main(["initial-model", "--i", str(star), "--o", str(out_dir), "--particle-diameter", "12", "--preread"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1 and "out of memory" in lines[0]
    assert "--preread" in lines[0] and "box" in lines[0] and "--K" in lines[0]
    assert (out_dir / pipeline.EXIT_FAILURE).is_file()


def test_a_bug_keeps_its_traceback_in_run_err(tmp_path, monkeypatch):
    import novomap.initial_model

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(novomap.initial_model, "run_initial_model", broken)
    star, _ = make_dataset(tmp_path)
    out_dir = tmp_path / "job"
    with pytest.raises(ZeroDivisionError):
        main(["initial-model", "--i", str(star), "--o", str(out_dir), "--particle-diameter", "12", "--quiet"])
    assert "Traceback" in (out_dir / "run.err").read_text()
    assert (out_dir / pipeline.EXIT_FAILURE).is_file()


def test_relion_abort_request_stops_the_job(tmp_path, capsys):
    star, _ = make_dataset(tmp_path)
    out_dir = tmp_path / "job"
    out_dir.mkdir()
    (out_dir / pipeline.ABORT_NOW).touch()
    threads = torch.get_num_threads()
    try:
        rc = main(["initial-model", "--i", str(star), "--o", str(out_dir), "--particle-diameter", "12", "--iter", "3", "--j", "1", "--no-report"])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert rc != 0 and "abort" in err
    assert (out_dir / pipeline.EXIT_ABORTED).is_file()
    assert not (out_dir / pipeline.ABORT_NOW).exists()
    assert not (out_dir / pipeline.EXIT_FAILURE).exists()
    run_out = (out_dir / "run.out").read_text()
    assert "iter    1/3" in run_out and "iter    2/3" not in run_out


def test_sigterm_ends_the_job_with_relion_failure_marker(tmp_path, capsys, monkeypatch):
    import signal

    import novomap.initial_model

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a queue's time limit
        raise AssertionError("SIGTERM did not stop the job")

    monkeypatch.setattr(novomap.initial_model, "run_initial_model", killed)
    star, _ = make_dataset(tmp_path)
    out_dir = tmp_path / "job"
    before = signal.getsignal(signal.SIGTERM)
    rc = main(["initial-model", "--i", str(star), "--o", str(out_dir), "--particle-diameter", "12"])
    assert rc == 143 and "terminated (SIGTERM)" in capsys.readouterr().err
    assert (out_dir / pipeline.EXIT_FAILURE).is_file()
    assert "SIGTERM" in (out_dir / "run.err").read_text()
    assert signal.getsignal(signal.SIGTERM) is before


def test_relion_external_executable_is_the_initial_model_command(capsys):
    from novomap.commands.initial_model import relion_external

    with pytest.raises(SystemExit) as exit_info:
        relion_external(["--help"])
    assert exit_info.value.code == 0
    assert "usage: novomap initial-model" in capsys.readouterr().out
