"""How far can pose estimation get on a simulated data set? Refinement from the truth, and from a run.

The suite's bound is a reconstruction at the true poses. No estimator reaches it: poses estimated
from noisy images scatter about the truth. This script measures what a self-consistent refinement
reaches when it starts AT the truth, and whether a finished run's poses improve the same way:

  rounds of: reconstruct each pseudo half-set at the current poses, weight it by sqrt(2 FSC / (1 + FSC))
  of the two halves and mask it (a gold-standard reference), search every particle of that half locally
  around its pose against it (the final pass's polish stage: vdam.iterate.polish_config), and
  reconstruct all particles at the new poses; FSC 0.5 to the truth after each round (unsymmetrised,
  at the working grid, `novomap compare --align`).

--start true: from the simulation's true poses; --start run: from the job's last saved poses.
--relax GROUP: instead of plain rounds, each particle also tries its pseudo-symmetry equivalents
A g (GROUP found on the run's own reconstruction, symmetry.impose) and keeps the best by log likelihood
(symmetry relaxation: can a run whose particles sit at pseudo-equivalent poses escape?).

    cd DATA_DIR && python benchmarks/refinement_floor.py JOB particles.star --diameter 131.5 \
        --max-resolution 4.326 --truth truth.mrc --start true --rounds 3

Reading only: JOB is never written; maps go to --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import starfile
import torch

from novomap.reconstruct import half_set_maps
from novomap.io.mrc import write_map
from novomap.io.particles import ParticleSet
from novomap.maps.fsc import fsc
from novomap.maps.transform import frequency_radius
from novomap.physics.euler import euler_to_matrix, matrix_to_euler
from novomap.physics.masks import soft_edge_mask
from novomap.reconstruct import Poses, reconstruct_with_poses
from novomap.symmetry.groups import point_group
from novomap.symmetry.impose import impose_group
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import as_devices, expectation, polish_config, pseudo_halves, search_setup
from novomap.vdam.state import RunState

POSE_FIELDS = ("rot_deg", "tilt_deg", "psi_deg", "origin_x_a", "origin_y_a")
STAR_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")


def set_true_poses(state: RunState, star: str) -> None:
    table = starfile.read(star)["particles"]
    for field, column in zip(POSE_FIELDS, STAR_COLUMNS):
        getattr(state, field)[:] = torch.tensor(table[column].values).to(getattr(state, field).dtype)
    state.class_number[:] = 1


def poses_of(state: RunState) -> Poses:
    return Poses(*(getattr(state, field) for field in POSE_FIELDS))


def scored(particles, members, state, truth: str, path: Path) -> dict:
    volume = reconstruct_with_poses(particles, members, poses_of(state), batch_size=1024, single_precision=True).float()
    write_map(path, volume, particles.pixel_size_a)
    out = subprocess.run([sys.executable, "-m", "novomap", "compare", truth, str(path), "--align", "--json"], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    return {key: round(figures[key], 3) for key in ("cc", "fsc05_a", "fsc0143_a")}


def half_references(particles, members, state, half, mask) -> list[torch.Tensor]:
    """Each pseudo half's reconstruction, FSC-weighted and masked."""
    n = particles.box_size
    h0, h1 = half_set_maps(particles, members, poses_of(state), half)
    curve = fsc(h0 * mask, h1 * mask).clamp(min=0)
    weight = (2 * curve / (1 + curve)).sqrt()[torch.round(frequency_radius(n)).long().clamp(max=n // 2)]
    return [torch.fft.irfftn(torch.fft.rfftn(h * mask) * weight, s=(n, n, n)) * mask for h in (h0, h1)]


def local_round(particles, members, state, half, references, config, cross: bool = False) -> None:
    grid, current_size, coarse_size = search_setup(state, particles, config, advance=False)
    for h in range(len(references)):
        reference = references[1 - h] if cross else references[h]
        state.maps = reference[None].to(state.maps.dtype)
        rows = members[half[members] == h]
        expectation(state, particles, rows, half, grid, current_size, coarse_size, polish_config(config), as_devices("cpu"), {}, with_sums=False)


def relax_round(particles, members, state, half, references, config, operators: torch.Tensor, cross: bool = False) -> list[int]:
    """A local round from every equivalent A g; each particle keeps its best by log likelihood."""
    start = euler_to_matrix(state.rot_deg, state.tilt_deg, state.psi_deg).double()
    origins = (state.origin_x_a.clone(), state.origin_y_a.clone())
    best_ll = torch.full((particles.n,), -torch.inf, dtype=torch.float64)
    best = {field: getattr(state, field).clone() for field in POSE_FIELDS}
    choice = torch.zeros(particles.n, dtype=torch.long)
    for g in range(operators.shape[0]):
        for field, value in zip(POSE_FIELDS[:3], matrix_to_euler(start @ operators[g])):
            getattr(state, field)[:] = value.to(getattr(state, field).dtype)
        state.origin_x_a[:], state.origin_y_a[:] = origins
        local_round(particles, members, state, half, references, config, cross)
        better = state.log_likelihood.double() > best_ll
        best_ll = torch.where(better, state.log_likelihood.double(), best_ll)
        choice[better] = g
        for field in POSE_FIELDS:
            best[field][better] = getattr(state, field)[better]
    for field, value in best.items():
        getattr(state, field)[:] = value
    return torch.bincount(choice[members], minlength=operators.shape[0]).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("star")
    parser.add_argument("--diameter", type=float, required=True, help="the job's --particle-diameter (Å)")
    parser.add_argument("--max-resolution", type=float, default=None, help="the job's working-grid limit (Å; its run.out)")
    parser.add_argument("--truth", required=True)
    parser.add_argument("--start", choices=("true", "run"), default="run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--relax", default=None, help="pseudo-symmetry group whose equivalent poses each particle may take")
    parser.add_argument("--cross", action="store_true", help="search each half's particles against the OTHER half's reference (no self-bias)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out or tempfile.mkdtemp(prefix="refinement_floor_"))
    out.mkdir(parents=True, exist_ok=True)
    particles = ParticleSet.from_star(args.star, preread=True, max_resolution_a=args.max_resolution)
    state = RunState.load(sorted(Path(args.job).glob("run_it*_state.pt"))[-1])
    if state.maps.shape[-1] != particles.box_size:
        raise SystemExit(f"the job's maps are {state.maps.shape[-1]} px, the particles read at {particles.box_size} px: give the job's --max-resolution")
    config = VdamConfig(particle_diameter_a=args.diameter, seed=1)
    if args.start == "true":
        set_true_poses(state, args.star)
    half = pseudo_halves(particles)
    members = torch.nonzero(state.class_number > 0).squeeze(1)
    n = particles.box_size
    mask = soft_edge_mask((n, n, n), args.diameter / (2 * particles.pixel_size_a), config.mask_edge_px).double()
    print(f"start ({args.start} poses):", scored(particles, members, state, args.truth, out / "round0.mrc"), flush=True)
    operators = None
    if args.relax:
        volume = reconstruct_with_poses(particles, members, poses_of(state), batch_size=1024, single_precision=True).double()
        _, axes = impose_group(volume[None], point_group(args.relax), particles.pixel_size_a)
        operators = point_group(args.relax).in_frame(axes[0][0]).operators.double()
    for r in range(1, args.rounds + 1):
        references = half_references(particles, members, state, half, mask)
        if operators is None:
            local_round(particles, members, state, half, references, config, args.cross)
            note = ""
        else:
            note = f" (equivalent chosen: {relax_round(particles, members, state, half, references, config, operators, args.cross)})"
        print(f"round {r}{note}:", scored(particles, members, state, args.truth, out / f"round{r}.mrc"), flush=True)


if __name__ == "__main__":
    main()
