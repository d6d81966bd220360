"""The picture report: DIR/report.html with embedded PNGs, DIR/report/*.png, `novomap report DIR`."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pipeline import N_ITER, small_job

from novomap.commands.main import build_parser, main
from novomap.errors import NovomapError
from novomap.outputs.report import build_report, convergence_figure, orientation_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PICTURES = ["map_initial_model.png", "map_class001.png", "convergence.png", "orientations.png", "evidence.png"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return small_job(tmp_path_factory)


@pytest.fixture
def job_copy(job, tmp_path):
    """A copy of the finished job folder that a test may change."""
    copy = tmp_path / "job"
    shutil.copytree(job["dir"], copy)
    return copy


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def image_sources(page: Path) -> list[str]:
    parser = _Images()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.sources


def decode_png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(BytesIO(data))
    assert image.format == "PNG"
    image.load()  # decodes every pixel
    assert image.width > 100 and image.height > 100
    return image


def decode_sources(page: Path) -> list[Image.Image]:
    images = []
    for source in image_sources(page):
        if source.startswith("data:image/png;base64,"):
            images.append(decode_png(base64.b64decode(source.split(",", 1)[1], validate=True)))
        else:
            images.append(decode_png((page.parent / source).read_bytes()))
    return images


def test_every_image_in_the_report_decodes_as_png(job):
    page = job["dir"] / "report.html"
    images = decode_sources(page)
    assert len(images) == len(PICTURES)
    for image in images:  # a picture, not a blank page
        assert np.asarray(image.convert("L")).std() > 5


def test_report_pictures_are_written_beside_the_page(job):
    folder = job["dir"] / "report"
    for name in PICTURES:
        decode_png((folder / name).read_bytes())
    text = (job["dir"] / "report.html").read_text(encoding="utf-8")
    assert "finished" in text and f"{N_ITER} of {N_ITER}" in text
    assert 'http-equiv="refresh"' not in text  # a running job's page reloads itself, a finished one not


def test_history_json_has_one_entry_per_iteration(job):
    history = json.loads((job["dir"] / "history.json").read_text())
    assert [entry["iteration"] for entry in history] == list(range(1, N_ITER + 1))
    for key in ("resolution_a", "batch_size", "step_size", "tau2_fudge", "fine_step_deg", "class_fraction", "log_likelihood"):
        assert key in history[-1]


def test_report_command_adds_the_fsc_against_a_reference(job, job_copy, capsys):
    rc = main(["report", str(job_copy), "--reference", str(job["truth"])])
    assert rc == 0
    assert "report.html" in capsys.readouterr().out
    result = json.loads((job_copy / "report" / "fsc.json").read_text())
    assert result["map"] == "initial_model.mrc"
    assert len(result["fsc"]) == 33 and result["fsc"][0] > 0.9
    assert result["fsc0143_a"] is not None and result["fsc0143_a"] < 80  # 3 iterations of 150 particles: coarse but real
    page = job_copy / "report.html"
    assert len(decode_sources(page)) == len(PICTURES) + 1
    assert "FSC vs reference" in page.read_text(encoding="utf-8")
    # rebuilt without --reference, the FSC of the same map is kept
    build_report(job_copy)
    assert len(decode_sources(page)) == len(PICTURES) + 1


def test_report_of_a_folder_without_history_or_final_map(job_copy):
    """A RELION InitialModel folder, or a job still running: plots come from the model STAR files."""
    (job_copy / "history.json").unlink()
    (job_copy / "initial_model.mrc").unlink()
    for path in (job_copy / "report").iterdir():
        path.unlink()
    page = build_report(job_copy)
    names = sorted(p.name for p in (job_copy / "report").iterdir())
    assert names == ["convergence.png", "map_class001.png", "orientations.png"]
    assert len(decode_sources(page)) == 3
    assert 'http-equiv="refresh"' in page.read_text(encoding="utf-8")


def test_report_of_a_folder_that_is_no_job(tmp_path, capsys):
    with pytest.raises(NovomapError, match="run_itNNN_model.star"):
        build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("novomap report: error:")


def test_figures_without_data_do_not_fail():
    convergence_figure([], None)
    convergence_figure([{"iteration": 1, "resolution_a": 30.0, "class_fraction": [0.6, 0.4]}], 10)
    orientation_figure(np.array([0.0, 90.0, -170.0]), np.array([0.0, 90.0, 180.0]), "three particles")


def test_help_of_every_command_shows_an_example():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    assert "report" in commands
    for name, command in commands.items():
        assert "example:\n  novomap " in command.format_help(), name


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_in_a_headless_browser(job, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser (chromium) installed")
    page = (job["dir"] / "report.html").resolve()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    # the page's own script counts the pictures the browser decoded
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    n = len(PICTURES)
    assert f'data-images-decoded="{n}/{n}"' in dom.stdout, dom.stdout[:500] + dom.stderr[-500:]
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    image = decode_png(shot.read_bytes())
    assert np.asarray(image.convert("L")).std() > 10  # something was drawn


def test_report_names_the_map_the_ring_check_read(job):
    """The ring check reads the final reconstruction (analysis.confidence.assess_run), and evidence.json and
    the report say so; a report of an older job, whose evidence has no "map", names the last VDAM map."""
    evidence = json.loads((Path(job["dir"]) / "evidence.json").read_text())
    assert evidence["ring"]["map"] == "final reconstruction"
    page = (Path(job["dir"]) / "report.html").read_text(encoding="utf-8")
    assert "turn like the final reconstruction&#x27;s projections" in page or "turn like the final reconstruction's projections" in page
    from novomap.outputs.report import _evidence_caption

    older = {**evidence, "nyquist_a": 7.0, "ring": {k: v for k, v in evidence["ring"].items() if k != "map"}}
    assert "turn like the last VDAM map&#x27;s projections" in _evidence_caption(older)
