"""RELION-compatible outputs of an initial-model run (vdam-spec 6): run_itNNN_* STAR and MRC files.

Every file is written atomically. Alongside RELION's files, run_itNNN_state.pt holds the exact
run state (maps, moments, noise, priors, RNG), which is what --continue reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from novomap.io.atomic import atomic_path
from novomap.io.mrc import write_map
from novomap.io.particles import ParticleSet
from novomap.io.star import format_star_float, write_particle_star
from novomap.io.working_grid import to_output_grid
from novomap.model.params import resolution_shell
from novomap.outputs.background import BackgroundWriter
from novomap.sampling.healpix import angular_step_deg
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState

PAD = 1


def iteration_root(out_dir: Path, iteration: int) -> Path:
    return out_dir / f"run_it{iteration:03d}"


def class_map_path(out_dir: Path, iteration: int, k: int) -> Path:
    return out_dir / f"run_it{iteration:03d}_class{k + 1:03d}.mrc"


def state_path_for(optimiser_star: str | Path) -> Path:
    """The checkpoint beside a run_itNNN_optimiser.star."""
    name = Path(optimiser_star).name.replace("_optimiser.star", "_state.pt")
    return Path(optimiser_star).with_name(name)


def _write_star(path: Path, blocks: dict, header: str | None = None) -> None:
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format=format_star_float)
        if header:
            tmp.write_text(f"# {header}\n{tmp.read_text()}")


def write_data_star(path: Path, particles: ParticleSet, state: RunState) -> None:
    """The particles with their latest pose, class and statistics (input order kept)."""
    table = particles.table.particles.copy()
    table["rlnImageName"] = particles.output_image_names()
    table["rlnAngleRot"] = state.rot_deg.numpy()
    table["rlnAngleTilt"] = state.tilt_deg.numpy()
    table["rlnAnglePsi"] = state.psi_deg.numpy()
    table["rlnOriginXAngst"] = state.origin_x_a.numpy()
    table["rlnOriginYAngst"] = state.origin_y_a.numpy()
    table["rlnClassNumber"] = state.class_number.numpy()
    table["rlnNormCorrection"] = 1.0
    table["rlnLogLikeliContribution"] = state.log_likelihood.numpy()
    table["rlnMaxValueProbDistribution"] = state.max_probability.numpy()
    table["rlnNrOfSignificantSamples"] = state.n_significant.numpy()
    table["rlnGroupNumber"] = particles.optics_group.numpy() + 1
    write_particle_star(path, particles.table.optics, table)


def on_output_shells(values: np.ndarray, working_field_a: float, output_field_a: float, n_output: int) -> np.ndarray:
    """A per-shell spectrum of the working grid (n//2 + 1,) at the shells of the output grid (n_output//2 + 1,):
    output shell j is the frequency j / output_field_a, working shell i the frequency i / working_field_a
    (fields of view in Å); linear between working shells, 0 beyond the working grid's Nyquist."""
    working_shells = np.arange(values.shape[0], dtype=np.float64)
    at = np.arange(n_output // 2 + 1) * (working_field_a / output_field_a)
    return np.interp(at, working_shells, np.asarray(values, dtype=np.float64), right=0.0)


def write_model_star(path: Path, out_dir: Path, particles: ParticleSet, state: RunState, config: VdamConfig, current_size: int) -> None:
    """run_itNNN_model.star on the grid of the class maps it names (the input's, io.working_grid), as RELION
    would have written it for these particles: box, pixel size and per-shell tables at the output grid's
    shells (the working grid's spectra taken at the same frequencies, 0 beyond its Nyquist; the noise
    spectra keep the working grid's scale). Resolutions in Å do not depend on the grid."""
    n, pixel = particles.box_size, particles.pixel_size_a
    out_n, out_pixel = particles.grid.output_box, particles.grid.output_pixel_size_a
    working_field_a, output_field_a = n * pixel, out_n * out_pixel

    def spectrum(values) -> np.ndarray:
        return on_output_shells(values, working_field_a, output_field_a, out_n)

    shells = np.arange(out_n // 2 + 1)
    resolution = shells / output_field_a
    angstrom = np.where(shells > 0, output_field_a / np.maximum(shells, 1), 999.0)
    current_resolution_a = n * pixel / max(state.resolution_shell, 1)
    # the searched window's diameter in output pixels (even, as RELION's current_size)
    current_size_output = min(out_n, 2 * int(round(current_size * output_field_a / working_field_a / 2)))
    last = state.history[-1] if state.history else {}
    blocks: dict = {
        "model_general": {
            "rlnReferenceDimensionality": 3,
            "rlnDataDimensionality": 2,
            "rlnOriginalImageSize": out_n,
            "rlnCurrentResolution": current_resolution_a,
            "rlnCurrentImageSize": current_size_output,
            "rlnPaddingFactor": float(PAD),
            "rlnIsHelix": 0,
            "rlnFourierSpaceInterpolator": 1,
            "rlnMinRadiusNnInterpolation": 10,
            "rlnPixelSize": out_pixel,
            "rlnNrClasses": state.n_classes,
            "rlnNrBodies": 1,
            "rlnNrGroups": len(particles.table.optics),
            "rlnNrOpticsGroups": len(particles.table.optics),
            "rlnTau2FudgeFactor": float(last.get("tau2_fudge", config.tau2_fudge)),
            "rlnNormCorrectionAverage": 1.0,
            "rlnSigmaOffsetsAngst": state.sigma_offset_a,
            "rlnOrientationalPriorMode": 0,
            "rlnSigmaPriorRotAngle": 0.0,
            "rlnSigmaPriorTiltAngle": 0.0,
            "rlnSigmaPriorPsiAngle": 0.0,
            "rlnLogLikelihood": float(last.get("log_likelihood", 0.0)),
            "rlnAveragePmax": float(last.get("average_pmax", 0.0)),
        },
        "model_classes": pd.DataFrame(
            {
                # relative to the project folder (the current folder), as RELION writes it
                "rlnReferenceImage": [str(class_map_path(out_dir, state.iteration, k)) for k in range(state.n_classes)],
                "rlnClassDistribution": state.class_fraction.numpy(),
                "rlnAccuracyRotations": [state.acc_rot_deg] * state.n_classes,
                "rlnAccuracyTranslationsAngst": [state.acc_trans_px * pixel if state.acc_trans_px < 999.0 else 999.0] * state.n_classes,
                "rlnEstimatedResolution": [n * pixel / max(resolution_shell(state.ssnr[k]), 1) for k in range(state.n_classes)],
                "rlnOverallFourierCompleteness": [float((state.ssnr[k][1:] >= 1).float().mean()) for k in range(state.n_classes)],
            }
        ),
    }
    for k in range(state.n_classes):
        ssnr = spectrum(state.ssnr[k].numpy())
        blocks[f"model_class_{k + 1}"] = pd.DataFrame(
            {
                "rlnSpectralIndex": shells,
                "rlnResolution": resolution,
                "rlnAngstromResolution": angstrom,
                "rlnSsnrMap": ssnr,
                "rlnGoldStandardFsc": np.zeros(out_n // 2 + 1),
                "rlnFourierCompleteness": (ssnr >= 1).astype(float),
                "rlnReferenceSigma2": spectrum(state.sigma2[0].numpy()),
                "rlnReferenceTau2": spectrum(state.tau2[k].numpy()),
                "rlnSpectralOrientabilityContribution": np.zeros(out_n // 2 + 1),
            }
        )
    optics = particles.table.optics
    counts = np.bincount(particles.optics_group.numpy(), minlength=len(optics))
    blocks["model_groups"] = pd.DataFrame(
        {
            "rlnGroupNumber": np.arange(1, len(optics) + 1),
            "rlnGroupName": [f"group_{g + 1}" for g in range(len(optics))],
            "rlnGroupNrParticles": counts,
            "rlnGroupScaleCorrection": np.ones(len(optics)),
        }
    )
    for g in range(len(optics)):
        blocks[f"model_optics_group_{g + 1}"] = pd.DataFrame(
            {"rlnSpectralIndex": shells, "rlnResolution": resolution, "rlnSigma2Noise": spectrum(state.sigma2[g].numpy())}
        )
    for k in range(state.n_classes):
        blocks[f"model_pdf_orient_class_{k + 1}"] = pd.DataFrame({"rlnOrientationDistribution": state.direction_prior[k].numpy()})
    _write_star(path, blocks)


def write_sampling_star(path: Path, state: RunState, pixel_size_a: float) -> None:
    _write_star(
        path,
        {
            "sampling_general": {
                "rlnIs3DSampling": 1,
                "rlnIs3DTranslationalSampling": 0,
                "rlnHealpixOrder": state.healpix_order,
                "rlnSymmetryGroup": "C1",
                "rlnTiltAngleLimit": -91.0,
                "rlnPsiStep": angular_step_deg(state.healpix_order),
                "rlnOffsetRange": state.offset_range_px * pixel_size_a,
                "rlnOffsetStep": state.offset_step_px * pixel_size_a,
                "rlnHelicalOffsetStep": -1.0,
                "rlnSamplingPerturbInstance": state.perturbation,
                "rlnSamplingPerturbFactor": 0.5,
            }
        },
    )


def write_optimiser_star(path: Path, out_dir: Path, iteration: int, config: VdamConfig, input_star: str, command_line: str) -> None:
    root = iteration_root(out_dir, iteration)
    _write_star(
        path,
        {
            "optimiser_general": {
                "rlnOutputRootName": str(out_dir / "run"),
                "rlnModelStarFile": f"{root}_model.star",
                "rlnExperimentalDataStarFile": f"{root}_data.star",
                "rlnOrientSamplingStarFile": f"{root}_sampling.star",
                "rlnCurrentIteration": iteration,
                "rlnNumberOfIterations": config.n_iter,
                "rlnDoSplitRandomHalves": 0,
                "rlnAdaptiveOversampleOrder": 1,
                "rlnAdaptiveOversampleFraction": config.adaptive_fraction,
                "rlnRandomSeed": config.seed,
                "rlnParticleDiameter": config.particle_diameter_a,
                "rlnWidthMaskEdge": int(config.mask_edge_px),
                "rlnDoZeroMask": 1,
                "rlnDoSolventFlattening": int(config.flatten_solvent),
                "rlnDoCorrectCtf": 1,
                "rlnDoIgnoreCtfUntilFirstPeak": 0,
                "rlnDoGradientRefine": 1,
                "rlnGradSubsetOrder": 0,
                "rlnGradSuspendFinerSamplingIter": 0,
                "rlnSgdStepsize": config.step_size,
                "rlnTau2FudgeFactor": config.tau2_fudge,
                "rlnMaximumSignificantPoses": config.significant_cap(),
                "rlnInputStarFile": input_star,
            }
        },
        header=command_line,
    )


def write_iteration(
    out_dir: Path, particles: ParticleSet, state: RunState, config: VdamConfig, current_size: int, input_star: str, command_line: str,
    writer: BackgroundWriter | None = None,
) -> Path:
    """Write every run_itNNN_* file of the state's iteration; returns the optimiser STAR path.

    writer: the checkpoint (run_itNNN_state.pt, serialised here) and then the optimiser STAR that names it
    are written by it, behind the run (outputs.background); None: here and now.
    """
    root = iteration_root(out_dir, state.iteration)
    for k in range(state.n_classes):
        # on the input's grid (io.working_grid), so RELION takes them as references for these particles
        volume = to_output_grid(state.maps[k].float(), particles.grid)
        write_map(class_map_path(out_dir, state.iteration, k), volume, particles.grid.output_pixel_size_a)
    write_data_star(Path(f"{root}_data.star"), particles, state)
    write_model_star(Path(f"{root}_model.star"), out_dir, particles, state, config, current_size)
    write_sampling_star(Path(f"{root}_sampling.star"), state, particles.pixel_size_a)
    optimiser = Path(f"{root}_optimiser.star")
    checkpoint, iteration = state.to_bytes(), state.iteration  # now: the run goes on changing the state

    def write_checkpoint() -> None:  # the optimiser STAR after the state it names: --continue finds both
        with atomic_path(state_path_for(optimiser)) as tmp:
            tmp.write_bytes(checkpoint)
        write_optimiser_star(optimiser, out_dir, iteration, config, input_star, command_line)

    if writer is None:
        write_checkpoint()
    else:
        writer.submit(write_checkpoint)
    with atomic_path(out_dir / "history.json") as tmp:  # the figures of every iteration so far (novomap report)
        tmp.write_text(json.dumps(state.history, indent=1, default=float))
    return optimiser
