"""The search bound: how far a perfect reference would take the same particles with the job's own search.

The suite's true-pose bound (bench_suite.true_pose_bound) reconstructs the particles at the poses
they were simulated at. No alignment reaches it where a single particle carries too little signal to
be placed that well, whatever the reference. This script measures what alignment itself allows: it
takes a finished job's last state (its sampling, translations, noise spectra, final-pass settings),
puts the truth in place of its map (the truth's phases, the job map's amplitude in every shell, so
that the likelihood sees the particles' own scale and the job's blur), searches every particle
globally against it, then runs the job's final pass from those poses (local searches, polishing),
reconstructs the particles at the poses found, symmetrises and masks the result as the true-pose
bound is, and scores it against truth.mrc (FSC 0.5, in the truth's frame: no alignment needed).

The two bounds bracket what a de novo job can be asked for: near its search bound, a job lost
nothing that a perfect reference would have saved (the rest of the way to the true-pose bound is the
data's); well above it, the job ended in a wrong or blended map that the data would have let it avoid.

The figure is optimistic: particles searched against the truth also fit their noise to it (reference
bias), so on a small particle at low SNR it can come out better than the true-pose bound (hb_c1_36:
8.15 against 8.7 Å). It says where alignment could go, not what a de novo run can be asked to reach.

    python benchmarks/search_bound.py --out /tmp/novomap_suite --label LABEL --specimens hb_c1 hb_c1_36 [--seed 1]

LABEL is the jobs folder bench_suite wrote (`--out/jobs/LABEL/<specimen>_seed<k>`). Prints one line
per specimen and a markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suite import fsc05_to, simulate_specimen  # noqa: E402
from specimens import build_specimen, specimen_named  # noqa: E402

from novomap.io.mrc import read_map  # noqa: E402
from novomap.io.particles import ParticleSet  # noqa: E402
from novomap.maps.combine import match_shell_amplitudes  # noqa: E402
from novomap.maps.transform import fourier_crop  # noqa: E402
from novomap.physics.masks import soft_edge_mask  # noqa: E402
from novomap.reconstruct import Poses, reconstruct_with_poses  # noqa: E402
from novomap.symmetry.groups import point_group  # noqa: E402
from novomap.symmetry.symmetrise import symmetrise  # noqa: E402
from novomap.vdam.config import VdamConfig  # noqa: E402
from novomap.vdam.iterate import assign_all, pseudo_halves  # noqa: E402
from novomap.vdam.state import RunState  # noqa: E402


def last_state(job: Path) -> RunState:
    """The job's state after its final pass: the run_itNNN_state.pt of the highest NNN."""
    states = sorted(job.glob("run_it*_state.pt"), key=lambda p: int(re.search(r"run_it(\d+)_", p.name).group(1)))
    if not states:
        raise SystemExit(f"{job}: no run_itNNN_state.pt (a finished bench_suite job is needed)")
    return RunState.load(states[-1])


def with_truth_as_map(state: RunState, truth: torch.Tensor) -> RunState:
    """The state with the truth as its one class map (on the job map's shell amplitudes), a uniform
    direction prior and zero origins: nothing of the job's own poses is left to start from."""
    state.maps = match_shell_amplitudes(truth, state.maps[0].double())[None].to(state.maps.dtype)
    state.direction_prior = torch.full_like(state.direction_prior[:1], 1.0 / state.direction_prior.shape[1])
    state.class_fraction = torch.ones(1, dtype=state.class_fraction.dtype)
    state.class_number = torch.ones_like(state.class_number)
    state.origin_x_a.zero_()
    state.origin_y_a.zero_()
    return state


def search_bound(folder: Path, job: Path, symmetry: str, mask_diameter_a: float) -> dict:
    """FSC 0.5 (Å) to truth.mrc of the particles reconstructed at the poses a global search against the truth gives."""
    truth_np, pixel_size_a = read_map(folder / "truth.mrc")
    truth = torch.from_numpy(truth_np.copy()).double()
    state = last_state(job)
    working_pixel_a = pixel_size_a * truth.shape[-1] / state.maps.shape[-1]  # the job's working grid: its maps' box
    particles = ParticleSet.from_star(folder / "particles.star", preread=True, max_resolution_a=2 * working_pixel_a)
    state = with_truth_as_map(state, fourier_crop(truth, particles.box_size))
    # first a global search of every particle (the job's own poses are gone, none is reused), then the
    # job's final pass from those poses: local searches where they are sharp, and its polishing passes
    started = time.perf_counter()
    half = pseudo_halves(particles)
    for local in (False, True):
        config = VdamConfig(n_iter=state.iteration, particle_diameter_a=mask_diameter_a, local_searches=local,
                            final_local_in_own_class=local, final_reuse_min_pmax=2.0)  # fmt: skip
        assign_all(state, particles, half, config, torch.device("cpu"))
    poses = Poses(state.rot_deg, state.tilt_deg, state.psi_deg, state.origin_x_a, state.origin_y_a)
    # reconstructed on the particles' own grid, as the true-pose bound and initial_model.mrc are
    native = ParticleSet.from_star(folder / "particles.star", validate=False, max_resolution_a=2 * pixel_size_a)
    volume = reconstruct_with_poses(native, torch.arange(native.n), poses)
    volume = symmetrise(volume, point_group(symmetry))
    volume = volume * soft_edge_mask(tuple(volume.shape), mask_diameter_a / pixel_size_a / 2, 5.0)
    return {"search_bound_fsc05_a": round(fsc05_to(truth, volume, pixel_size_a), 2), "search_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="bench_suite's work folder (data sets, jobs)")
    parser.add_argument("--label", required=True, help="the jobs folder under OUT/jobs/")
    parser.add_argument("--specimens", nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=1, help="whose job's state to use")
    parser.add_argument("--sim-seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.specimens:
        built = build_specimen(specimen_named(name))
        folder = simulate_specimen(built, built.specimen.n_particles, args.sim_seed, args.out)  # cached: finds the folder
        figures = search_bound(folder, args.out / "jobs" / args.label / f"{name}_seed{args.seed}", built.specimen.symmetry, built.mask_diameter_a)
        print(f"{name}: search bound FSC 0.5 {figures['search_bound_fsc05_a']} Å ({figures['search_s']} s)", flush=True)
        rows.append((name, figures))
    print("\n| specimen | search bound Å | seconds |\n|---|---|---|")
    for name, figures in rows:
        print(f"| {name} | {figures['search_bound_fsc05_a']} | {figures['search_s']} |")


if __name__ == "__main__":
    main()
