"""`novomap initial-model` end to end on a small simulated data set (vdam-spec 4.7, 4.8, 6).

One short run (150 particles, 64 px, 3 mini-batches) is shared by the default-tier tests: its files,
its reproducibility from the seed, and --continue from its checkpoints giving the same maps bit for bit.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from novomap.commands.align_symmetry import largest_class_map
from novomap.commands.main import main
from novomap.demo_data import load_demo_map
from novomap.io.particles import ParticleSet
from novomap.io.star import read_particle_star
from novomap.simulate import SimulationOptions, simulate
from novomap.vdam.config import VdamConfig
from novomap.vdam.start import initial_state
from novomap.vdam.state import RunState

N_PARTICLES = 150
BOX, PIXEL = 64, 3.54


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: element-wise code is 60x slower with busy threads


def _job_args(star: Path, out: Path, *extra: str, iters: int = 3, seed: int = 1) -> list[str]:
    return [
        "initial-model", "--i", str(star), "--o", str(out), "--iter", str(iters), "--particle-diameter", "200",
        "--j", "1", "--seed", str(seed), "--sym", "D2", "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    volume, pixel = load_demo_map()
    out = tmp_path_factory.mktemp("job_sim")
    result = simulate(volume, out, SimulationOptions(n=N_PARTICLES, snr=1.0, seed=7, box=BOX, pixel_size_a=pixel))
    return result.star_path


@pytest.fixture(scope="module")
def run_a(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("job") / "InitialModel"
    assert main(_job_args(dataset, out)) == 0
    return out


def _map(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        return np.array(mrc.data, copy=True)


# ---------------------------------------------------------------------------------------------
# (a) the files of a run


def test_output_files(run_a):
    for name in (
        "run_it000_class001.mrc",
        "run_it000_optimiser.star",
        "run_it003_model.star",
        "run_it003_data.star",
        "run_it003_optimiser.star",
        "run_it003_sampling.star",
        "run_it003_class001.mrc",
        "initial_model.mrc",
    ):
        assert (run_a / name).is_file(), name
    # written at 0, every 10th and the last iteration only (spec 4.8)
    assert not (run_a / "run_it001_class001.mrc").exists()
    assert not (run_a / "run_it002_model.star").exists()


def test_maps_have_the_particles_box_and_pixel_size(run_a):
    for name in ("initial_model.mrc", "run_it003_class001.mrc", "run_it000_class001.mrc"):
        with mrcfile.open(run_a / name, permissive=True) as mrc:
            assert mrc.data.shape == (BOX, BOX, BOX), name
            assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (BOX, BOX, BOX)
            assert float(mrc.voxel_size.x) == pytest.approx(PIXEL, abs=1e-4)
            assert float(mrc.voxel_size.z) == pytest.approx(PIXEL, abs=1e-4)
            assert mrc.data.dtype == np.float32
            assert np.all(np.isfinite(mrc.data)) and float(np.abs(mrc.data).max()) > 0


def test_data_star_has_one_finite_row_per_particle(run_a, dataset):
    path = run_a / "run_it003_data.star"
    blocks = starfile.read(path, always_dict=True)
    assert set(blocks) >= {"optics", "particles"}
    table = blocks["particles"]
    assert len(table) == N_PARTICLES
    labels = (
        "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
        "rlnClassNumber", "rlnMaxValueProbDistribution", "rlnLogLikeliContribution", "rlnNrOfSignificantSamples",
    )  # fmt: skip
    for label in labels:
        assert label in table.columns, label
        assert np.all(np.isfinite(table[label].to_numpy(dtype=np.float64))), label
    assert set(table["rlnClassNumber"]) == {1}
    pmax = table["rlnMaxValueProbDistribution"].to_numpy()
    assert np.all((pmax > 0) & (pmax <= 1 + 1e-9))
    assert np.all(table["rlnNrOfSignificantSamples"].to_numpy() >= 1)
    assert np.all((table["rlnAngleTilt"] >= 0) & (table["rlnAngleTilt"] <= 180))
    # within the translational search: |new origin| <= old (rounded) origin + range + fine offsets
    shift_px = np.hypot(table["rlnOriginXAngst"], table["rlnOriginYAngst"]) / PIXEL
    assert float(shift_px.max()) < 4 * (6 + 2)
    # same particles, same order as the input; the names lead from the folder the job ran in (RELION's
    # project folder) to the same images: these stacks lie beside the input STAR file, outside it, so
    # they are named by absolute paths
    original = read_particle_star(dataset).particles
    for written, given in zip(table["rlnImageName"], original["rlnImageName"]):
        (number, stack), (given_number, given_stack) = written.split("@", 1), given.split("@", 1)
        assert number == given_number and Path(stack).is_absolute()
        assert Path(stack).samefile(dataset.parent / given_stack)
    # novomap's own reader accepts it
    again = read_particle_star(path)
    assert len(again.particles) == N_PARTICLES
    assert np.allclose(again.particles["rlnAngleRot"].to_numpy(dtype=float), table["rlnAngleRot"].to_numpy(dtype=float))
    # from the folder the job ran in, the particles with their new poses load as a ParticleSet
    particles = ParticleSet.from_star(path)
    assert particles.n == N_PARTICLES
    assert np.allclose(particles.rot_deg.numpy(), table["rlnAngleRot"].to_numpy(dtype=float))


def test_model_star_blocks_and_reference_image(run_a):
    path = run_a / "run_it003_model.star"
    blocks = starfile.read(path, always_dict=True)
    for block in ("model_general", "model_classes", "model_class_1", "model_groups", "model_optics_group_1", "model_pdf_orient_class_1"):
        assert block in blocks, block
    general = blocks["model_general"]
    assert int(general["rlnOriginalImageSize"]) == BOX
    assert float(general["rlnPixelSize"]) == pytest.approx(PIXEL)
    assert int(general["rlnNrClasses"]) == 1
    assert 2 * 5 <= int(general["rlnCurrentImageSize"]) <= BOX
    classes = blocks["model_classes"]
    assert len(classes) == 1
    assert float(classes["rlnClassDistribution"].iloc[0]) == pytest.approx(1.0)
    # the reference image names this iteration's class map; novomap align-symmetry finds it
    reference = str(classes["rlnReferenceImage"].iloc[0])
    assert Path(reference).name == "run_it003_class001.mrc"
    found = largest_class_map(path)
    assert found.is_file() and found.samefile(run_a / "run_it003_class001.mrc")
    assert len(blocks["model_class_1"]) == BOX // 2 + 1
    assert len(blocks["model_pdf_orient_class_1"]) == 48  # HEALPix order 1 directions
    # the accuracy estimated in the last iteration (spec 3.7) is reported, not a placeholder
    saved = RunState.load(run_a / "run_it003_state.pt")
    assert 0 < saved.acc_rot_deg <= 30.0
    assert float(classes["rlnAccuracyRotations"].iloc[0]) == pytest.approx(saved.acc_rot_deg, rel=1e-5)
    assert float(classes["rlnAccuracyTranslationsAngst"].iloc[0]) == pytest.approx(saved.acc_trans_px * PIXEL, rel=1e-5)
    start = starfile.read(run_a / "run_it000_model.star", always_dict=True)["model_classes"]
    assert float(start["rlnAccuracyRotations"].iloc[0]) == 999.0  # nothing estimated yet at iteration 0


def test_optimiser_and_sampling_star(run_a):
    optimiser = starfile.read(run_a / "run_it003_optimiser.star", always_dict=True)["optimiser_general"]
    assert int(optimiser["rlnCurrentIteration"]) == 3
    assert int(optimiser["rlnNumberOfIterations"]) == 3
    assert int(optimiser["rlnRandomSeed"]) == 1
    assert float(optimiser["rlnParticleDiameter"]) == pytest.approx(200.0)
    sampling = starfile.read(run_a / "run_it003_sampling.star", always_dict=True)["sampling_general"]
    assert int(sampling["rlnHealpixOrder"]) == 1
    assert float(sampling["rlnOffsetRange"]) == pytest.approx(6 * PIXEL)
    assert float(sampling["rlnOffsetStep"]) == pytest.approx(2 * PIXEL)


# ---------------------------------------------------------------------------------------------
# (b) reproducibility from the seed (the full same-seed / other-seed reruns are in the slow tier)


def test_the_seed_fixes_the_start(run_a, dataset):
    particles = ParticleSet.from_star(dataset)
    config = VdamConfig(n_iter=3, particle_diameter_a=200.0, seed=1)
    start = initial_state(particles, config)
    saved = RunState.load(run_a / "run_it000_state.pt")
    assert torch.equal(start.maps, saved.maps)
    assert np.array_equal(start.maps[0].float().numpy(), _map(run_a / "run_it000_class001.mrc"))
    other = initial_state(particles, VdamConfig(n_iter=3, particle_diameter_a=200.0, seed=2))
    assert not torch.allclose(other.maps, start.maps)


# ---------------------------------------------------------------------------------------------
# (c) --continue gives the same maps as the uninterrupted run


def test_continue_reproduces_the_uninterrupted_run(run_a, dataset, tmp_path):
    """B continues A from iteration 0 (library, writing every iteration); C continues B from iteration 2 (CLI).
    Both must end with A's maps and poses, bit for bit: maps, moments, noise, priors, perturbation and
    the RNG all come back from the checkpoint, and the batches are drawn from seed + iteration."""
    from novomap.device import select_device
    from novomap.initial_model import run_initial_model

    select_device(None, 1)  # as --j 1
    out_b = tmp_path / "B"
    config = VdamConfig(n_iter=3, particle_diameter_a=200.0, seed=1, write_every=1)
    run_initial_model(dataset, out_b, config, symmetry="D2", continue_from=run_a / "run_it000_optimiser.star")
    assert (out_b / "run_it001_class001.mrc").is_file() and (out_b / "run_it002_optimiser.star").is_file()
    for name in ("run_it003_class001.mrc", "initial_model.mrc"):
        assert np.array_equal(_map(out_b / name), _map(run_a / name)), name

    out_c = tmp_path / "C"
    assert main(_job_args(dataset, out_c, "--continue", str(out_b / "run_it002_optimiser.star"))) == 0
    assert not (out_c / "run_it000_class001.mrc").exists()  # a continued run does not start again
    for name in ("run_it003_class001.mrc", "initial_model.mrc"):
        assert np.array_equal(_map(out_c / name), _map(run_a / name)), name
    a = starfile.read(run_a / "run_it003_data.star", always_dict=True)["particles"]
    c = starfile.read(out_c / "run_it003_data.star", always_dict=True)["particles"]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        assert np.array_equal(a[label].to_numpy(), c[label].to_numpy()), label


def test_sym_auto_and_how_sure_the_run_is(run_a, dataset, tmp_path):
    """A's explicit D2 run records its evidence and decision; --sym auto continued from A's last iteration
    (only the final pass and the last step run) detects a group, says why, and gives that group's map."""
    import json

    evidence = json.loads((run_a / "evidence.json").read_text())
    assert evidence["symmetry"]["applied"] == "D2" and "table" not in evidence["symmetry"]
    assert len(evidence["half_fsc"]) == BOX // 2 + 1 and sum(evidence["n_half"]) == N_PARTICLES
    assert (run_a / "symmetry.txt").read_text().startswith("point group: D2")
    run_out = (run_a / "run.out").read_text()
    assert "evidence: half-set FSC" in run_out and "symmetry: D2 as given" in run_out
    assert "How sure is the run" in (run_a / "report.html").read_text(encoding="utf-8")

    out = tmp_path / "auto"
    argv = _job_args(dataset, out, "--continue", str(run_a / "run_it003_optimiser.star"), "--no-report")
    argv[argv.index("--sym") + 1] = "auto"
    assert main(argv) == 0
    record = json.loads((out / "evidence.json").read_text())["symmetry"]
    detected = record["applied"]
    # the groups the map makes plausible went to the particles, and the best-scoring one was applied
    assert record["requested"] == "auto" and record["particle_scores"][0]["group"] == detected
    assert any(row["group"] == record["map_only_group"] for row in record["table"])
    text = (out / "symmetry.txt").read_text()
    assert text.startswith(f"point group: {detected}") and "threshold" in text and "judged by the particles" in text
    assert f"symmetry: {detected} detected (--sym auto): chosen by the particles" in (out / "run.out").read_text()
    if detected == "D2":  # the same map as the explicit group
        assert np.array_equal(_map(out / "initial_model.mrc"), _map(run_a / "initial_model.mrc"))


# ---------------------------------------------------------------------------------------------
# (d) bad input: one line on stderr, exit code 2, no traceback


def _expect_usage_error(capsys, argv: list[str], *words: str) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    err = captured.err.strip()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert len(err.splitlines()) == 1, err
    assert err.startswith("novomap initial-model: error:"), err
    for word in words:
        assert word in err, err
    return err


def test_missing_label(dataset, tmp_path, capsys):
    blocks = starfile.read(dataset, always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns=["rlnDefocusU"])
    broken = dataset.parent / "no_defocus.star"
    starfile.write(blocks, broken)
    _expect_usage_error(capsys, _job_args(broken, tmp_path / "out"), "rlnDefocusU", str(broken))
    assert not (tmp_path / "out" / "run_it000_class001.mrc").exists()


def test_particle_diameter_larger_than_the_box(dataset, tmp_path, capsys):
    argv = _job_args(dataset, tmp_path / "out")
    argv[argv.index("--particle-diameter") + 1] = "300"
    _expect_usage_error(capsys, argv, "--particle-diameter", "226.56")
    assert not (tmp_path / "out" / "run_it000_class001.mrc").exists()


def test_unsupported_angular_sampling(dataset, tmp_path, capsys):
    _expect_usage_error(capsys, _job_args(dataset, tmp_path / "out", "--sampling", "10"), "--sampling", "10")


def test_no_random_start_is_a_usage_error(dataset, tmp_path, capsys):
    _expect_usage_error(capsys, _job_args(dataset, tmp_path / "out", "--starts", "0"), "--starts", "0")


def test_maxsig_of_zero_is_a_usage_error(dataset, tmp_path, capsys):
    _expect_usage_error(capsys, _job_args(dataset, tmp_path / "out", "--maxsig", "0"), "--maxsig", "0")


def test_maxsig_reaches_the_search_and_the_optimiser_star(dataset, tmp_path, monkeypatch):
    """--maxsig N caps the significant coarse hypotheses the E-step takes on (and is written as RELION's
    rlnMaximumSignificantPoses); -1 is 100 whatever K."""
    import novomap.vdam.iterate as iterate

    caps = []
    original = iterate.SearchSettings

    def recording(*args, **kwargs):
        caps.append(kwargs["max_significant"])
        return original(*args, **kwargs)

    monkeypatch.setattr(iterate, "SearchSettings", recording)
    out = tmp_path / "capped"
    assert main(_job_args(dataset, out, "--maxsig", "7", "--iter", "1", "--starts", "1", "--no-report")) == 0
    assert caps and set(caps) == {7}
    general = starfile.read(out / "run_it001_optimiser.star", always_dict=True)["optimiser_general"]
    assert int(general["rlnMaximumSignificantPoses"]) == 7


def test_the_default_significance_cap_does_not_grow_with_the_classes():
    """--maxsig -1 is 100 hypotheses per particle for any K (RELION's 100 x K let a K=3 job's junk
    particles carry 300 each through the fine pass); a number given stays."""
    assert VdamConfig(n_classes=1).significant_cap() == VdamConfig(n_classes=3).significant_cap() == 100
    assert VdamConfig(n_classes=3, max_significant=250).significant_cap() == 250


def test_subset_size_below_one_is_a_usage_error(dataset, tmp_path, capsys):
    _expect_usage_error(capsys, _job_args(dataset, tmp_path / "out", "--grad-fin-subset", "0"), "--grad-fin-subset", "0")


def test_retry_classes_below_one_is_a_usage_error(dataset, tmp_path, capsys):
    _expect_usage_error(capsys, _job_args(dataset, tmp_path / "out", "--retry-classes", "0"), "--retry-classes", "0")


def test_retry_classes_one_retries_with_one_class(dataset, tmp_path, monkeypatch):
    """--retry-classes 1: a flagged --K 1 run's retry has one class again (its files: class001 only)."""
    import novomap.analysis.ring_spectra as rings
    import novomap.initial_model as job

    monkeypatch.setattr(rings, "MISFIT_FLAG", -1.0)
    monkeypatch.setattr(rings, "FLOOR_FACTOR", -1.0)
    monkeypatch.setattr(job, "retry_due", lambda result, config: result.evidence.ring["flagged"])
    out = tmp_path / "one"
    assert main(_job_args(dataset, out, "--retries", "1", "--retry-classes", "1", "--no-report")) == 0
    records = json.loads((out / "evidence.json").read_text())["attempts"]
    assert [r["classes"] for r in records] == [1, 1]
    assert not list(out.rglob("run_it003_class002.mrc"))


def test_grad_subsets_set_the_mini_batch_sizes(dataset, tmp_path):
    """RELION's --grad_ini_subset / --grad_fin_subset (either spelling) set the first and last mini-batch
    sizes, which history.json records per iteration."""
    out = tmp_path / "subsets"
    args = _job_args(dataset, out, "--grad_ini_subset", "30", "--grad-fin-subset", "70", "--iter", "10", "--starts", "1", "--no-report")
    assert main(args) == 0
    sizes = [figures["batch_size"] for figures in json.loads((out / "history.json").read_text())]
    assert sizes[0] == 30 and sizes[-1] == 70 and sizes == sorted(sizes)


# ---------------------------------------------------------------------------------------------
# slow: full reruns


@pytest.mark.slow
def test_same_seed_same_maps_other_seed_other_maps(run_a, dataset, tmp_path):
    assert main(_job_args(dataset, tmp_path / "same")) == 0
    for name in ("run_it000_class001.mrc", "run_it003_class001.mrc", "initial_model.mrc"):
        assert np.array_equal(_map(tmp_path / "same" / name), _map(run_a / name)), name
    assert main(_job_args(dataset, tmp_path / "other", seed=2)) == 0
    a, b = _map(run_a / "run_it003_class001.mrc"), _map(tmp_path / "other" / "run_it003_class001.mrc")
    assert not np.allclose(a, b)
    # a different start, not just different noise: the maps differ at a sizeable fraction of their range
    assert float(np.abs(a - b).max()) > 0.05 * float(np.abs(a).max())


def _lowpass(volume: np.ndarray, resolution_a: float) -> np.ndarray:
    n = volume.shape[0]
    k = np.arange(n) - n // 2
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    spectrum = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(volume))) * (radius < n * PIXEL / resolution_a)
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(spectrum))).real


def _best_correlation_with_truth(volume: np.ndarray, truth: np.ndarray, resolution_a: float = 15.0) -> float:
    """Correlation at resolution_a, maximised over the 48 signed axis permutations about the centre voxel:
    a map in RELION's standard D2 frame is defined up to which 2-fold is x, y or z, and up to its hand."""
    t = _lowpass(truth, resolution_a)
    t = (t - t.mean()) / t.std()
    m = _lowpass(volume, resolution_a)
    best = -1.0
    for perm in itertools.permutations(range(3)):
        p = np.transpose(m, perm)
        for flips in itertools.product((False, True), repeat=3):
            c = p
            for axis, flip in enumerate(flips):
                if flip:  # x -> -x about voxel N//2
                    c = np.roll(np.flip(c, axis), 1, axis)
            best = max(best, float(((c - c.mean()) / c.std() * t).mean()))
    return best


@pytest.mark.slow
def test_a_longer_run_recovers_the_structure_or_says_it_did_not(dataset, tmp_path):
    """12 mini-batches of 150 high-SNR particles, two seeds. Each run's D2-aligned initial model either
    resembles the truth (the demo map, in the standard D2 frame) at 15 Å much better than the blob
    start does, or the run's own evidence calls its map weak; and at least one seed recovers it.

    So short a run from random blobs is not always right: seed 1 ends at cc 0.64 and flags its map
    (ring misfit 28x its noise floor), seed 2 reaches 0.83 (session 26). Before the final map combined
    the final reconstruction with the VDAM map (fcfef4e) seed 1 passed 0.7 here."""
    import json

    truth = _map(dataset.parent / "truth.mrc").astype(np.float64)
    recovered = []
    for seed in (1, 2):
        out = tmp_path / f"long{seed}"
        assert main(_job_args(dataset, out, "--no-report", iters=12, seed=seed)) == 0
        assert (out / "run_it010_optimiser.star").is_file() and (out / "run_it012_class001.mrc").is_file()
        model = starfile.read(out / "run_it012_model.star", always_dict=True)["model_general"]
        assert float(model["rlnCurrentResolution"]) < 30.0
        assert math.isfinite(float(model["rlnLogLikelihood"]))
        final = _best_correlation_with_truth(_map(out / "initial_model.mrc").astype(np.float64), truth)
        start = _best_correlation_with_truth(_map(out / "run_it000_class001.mrc").astype(np.float64), truth)
        weak = json.loads((out / "evidence.json").read_text())["weak"]
        good = final > 0.7 and final > start + 0.15
        assert good or weak, (seed, final, start)
        recovered.append(good)
    assert any(recovered)


@pytest.mark.parametrize("classes", [1, 2])
def test_a_flagged_run_runs_again_and_keeps_the_better_attempt(dataset, tmp_path, monkeypatch, classes):
    """With every map flagged (the ring thresholds at -1, the settled-map condition off) the job runs a second attempt from new random
    starts and keeps the one whose map fits the particles' ring spectra better: its files are DIR's, the
    other attempt's are in DIR/attemptN, and run.out, evidence.json and RELION's node file describe the kept one."""
    import json

    import novomap.analysis.ring_spectra as rings

    import novomap.initial_model as job

    monkeypatch.setattr(rings, "MISFIT_FLAG", -1.0)
    monkeypatch.setattr(rings, "FLOOR_FACTOR", -1.0)
    # a 3-iteration run is too short for the convergence check, which a retry also needs (tests/test_attempts.py)
    monkeypatch.setattr(job, "retry_due", lambda result, config: result.evidence.ring["flagged"])
    out = tmp_path / "retry"
    assert main(_job_args(dataset, out, "--retries", "1", "--K", str(classes), "--no-report")) == 0
    evidence = json.loads((out / "evidence.json").read_text())
    records, kept = evidence["attempts"], evidence["kept_attempt"]
    assert [r["seed"] for r in records] == [1, 1 + 1_000_003]
    assert [r["classes"] for r in records] == [classes, max(classes, 2)]  # a --K 1 job retries with a class for junk
    assert records[kept - 1]["ring_misfit"] == min(r["ring_misfit"] for r in records) == evidence["ring"]["misfit"]
    assert records[kept - 1]["folder"] == "."
    other = out / records[2 - kept]["folder"]
    assert (other / "initial_model.mrc").is_file() and (other / "evidence.json").is_file() and list(other.glob("run_it003_*"))
    for k in range(1, classes + 1):  # every class's maps moved with their attempt, and the kept ones in DIR
        assert (other / f"run_it003_class{k:03d}.mrc").is_file() and (out / f"run_it003_class{k:03d}.mrc").is_file()
    assert json.loads((other / "evidence.json").read_text())["ring"]["misfit"] == records[2 - kept]["ring_misfit"]
    assert (out / "initial_model.mrc").is_file() and "initial_model.mrc" in (out / "RELION_OUTPUT_NODES.star").read_text()
    run_out = (out / "run.out").read_text()
    assert "running again from new random starts" in run_out and f"attempt {kept} of 2 kept" in run_out


def test_a_one_class_job_killed_in_its_two_class_retry_continues_with_two_classes(dataset, tmp_path):
    """A --K 1 job's retries run with a class for junk (initial_model.retry_classes): continuing such an
    attempt's checkpoint with the job's one-class settings goes on with the checkpoint's two classes."""
    from novomap.device import select_device
    from novomap.initial_model import run_initial_model

    select_device(None, 1)
    two = tmp_path / "two"
    run_initial_model(dataset, two, VdamConfig(n_iter=2, n_classes=2, particle_diameter_a=200.0, seed=5, write_every=1, retries=0), symmetry="D2")
    out = tmp_path / "continued"
    one = VdamConfig(n_iter=3, n_classes=1, particle_diameter_a=200.0, seed=5, write_every=1, retries=0)
    run_initial_model(dataset, out, one, symmetry="D2", continue_from=two / "run_it001_optimiser.star")
    assert (out / "run_it003_class002.mrc").is_file() and (out / "initial_model.mrc").is_file()
    assert set(starfile.read(out / "run_it003_data.star", always_dict=True)["particles"]["rlnClassNumber"]) <= {1, 2}
    model = starfile.read(out / "run_it003_model.star", always_dict=True)
    assert int(model["model_general"]["rlnNrClasses"]) == 2


def test_ctf_premultiplied_particles_are_refused(dataset, tmp_path, capsys):
    blocks = starfile.read(dataset, always_dict=True)
    blocks["optics"]["rlnCtfDataAreCtfPremultiplied"] = 1
    flagged = dataset.parent / "premultiplied.star"
    starfile.write(blocks, flagged)
    _expect_usage_error(capsys, _job_args(flagged, tmp_path / "out"), "rlnCtfDataAreCtfPremultiplied", "premultipl")
    assert not (tmp_path / "out" / "run_it000_class001.mrc").exists()


def test_particles_scaled_by_1000_give_the_same_map_scaled_and_a_warning(dataset, run_a, tmp_path, capsys):
    """Un-normalised particles (x1000, as an int16 stack or a float one without RELION's normalisation)
    run as the normalised ones do (vdam.update.fisher_weight_floor): the same map, 1000 times brighter."""
    blocks = starfile.read(dataset, always_dict=True)
    stack = dataset.parent / blocks["particles"]["rlnImageName"].iloc[0].split("@")[1]
    with mrcfile.open(stack, permissive=True) as mrc:
        images, voxel = np.array(mrc.data, dtype=np.float32), mrc.voxel_size.x
    scaled_stack = tmp_path / "scaled.mrcs"
    with mrcfile.new(scaled_stack) as mrc:
        mrc.set_data(images * 1000.0)
        mrc.voxel_size = voxel
    blocks["particles"]["rlnImageName"] = [f"{name.split('@')[0]}@{scaled_stack}" for name in blocks["particles"]["rlnImageName"]]
    scaled_star = tmp_path / "scaled.star"
    starfile.write(blocks, scaled_star)
    out = tmp_path / "job"
    assert main(_job_args(scaled_star, out)) == 0
    assert "not normalised (background std 99" in capsys.readouterr().err  # ~998: the corners of normalised images are ~1
    scaled, reference = _map(out / "initial_model.mrc"), _map(run_a / "initial_model.mrc")
    assert np.corrcoef(scaled.ravel(), reference.ravel())[0, 1] > 0.99
    assert np.std(scaled) / np.std(reference) == pytest.approx(1000.0, rel=0.05)


def test_a_new_run_in_an_earlier_runs_folder_sets_its_files_aside(run_a, dataset, tmp_path):
    """A shorter run into a folder holding a longer one: afterwards the folder holds the new run's
    files alone (the report and --continue read them), the earlier ones are in previous1/."""
    import shutil

    out = tmp_path / "job"
    shutil.copytree(run_a, out)
    assert main(_job_args(dataset, out, "--no-report", iters=2)) == 0
    assert not list(out.glob("run_it003_*")) and (out / "run_it002_optimiser.star").is_file()
    assert (out / "previous1" / "run_it003_optimiser.star").is_file()
    assert "moved to" in (out / "run.out").read_text()


def test_run_out_names_the_resolution_limit_that_binds(run_a):
    """64 px at 3.54 Å/px stop at their Nyquist, 7.08 Å, before the default --max-resolution of 7 Å."""
    assert "resolution limit 7.08 Å (the particles' Nyquist; --max-resolution 7 Å)" in (run_a / "run.out").read_text()


def test_a_seed_too_large_for_the_generators_is_a_usage_error(dataset, tmp_path, capsys):
    _expect_usage_error(capsys, _job_args(dataset, tmp_path / "out", seed=2**64), "--seed")


def test_a_negative_pool_is_a_usage_error(dataset, tmp_path, capsys):
    _expect_usage_error(capsys, [*_job_args(dataset, tmp_path / "out"), "--pool", "-5"], "--pool must be >= 1 (or 0")


def test_more_threads_than_cores_is_warned_about(dataset, tmp_path, capsys, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    argv = _job_args(dataset, tmp_path / "out", "--no-report", iters=1)
    argv[argv.index("--j") + 1] = "3"
    before = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(before)  # the job set 3 for this process
    assert "--j 3 asks for more threads than the 2 core(s)" in capsys.readouterr().err


def test_continue_without_i_reads_the_particles_from_the_checkpoint(run_a, dataset, tmp_path):
    """As RELION's --continue: the particles file comes from the checkpoint when --i is not given."""
    out = tmp_path / "D"
    argv = _job_args(dataset, out, "--continue", str(run_a / "run_it000_optimiser.star"), "--no-report")
    del argv[argv.index("--i") : argv.index("--i") + 2]
    assert main(argv) == 0
    assert np.array_equal(_map(out / "initial_model.mrc"), _map(run_a / "initial_model.mrc"))


def test_run_out_says_when_the_group_acts():
    """The job's first line: an explicit group is imposed after the initial phase (not only at the end), auto
    chooses at 70 % of the run, C1 is C1."""
    from novomap.commands.initial_model import _symmetry_phrase

    config = VdamConfig(n_iter=100)
    assert _symmetry_phrase("D2", config) == "symmetry D2 (imposed on the class maps after iteration 30 and applied to the final map)"
    assert _symmetry_phrase("D2", dataclasses.replace(config, impose_symmetry_every=0)) == "symmetry D2 (applied to the final map)"
    assert "at 70 % of the run" in _symmetry_phrase("auto", config) and _symmetry_phrase("C1", config) == "symmetry C1"


def test_run_out_says_what_sym_auto_chose_during_the_run():
    """run.out's line for each mid-run decision of --sym auto (auto_symmetry.group_mid_run's figures): C1 kept,
    a group chosen (with the race's runners-up stopped), and at a check past --iter a group kept or enlarged."""
    from novomap.commands.initial_model import _auto_symmetry_line

    assert _auto_symmetry_line({"iteration": 70, "auto_symmetry": "C1"}).endswith("the particles keep C1; the group is chosen again later")
    chosen = _auto_symmetry_line({"iteration": 70, "auto_symmetry": "D4", "finalists_dropped": [2, 4]})
    assert "the particles chose D4" in chosen and "only a larger group containing D4 can replace it" in chosen and "(start 2, 4) stop" in chosen
    kept = _auto_symmetry_line({"iteration": 100, "auto_symmetry": "D4", "auto_symmetry_from": "D4"})
    assert "still moves in D4" in kept and kept.endswith("D4 stays")
    enlarged = _auto_symmetry_line({"iteration": 100, "auto_symmetry": "O", "auto_symmetry_from": "D4"})
    assert "still moved in D4, and the particles chose O, which contains it" in enlarged and "O is imposed from here" in enlarged
