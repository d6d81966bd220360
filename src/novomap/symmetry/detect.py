"""Which point group does a map have? Score Cn, Dn (n <= max_order), T, O and I, each after aligning.

Every candidate group G is aligned (its best rotation found) and scored with the spec-5.2 score
s_G = ||R - S||^2 / ||R||^2 on the fine working copy (novomap.symmetry.align). A group the map
really has still scores above 0, for two reasons, and the threshold is built from both:
- noise: the noise in the map is not symmetric. Its share of the score is estimated from the map
  itself, half-map style: the power in the outermost non-empty Fourier shells of the full map (up
  to Nyquist, or to where a low-pass truncated the map) is taken as white noise within the map's
  band; a noise volume like that (fixed seed) goes through exactly the pipeline that makes the
  working copy, and is scored with the same group at the same rotation. This noise
  score n_G already holds the (1 - 1/|G|) factor and the partial self-overlap of smooth noise
  under small rotations. Where the outer shells still hold signal, the noise is overestimated,
  which only makes the test more lenient.
- resampling: a symmetric map differs slightly from its interpolated rotated copies. That floor,
  eps, is C1's self-consistency: two interpolations of the same map at different sub-voxel offsets.
G is accepted when s_G <= (1 + NOISE_TOLERANCE) n_G + (1 - 1/|G|) (2 eps + MARGIN). A group the map
lacks adds the signal's own asymmetry on top of the same noise, which cancels from the comparison
because n_G is computed for the same group and rotation; the largest accepted group is chosen
(ties: the lower score relative to its threshold).
Groups whose alignment is clearly far from symmetric after the coarse search are scored there,
without the costly fine refinement (`refined` False in the table).

De novo maps (de_novo=True, what `--sym auto` uses on the final C1 reconstruction) are asymmetric
beyond noise: alignment errors leave an error E in the map that no noise estimate sees, so a
group the map has can score far above the threshold above. There a group G is also accepted, on
the map's own scale, when all three hold (scores on the same fine copy, at G's alignment):
- ratio: s_G <= DE_NOVO_RATIO x nu_G, nu_G = the mean score of G in NULL_ROTATIONS fixed random
  orientations (the same operators about axes the map does not have). Pose errors cost a true
  group a small share of the null score; a group the map lacks scores about as badly as the null.
- every operator: for each g of G, d_g = ||g.R - R||^2 / (2 ||R||^2) <= DE_NOVO_OPERATOR_RATIO x the
  mean d of the same operator in the null orientations: a group is not accepted on the strength of
  its subgroup while its other operators are as bad as random (D7 on a C7 ring, O on a C4 map).
- consistency: max_g d_g <= DE_NOVO_SPREAD x e, e = the smallest d_g of any operator of any group
  scored (the map's best single axis: its error level, the asymmetry E leaves under a true
  operator). The operators of a true group see the same error; a pseudo-symmetry's extra
  operators (the 2-folds of a flat C7 ring, the pseudo 2-folds of haemoglobin) add their own
  residual on top, so a low-order pseudo-symmetry is not promoted to a larger group.
Groups whose coarse ratio is plausible are refined in this mode, whatever the noise threshold.
Calibration (reconstructions of the benchmark specimens at 3-8 deg pose errors): true groups
score/null 0.03-0.28, worst operator/null <= 0.4, <= 2.1 x error level; groups the maps lack >= 0.5
score/null, or pseudo-symmetric extensions (D7 on a C7 ring) 2.8 x error level and more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from novomap.maps import so3_search
from novomap.maps.transform import centred_coordinates, frequency_radius, rotate_volume, sample_at, shift_volume
from novomap.physics.euler import axis_angle_to_matrix, euler_to_matrix
from novomap.symmetry import align
from novomap.symmetry.axis_scan import angular_power, cyclic_scores, local_directions
from novomap.symmetry.groups import PointGroup, point_group
from novomap.symmetry.score import conjugate_score_fn, symmetry_residual

NOISE_TOLERANCE = 0.5  # the white-noise estimate may be off by this fraction
MARGIN = 0.005  # absolute slack (alignment to ~0.25 deg, rounding) for nearly noise-free maps
SCAN_GATE = 3.0  # coarse-refine a candidate when its coarse score <= SCAN_GATE x rough threshold + 0.02
REFINE_GATE = 3.0  # fine-refine a group when its score <= REFINE_GATE x threshold
FINE_SIZE = 24  # px: detection scores at Nyquist ~ 2.5 px of the particle box, enough to tell groups apart
AXIS_SPACING_DEG = 7.5
DIHEDRAL_STEP_DEG = 2.0
LOCAL_STEP_DEG = 1.0
_NOISE_SEED = 20240611
EMPTY_SHELL = 1e-6  # shells with less mean power than this fraction of the strongest are empty
# beyond this noise fraction (1 / (1 + NOISE_TOLERANCE)) every group's threshold exceeds the score of any map
# (a group the map lacks scores at most 1 - 1/|G|): the test could turn nothing down, so only C1 is named
NO_SIGNAL_FRACTION = 1.0 / (1.0 + NOISE_TOLERANCE)
# de novo mode (module doc); calibrated on reconstructions at 3-8 deg pose errors and VDAM runs
# s_G / nu_G (null score: G in random orientations): the middle of the gap between true groups (<= 0.28 in the
# calibration) and absent ones (>= 0.5); a real beta-gal VDAM map scored D2 at 0.36 (results/2026-11-30-suite-starts.md)
DE_NOVO_RATIO = 0.4
DE_NOVO_OPERATOR_RATIO = 0.5  # each operator's d_g / its null d
DE_NOVO_SPREAD = 2.4  # each operator's d_g / the map's error level e (its best single operator)
DE_NOVO_GATE = 2.0  # refine a group when its coarse s_G / nu_G <= DE_NOVO_GATE x DE_NOVO_RATIO
DE_NOVO_SCAN_GATE = 0.5  # coarse-align candidates up to this coarse score (their axes may be poor)
NULL_ROTATIONS = 4
_NULL_SEED = 20261202
# a k-fold axis of each polyhedral group in RELION's frame, k = the order of its largest rotation
_POLYHEDRAL_AXES = {"T": (3, (0.0, 0.0, 1.0)), "O": (4, (0.0, 0.0, 1.0)), "I": (5, (0.525731114, 0.0, 0.850650807))}


@dataclass(frozen=True)
class GroupScore:
    """One row of the detection table: score <= threshold means accepted."""

    group: str
    order: int
    score: float
    threshold: float
    accepted: bool
    refined: bool
    null_score: float | None = None  # de novo mode: nu_G, the score of G in random orientations
    note: str = ""  # de novo mode: why the map's own scale accepted or turned down the group


@dataclass
class DetectionResult:
    """point_group: the chosen name; table: every candidate in the order tried; noise_fraction (of the
    working copy's power) and resampling_floor (eps); rotation (3, 3): the chosen group's alignment
    of the re-centred map (as in align_to_symmetry)."""

    point_group: str
    table: list[GroupScore]
    noise_fraction: float
    resampling_floor: float
    rotation: torch.Tensor
    note: str = ""  # why no group was scored (a map without signal), else empty


@dataclass(frozen=True)
class NoiseModel:
    """A noise volume scaled like the fine working copy, its power fraction, and the resampling floor."""

    noise: torch.Tensor
    fraction: float
    floor: float
    scan_floor: float = 0.0  # de novo mode: coarse-refine candidates at least up to this coarse score


def band_limit(spectrum_power: torch.Tensor, radius: torch.Tensor) -> float:
    """Highest shell (Fourier px) that still holds power: maps are often truncated below Nyquist."""
    shells = torch.round(radius).long().flatten()
    limit = int(radius.shape[0] // 2)
    power = torch.bincount(shells, weights=spectrum_power.flatten(), minlength=limit + 1)[: limit + 1]
    counts = torch.bincount(shells, minlength=limit + 1)[: limit + 1].clamp(min=1)
    mean = power / counts
    filled = torch.nonzero(mean[1:] > EMPTY_SHELL * float(mean[1:].max())).flatten()
    return float(filled.max() + 1) if filled.numel() else float(limit)


def white_noise_like(centred: torch.Tensor) -> torch.Tensor:
    """Noise (N, N, N) as bright as the map's outermost non-empty Fourier shells, white up to that shell.

    The outer 20% of the map's band (up to Nyquist, or to where a low-pass truncated it) is taken
    as noise; the noise volume is white within the same band and empty beyond it, like the map.
    """
    n = centred.shape[-1]
    spectrum = torch.fft.rfftn(centred.double())
    radius = frequency_radius(n)
    power = spectrum.abs() ** 2
    top = band_limit(power, radius)
    outer = (radius >= min(0.8 * top, top - 1.5)) & (radius <= top + 0.5)
    variance = float(power[outer].mean()) / n**3  # white noise: E|F|^2 = N^3 sigma^2
    generator = torch.Generator().manual_seed(_NOISE_SEED)
    noise = torch.randn(centred.shape, generator=generator, dtype=torch.float64) * variance**0.5
    inside = radius <= top + 0.5
    return torch.fft.irfftn(torch.fft.rfftn(noise) * inside, s=noise.shape).float()


def noise_model(maps: align.WorkingMaps) -> NoiseModel:
    """Estimate the noise in the fine working copy (see module doc) and the resampling floor."""
    size = maps.fine.shape[-1]
    raw_map = so3_search.working_copy(maps.centred, maps.crop, size, normalise=False)
    raw_noise = so3_search.working_copy(white_noise_like(maps.centred), maps.crop, size, normalise=False)
    scale = 1.0 / max(float(raw_map.norm()), 1e-30)  # the fine copy is raw_map * scale
    noise = raw_noise * scale
    return NoiseModel(noise, min(1.0, float(noise.double().norm() ** 2)), resampling_floor(maps.fine))


def resampling_floor(work: torch.Tensor) -> float:
    """C1 self-consistency: how much two interpolations of the same map differ, relative to its power.

    The map is sampled on rotated grids twice: directly, and from a copy Fourier-shifted by a generic
    sub-pixel offset d at the grid moved by d. Both read the same continuous map at the same points,
    but from different sub-voxel positions, exactly as R and g.R do for a symmetric map. Returns
    mean ||first - second||^2 / (2 ||W||^2) over three fixed generic rotations.
    """
    angles = torch.tensor([[37.0, 53.0, 71.0], [113.0, 97.0, 29.0], [251.0, 131.0, 199.0]], dtype=torch.float64)
    rotations = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    offset = torch.tensor([0.37, 0.61, 0.23], dtype=torch.float64)  # x, y, z px
    shifted = shift_volume(work, offset.flip(0))
    points = centred_coordinates(work.shape[-1], torch.float64)
    norm = float((work.double() ** 2).sum())
    total = 0.0
    for rotation in rotations:
        positions = points @ rotation  # rows r^T A = (A^T r)^T
        first = sample_at(work, positions).double()
        second = sample_at(shifted, positions + offset).double()
        total += float(((first - second) ** 2).sum())
    return total / (2 * len(rotations) * max(norm, 1e-30))


def threshold(order: int, noise_score: float, floor: float) -> float:
    """Largest score of a group of this order that still counts as present (see module doc)."""
    return (1.0 + NOISE_TOLERANCE) * noise_score + (1.0 - 1.0 / order) * (2.0 * floor + MARGIN)


def rough_threshold(order: int, model: NoiseModel) -> float:
    """threshold() before any alignment, taking the noise score as (1 - 1/|G|) x noise fraction."""
    return threshold(order, (1.0 - 1.0 / order) * model.fraction, model.floor)


def _refine_gate(order: int, model: NoiseModel) -> float:
    return max(SCAN_GATE * rough_threshold(order, model) + 0.02, model.scan_floor)


def _cyclic_starts(
    maps: align.WorkingMaps, model: NoiseModel, orders: list[int]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per order n: coarse rotations (K, 3, 3) putting the best Cn axes on z, and their Cn scores (K,).

    One cylindrical-harmonic scan gives exact Cn scores of every order on a 7.5-deg grid of axes; the
    best two axes per order that may be present are then re-scanned on a fine local grid around them
    (shared by all orders, since different orders usually pick the same axes). Best first.
    """
    directions = so3_search.direction_grid(AXIS_SPACING_DEG, hemisphere=True)
    scores = cyclic_scores(angular_power(maps.coarse, directions), orders)
    picks = {}
    for column, n in enumerate(orders):
        chosen = so3_search.select_distinct(so3_search.rotations_for_directions(directions), scores[:, column], 2,
                                            4 * AXIS_SPACING_DEG, directions_only=True)
        picks[n] = [int(i) for i in chosen if float(scores[i, column]) <= _refine_gate(n, model)] or [int(chosen[0])]
    local = {}  # grid direction index -> (local directions (M, 3), their scores (M, orders))
    for index in sorted({i for chosen in picks.values() for i in chosen}):
        nearby = local_directions(directions[index], AXIS_SPACING_DEG, LOCAL_STEP_DEG)
        local[index] = (nearby, cyclic_scores(angular_power(maps.coarse, nearby), orders))
    starts = {}
    for column, n in enumerate(orders):
        best = [(float(local[i][1][:, column].min()), local[i][0][int(local[i][1][:, column].argmin())])
                for i in picks[n]]
        best.sort(key=lambda item: item[0])
        axes = torch.stack([direction for _, direction in best])
        starts[n] = (so3_search.rotations_for_directions(axes), torch.tensor([v for v, _ in best], dtype=torch.float64))
    return starts


def _dihedral_starts(
    maps: align.WorkingMaps, model: NoiseModel, n: int, cyclic: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dn from the Cn axis frames (K, 3, 3): scan the in-plane angle of the 2-folds (DIHEDRAL_STEP_DEG).

    Only the 2-folds are scored (the axis is fixed). Dn contains Cn, so when the Cn axes are already
    implausible they are passed on unchanged. Scores are the scan's proxy (best first).
    """
    axes, cyclic_values = cyclic
    if float(cyclic_values[0]) > _refine_gate(2 * n, model):
        return axes, cyclic_values
    group = point_group(f"D{n}")
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    proper = group.operators[torch.linalg.det(group.operators) > 0]
    twofolds = proper[(proper @ z)[:, 2] < -1 + 1e-6][:3]  # half-turns about in-plane axes
    score_fn = conjugate_score_fn(maps.coarse, twofolds)
    steps = max(1, round(180.0 / n / DIHEDRAL_STEP_DEG))
    angles = torch.arange(steps, dtype=torch.float64) * (180.0 / n / steps)
    spins = euler_to_matrix(torch.zeros_like(angles), torch.zeros_like(angles), angles)
    candidates = (spins[None] @ axes[:, None]).reshape(-1, 3, 3)  # Rz(phi) A keeps the axis on z
    values = so3_search.evaluate(score_fn, candidates)
    order = torch.argsort(values, stable=True)[: axes.shape[0]]
    return candidates[order], values[order]


def _polyhedral_start(
    maps: align.WorkingMaps, model: NoiseModel, name: str, cyclic: dict[int, tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """T, O, I: full coarse search, unless the map has no plausible axis of the group's highest order.

    Then the best such axis is put where the group has one (a cheap, honest upper-bound alignment).
    """
    group = point_group(name)
    fold, axis = _POLYHEDRAL_AXES[name]
    axes, values = cyclic[fold]
    if float(values[0]) <= _refine_gate(group.order, model):
        return align.coarse_alignments(maps, group)
    target = torch.tensor(axis, dtype=torch.float64)
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    turn = torch.linalg.cross(z, target)
    angle = float(torch.rad2deg(torch.arccos((z @ target).clamp(-1, 1))))
    to_axis = axis_angle_to_matrix(turn, angle) if turn.norm() > 1e-9 else torch.eye(3, dtype=torch.float64)
    return to_axis @ axes, values  # (B A)^T target = A^T z: the map's axis lands on the group's axis


def _candidate_starts(
    maps: align.WorkingMaps, model: NoiseModel, max_order: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Coarse alignments (rotations (K, 3, 3), coarse scores (K,), best first) of every candidate group."""
    orders = sorted(set(range(2, max_order + 1)) | {3, 4, 5})
    cyclic = _cyclic_starts(maps, model, orders)
    starts = {f"C{n}": cyclic[n] for n in orders if n <= max_order}
    for n in range(2, max_order + 1):
        starts[f"D{n}"] = _dihedral_starts(maps, model, n, cyclic[n])
    for name in ("T", "O", "I"):
        starts[name] = _polyhedral_start(maps, model, name, cyclic)
    return starts


def _scores(maps: align.WorkingMaps, model: NoiseModel, group: PointGroup, rotation: torch.Tensor):
    """(score, threshold) of a group at a rotation, both on the fine copy.

    The noise score never exceeds the noise fraction, so a score far above rough_threshold() is
    rejected without scoring the noise volume (the rough threshold is then reported).
    """
    residual, power = symmetry_residual(maps.fine, group, rotation)
    power = max(power, 1e-30)
    score = residual / power
    limit = rough_threshold(group.order, model)
    if score <= REFINE_GATE * threshold(group.order, model.fraction, model.floor):
        noise_residual, _ = symmetry_residual(model.noise, group, rotation)
        limit = threshold(group.order, noise_residual / power, model.floor)
    return score, limit


def null_rotations() -> torch.Tensor:
    """NULL_ROTATIONS fixed rotations (K, 3, 3), uniform on SO(3) (seeded Gaussian quaternions)."""
    q = torch.randn((NULL_ROTATIONS, 4), generator=torch.Generator().manual_seed(_NULL_SEED), dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


def operator_terms(work: torch.Tensor, group: PointGroup, rotation: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(s_G, d (|G| - 1,)) at a rotation: the score and, per non-identity operator g, ||g.R - R||^2 / (2 ||R||^2)."""
    reference = rotate_volume(work, rotation).double()
    power = max(float((reference**2).sum()), 1e-30)
    total = reference.clone()
    d = []
    operators = group.operators[1:] @ rotation
    for start in range(0, operators.shape[0], 16):
        moved = rotate_volume(work, operators[start : start + 16]).double()
        total += moved.sum(dim=0)
        d.append(((moved - reference) ** 2).flatten(1).sum(1) / (2 * power))
    symmetrised = total / group.order
    d = torch.cat(d) if d else torch.zeros(0, dtype=torch.float64)
    return float(((reference - symmetrised) ** 2).sum()) / power, d


def null_terms(work: torch.Tensor, group: PointGroup) -> tuple[float, torch.Tensor]:
    """(nu_G, mean null d per operator (|G| - 1,)): operator_terms averaged over null_rotations()."""
    terms = [operator_terms(work, group, q) for q in null_rotations()]
    return sum(t[0] for t in terms) / len(terms), torch.stack([t[1] for t in terms]).mean(dim=0)


@dataclass
class DeNovoTerms:
    """One group's de novo evidence at its alignment: score, null score, per-operator d and null d."""

    score: float
    null: float
    d: torch.Tensor
    null_d: torch.Tensor

    @property
    def ratio(self) -> float:
        return self.score / max(self.null, 1e-12)

    @property
    def operator_ratio(self) -> float:
        return float((self.d / self.null_d.clamp(min=1e-12)).max()) if self.d.numel() else 0.0


def de_novo_verdict(terms: DeNovoTerms, error_level: float) -> tuple[bool, str]:
    """Whether the map's own scale accepts the group (module doc), and why in a few words."""
    if terms.ratio > DE_NOVO_RATIO:
        return False, f"score/null {terms.ratio:.2f} > {DE_NOVO_RATIO}"
    if terms.operator_ratio > DE_NOVO_OPERATOR_RATIO:
        return False, f"worst operator/null {terms.operator_ratio:.2f} > {DE_NOVO_OPERATOR_RATIO}"
    spread = float(terms.d.max()) / max(error_level, 1e-12) if terms.d.numel() else 0.0
    if spread > DE_NOVO_SPREAD:
        return False, f"worst operator {spread:.1f} x the map's error level > {DE_NOVO_SPREAD}"
    return True, f"score/null {terms.ratio:.2f}, worst operator/null {terms.operator_ratio:.2f}, {spread:.1f} x error level"


def _score_group(
    maps: align.WorkingMaps,
    model: NoiseModel,
    group: PointGroup,
    start: tuple[torch.Tensor, torch.Tensor],
    refine: bool = True,
    de_novo: bool = False,
) -> tuple[GroupScore, torch.Tensor, DeNovoTerms | None]:
    """Table row and rotation of one group, refined on the fine copy only when it may be present.

    de_novo: also refine when the coarse score is plausible against the null score, and return the
    group's DeNovoTerms at the refined rotation (None when the group is not plausible).
    """
    rotations, values = start
    rotation = rotations[0]
    score, limit = _scores(maps, model, group, rotation)
    refined = refine and score <= REFINE_GATE * limit
    gate = DE_NOVO_GATE * DE_NOVO_RATIO
    null = None
    if de_novo and score <= gate:  # nu_G <= 1: a larger score cannot pass the ratio test
        null, null_d = null_terms(maps.fine, group)
        refined = refined or score / max(null, 1e-12) <= gate
    if refined:
        rotation = align.fine_alignment(maps, group, rotations, values, 1.0, 0.25)[0]
        score, limit = _scores(maps, model, group, rotation)
    terms = None
    if null is not None and refined:
        aligned_score, d = operator_terms(maps.fine, group, rotation)
        terms = DeNovoTerms(aligned_score, null, d, null_d)
    return GroupScore(group.name, group.order, score, limit, score <= limit, refined), rotation, terms


def _de_novo_rows(rows: dict[str, GroupScore], terms: dict[str, DeNovoTerms]) -> dict[str, GroupScore]:
    """Rows with the de novo verdict (module doc) added: accepted by the noise threshold or by the map's own scale."""
    if not terms:
        return rows
    error_level = min((float(t.d.min()) for t in terms.values() if t.d.numel()), default=0.0)
    updated = dict(rows)
    for name, t in terms.items():
        row = rows[name]
        ok, note = de_novo_verdict(t, error_level)
        threshold = max(row.threshold, DE_NOVO_RATIO * t.null) if ok else row.threshold
        updated[name] = replace(row, accepted=row.accepted or ok, threshold=threshold, null_score=t.null, note=note)
    return updated


def _no_signal(maps: align.WorkingMaps, model: NoiseModel) -> str:
    """Why the map cannot show any symmetry (constant, or as bright as its own noise), or ""."""
    if not float(maps.fine.abs().max()) > 0:
        return "the map is constant: no symmetry can be told"
    if model.fraction >= NO_SIGNAL_FRACTION:
        return f"the map is mostly noise ({model.fraction:.0%} of its power): no symmetry can be told"
    return ""


def detect_point_group(
    volume: torch.Tensor, pixel_size_a: float, max_order: int = 24, de_novo: bool = False
) -> DetectionResult:
    """Detect the point group of a map (N, N, N) among C1, Cn, Dn (2 <= n <= max_order), T, O and I.

    Groups are tried from the largest order down; once a group is accepted, the smaller ones are
    only scored at their coarse alignment (refined False), since they cannot change the answer.
    de_novo: a map from alignment with errors (a de novo run's C1 reconstruction): a group is also
    accepted on the map's own scale (module doc), and every plausible group is refined, since the
    map's error level comes from its best operators.
    Groups are named in RELION's frames (I = I2); the returned rotation aligns the re-centred map to
    the chosen group's frame. pixel_size_a is not needed (the analysis is in pixels). Runs on the CPU.
    """
    del pixel_size_a
    maps = align.prepare(torch.as_tensor(volume, dtype=torch.float32).cpu(), fine_size=FINE_SIZE)
    model = noise_model(maps)
    blank = _no_signal(maps, model)
    if blank:
        return DetectionResult("C1", [GroupScore("C1", 1, 0.0, 0.0, True, True)], model.fraction, model.floor, torch.eye(3, dtype=torch.float64), blank)
    if de_novo:
        model = replace(model, scan_floor=DE_NOVO_SCAN_GATE)
    starts = _candidate_starts(maps, model, max_order)
    groups = sorted((point_group(name) for name in starts), key=lambda g: -g.order)
    rows: dict[str, GroupScore] = {}
    rotations = {"C1": torch.eye(3, dtype=torch.float64)}
    terms: dict[str, DeNovoTerms] = {}
    found_order = 0
    for group in groups:
        refine = de_novo or group.order >= found_order
        row, rotation, group_terms = _score_group(maps, model, group, starts[group.name], refine, de_novo)
        rows[group.name] = row
        rotations[group.name] = rotation
        if group_terms is not None:
            terms[group.name] = group_terms
        if row.accepted and row.refined:
            found_order = max(found_order, group.order)
    rows = _de_novo_rows(rows, terms)
    table = [GroupScore("C1", 1, 0.0, 0.0, True, True)] + [rows[name] for name in starts]
    candidates = [row for row in table if row.accepted and (row.refined or row.order == 1)]
    chosen = max(candidates, key=lambda row: (row.order, -row.score / max(row.threshold, 1e-12)))
    return DetectionResult(chosen.group, table, model.fraction, model.floor, rotations[chosen.group])
