"""`--sym auto` decided by the particles: which candidate group's map best predicts images it was not built from.

The map-only detection (symmetry.detect) judges a de novo C1 reconstruction by its own asymmetry.
It under-calls large groups, whose C1 maps keep one subgroup cleanly and the other operators only
half-way. On the suite it named C2 for an octahedral particle (O at 0.49 of its null score) and
D2 or C2 for an icosahedral one (I at 0.52 and 0.68). The maps symmetrised by the true group were
nevertheless close to the truth: the O map was at 10.0 Å, its C2 version at 16.6 Å. The particles
can settle it.

Candidates come from the detection's table (`candidate_groups`). For each candidate G:
- the pseudo half-set reconstructions of the class are symmetrised by G, about the axes G's
  alignment finds on the full map and in the map's own frame;
- the sample particles of each half are searched globally against the *other* half's map. This
  cross-validation means no particle is compared with a map it helped to build; a C1 map, which
  holds its own particles' noise, would otherwise win.
- A map is scored by the image energy it explains at each particle's best pose, with its best
  scale per Fourier shell s:

      E(G) = sum_s (sum_{b, p in s} q c Re(X conj P))^2 / sum_{b, p in s} q c^2 |P|^2,   q = 1/sigma^2

  (per sample particle). The score does not change with the maps' amplitudes shell by shell. It
  has to be: the candidates' maps differ in how much averaging and interpolation have damped each
  shell, and the log likelihood (the race of starts' score) rewards whichever map's amplitudes
  happen to fit. In the likelihood, the O map above scored 12 units per particle *below* its C2
  version.

A true group averages noise out of both halves and keeps the signal, so its E is the largest. A
group the particle lacks averages different parts of the structure together and loses. Measured
on the suite's finished jobs (benchmarks/results/2026-11-30-sym-auto-particles.md), E was highest
for the true group of every specimen: C4, C7, D7, D2, T, O (two seeds) and I (two seeds). For
the pseudo-D2 C1 haemoglobin it was highest for C1 (two seeds), where the map-only detection says
D2. A false larger group costs 30-160 units and a true group's subgroups 1-30.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass

import torch

from novomap.analysis.confidence import evidence_members
from novomap.estep.driver import PAD, projector_transforms
from novomap.estep.prepare import prepare_batch
from novomap.estep.search import project_references
from novomap.io.particles import ParticleSet
from novomap.physics.euler import euler_to_matrix
from novomap.physics.fourier import power
from novomap.physics.masks import soft_edge_mask
from novomap.physics.window import fourier_window, shift_phases
from novomap.reconstruct import Poses, half_set_maps, particle_ctf
from novomap.symmetry.align import SymmetryAlignment, align_to_symmetry
from novomap.symmetry.detect import DetectionResult, detect_point_group
from novomap.symmetry.groups import POLYHEDRAL_GROUPS, PointGroup, contains_type, point_group
from novomap.symmetry.symmetrise import symmetrise_in_place
from novomap.vdam.config import VdamConfig
from novomap.vdam.iterate import as_devices, expectation, search_setup
from novomap.vdam.state import RunState

# sample particles per half-set: enough to separate true from false groups by many units (see module
# doc), and two global searches of them per candidate cost ~2 s at 64 px on two CPU cores
SAMPLE_PER_HALF = 200
MIN_PER_HALF = 10  # below this in either half-set, the map-only detection decides
# groups the de novo detection turns down that still go to the particles: the most plausible ones by
# score/null, and the polyhedral groups whenever they are plausible at all, since those are the ones
# the map alone under-calls (module doc)
MAX_PLAUSIBLE = 4
PLAUSIBLE_RATIO = 0.8


@dataclass
class GroupByParticles:
    """The group the particles chose, every candidate's explained energy per sample particle
    (`scores`, best first), the map-only detection the candidates came from, and the seconds spent."""

    group: PointGroup
    scores: list[tuple[str, float]]
    detection: DetectionResult
    seconds: float
    alignment: SymmetryAlignment | None = None  # the chosen group's alignment of the map (None for C1), for apply_point_group
    unjudged: str = ""  # why the particles did not score the candidates (the map-only detection decided), if they did not

    def margins(self) -> list[tuple[str, float]]:
        """Each candidate's score minus the best one (0 for the chosen group)."""
        best = self.scores[0][1]
        return [(name, score - best) for name, score in self.scores]


def candidate_groups(detection: DetectionResult) -> list[PointGroup]:
    """C1, the detection's choice, the MAX_PLAUSIBLE groups with the lowest score/null ratio (at most
    PLAUSIBLE_RATIO), T, O, I when their ratio is at most PLAUSIBLE_RATIO, and the polyhedral groups that
    join those MAX_PLAUSIBLE groups (joining_groups: among all plausible ones, high cyclic groups at the
    noise's ratio, 0.78-0.79 on adk_i_tight seed 3, join everything); in order of size."""
    ratios = {row.group: row.score / row.null_score for row in detection.table if row.null_score}
    plausible = sorted((name for name, ratio in ratios.items() if ratio <= PLAUSIBLE_RATIO), key=lambda name: ratios[name])
    rejected = {name for name, ratio in ratios.items() if ratio > PLAUSIBLE_RATIO}
    names = {"C1", detection.point_group, *plausible[:MAX_PLAUSIBLE], *(name for name in plausible if name in POLYHEDRAL_GROUPS), *joining_groups(plausible[:MAX_PLAUSIBLE], rejected)}
    return sorted((point_group(name) for name in names), key=lambda group: (group.order, group.name))


def joining_groups(plausible: list[str], rejected: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The polyhedral groups that join axes of two orders the map shows: for each pair of plausible
    groups (order > 1) neither of which contains the other and which no plausible group contains both
    of, the polyhedral groups that contain both, unless the detection tested them and found them
    implausible (`rejected`).

    The detection refines and tests a group against its null only where its score is low, which a large
    group's rarely is on a C1 map (the map keeps some operators half-way: module doc). On a tight
    icosahedral shell at iteration 70 it found C2, C3, C5 (0.42, 0.57 and 0.52 of their null scores)
    and C10 plausible and never tested I; the particles chose C2, and the run ended in C2 at 1.42x the
    true-pose limit. Offered I on the same reconstruction, they scored it first (212.9 against C2's
    206.2; benchmarks/results/2026-12-07-s61-sym-auto-polyhedral.md)."""
    groups = [point_group(name) for name in plausible if point_group(name).order > 1]
    joined: set[str] = set()
    for first, second in itertools.combinations(groups, 2):
        if contains_type(first, second) or contains_type(second, first):
            continue
        if any(contains_type(group, first) and contains_type(group, second) for group in groups):
            continue
        joined.update(name for name in POLYHEDRAL_GROUPS if contains_type(point_group(name), first) and contains_type(point_group(name), second))
    return [name for name in POLYHEDRAL_GROUPS if name in joined and name not in rejected]


def explained_energy(
    particles: ParticleSet, index: torch.Tensor, poses: Poses, volume: torch.Tensor, sigma2: torch.Tensor, window_size: int, mask_radius_px: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per Fourier shell, (sum q c Re(X conj P), sum q c^2 |P|^2) over particles `index` at `poses`,
    with P the projections of `volume` (N, N, N) on a window of `window_size` px and X the
    particle images, masked and moved to the poses' origins as in the E-step -> two (n_shells,) float64.

    sigma2: (n_optics_groups, N//2+1) noise spectra. The score of a map is sum_s num_s^2 / den_s
    (module doc), the image energy the map explains with its best scale in every shell.
    """
    window = fourier_window(particles.box_size, window_size, volume.device)
    origin_px = torch.stack([poses.origin_x_a[index], poses.origin_y_a[index]], -1).double() / particles.pixel_size_a
    batch = prepare_batch(
        particles.images(index).float(), index, torch.zeros_like(index), particles.optics_group[index], origin_px, window,
        particle_ctf(particles, index, window).float(), sigma2.float(), mask_radius_px,
    )  # fmt: skip
    # prepare_batch moves the images by whole pixels; the rest of the origin is a phase, as in the search
    moved = batch.masked * shift_phases(window, origin_px - batch.origin_px).to(batch.masked.dtype)
    rotations = euler_to_matrix(poses.rot_deg[index], poses.tilt_deg[index], poses.psi_deg[index])
    projections = project_references(projector_transforms(volume[None].float()), rotations, window, PAD)  # (B, P)
    q = batch.inv_sigma2
    cross = (q * batch.ctf * (moved * projections.conj()).real).sum(0).double()
    norm = (q * batch.ctf.square() * power(projections)).sum(0).double()
    n_shells = int(window.shell.max()) + 1
    numerator = torch.zeros(n_shells, dtype=torch.float64).index_add_(0, window.shell.cpu(), cross.cpu())
    denominator = torch.zeros(n_shells, dtype=torch.float64).index_add_(0, window.shell.cpu(), norm.cpu())
    return numerator, denominator


def shell_score(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    """sum_s num_s^2 / den_s over shells with a model (den > 0)."""
    used = denominator > 0
    return float((numerator[used].square() / denominator[used]).sum())


def _search_copy(state: RunState, class_index: int, volume: torch.Tensor) -> RunState:
    """A one-class copy of the run for a scoring search against `volume`: per-particle arrays cloned
    (the search writes them), uniform direction prior (the run's learned one favours its own map)."""
    trial = state.scratch_copy()
    trial.maps = volume[None].to(state.maps.dtype)
    trial.class_fraction = torch.ones(1, dtype=torch.float64)
    trial.direction_prior = torch.full((1, state.direction_prior.shape[1]), 1.0 / state.direction_prior.shape[1], dtype=torch.float64)
    trial.class_number = torch.where(state.class_number == class_index + 1, 1, 0)
    return trial


def cross_validated_score(
    state: RunState, particles: ParticleSet, half: torch.Tensor, class_index: int, sample: torch.Tensor, half_maps: tuple[torch.Tensor, torch.Tensor],
    config: VdamConfig, device,
) -> float:  # fmt: skip
    """Explained energy per sample particle, each half's particles searched against the other half's map."""
    scoring = dataclasses.replace(config, local_searches=False, n_classes=1)
    radius = config.particle_diameter_a / (2 * particles.pixel_size_a)
    numerator = denominator = None
    for h in (0, 1):
        rows = sample[half[sample] == h]
        if rows.numel() == 0:
            continue
        trial = _search_copy(state, class_index, half_maps[1 - h])
        grid, current_size, coarse_size = search_setup(trial, particles, scoring, advance=False)
        expectation(trial, particles, rows, half, grid, current_size, coarse_size, scoring, as_devices(device), {}, with_sums=False)
        poses = Poses(trial.rot_deg, trial.tilt_deg, trial.psi_deg, trial.origin_x_a, trial.origin_y_a)
        num, den = explained_energy(particles, rows, poses, half_maps[1 - h], trial.sigma2, current_size, radius)
        numerator = num if numerator is None else numerator + num
        denominator = den if denominator is None else denominator + den
    return shell_score(numerator, denominator) / max(1, sample.numel()) if numerator is not None else 0.0


def score_sample(members: torch.Tensor, half: torch.Tensor, seed: int, per_half: int = SAMPLE_PER_HALF) -> torch.Tensor:
    """Up to per_half random members of each pseudo half-set (fixed by the seed), sorted."""
    generator = torch.Generator().manual_seed(seed + 29)
    chosen = []
    for h in (0, 1):
        rows = members[half[members] == h]
        chosen.append(rows[torch.randperm(rows.numel(), generator=generator)[:per_half]])
    return torch.cat(chosen).sort().values


def score_groups(
    volume: torch.Tensor, groups: list[PointGroup], state: RunState, particles: ParticleSet, half: torch.Tensor, class_index: int,
    config: VdamConfig, device="cpu",
) -> list[tuple[PointGroup, float, SymmetryAlignment | None]]:  # fmt: skip
    """Each group's cross-validated explained energy per sample particle, for the class's final C1
    reconstruction `volume` (N, N, N) and its particles at the run's final poses, with the group's
    alignment of `volume` (None for C1); best first (ties: the larger group)."""
    members = evidence_members(state.class_number, class_index, config.seed)
    poses = Poses(state.rot_deg, state.tilt_deg, state.psi_deg, state.origin_x_a, state.origin_y_a)
    halves = [m.float() for m in half_set_maps(particles, members, poses, half)]
    n = particles.box_size
    mask = soft_edge_mask((n, n, n), config.particle_diameter_a / (2 * particles.pixel_size_a), config.mask_edge_px)
    sample = score_sample(members, half, config.seed)
    scores = []
    for group in groups:
        alignment = None
        if group.order == 1:
            maps = tuple(m * mask for m in halves)
        else:
            alignment = align_to_symmetry(volume, particles.pixel_size_a, group)
            maps = tuple(symmetrise_in_place(m, group, alignment.rotation, alignment.shift_zyx_px) * mask for m in halves)
        scores.append((group, cross_validated_score(state, particles, half, class_index, sample, maps, config, device), alignment))
    return sorted(scores, key=lambda item: (-item[1], -item[0].order))


def choose_group_by_particles(
    volume: torch.Tensor, state: RunState, particles: ParticleSet, half: torch.Tensor, class_index: int, config: VdamConfig, device="cpu",
    at_least: PointGroup | None = None,
) -> GroupByParticles:  # fmt: skip
    """The point group of the class's final C1 reconstruction `volume` (N, N, N), chosen by its particles
    among the groups the map-only detection finds plausible (module doc).

    at_least: a group already imposed on the run (`--sym auto` chose it mid-run): the candidates are
    then that group and the plausible groups that contain it (symmetry.groups.contains_type), so that a
    subgroup chosen early can grow to the particle's group, never shrink."""
    started = time.perf_counter()
    detection = detect_point_group(volume, particles.pixel_size_a, de_novo=True)
    members = evidence_members(state.class_number, class_index, config.seed)
    if min(int((half[members] == h).sum()) for h in (0, 1)) < MIN_PER_HALF:  # too few particles to judge: the map decides
        group = point_group(detection.point_group) if at_least is None else at_least
        return GroupByParticles(group, [(group.name, 0.0)], detection, time.perf_counter() - started, unjudged="too few particles to judge by")
    candidates = candidate_groups(detection)
    if at_least is not None:
        larger = [group for group in candidates if group.name != at_least.name and contains_type(group, at_least)]
        candidates = [at_least, *larger]
    if len(candidates) == 1:  # nothing to choose between
        why = "no other group plausible enough to put to the particles" if at_least is None else f"no larger group containing {at_least.name} plausible"
        return GroupByParticles(candidates[0], [(candidates[0].name, 0.0)], detection, time.perf_counter() - started, unjudged=why)
    scores = score_groups(volume, candidates, state, particles, half, class_index, config, device)
    chosen, _, alignment = scores[0]
    return GroupByParticles(chosen, [(group.name, score) for group, score, _ in scores], detection, time.perf_counter() - started, alignment)
