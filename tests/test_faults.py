"""Every fault ends in one clear line, and nothing is lost: `novomap initial-model` from the command line.

Each bad input (or fault) below must give: exit code 2, exactly one line on stderr naming the file,
the row and the label (or the option), no traceback, RELION_JOB_EXIT_FAILURE, and no half-written
output (no temporary file; nothing of run_itNNN_* when the fault is found before the first
iteration). Interruptions (SIGTERM, SIGINT) exit 143 and 130 and leave a checkpoint that --continue takes.
tests/test_bad_input.py checks the same errors one level down (read_particle_star, ParticleSet).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from _star_fixtures import BOX, make_dataset, optics_columns, particle_columns, random_images, write_images, write_star

from novomap.commands.main import main
from novomap.outputs import pipeline

N = 6
ALLOWED_AFTER_EARLY_FAILURE = {"run.out", "run.err", pipeline.EXIT_FAILURE}


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_job(out_dir: Path, *arguments: str) -> int:
    return main(["initial-model", "--o", str(out_dir), "--iter", "2", "--j", "1", "--no-report", "--quiet", *arguments])


def leftovers(folder: Path) -> list[str]:
    """Temporary files of the atomic writer left behind (there must be none)."""
    return [path.name for path in folder.rglob("*") if ".tmp" in path.name]


def assert_one_line(capsys, rc: int, out_dir: Path, *words: str, early: bool = True) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("novomap initial-model: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for word in words:
        assert word in lines[0], (word, lines[0])
    if out_dir.is_dir():
        assert (out_dir / pipeline.EXIT_FAILURE).is_file()
        assert not (out_dir / pipeline.EXIT_SUCCESS).exists()
        assert lines[0] in (out_dir / "run.err").read_text()
        assert leftovers(out_dir) == []
        if early:
            assert set(os.listdir(out_dir)) <= ALLOWED_AFTER_EARLY_FAILURE, os.listdir(out_dir)
    return lines[0]


def where(star: Path, row: int | None = None, label: str | None = None) -> str:
    """The start of an InputError's message: 'FILE, row R, LABEL'."""
    return ", ".join([str(star)] + ([f"row {row}"] if row else []) + ([label] if label else []))


# ---------------------------------------------------------------------------------------------
# Bad input: each case makes its files in `folder` -> (arguments, words the line must contain)


def case_empty_star(folder):
    star = folder / "p.star"
    star.write_text("")
    return ["--i", str(star)], [where(star), "no data_ block"]


def case_no_particle_table(folder):
    star = folder / "model.star"
    star.write_text("data_model_general\n\n_rlnNrClasses 1\n\ndata_model_classes\n\nloop_\n_rlnClassDistribution\n1\n")
    return ["--i", str(star)], [where(star), "no particle table", "data_particles"]


def case_absent_star(folder):
    star = folder / "absent.star"
    return ["--i", str(star)], [where(star), "not found"]


def case_missing_particle_label(folder):
    star, _ = make_dataset(folder, N)
    columns = particle_columns(N)
    del columns["rlnDefocusU"]
    write_star(star, optics_columns(), columns)
    return ["--i", str(star)], [where(star, None, "rlnDefocusU"), "missing"]


def case_missing_optics_label(folder):
    star, _ = make_dataset(folder, N)
    optics = optics_columns()
    del optics["rlnVoltage"]
    write_star(star, optics, particle_columns(N))
    return ["--i", str(star)], [where(star, None, "rlnVoltage"), "data_optics"]


def case_not_a_number(folder):
    star, _ = make_dataset(folder, N)
    write_star(star, optics_columns(), particle_columns(N, rlnDefocusV=[9000, 9000, "nan", 9000, 9000, 9000]))
    return ["--i", str(star)], [where(star, 3, "rlnDefocusV"), "not a finite number"]


def case_truncated_star(folder):
    star, _ = make_dataset(folder, N)
    text = star.read_text().rstrip()
    star.write_text(text[: text.rfind("\t")])
    return ["--i", str(star)], [where(star, N, "data_particles"), "truncated"]


def case_bad_image_name(folder):
    names = [f"{k}@stack.mrcs" for k in range(1, N + 1)]
    names[1] = "stack.mrcs"
    star, _ = make_dataset(folder, N, rlnImageName=names)
    return ["--i", str(star)], [where(star, 2, "rlnImageName"), "N@stack.mrcs"]


def case_duplicate_rows(folder):
    names = ["1@stack.mrcs", "2@stack.mrcs", "3@stack.mrcs", "000002@stack.mrcs", "5@stack.mrcs", "6@stack.mrcs"]
    star, _ = make_dataset(folder, N, rlnImageName=names)
    return ["--i", str(star)], [where(star, 4, "rlnImageName"), "listed twice", "rows 2 and 4"]


def case_optics_group_not_in_optics_table(folder):
    star, _ = make_dataset(folder, N, rlnOpticsGroup=[1, 1, 1, 2, 1, 1])
    return ["--i", str(star)], [where(star, 4, "rlnOpticsGroup"), "optics group 2 is not defined"]


def case_negative_defocus(folder):
    star, _ = make_dataset(folder, N, rlnDefocusU=[10000, -5000, 10000, 10000, 10000, 10000])
    return ["--i", str(star)], [where(star, 2, "rlnDefocusU"), "defocus -5000 Å is implausible"]


def case_huge_defocus(folder):
    star, _ = make_dataset(folder, N, rlnDefocusV=[9000, 9000, 250000, 9000, 9000, 9000])
    return ["--i", str(star)], [where(star, 3, "rlnDefocusV"), "20 µm"]


def case_zero_pixel_size(folder):
    star, _ = make_dataset(folder, N)
    write_star(star, optics_columns(rlnImagePixelSize=[0.0]), particle_columns(N))
    return ["--i", str(star)], [where(star, 1, "rlnImagePixelSize"), "positive"]


def case_huge_pixel_size(folder):
    star, _ = make_dataset(folder, N)
    write_star(star, optics_columns(rlnImagePixelSize=[25.0]), particle_columns(N))
    return ["--i", str(star), "--particle-diameter", "150"], [where(star, 1, "rlnImagePixelSize"), "implausible", "data_optics"]


def case_missing_stack(folder):
    write_images(folder / "stack.mrcs", random_images(N))
    names = ["1@stack.mrcs", "2@stack.mrcs", "1@gone.mrcs", "2@gone.mrcs", "3@stack.mrcs", "4@stack.mrcs"]
    star = write_star(folder / "p.star", optics_columns(), particle_columns(N, rlnImageName=names))
    return ["--i", str(star)], [where(star, 3, "rlnImageName"), "gone.mrcs", "not found"]


def case_index_beyond_stack(folder):
    names = [f"{k}@stack.mrcs" for k in (1, 2, 3, 9, 4, 5)]
    star, _ = make_dataset(folder, N, rlnImageName=names)
    return ["--i", str(star)], [where(star, 4, "rlnImageName"), "image 9", f"holds {N} images"]


def case_box_not_matching_stack(folder):
    star, _ = make_dataset(folder, N)
    write_star(star, optics_columns(rlnImageSize=[2 * BOX]), particle_columns(N))
    return ["--i", str(star)], [where(star, 1, "rlnImageName"), "box size mismatch"]


def case_truncated_stack(folder):
    star, _ = make_dataset(folder, N)
    stack = folder / "stack.mrcs"
    stack.write_bytes(stack.read_bytes()[:-100])
    return ["--i", str(star)], [where(star, 1, "rlnImageName"), "cannot read image stack"]


def case_stack_of_wrong_mode(folder):
    star, _ = make_dataset(folder, N)
    with mrcfile.new(folder / "stack.mrcs", overwrite=True) as mrc:  # mode 4: complex, not images
        mrc.set_data(random_images(N).astype(np.complex64))
    return ["--i", str(star)], [where(star, 1, "rlnImageName"), "unsupported MRC mode 4"]


def case_not_an_mrc_stack(folder):
    star, _ = make_dataset(folder, N)
    (folder / "stack.mrcs").write_bytes(b"not an mrc file" * 10)
    return ["--i", str(star)], [where(star, 1, "rlnImageName"), "cannot read image stack"]


def case_non_square_images(folder):
    write_images(folder / "stack.mrcs", random_images(N)[:, :, : BOX - 2])
    star = write_star(folder / "p.star", optics_columns(), particle_columns(N))
    return ["--i", str(star)], [where(star, 1, "rlnImageName"), "not square"]


def _stack_with(folder, index, value):
    images = random_images(N)
    images[index - 1] = value
    stack = write_images(folder / "stack.mrcs", images)
    star = write_star(folder / "p.star", optics_columns(), particle_columns(N))
    return star, stack


def case_all_zero_image(folder):
    star, stack = _stack_with(folder, 3, 0.0)
    return ["--i", str(star)], [where(star, 3, "rlnImageName"), f"image 3 of {stack}", "blank", "every pixel is 0"]


def case_constant_image(folder):
    star, stack = _stack_with(folder, 5, 2.5)
    return ["--i", str(star)], [where(star, 5, "rlnImageName"), f"image 5 of {stack}", "every pixel is 2.5"]


def case_nan_pixels(folder):
    images = random_images(N)
    images[3, 2, 5] = np.nan
    stack = write_images(folder / "stack.mrcs", images)
    star = write_star(folder / "p.star", optics_columns(), particle_columns(N))
    return ["--i", str(star)], [where(star, 4, "rlnImageName"), f"image 4 of {stack}", "NaN or Inf"]


def case_inf_pixels(folder):
    images = random_images(N)
    images[1, 0, 0] = -np.inf
    stack = write_images(folder / "stack.mrcs", images)
    star = write_star(folder / "p.star", optics_columns(), particle_columns(N))
    return ["--i", str(star), "--preread"], [where(star, 2, "rlnImageName"), f"image 2 of {stack}", "NaN or Inf"]


def case_gpu_without_gpu(folder):  # the test hides any GPU (torch.cuda.is_available -> False)
    star, _ = make_dataset(folder, N)
    return ["--i", str(star), "--gpu", "0"], ["--gpu", "no CUDA GPU"]


def case_bad_option_value(folder):
    star, _ = make_dataset(folder, N)
    return ["--i", str(star), "--sampling", "10"], ["--sampling", "30, 15, 7.5 or 3.75"]


def case_mask_larger_than_box(folder):
    star, _ = make_dataset(folder, N)
    return ["--i", str(star), "--particle-diameter", "100"], ["--particle-diameter 100", "larger than the box"]


def case_continue_file_missing(folder):
    star, _ = make_dataset(folder, N)
    missing = folder / "run_it010_optimiser.star"
    return ["--i", str(star), "--continue", str(missing)], [where(missing), "--continue"]


CASES = {name[len("case_"):]: function for name, function in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile warns when writing NaN stacks
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_ends_in_one_line_naming_the_place(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine: --gpu finds none
    (tmp_path / "input").mkdir()
    arguments, words = CASES[name](tmp_path / "input")
    out_dir = tmp_path / "job"
    out_dir.mkdir()  # RELION makes the job folder before it starts the job
    capsys.readouterr()
    rc = run_job(out_dir, *arguments)
    assert_one_line(capsys, rc, out_dir, *words)


def test_at_least_twenty_kinds_of_bad_input_are_covered():
    assert len(CASES) >= 20


# ---------------------------------------------------------------------------------------------
# The output folder


def test_output_folder_that_cannot_be_made(tmp_path, capsys):
    star, _ = make_dataset(tmp_path / "input", N)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc = run_job(blocker / "job", "--i", str(star))
    assert_one_line(capsys, rc, blocker / "job", "cannot create the output folder", str(blocker / "job"), "--o")
    rc = run_job(blocker, "--i", str(star))
    assert_one_line(capsys, rc, blocker, f"--o {blocker} is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_output_folder_not_writable(tmp_path, capsys):
    star, _ = make_dataset(tmp_path / "input", N)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        rc = run_job(locked / "job", "--i", str(star))
        assert_one_line(capsys, rc, locked / "job", str(locked / "job"), "--o")
        rc = run_job(locked, "--i", str(star))
        assert_one_line(capsys, rc, locked, f"cannot write into {locked}", "--o")
    finally:
        locked.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# Faults during a run: a full disk, SIGTERM/SIGINT, --continue that does not fit


def test_disk_full_during_a_write_leaves_no_partial_file_and_a_rerun_works(tmp_path, capsys, monkeypatch):
    star, _ = make_dataset(tmp_path / "input", N)
    out_dir = tmp_path / "job"
    original, calls = Path.write_bytes, []

    def write_onto_full_disk(self, data):
        if "_state.pt" in self.name:  # the checkpoint, written behind the run (outputs.background)
            calls.append(self)
            if len(calls) == 2:  # iteration 2's checkpoint: half of it reaches the disk, then ENOSPC
                original(self, b"half a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_onto_full_disk)
    rc = run_job(out_dir, "--i", str(star))
    line = assert_one_line(capsys, rc, out_dir, "no space left on the disk", str(out_dir / "run_it002_state.pt"), "--o", early=False)
    assert ".tmp" not in line  # the file the user knows, not the temporary one
    assert not (out_dir / "run_it002_state.pt").exists() and not (out_dir / "run_it002_optimiser.star").exists()
    assert (out_dir / "run_it000_optimiser.star").is_file()  # the last complete iteration is still there

    monkeypatch.setattr(Path, "write_bytes", original)  # space freed: the same command now works
    assert run_job(out_dir, "--i", str(star)) == 0
    assert (out_dir / pipeline.EXIT_SUCCESS).is_file() and not (out_dir / pipeline.EXIT_FAILURE).exists()
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_leaves_failure_marker_and_a_checkpoint_to_continue_from(tmp_path, capsys, monkeypatch, request, signum):
    from novomap.outputs.progress import ProgressDisplay

    if signum == signal.SIGINT:
        # a shell starts background jobs (`cmd &`) with SIGINT ignored, and then Python raises no
        # KeyboardInterrupt; the test is about a job that can be interrupted, as in a terminal
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    star, _ = make_dataset(tmp_path / "input", N)
    out_dir = tmp_path / "job"
    update = ProgressDisplay.update

    def update_then_signal(self, figures):
        update(self, figures)
        if figures["iteration"] == 1:
            os.kill(os.getpid(), signum)  # a queue's time limit, `kill`, or Ctrl-C

    monkeypatch.setattr(ProgressDisplay, "update", update_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    rc = run_job(out_dir, "--i", str(star), "--iter", "3")
    err = capsys.readouterr().err
    # 128 + the signal's number, as a shell reports a process the signal ended
    expected = (143, "terminated (SIGTERM)") if signum == signal.SIGTERM else (130, "interrupted")
    assert (rc, err.strip().splitlines()) == (expected[0], [f"novomap initial-model: {expected[1]}"])
    assert signal.getsignal(signal.SIGTERM) is before
    assert (out_dir / pipeline.EXIT_FAILURE).is_file() and not (out_dir / pipeline.EXIT_SUCCESS).exists()
    checkpoint = out_dir / "run_it000_optimiser.star"
    run_err = (out_dir / "run.err").read_text()
    assert f"--continue {checkpoint}" in run_err
    if signum == signal.SIGTERM:
        assert "SIGTERM" in run_err
    assert leftovers(out_dir) == [] and not list(out_dir.glob("run_it001_*"))

    monkeypatch.setattr(ProgressDisplay, "update", update)
    assert run_job(out_dir, "--i", str(star), "--iter", "3", "--continue", str(checkpoint)) == 0
    assert (out_dir / pipeline.EXIT_SUCCESS).is_file() and not (out_dir / pipeline.EXIT_FAILURE).exists()
    assert (out_dir / "run_it003_optimiser.star").is_file()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-iteration run -> (particles STAR, job folder)."""
    root = tmp_path_factory.mktemp("finished")
    star, _ = make_dataset(root / "input", N)
    threads = torch.get_num_threads()
    try:
        assert run_job(root / "job", "--i", str(star), "--particle-diameter", "12") == 0
    finally:
        torch.set_num_threads(threads)
    return star, root / "job"


@pytest.mark.parametrize(
    "change, words",
    [
        (["--K", "2"], ["--K 1, not --K 2"]),
        (["--tau2-fudge", "2"], ["--tau2-fudge 4, not --tau2-fudge 2"]),
        (["--sampling", "7.5"], ["--sampling 15, not --sampling 7.5"]),
        (["--no-flatten-solvent"], ["--flatten-solvent, not --no-flatten-solvent"]),
        (["--particle-diameter", "14"], ["--particle-diameter 12, not --particle-diameter 14"]),
    ],
    ids=["K", "T", "sampling", "flatten", "diameter"],
)
def test_continue_with_other_options_is_refused(finished_run, tmp_path, capsys, change, words):
    star, job = finished_run
    checkpoint = job / "run_it000_optimiser.star"
    arguments = ["--i", str(star), "--particle-diameter", "12", "--continue", str(checkpoint), "--iter", "3", *change]
    out_dir = tmp_path / "again"
    rc = run_job(out_dir, *arguments)
    assert_one_line(capsys, rc, out_dir, where(checkpoint), "--continue: the run was started with", *words)


def test_continue_with_other_particles_is_refused(finished_run, tmp_path, capsys):
    star, job = finished_run
    other = tmp_path / "other"
    shutil.copytree(star.parent, other)
    changed = other / star.name
    changed.write_text(changed.read_text().replace("10000.0", "10001.0", 1))  # one defocus differs
    checkpoint = job / "run_it002_optimiser.star"
    out_dir = tmp_path / "again"
    rc = run_job(out_dir, "--i", str(changed), "--particle-diameter", "12", "--continue", str(checkpoint), "--iter", "3")
    assert_one_line(capsys, rc, out_dir, where(checkpoint), "other particles", str(star), str(changed))
    # the identical file elsewhere is the same particles: accepted (stacks are found beside it)
    (other / star.name).write_text(star.read_text())
    assert run_job(out_dir, "--i", str(other / star.name), "--particle-diameter", "12", "--continue", str(checkpoint), "--iter", "3") == 0


def test_continue_from_a_damaged_checkpoint_is_refused(finished_run, tmp_path, capsys):
    star, job = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(job, copy)
    (copy / "run_it002_state.pt").write_bytes(b"not a checkpoint")
    checkpoint = copy / "run_it002_optimiser.star"
    rc = run_job(tmp_path / "again", "--i", str(star), "--particle-diameter", "12", "--continue", str(checkpoint), "--iter", "3")
    assert_one_line(capsys, rc, tmp_path / "again", where(checkpoint), "cannot read the checkpoint run_it002_state.pt")


def test_refused_run_keeps_a_finished_runs_markers(finished_run, tmp_path, capsys):
    """A --continue refused in the folder of a finished run (or any run refused before it starts there)
    leaves that run as RELION's pipeliner knows it: its SUCCESS marker and its output nodes stay."""
    star, job = finished_run
    copy = tmp_path / "job"
    shutil.copytree(job, copy)
    nodes = (copy / pipeline.OUTPUT_NODES).read_text()
    checkpoint = copy / "run_it002_optimiser.star"
    rc = run_job(copy, "--i", str(star), "--particle-diameter", "14", "--continue", str(checkpoint), "--iter", "3")
    assert rc == 2 and "--particle-diameter 12, not --particle-diameter 14" in capsys.readouterr().err
    assert rc == run_job(copy, "--i", str(tmp_path / "missing.star"))
    assert (copy / pipeline.EXIT_SUCCESS).is_file() and not (copy / pipeline.EXIT_FAILURE).exists()
    assert (copy / pipeline.OUTPUT_NODES).read_text() == nodes
    assert "not --particle-diameter 14" in (copy / "run.err").read_text()  # the refusal is on record


def test_continue_takes_left_out_options_from_the_checkpoint(finished_run, tmp_path, capsys):
    """As RELION's --continue: options left off the command line are the run's own (its particles file,
    --particle-diameter 12 here, its iterations), so `--continue CKPT --o DIR` alone resumes it; an
    option given explicitly must still match (test_continue_with_other_options_is_refused)."""
    star, job = finished_run
    copy = tmp_path / "job"
    shutil.copytree(job, copy)
    for path in copy.glob("run_it002_*"):
        path.unlink()
    rc = main(["initial-model", "--o", str(copy), "--continue", str(copy / "run_it000_optimiser.star"), "--j", "1", "--no-report", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (copy / "run_it002_optimiser.star").is_file() and not (copy / "run_it003_optimiser.star").exists()
    line = next(line for line in (copy / "run.out").read_text().splitlines() if "taken from the run's checkpoint" in line)
    assert "--particle-diameter 12" in line and "--iter 2" in line and "--seed" not in line  # the seed was the default


def test_continue_from_another_folder_finds_the_particles(tmp_path, capsys, monkeypatch):
    """A run started with a relative --i (from its project folder) is continued from elsewhere with
    `--continue CKPT --o DIR` alone: the checkpoint records the particles file's absolute path."""
    star, _ = make_dataset(tmp_path / "project", N)
    monkeypatch.chdir(star.parent)
    assert run_job(tmp_path / "job", "--i", star.name, "--particle-diameter", "12") == 0
    for path in (tmp_path / "job").glob("run_it002_*"):
        path.unlink()
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "job" / "run_it000_optimiser.star"
    rc = main(["initial-model", "--o", str(tmp_path / "job"), "--continue", str(checkpoint), "--j", "1", "--no-report", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "job" / "run_it002_optimiser.star").is_file()
