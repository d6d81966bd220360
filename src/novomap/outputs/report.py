"""The picture report of an initial-model job: DIR/report.html and the PNGs in DIR/report/.

build_report(DIR) reads only what the job leaves in DIR (run_itNNN_* files, initial_model.mrc,
history.json), so it works on a running job, a finished one, and a RELION InitialModel folder
(without history.json the convergence plots come from the run_itNNN_model.star files). It draws:

  * map_<name>.png: central slices and projections along X, Y and Z of each class map of the
    latest iteration and, once the job has finished, of initial_model.mrc;
  * convergence.png: resolution, log-likelihood, pmax, step size, T, mini-batch size, class
    distribution and angular sampling over the iterations;
  * orientations.png: the viewing directions (rot, tilt) of the latest assignments, equal-area bins
    on a Mollweide map;
  * evidence.png: once the job has finished, how sure it is (DIR/evidence.json: half-set FSC,
    agreement of the final reconstruction with the last VDAM map; warnings at the top of the page)
    and the point group applied (for --sym auto, the detection table);
  * fsc.png: with a reference map, the FSC of the map (superposed onto the reference with
    novomap.maps.align.align_maps, hand included) against it.

report.html embeds every PNG (base64), so the one file can be mailed or moved on its own.
Pictures are drawn with matplotlib's Agg renderer (no display needed).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from novomap.errors import InputError, NovomapError
from novomap.io.atomic import atomic_path, write_text_atomic

REPORT_HTML = "report.html"
REPORT_DIR = "report"
HISTORY_JSON = "history.json"
_MODEL_RE = re.compile(r"^run_it(\d+)_model\.star$")
_CLASS_RE = re.compile(r"_class(\d+)\.mrc$")
_DPI = 90


# ----------------------------------------------------------------------------------------------
# What the job folder holds


@dataclass
class JobFiles:
    out_dir: Path
    iterations: list[int]
    latest: int
    model_star: Path
    class_maps: list[Path]
    data_star: Path | None
    optimiser_star: Path | None
    sampling_star: Path | None
    initial_model: Path | None
    finished: bool
    notes: list[str] = field(default_factory=list)


def _iteration_files(out_dir: Path) -> dict[int, Path]:
    found = {}
    for path in out_dir.glob("run_it*_model.star"):
        match = _MODEL_RE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def find_job_files(out_dir: str | Path, final: bool | None = None) -> JobFiles:
    """The files of the latest written iteration; NovomapError if DIR holds no initial-model run."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise NovomapError(f"{out_dir} is not a folder (give the --o folder of an initial-model job)")
    models = _iteration_files(out_dir)
    if not models:
        raise NovomapError(f"{out_dir} holds no run_itNNN_model.star: not an initial-model job folder, or the job has written nothing yet")
    latest = max(models)
    root = out_dir / f"run_it{latest:03d}"

    def optional(suffix: str) -> Path | None:
        path = Path(f"{root}{suffix}")
        return path if path.is_file() else None

    class_maps = sorted(out_dir.glob(f"run_it{latest:03d}_class*.mrc"))
    initial_model = out_dir / "initial_model.mrc"
    if final is None:  # finished: initial_model.mrc written after the latest model.star
        final = initial_model.is_file() and initial_model.stat().st_mtime >= models[latest].stat().st_mtime
    return JobFiles(
        out_dir=out_dir,
        iterations=sorted(models),
        latest=latest,
        model_star=models[latest],
        class_maps=class_maps,
        data_star=optional("_data.star"),
        optimiser_star=optional("_optimiser.star"),
        sampling_star=optional("_sampling.star"),
        initial_model=initial_model if final and initial_model.is_file() else None,
        finished=bool(final),
    )


def _read_star(path: Path) -> dict:
    import starfile

    blocks = starfile.read(path, always_dict=True)
    return {name: block for name, block in blocks.items()}


def _general(block) -> dict:
    """A one-row STAR block as a dict (starfile gives a dict, or a one-row table)."""
    if isinstance(block, dict):
        return block
    if hasattr(block, "iloc") and len(block) > 0:
        return block.iloc[0].to_dict()
    return {}


def _history_from_model_stars(out_dir: Path) -> list[dict]:
    """Figures per iteration from run_itNNN_model/sampling.star (RELION folders, no history.json)."""
    history = []
    for iteration, path in sorted(_iteration_files(out_dir).items()):
        if iteration == 0:
            continue
        try:
            blocks = _read_star(path)
        except Exception:  # a file being replaced, or not a STAR file: skip that iteration
            continue
        general = _general(blocks.get("model_general", {}))
        classes = blocks.get("model_classes")
        figures: dict = {"iteration": iteration}
        if "rlnCurrentResolution" in general:
            figures["resolution_a"] = float(general["rlnCurrentResolution"])
        if "rlnLogLikelihood" in general:
            figures["log_likelihood"] = float(general["rlnLogLikelihood"])
        if "rlnAveragePmax" in general:
            figures["average_pmax"] = float(general["rlnAveragePmax"])
        if "rlnTau2FudgeFactor" in general:
            figures["tau2_fudge"] = float(general["rlnTau2FudgeFactor"])
        if classes is not None and "rlnClassDistribution" in classes:
            figures["class_fraction"] = [float(v) for v in classes["rlnClassDistribution"]]
        sampling = out_dir / f"run_it{iteration:03d}_sampling.star"
        if sampling.is_file():
            try:
                general_sampling = _general(_read_star(sampling).get("sampling_general", {}))
                if "rlnPsiStep" in general_sampling:  # the coarse step; the fine one is half (oversampling 1)
                    figures["fine_step_deg"] = float(general_sampling["rlnPsiStep"]) / 2
            except Exception:
                pass
        history.append(figures)
    return history


def load_history(out_dir: str | Path) -> list[dict]:
    """Per-iteration figures: DIR/history.json, else rebuilt from the model STAR files."""
    out_dir = Path(out_dir)
    path = out_dir / HISTORY_JSON
    if path.is_file():
        try:
            history = json.loads(path.read_text())
            if isinstance(history, list):
                return history
        except (OSError, ValueError):
            pass
    return _history_from_model_stars(out_dir)


# ----------------------------------------------------------------------------------------------
# Pictures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg through Figure.savefig; pyplot (and a display) never involved

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return path


def _read_volume(path: Path) -> tuple[np.ndarray, float]:
    from novomap.io.mrc import read_map

    return read_map(path)


def map_figure(volume: np.ndarray, title: str, pixel_size_a: float):
    """Central slices (top) and projections (bottom) along X, Y, Z of a (z, y, x) map."""
    volume = np.asarray(volume, dtype=np.float32)
    nz, ny, nx = volume.shape
    views = [
        ("X", volume[:, :, nx // 2], volume.sum(axis=2), ("Y", "Z")),
        ("Y", volume[:, ny // 2, :], volume.sum(axis=1), ("X", "Z")),
        ("Z", volume[nz // 2, :, :], volume.sum(axis=0), ("X", "Y")),
    ]
    fig = _figure(8.0, 5.7)
    fig.suptitle(f"{title}   ({nx} px, {pixel_size_a:.3g} Å/px)", fontsize=11)
    axes = fig.subplots(2, 3)
    for column, (axis_name, section, projection, (horizontal, vertical)) in enumerate(views):
        for row, (image, kind) in enumerate(((section, "central slice"), (projection, "projection"))):
            ax = axes[row][column]
            ax.imshow(image, cmap="gray", origin="lower", interpolation="nearest")
            ax.set_title(f"{kind} along {axis_name}", fontsize=9)
            ax.set_xlabel(horizontal, fontsize=8)
            ax.set_ylabel(vertical, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for figures in history:
        value = figures.get(key)
        if value is None or isinstance(value, (list, dict)):
            continue
        value = float(value)
        if math.isfinite(value):
            xs.append(int(figures["iteration"]))
            ys.append(value)
    return xs, ys


def convergence_figure(history: list[dict], n_iter: int | None = None):
    """Eight panels over the iterations; empty panels say what is missing."""
    panels = [
        ("resolution_a", "resolution (Å)", "current resolution"),
        ("log_likelihood", "per particle", "log-likelihood"),
        ("average_pmax", "", "average max. probability (pmax)"),
        ("step_size", "η", "step size"),
        ("tau2_fudge", "T", "regularisation T (tau2 fudge)"),
        ("batch_size", "particles", "mini-batch size"),
        ("class_fraction", "fraction", "class distribution"),
        ("fine_step_deg", "degrees", "angular sampling"),
    ]
    fig = _figure(12.0, 6.0)
    title = "convergence"
    if history:
        last = int(history[-1].get("iteration") or 0)
        if not n_iter:
            title += f" (iteration {last})"
            n_iter = last or None
        elif last <= n_iter:
            title += f" (iteration {last} of {n_iter})"
        else:  # the run went on past --iter (vdam.convergence): show it whole
            title += f" (iteration {last}, {last - n_iter} past --iter: the map was still changing)"
            n_iter = last
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(2, 4)
    for ax, (key, unit, name) in zip(axes.flat, panels):
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("iteration", fontsize=8)
        if unit:
            ax.set_ylabel(unit, fontsize=8)
        if n_iter:
            ax.set_xlim(0, max(n_iter, 1))
        if key == "class_fraction":
            rows = [(int(f["iteration"]), f["class_fraction"]) for f in history if isinstance(f.get("class_fraction"), list) and f["class_fraction"]]
            if rows:
                k = max(len(values) for _, values in rows)
                xs = [iteration for iteration, _ in rows]
                ys = np.array([list(values) + [0.0] * (k - len(values)) for _, values in rows]).T
                if len(xs) == 1:
                    for j in range(k):
                        ax.bar(xs, ys[j], bottom=ys[:j].sum(axis=0), width=0.8, label=f"class {j + 1}")
                else:
                    ax.stackplot(xs, ys, labels=[f"class {j + 1}" for j in range(k)])
                ax.set_ylim(0, 1)
                if k > 1:
                    ax.legend(fontsize=6, loc="lower left")
                continue
        else:
            xs, ys = _series(history, key)
            if xs:
                (line,) = ax.plot(xs, ys, marker="." if len(xs) < 30 else None, lw=1.2)
                top = max(ys)
                if key == "fine_step_deg":
                    acc_x, acc_y = _series(history, "acc_rot_deg")
                    keep = [(x, y) for x, y in zip(acc_x, acc_y) if y < 360]
                    if keep:
                        top = max(top, max(y for _, y in keep))
                        ax.plot([x for x, _ in keep], [y for _, y in keep], lw=1.0, ls="--", label="estimated accuracy")
                        line.set_label("fine step")
                        ax.legend(fontsize=6)
                if key in ("batch_size", "step_size", "tau2_fudge", "fine_step_deg"):
                    ax.set_ylim(0, top * 1.15 if top > 0 else 1)  # small changes must not look large
                elif key == "average_pmax":
                    ax.set_ylim(0, 1.02)
                continue
        ax.text(0.5, 0.5, "not recorded yet", ha="center", va="center", transform=ax.transAxes, fontsize=8, color="grey")
    return fig


def orientation_figure(rot_deg: np.ndarray, tilt_deg: np.ndarray, title: str):
    """Viewing directions on a Mollweide map: equal-area bins, colour = particles / uniform expectation."""
    rot = np.deg2rad(((np.asarray(rot_deg, dtype=np.float64) + 180.0) % 360.0) - 180.0)
    z = np.cos(np.deg2rad(np.asarray(tilt_deg, dtype=np.float64)))  # sin(latitude): uniform on the sphere
    n_lon, n_lat = 36, 18
    lon_edges = np.linspace(-np.pi, np.pi, n_lon + 1)
    z_edges = np.linspace(-1.0, 1.0, n_lat + 1)
    counts, _, _ = np.histogram2d(np.clip(z, -1, 1), rot, bins=[z_edges, lon_edges])
    expected = max(len(rot), 1) / (n_lon * n_lat)
    fig = _figure(8.0, 4.6)
    ax = fig.add_subplot(projection="mollweide")
    mesh = ax.pcolormesh(lon_edges, np.arcsin(z_edges), counts / expected, cmap="viridis", shading="flat")
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("rot (longitude)", fontsize=8)
    ax.set_ylabel("90° − tilt (latitude)", fontsize=8)
    ax.set_title(title, fontsize=10)
    colourbar = fig.colorbar(mesh, ax=ax, orientation="horizontal", fraction=0.05, pad=0.08)
    colourbar.set_label("particles per bin / uniform expectation (1 = even coverage)", fontsize=8)
    colourbar.ax.tick_params(labelsize=7)
    return fig


# ----------------------------------------------------------------------------------------------
# FSC against a reference


def compare_with_reference(map_path: Path, reference: Path, reference_pixel_size_a: float | None = None) -> dict:
    """Superpose the map onto the reference (rotation, shift, hand) and compute their FSC.

    The reference is brought to the map's box and pixel size first (Fourier resampling).
    Returns fsc (list), resolution_inv_a (list, 1/Å per shell), fsc05_a, fsc0143_a, cc, hand_flipped.
    """
    import torch

    from novomap.maps.align import align_maps
    from novomap.maps.fsc import fsc, resolution_at
    from novomap.simulate import load_input_map

    volume, pixel_size_a = _read_volume(map_path)
    box = volume.shape[-1]
    if not Path(reference).is_file():
        raise InputError("reference map not found", reference)
    try:
        reference_volume = load_input_map(reference, box, pixel_size_a, reference_pixel_size_a)
    except InputError as error:
        raise NovomapError(str(error).replace("--map-pixel-size", "--reference-pixel-size")) from None
    except (ValueError, OSError) as error:
        raise InputError(f"cannot read the reference map ({error})", reference) from None
    alignment = align_maps(reference_volume.float(), torch.from_numpy(volume), pixel_size_a)
    curve = fsc(reference_volume.double(), alignment.volume.double())
    shells = np.arange(len(curve))

    def finite(value: float) -> float | None:
        return float(value) if math.isfinite(value) else None

    return {
        "map": map_path.name,
        "map_mtime": map_path.stat().st_mtime,
        "reference": str(reference),
        "fsc": [float(v) for v in curve],
        "resolution_inv_a": [float(s) / (box * pixel_size_a) for s in shells],
        "fsc05_a": finite(resolution_at(curve, 0.5, box, pixel_size_a)),
        "fsc0143_a": finite(resolution_at(curve, 0.143, box, pixel_size_a)),
        "cc": float(alignment.cc),
        "hand_flipped": bool(alignment.hand_flipped),
        "nyquist_a": 2 * pixel_size_a,
    }


def fsc_figure(result: dict):
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    x = np.array(result["resolution_inv_a"])
    ax.plot(x[1:], np.array(result["fsc"])[1:], lw=1.5, label="FSC")
    for threshold, key, style in ((0.5, "fsc05_a", ":"), (0.143, "fsc0143_a", "--")):
        ax.axhline(threshold, color="grey", ls=style, lw=1)
        value = result[key]
        if value is not None:
            ax.axvline(1 / value, color="grey", ls=style, lw=0.8)
            ax.text(1 / value, threshold + 0.03, f" {value:.1f} Å", fontsize=8)
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0, x[-1])
    ax.set_xlabel("spatial frequency (1/Å)", fontsize=9)
    ax.set_ylabel("FSC", fontsize=9)
    hand = "mirror image" if result["hand_flipped"] else "as computed"
    ax.set_title(f"{result['map']} vs {Path(result['reference']).name} ({hand}, correlation {result['cc']:.3f})", fontsize=9)
    ax.tick_params(labelsize=8)
    secondary = ax.secondary_xaxis("top", functions=(lambda f: 1 / np.maximum(f, 1e-6), lambda r: 1 / np.maximum(r, 1e-6)))
    secondary.set_xlabel("resolution (Å)", fontsize=8)
    secondary.tick_params(labelsize=7)
    return fig


# ----------------------------------------------------------------------------------------------
# How sure is the run (DIR/evidence.json, written by the job; novomap.analysis.confidence)


def load_evidence(files: JobFiles) -> dict | None:
    """DIR/evidence.json of the finished job (None while running, or when older than initial_model.mrc)."""
    from novomap.analysis.confidence import EVIDENCE_JSON

    path = files.out_dir / EVIDENCE_JSON
    if files.initial_model is None or not path.is_file() or path.stat().st_mtime < files.initial_model.stat().st_mtime:
        return None
    try:
        evidence = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return evidence if isinstance(evidence, dict) and "half_fsc" in evidence else None


def evidence_figure(evidence: dict):
    """Half-set FSC and the FSC of the final reconstruction against the last VDAM map, with the weak bar."""
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    x = np.array(evidence["resolution_inv_a"])
    n_half = evidence.get("n_half", ["?", "?"])
    ax.plot(x[1:], np.array(evidence["half_fsc"])[1:], lw=1.5, label=f"half-set FSC ({n_half[0]} + {n_half[1]} particles)")
    ax.plot(x[1:], np.array(evidence["agreement_fsc"])[1:], lw=1.2, ls="-.", label="final reconstruction vs last VDAM map")
    for threshold, style in ((0.5, ":"), (0.143, "--")):
        ax.axhline(threshold, color="grey", ls=style, lw=1)
    value = evidence.get("half_fsc05_a")
    if value is not None:
        ax.axvline(1 / value, color="grey", ls=":", lw=0.8)
        ax.text(1 / value, 0.53, f" {value:.1f} Å", fontsize=8)
    bar = evidence.get("thresholds", {}).get("weak_half_fsc05_a")
    if bar:
        ax.axvspan(0, 1 / bar, color="#f4cccc", alpha=0.5, lw=0, label=f"weak: half-set FSC 0.5 worse than {bar:.0f} Å")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0, x[-1])
    ax.set_xlabel("spatial frequency (1/Å)", fontsize=9)
    ax.set_ylabel("FSC", fontsize=9)
    verdict = "WEAK evidence" if evidence.get("weak") else "consistent"
    ax.set_title(f"how sure is the run: {verdict} (cc with the last VDAM map {evidence['agreement_cc']:.2f})", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(labelsize=8)
    # resolution ticks on the top axis, placed by hand (a 1/f axis transform breaks at f = 0)
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    marks = [r for r in (100, 50, 30, 20, 15, 10, 8, 6, 5, 4, 3) if 1 / r <= x[-1]]
    top.set_xticks([1 / r for r in marks], [f"{r:g}" for r in marks])
    top.set_xlabel("resolution (Å)", fontsize=8)
    top.tick_params(labelsize=7)
    return fig


def _pruned_sentence(record: dict) -> str:
    """A cut of the race's runners-up before the last iteration (vdam.finalists.prune)."""
    from novomap.outputs.progress import pruned_line

    line = pruned_line(record)
    return f"{line[0].upper()}{line[1:]}."


def _finalists_sentence(record: dict) -> str:
    """The choice between the run and the race's runner-up, carried to the end of a one-class C1 run (vdam.finalists)."""
    from novomap.outputs.progress import finalists_line

    return f"At iteration {record['iteration']}, {finalists_line(record)}."


def _race_round_line(round_: dict) -> str:
    """'iteration 30 (maps symmetrised by O): start 0 -480.6, start 2 -488.2'."""
    scored_as = round_.get("scored_as", "C1")  # older runs scored every round in C1
    symmetrised = f" (maps symmetrised by {scored_as})" if scored_as != "C1" else ""
    scores = ", ".join(f"start {start} {score:.1f}" for start, score in zip(round_["starts"], round_["scores"]))
    return f"iteration {round_['iteration']}{symmetrised}: {scores}"


def _ring_bars(thresholds: dict) -> str:
    """The ring check's bars as evidence.json recorded them (older jobs: the first bar only)."""
    first = f"{thresholds.get('ring_misfit', 0.035)} and {thresholds.get('ring_floor_factor', 2.5)}x"
    if "ring_misfit_moderate" not in thresholds:
        return first
    return f"{first}, or {thresholds['ring_misfit_moderate']} and {thresholds.get('ring_floor_factor_moderate', 3.5)}x"


def _evidence_caption(evidence: dict) -> str:
    """The figures in words (HTML): the verdict, each reason to doubt, the point group and why."""
    def res(value) -> str:
        return "never below" if value is None else f"{value:.1f} Å"

    parts = [
        html.escape(
            f"Half-set FSC (the class's particles split into the job's two pseudo half-sets, each reconstructed at its final "
            f"poses, inside the mask): {res(evidence.get('half_fsc05_a'))} at 0.5, {res(evidence.get('half_fsc0143_a'))} at 0.143 "
            f"(Nyquist {evidence['nyquist_a']:.2f} Å). Both halves were aligned against one common map, so this is a consistency "
            f"check and optimistic, not a gold-standard resolution. The final reconstruction agrees with the last VDAM map with "
            f"cc {evidence['agreement_cc']:.2f} (FSC 0.5 at {res(evidence.get('agreement_fsc05_a'))}); radial share "
            f"{evidence['radial_share']:.2f} (1 = a featureless ball); mean pmax of the final pass {evidence['mean_pmax']:.2f}."
        )
    ]
    ring = evidence.get("ring")
    if ring:
        parts.append(html.escape(
            f" The particles' Fourier rings (to {ring['resolution_a']:.0f} Å, {ring['n_particles']} particles) turn like the "
            f"{ring.get('map', 'last VDAM map')}'s "
            f"projections at their poses up to a misfit of {ring['misfit']:.3f}, {ring['ratio']:.1f}x what their own noise "
            f"gives (a wrong map averaged over near-symmetric poses is rounder than its particles: flagged above "
            f"{_ring_bars(evidence.get('thresholds', {}))})."
        ))
    attempts, kept = evidence.get("attempts") or [], evidence.get("kept_attempt")
    if len(attempts) > 1 and kept:
        others = "; ".join(
            f"attempt {i + 1} (seed {a['seed']}): {a['ring_misfit']:.3f}, its files in {a['folder']}/"
            for i, a in enumerate(attempts) if i + 1 != kept and a.get("ring_misfit") is not None
        )
        classes = attempts[kept - 1].get("classes", 1)
        with_classes = f", {classes} classes: a one-class run's retries add a class for particles the map cannot explain" if classes != attempts[0].get("classes", 1) else ""
        tried = [a["symmetry"] for a in attempts if a.get("symmetry")]  # symmetry.group_trial's attempts
        why, kept_for = "A flagged map was run again from new random starts (--retries)", "the lowest ring misfit"
        if not tried and not attempts[0].get("flagged"):  # initial_model.race_undecided
            why = "The race of random starts left the map undecided, so the job was run again from new random starts (--retries)"
            kept_for = "its fit to the particles' ring spectra"
            from novomap.analysis.confidence import decided_by_race

            if decided_by_race(attempts):  # initial_model.decided_better
                kept_for = (
                    f"the race's own choice, the start whose pseudo half-sets agree best at its poses "
                    f"({attempts[kept - 1]['race_agreement']:.3f}; "
                    + ", ".join(f"attempt {i + 1}: {a['race_agreement']:.3f}" for i, a in enumerate(attempts) if i + 1 != kept) + ")"
                )
        if tried:
            trial = (evidence.get("symmetry") or {}).get("group_trial") or {}  # symmetry.group_trial.trial_record
            reason = f" {trial['why']}" if trial.get("fold_changed") else "'s evidence was weak"
            why = f"The --sym auto map{reason}, so the job was run again with {', '.join(tried)} imposed (each a group containing the one it found)"
            kept_for = "its fit to the particles' ring spectra (symmetry.txt says how)"
        parts.append(html.escape(
            f" {why}: this is attempt {kept} of {len(attempts)} "
            f"(seed {attempts[kept - 1]['seed']}{with_classes}), kept for {kept_for} ({others})."
        ))
    rounds = evidence.get("start_rounds") or []
    if rounds:
        lines = [_race_round_line(r) for r in rounds]
        parts.append(html.escape(
            f" {len(rounds[0]['starts'])} random starts raced (mean log likelihood of the same particles; the best go on); "
            f"the run continued from start {evidence.get('chosen_start')}:"
        ) + "<pre>" + html.escape("\n".join(lines)) + "</pre>")
    for record in evidence.get("finalists_pruned") or []:
        parts.append(html.escape(" " + _pruned_sentence(record)))
    if evidence.get("finalists"):
        parts.append(html.escape(" " + _finalists_sentence(evidence["finalists"])))
    if evidence.get("map_agreement") is not None:
        extra = int(evidence.get("extra_iterations") or 0)
        parts.append(html.escape(
            f" At the last iteration the VDAM map agreed with the map of 20 iterations before to {evidence['map_agreement']:.3f} "
            f"(mean FSC up to the run's resolution; settled from {evidence.get('map_agreement_min', 0):.2f})"
            + (f"; the run went on {extra} iterations past --iter while it still changed." if extra else ".")
        ))
    for reason in evidence.get("warnings", []):
        parts.append(f'<br><span class="warning">warning: {html.escape(reason)}</span>')
    symmetry = evidence.get("symmetry")
    if symmetry:
        from novomap.symmetry.choice import summary_line, table_lines

        parts.append("<br>" + html.escape(summary_line(symmetry)))
        table = table_lines(symmetry)
        if table:
            parts.append("<pre>" + html.escape("\n".join(table)) + "</pre>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# The page


@dataclass
class Picture:
    name: str
    title: str
    caption: str


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.92em; } td { padding: 2px 12px 2px 0; vertical-align: top; }
td:first-child { color: #666; } figure { margin: 0.8em 0; } figcaption { font-size: 0.85em; color: #555; max-width: 1000px; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #8a5a00; } code { font-size: 0.9em; }
.warning { color: #a00000; background: #fde8e8; font-weight: bold; padding: 1px 4px; }
"""

# Counts the pictures the browser could decode (data-images-decoded="ok/total" on <body>).
_SCRIPT = """
window.addEventListener('load', function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) { if (images[i].complete && images[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-decoded', ok + '/' + images.length);
  var status = document.getElementById('image-status');
  if (status && ok < images.length) status.textContent = (images.length - ok) + ' picture(s) could not be shown.';
});
"""


def _page(
    title: str,
    summary: list[tuple[str, str]],
    sections: list[tuple[str, list[Picture]]],
    pictures_dir: Path,
    notes: list[str],
    refresh: bool,
    warnings: list[str] | None = None,
) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">']
    if refresh:
        out.append('<meta http-equiv="refresh" content="60">')
    out.append(f"<title>{html.escape(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>")
    out.append(f"<h1>{html.escape(title)}</h1><p id=\"image-status\" class=\"note\"></p>")
    out.append("<table>")
    for key, value in summary:
        out.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(value)}</td></tr>")
    out.append("</table>")
    for warning in warnings or []:  # weak evidence that the map is right: shown before anything else
        out.append(f'<p class="warning">warning: {html.escape(warning)}</p>')
    for note in notes:
        out.append(f'<p class="note">{html.escape(note)}</p>')
    for heading, pictures in sections:
        if not pictures:
            continue
        out.append(f"<h2>{html.escape(heading)}</h2>")
        for picture in pictures:
            path = pictures_dir / picture.name
            out.append(
                f'<figure><img src="{_png_data_uri(path)}" alt="{html.escape(picture.title)}" title="{html.escape(picture.title)}">'
                f"<figcaption>{picture.caption} (<code>{REPORT_DIR}/{html.escape(picture.name)}</code>)</figcaption></figure>"
            )
    out.append(f'<p style="color:#999;font-size:0.8em">written by novomap at {datetime.datetime.now():%Y-%m-%d %H:%M:%S}</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _fmt(value, unit: str = "", digits: str = ".1f") -> str:
    if value is None:
        return "?"
    try:
        return f"{float(value):{digits}}{unit}"
    except (TypeError, ValueError):
        return str(value)


def _command_line(optimiser_star: Path | None) -> str | None:
    if optimiser_star is None:
        return None
    try:
        first = optimiser_star.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    return first[2:] if first.startswith("# ") and "novomap" in first else None


def build_report(
    out_dir: str | Path,
    reference: str | Path | None = None,
    reference_pixel_size_a: float | None = None,
    final: bool | None = None,
) -> Path:
    """(Re)write DIR/report.html and DIR/report/*.png from what DIR holds now; returns the HTML path.

    final: whether the job has finished (initial_model.mrc is current); None: decide from the files.
    reference: a map to compute the FSC against (slow: a few seconds to a minute for the superposition);
    without one, an FSC computed earlier for the same map is kept.
    """
    files = find_job_files(out_dir, final)
    out_dir = files.out_dir
    pictures_dir = out_dir / REPORT_DIR
    pictures_dir.mkdir(exist_ok=True)
    notes: list[str] = []

    # model and optimiser facts
    n_iter = None
    pixel_size_a = None
    class_fractions: list[float] = []
    try:
        blocks = _read_star(files.model_star)
        general = _general(blocks.get("model_general", {}))
        pixel_size_a = general.get("rlnPixelSize")
        classes = blocks.get("model_classes")
        if classes is not None and "rlnClassDistribution" in classes:
            class_fractions = [float(v) for v in classes["rlnClassDistribution"]]
    except Exception as error:  # noqa: BLE001 - a report must not fail on one unreadable file
        notes.append(f"could not read {files.model_star.name}: {error}")
    if files.optimiser_star is not None:
        try:
            n_iter = int(_general(_read_star(files.optimiser_star).get("optimiser_general", {})).get("rlnNumberOfIterations"))
        except Exception:  # noqa: BLE001
            n_iter = None

    history = load_history(out_dir)
    last = history[-1] if history else {}

    # maps
    map_pictures: list[Picture] = []
    maps: list[tuple[str, Path, str]] = []
    if files.initial_model is not None:
        maps.append(("initial_model", files.initial_model, "initial_model.mrc: the largest class (with any class of the same structure pooled into it: run.out), aligned to its point group's axes and symmetrised"))
    for path in files.class_maps:
        match = _CLASS_RE.search(path.name)
        k = int(match.group(1)) if match else len(maps)
        fraction = f", {class_fractions[k - 1]:.0%} of the particles" if 0 < k <= len(class_fractions) else ""
        maps.append((f"class{k:03d}", path, f"{path.name}: class {k} after iteration {files.latest}{fraction}"))
    box = None
    for name, path, caption in maps:
        try:
            volume, pixel = _read_volume(path)
        except Exception as error:  # noqa: BLE001
            notes.append(f"could not read {path.name}: {error}")
            continue
        box = volume.shape[-1]
        pixel_size_a = pixel_size_a or pixel
        picture = f"map_{name}.png"
        _save(map_figure(volume, path.name, pixel), pictures_dir / picture)
        map_pictures.append(Picture(picture, path.name, html.escape(caption)))

    # convergence
    _save(convergence_figure(history, n_iter), pictures_dir / "convergence.png")
    convergence = [
        Picture(
            "convergence.png",
            "convergence",
            "Over the iterations: the resolution the model has reached, the data log-likelihood per particle, the average "
            "highest pose probability (pmax), the step size η and the regularisation T of the VDAM schedules, the mini-batch size, "
            "the fraction of particles per class and the angular sampling (fine step; dashed: the estimated angular accuracy).",
        )
    ]

    # orientations
    orientation: list[Picture] = []
    n_particles = None
    if files.data_star is not None:
        try:
            particles = _read_star(files.data_star).get("particles")
            if particles is None:
                raise ValueError("no data_particles table")
            n_particles = len(particles)
            if {"rlnAngleRot", "rlnAngleTilt"} <= set(particles.columns):
                title = f"viewing directions of {n_particles} particles ({files.data_star.name})"
                _save(orientation_figure(particles["rlnAngleRot"].to_numpy(float), particles["rlnAngleTilt"].to_numpy(float), title), pictures_dir / "orientations.png")
                orientation.append(
                    Picture(
                        "orientations.png",
                        "orientation distribution",
                        "Where the particles' viewing directions (rot, tilt) lie, in bins of equal area on the sphere; 1 is the count of an even "
                        "coverage. A few hot spots are normal (preferred orientation); a model built from one or two views only is unreliable.",
                    )
                )
        except Exception as error:  # noqa: BLE001
            notes.append(f"could not draw the orientations from {files.data_star.name}: {error}")

    # FSC against a reference
    fsc_pictures: list[Picture] = []
    compared = files.initial_model or _largest_class(files.class_maps, class_fractions)
    fsc_json = pictures_dir / "fsc.json"
    result = None
    if reference is not None and compared is not None:
        result = compare_with_reference(compared, Path(reference), reference_pixel_size_a)
        write_text_atomic(fsc_json, json.dumps(result, indent=1))
        _save(fsc_figure(result), pictures_dir / "fsc.png")
    elif compared is not None and fsc_json.is_file() and (pictures_dir / "fsc.png").is_file():
        try:
            earlier = json.loads(fsc_json.read_text())
            if earlier.get("map") == compared.name and earlier.get("map_mtime") == compared.stat().st_mtime:
                result = earlier
        except (OSError, ValueError):
            result = None
    if result is not None:
        hand = " The mirror image fitted better: the map has the other hand (expected half of the time; flip it before refinement if the hand matters)." if result["hand_flipped"] else ""
        fsc_pictures.append(
            Picture(
                "fsc.png",
                "FSC against the reference",
                html.escape(
                    f"FSC of {result['map']} against {result['reference']} after superposing it (rotation, shift and hand): "
                    f"{_fmt(result['fsc05_a'], ' Å')} at 0.5, {_fmt(result['fsc0143_a'], ' Å')} at 0.143 (Nyquist {_fmt(result['nyquist_a'], ' Å', '.2f')}).{hand}"
                ),
            )
        )

    # how sure is the run (evidence.json of a finished job)
    evidence = load_evidence(files)
    evidence_pictures: list[Picture] = []
    if evidence is not None:
        _save(evidence_figure(evidence), pictures_dir / "evidence.png")
        evidence_pictures.append(Picture("evidence.png", "how sure is the run", _evidence_caption(evidence)))

    state = "finished" if files.finished else "running (or stopped) — this page reloads every minute"
    summary = [
        ("job folder", str(out_dir)),
        ("state", state),
        ("iteration", f"{files.latest}" + ((f" of {n_iter}" if files.latest <= n_iter else f" ({n_iter} + {files.latest - n_iter} while the map still changed)") if n_iter else "")),
        ("particles", "?" if n_particles is None else str(n_particles)),
        ("box, pixel size", f"{box if box else '?'} px, {_fmt(pixel_size_a, ' Å/px', '.3f')}"),
        ("current resolution", _fmt(last.get("resolution_a"), " Å")),
        ("angular sampling", _fmt(last.get("fine_step_deg"), "°", ".2f")),
        ("mini-batch, step size, T", f"{last.get('batch_size', '?')}, {_fmt(last.get('step_size'), '', '.2f')}, {_fmt(last.get('tau2_fudge'), '', '.2f')}"),
    ]
    if len(class_fractions) > 1:
        summary.append(("class distribution", ", ".join(f"{f:.0%}" for f in class_fractions)))
    if result is not None:
        summary.append(("FSC vs reference", f"{_fmt(result['fsc05_a'], ' Å')} (0.5), {_fmt(result['fsc0143_a'], ' Å')} (0.143)"))
    if evidence is not None:
        symmetry = evidence.get("symmetry") or {}
        if symmetry:
            how = "detected (--sym auto)" if "table" in symmetry else "as given (--sym)"
            if symmetry.get("chosen_at_iteration") is not None:
                how += f" at iteration {symmetry['chosen_at_iteration']}, imposed from there"
            if symmetry.get("enlarged_from") is not None:
                how += f" ({symmetry['enlarged_from']} imposed from iteration {symmetry['enlarged_from_iteration']} before it)"
            summary.append(("point group", f"{symmetry.get('applied')} {how}"))
        verdict = "WEAK, see the warnings" if evidence.get("weak") else "consistent"
        summary.append(("how sure", f"half-set FSC {_fmt(evidence.get('half_fsc05_a'), ' Å')} (0.5), cc with the last VDAM map {_fmt(evidence.get('agreement_cc'), '', '.2f')}: {verdict}"))
    command = _command_line(files.optimiser_star)
    if command:
        summary.append(("command", command))
    sections = [
        ("Maps", map_pictures),
        ("Convergence", convergence),
        ("Orientation distribution", orientation),
        ("How sure is the run", evidence_pictures),
        ("FSC against the reference", fsc_pictures),
    ]
    warnings = list(evidence.get("warnings", [])) if evidence is not None else []
    page = _page(f"novomap initial model — {out_dir.name}", summary, sections, pictures_dir, notes, refresh=not files.finished, warnings=warnings)
    target = out_dir / REPORT_HTML
    write_text_atomic(target, page)
    return target


def _largest_class(class_maps: list[Path], fractions: list[float]) -> Path | None:
    if not class_maps:
        return None
    if fractions and len(fractions) == len(class_maps):
        return class_maps[int(np.argmax(fractions))]
    return class_maps[0]
