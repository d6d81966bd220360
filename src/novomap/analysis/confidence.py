"""How sure is the run? Evidence, from the data themselves, that the initial model is right.

Three figures, computed once at the end of `novomap initial-model` (two half reconstructions, a few
FFTs: seconds) and written to DIR/evidence.json, run.out and the report:

* half-set FSC: the class's particles are split into the job's pseudo half-sets (vdam.iterate.
  pseudo_halves), each half is reconstructed at the final poses, and the FSC between the two (inside
  the soft particle mask) says to which resolution the data agree with themselves. The poses of both
  halves were found against one common map, so this is NOT a gold-standard FSC: noise aligned to a
  wrong map agrees with itself too (overfitting). It is optimistic, and useful as a lower bar: a map
  whose own half-sets disagree at domain scale (20-30 Å) is not supported by its particles.
* agreement: the final reconstruction against the last VDAM map (after the best shift): the final
  pass re-assigned every particle with the VDAM map, so when VDAM had found the structure the new
  map looks like it (cc near 1 at low resolution); a run that has not settled gives poses that
  rebuild something else.
* featureless: how much of the map (low-passed to domain scale, inside the mask, about its centre
  of mass) is a function of the radius alone. A ball scores near 1; real particles well below.
  With the mean pmax beside it: a ball with pmax near 0 found no orientation, a ball with pmax
  near 1 assigned particles confidently to a structure that has none (noise or junk driven).
* ring misfit (analysis.ring_spectra): how far the final reconstruction's projections at the final
  poses miss the angular structure of the particles' Fourier rings (noise-free second moments, no
  in-plane angle needed), read against its noise floor. A map averaged over a particle's
  near-symmetric poses is rounder than the particles: the wrong folds of the suite's large C1
  aggregate passed every other test here and fail this one. The reconstruction, not the last VDAM
  map: the VDAM map carries its own errors (a running average of regularised mini-batch steps), which
  the particles' poses do not explain; a right icosahedral map missed 1.4-2.0 % of the spectrum, where
  the reconstruction from the same poses missed 0.14 %, the noise floor, and a wrong fold's or a split
  run's reconstruction misses as much as its VDAM map (benchmarks/results/2026-12-04-s36-ring-reconstruction.md).

Each threshold below is a named constant with the reason for its value. A weak run gets warnings;
evidence.json keeps every figure for benchmarks.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from novomap.analysis.ring_spectra import FLOOR_FACTOR, MISFIT_FLAG, MODERATE_FLOOR_FACTOR, MODERATE_MISFIT_FLAG, flag_rule, ring_check
from novomap.maps.align import best_translation
from novomap.maps.fsc import fsc, resolution_at
from novomap.maps.transform import center_of_mass, centred_coordinates, lowpass, shift_volume
from novomap.physics.masks import soft_edge_mask

EVIDENCE_JSON = "evidence.json"

# An initial model is useful when it shows domains (20-30 Å; docs/report.md: 15-30 Å against the
# truth is typical). The half-set FSC is optimistic (common reference), so a map whose half-sets do
# not even agree to 25 Å at FSC 0.5 has no reliable domain-scale features.
WEAK_HALF_FSC05_A = 25.0
# On a coarse grid (large pixels, e.g. a binned working grid) 25 Å may lie near Nyquist, where the
# reconstruction's regularisation and interpolation blur the last shells: there the bar is 3x the
# Nyquist resolution instead (the resolution a map can show with 1.5 px per half-period and room for
# the mask's and the regulariser's damping).
WEAK_NYQUIST_FACTOR = 3.0
# The final reconstruction is one more EM step from the last VDAM map, so when VDAM has found the
# structure the two share it at low resolution, where the masked real-space cc is decided (the VDAM
# map is regularised, the reconstruction is not, so even a right map stays below 1). Measured: a
# reconstruction at random poses against the right map 0.32, a 15-iteration run on 300 simulated
# particles whose map is poor (FSC 26 Å against the truth) 0.57, 12 iterations on 1000 simulated
# beta-gal particles 0.79 (a poor map too, 49 Å against the truth, that passes every test here: the
# evidence can miss a wrong map, see docs/guide.md). Below 0.7 the final pass's poses rebuilt a
# different structure.
MIN_AGREEMENT_CC = 0.7
# With the group imposed during the run (explicit --sym), the two maps agree far better when VDAM has
# found the structure: 25 right runs of the suite (C4, C7, D2, I; 87 kDa-960 kDa) and of the real
# tutorial particles 0.956-0.994, while the one wrong fold seen with an imposed group (the tight
# octahedral adk_o, seed 1: FSC 60 Å against the truth, half-sets 20 Å, everything else "consistent")
# gave 0.82-0.83 (benchmarks/results/2026-12-01-recentre-narrow.md). A C1 run of a symmetric particle
# agrees less even when right (an icosahedral one: 0.69), so the bar is raised only where the group was imposed.
MIN_AGREEMENT_CC_IMPOSED = 0.9
AGREEMENT_RESOLUTION_A = 20.0  # both maps low-passed here before the cc (see assess_maps)
# Share of a map's variance (low-passed to SHAPE_RESOLUTION_A, inside the mask) explained by its
# radial profile. Measured: beta-gal (RELION's poses of the tutorial particles) 0.43, simulated runs
# of beta-gal, adenylate kinase and haemoglobin 0.49-0.71; a reconstruction at random poses (a ball) 0.96.
SPHERICAL_SHARE = 0.85
SHAPE_RESOLUTION_A = 25.0  # domain scale: detail below it is not needed to tell a ball from a particle
# The mean pmax of the final pass: below LOW_PMAX the search found no preferred orientation for most
# particles (runs that found the structure end between about 0.3 and 0.85 at 64 px); above HIGH_PMAX
# nearly every particle sits on one pose, which with a nearly round map means confident assignments
# to noise. pmax alone says little (it also depends on SNR and sampling), so it is only read
# together with a high radial share (a roundish map), where either extreme means failure.
LOW_PMAX = 0.05
HIGH_PMAX = 0.9
ROUNDISH_SHARE = 0.7  # radial share above which an extreme pmax is taken as a warning
# Half reconstructions from at most this many particles (both halves together): the FSC of an
# initial model is settled long before, and the cost stays a few seconds on a CPU at any data size.
MAX_EVIDENCE_PARTICLES = 20_000
# the race's two finalists ended in different maps (vdam.finalists) whose half-set agreements at their
# poses differ by less than this: weak. On hb2_c1_40 (ten seeds) a wrong run trailed its right
# runner-up by 0.012-0.042; two right runs differed by 0.003-0.008
CLOSE_FINALISTS = 0.005
MAX_SHIFT_PX = 8.0  # the final reconstruction may sit a few px off the VDAM map (final-pass origins)


@dataclass
class Evidence:
    """The figures of one run (all resolutions in Å; None where a curve never crosses)."""

    pixel_size_a: float
    box: int
    n_half: tuple[int, int]
    half_fsc: list[float]
    half_fsc05_a: float | None
    half_fsc0143_a: float | None
    agreement_fsc: list[float]
    agreement_fsc05_a: float | None
    agreement_cc: float
    agreement_shift_px: float
    radial_share: float
    mean_pmax: float
    seconds: float
    warnings: list[str] = field(default_factory=list)
    # the race of random starts (vdam.restarts): [{"iteration", "starts", "scores"}, ...] and the winner
    start_rounds: list[dict] = field(default_factory=list)
    chosen_start: int | None = None
    # the race's runner-up carried to n_iter (vdam.finalists): the choice there, as the iteration's figures
    # record it, with "iteration"; None when none was carried
    finalists: dict | None = None
    # the cuts of the runners-up before n_iter (vdam.finalists.prune), as recorded, earliest first
    finalists_pruned: list[dict] = field(default_factory=list)
    # vdam.convergence at the last iteration: the maps' agreement with those convergence_lag
    # iterations before (None: not measured), the bar for a settled map, and the iterations run past --iter
    map_agreement: float | None = None
    map_agreement_min: float = 0.0
    extra_iterations: int = 0
    # whether the run stopped settled (vdam.convergence.settled: also at the check before, when there
    # was one); None: not judged (old evidence files): map_agreement >= map_agreement_min decides
    map_settled: bool | None = None
    # the bar for agreement_cc: MIN_AGREEMENT_CC, or MIN_AGREEMENT_CC_IMPOSED when the group was imposed during the run
    agreement_min: float = MIN_AGREEMENT_CC
    # analysis.ring_spectra: the particles' angular ring spectra against the final reconstruction's projections
    # (RingCheck.to_json(); None: not measured)
    ring: dict | None = None
    # the job's attempts when a flagged one was run again (initial_model.run_initial_model): per attempt its
    # seed, ring misfit, whether it was flagged and its folder ("." for the kept one), and which (1-based) was kept
    attempts: list[dict] = field(default_factory=list)
    kept_attempt: int | None = None
    # a run in C1 that was still changing: the group the map-only detection finds on its final
    # reconstruction when it is not C1 (a symmetric particle run in C1 settles slowly), else None
    c1_map_looks: str | None = None
    # whether the run stopped at --iter because its unsettled map looked symmetric (initial_model.stops_as_symmetric)
    stopped_as_symmetric: bool = False

    @property
    def weak(self) -> bool:
        return bool(self.warnings)

    def line(self) -> str:
        """One line for run.out and the terminal."""
        verdict = "WEAK: " + "; ".join(self.warnings) if self.warnings else "consistent"
        return (
            f"evidence: half-set FSC {_fmt_a(self.half_fsc05_a)} (0.5), {_fmt_a(self.half_fsc0143_a)} (0.143); "
            f"final vs last VDAM map cc {self.agreement_cc:.2f}; radial share {self.radial_share:.2f}, "
            f"mean pmax {self.mean_pmax:.2f}{self.ring_phrase()}{self.starts_phrase()}{self.finalists_phrase()}{self.convergence_phrase()}"
            f"{self.attempts_phrase()} -> {verdict}"
        )

    def attempts_phrase(self) -> str:
        """'; attempt 2 of 2 kept (ring misfit 0.020; attempt 1: 0.061, in attempt1/)' when the run was repeated,
        with each attempt's race agreement where every attempt's race chose between finalists and none was
        flagged, as initial_model.decided_better then chooses ('ring misfit 0.016, race agreement 0.493;
        attempt 1: 0.014, 0.407 in attempt1/'), else ''."""
        if len(self.attempts) < 2 or self.kept_attempt is None:
            return ""
        raced = decided_by_race(self.attempts)

        def figures(a: dict) -> str:
            return f"{a['ring_misfit']:.3f}" + (f", {a['race_agreement']:.3f}" if raced else "")

        others = ", ".join(
            f"attempt {i + 1}{_with_group(a)}: {figures(a)} in {a['folder']}/" for i, a in enumerate(self.attempts) if i + 1 != self.kept_attempt and a["ring_misfit"] is not None
        )
        kept = self.attempts[self.kept_attempt - 1]
        classes = f"{kept['classes']} classes, " if kept.get("classes", 1) != self.attempts[0].get("classes", 1) else ""
        group = f"--sym {kept['symmetry']}, " if kept.get("symmetry") else ""
        agreement = f", race agreement {kept['race_agreement']:.3f}" if raced else ""
        return f"; attempt {self.kept_attempt} of {len(self.attempts)} kept ({group}{classes}ring misfit {kept['ring_misfit']:.3f}{agreement}; {others})"

    def ring_phrase(self) -> str:
        """'; ring misfit 0.016 (1.4x noise)' when the ring spectra were compared, else ''."""
        if not self.ring:
            return ""
        return f"; ring misfit {self.ring['misfit']:.3f} ({self.ring['ratio']:.1f}x noise)"

    def convergence_phrase(self) -> str:
        """'; N iterations past --iter until the map settled' when the run went on (vdam.convergence), else ''."""
        if not self.extra_iterations:
            return ""
        return f"; {self.extra_iterations} iterations past --iter " + ("until the map settled" if self.settled() else "(the most allowed)")

    def settled(self) -> bool:
        """Whether the map had stopped changing at the last iteration (True when not measured)."""
        if self.map_agreement is None:
            return True
        if self.map_settled is not None:
            return self.map_settled
        return self.map_agreement >= self.map_agreement_min

    def starts_phrase(self) -> str:
        """'; best of 5 starts (...)' when the run raced random starts, else ''."""
        if not self.start_rounds:
            return ""
        last = self.start_rounds[-1]
        scores = sorted(last["scores"], reverse=True)
        margin = f", {scores[0] - scores[1]:.1f} ahead of the next" if len(scores) > 1 else ""
        return f"; best of {len(self.start_rounds[0]['starts'])} random starts (log L at iteration {last['iteration']}{margin})"

    def finalists_phrase(self) -> str:
        """'; the runner-up (start 4) ... start 4 kept' when the race's runner-up was carried to the end
        (or, with a group imposed, half way: mid_run), else ''."""
        if not self.finalists:
            return ""
        choice = self.finalists
        (leader, other), (a, b) = choice["starts"], choice["pose_agreement"]
        maps = f"the same map ({choice['maps_agree_a']:.1f} Å)" if choice["same_solution"] else f"another map (agreeing to {choice['maps_agree_a']:.1f} Å only)"
        reached = f"had at iteration {choice['iteration']}" if choice.get("mid_run") else "ended in"
        return f"; the race's runner-up (start {other}) {reached} {maps}; half-set agreement {a:.3f} (start {leader}) vs {b:.3f}, start {choice['chosen_start']} kept"

    def to_json(self) -> dict:
        data = asdict(self)
        data["n_half"] = list(self.n_half)
        data["resolution_inv_a"] = [shell / (self.box * self.pixel_size_a) for shell in range(len(self.half_fsc))]
        data["nyquist_a"] = 2 * self.pixel_size_a
        data["weak"] = self.weak
        data["thresholds"] = {
            "weak_half_fsc05_a": weak_resolution_a(self.pixel_size_a),
            "min_agreement_cc": self.agreement_min,
            "spherical_share": SPHERICAL_SHARE,
            "roundish_share": ROUNDISH_SHARE,
            "low_pmax": LOW_PMAX,
            "high_pmax": HIGH_PMAX,
            "ring_misfit": MISFIT_FLAG,
            "ring_floor_factor": FLOOR_FACTOR,
            "ring_misfit_moderate": MODERATE_MISFIT_FLAG,
            "ring_floor_factor_moderate": MODERATE_FLOOR_FACTOR,
        }
        return data


def _fmt_a(value: float | None) -> str:
    return "never below" if value is None else f"{value:.1f} Å"


def weak_resolution_a(pixel_size_a: float) -> float:
    """Half-set FSC 0.5 resolution worse than this is weak evidence (see WEAK_HALF_FSC05_A)."""
    return max(WEAK_HALF_FSC05_A, WEAK_NYQUIST_FACTOR * 2.0 * pixel_size_a)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def evidence_members(class_number: torch.Tensor, class_index: int, seed: int, limit: int = MAX_EVIDENCE_PARTICLES) -> torch.Tensor:
    """Rows of the class's particles used for the half-sets: all, or a random `limit` of them (fixed by the seed)."""
    members = torch.nonzero(class_number == class_index + 1).squeeze(1)
    if members.numel() > limit:
        chosen = torch.randperm(members.numel(), generator=torch.Generator().manual_seed(seed + 1))[:limit]
        members = members[chosen.sort().values]
    return members


def radial_share(volume: torch.Tensor, pixel_size_a: float, mask: torch.Tensor) -> float:
    """Share (0-1) of the masked, low-passed map's variance that its radial profile explains (see module doc)."""
    n = volume.shape[-1]
    smooth = lowpass(volume.double(), pixel_size_a, max(SHAPE_RESOLUTION_A, 2.5 * pixel_size_a)) * mask
    centre = center_of_mass(smooth, positive_only=True)
    radius = (centred_coordinates(n, torch.float64) - centre.flip(0)).norm(dim=-1)  # coordinates are (x, y, z)
    shells = torch.round(radius).long().flatten()
    weights = mask.double().flatten()
    values = smooth.flatten()
    count = torch.bincount(shells, weights=weights)
    profile = torch.bincount(shells, weights=weights * values) / count.clamp(min=1e-12)
    mean = float((weights * values).sum() / weights.sum())
    total = float((weights * (values - mean) ** 2).sum())
    explained = float((weights * (profile[shells] - mean) ** 2).sum())
    return min(1.0, explained / total) if total > 0 else 1.0


def _masked_cc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    w = mask.double()
    a = a.double() - (w * a).sum() / w.sum()
    b = b.double() - (w * b).sum() / w.sum()
    denominator = math.sqrt(float((w * a * a).sum() * (w * b * b).sum()))
    return float((w * a * b).sum()) / denominator if denominator > 0 else 0.0


def assess(
    half_maps: tuple[torch.Tensor, torch.Tensor],
    final_map: torch.Tensor,
    vdam_map: torch.Tensor,
    pixel_size_a: float,
    mask_radius_px: float,
    mask_edge_px: float,
    mean_pmax: float,
    started: float | None = None,
) -> Evidence:
    """The evidence from the two half maps, the final reconstruction and the last VDAM map (all (N, N, N))."""
    started = time.perf_counter() if started is None else started
    half_maps = (half_maps[0].detach().cpu(), half_maps[1].detach().cpu())  # all on the CPU, whatever the run used
    final_map, vdam_map = final_map.detach().cpu(), vdam_map.detach().cpu()
    n = final_map.shape[-1]
    mask = soft_edge_mask((n, n, n), mask_radius_px, mask_edge_px)
    half_curve = fsc(half_maps[0].double() * mask, half_maps[1].double() * mask)
    # the final map onto the VDAM map: same frame (the poses were found against it), at most a small shift
    shift = best_translation(vdam_map.double(), final_map.double(), MAX_SHIFT_PX)
    moved = shift_volume(final_map.double(), shift)
    agreement = fsc(vdam_map.double() * mask, moved * mask)
    # compared at domain scale: the final reconstruction is unregularised, and its high-resolution
    # noise alone pulled a right run's cc to 0.65 (real beta-gal seed 1, 12.8 Å to the truth)
    resolution_a = max(AGREEMENT_RESOLUTION_A, 2.5 * pixel_size_a)
    cc = _masked_cc(lowpass(vdam_map.double(), pixel_size_a, resolution_a), lowpass(moved, pixel_size_a, resolution_a), mask)
    share = radial_share(moved, pixel_size_a, mask)
    evidence = Evidence(
        pixel_size_a=float(pixel_size_a),
        box=int(n),
        n_half=(0, 0),
        half_fsc=[float(v) for v in half_curve],
        half_fsc05_a=_finite(resolution_at(half_curve, 0.5, n, pixel_size_a)),
        half_fsc0143_a=_finite(resolution_at(half_curve, 0.143, n, pixel_size_a)),
        agreement_fsc=[float(v) for v in agreement],
        agreement_fsc05_a=_finite(resolution_at(agreement, 0.5, n, pixel_size_a)),
        agreement_cc=cc,
        agreement_shift_px=float(shift.norm()),
        radial_share=share,
        mean_pmax=float(mean_pmax),
        seconds=0.0,
    )
    evidence.warnings = warnings_for(evidence)
    evidence.seconds = time.perf_counter() - started
    return evidence


def close_finalists(evidence: Evidence) -> bool:
    """Whether the race's finalists, carried to the end, ended in different maps whose half-set
    agreements differ by less than CLOSE_FINALISTS (the particles hardly tell them apart)."""
    choice = evidence.finalists
    if choice is None or choice.get("mid_run") or choice["same_solution"]:
        return False
    return abs(choice["pose_agreement"][0] - choice["pose_agreement"][1]) < CLOSE_FINALISTS


def chosen_agreement(finalists: dict | None) -> float | None:
    """The half-set agreement at its poses (vdam.finalists.pose_agreement) of the start a race kept when it
    chose between its finalists at --iter (an Evidence.finalists record); None when it carried none or
    chose half way."""
    if not finalists or finalists.get("mid_run"):
        return None
    return float(max(finalists["pose_agreement"]))


def decided_by_race(attempts: list[dict]) -> bool:
    """Whether a job's attempts (Evidence.attempts) were chosen among by their race agreements
    (initial_model.decided_better): every attempt has one and none was flagged as a wrong fold."""
    return all(a.get("race_agreement") is not None and not a.get("flagged") for a in attempts)


def warnings_for(evidence: Evidence) -> list[str]:
    """The reasons (short phrases) to doubt the map; empty when the evidence is strong."""
    reasons = []
    bar = weak_resolution_a(evidence.pixel_size_a)
    if evidence.half_fsc05_a is None or evidence.half_fsc05_a > bar:
        reasons.append(f"the half-sets agree only to {_fmt_a(evidence.half_fsc05_a)} at FSC 0.5 (weak above {bar:.0f} Å)")
    if evidence.agreement_cc < evidence.agreement_min:
        reasons.append(f"the final reconstruction differs from the last VDAM map (cc {evidence.agreement_cc:.2f} < {evidence.agreement_min:g})")
    if evidence.radial_share > SPHERICAL_SHARE:
        reasons.append(f"the map is nearly a featureless ball (radial share {evidence.radial_share:.2f} > {SPHERICAL_SHARE})")
    elif evidence.radial_share > ROUNDISH_SHARE and not LOW_PMAX <= evidence.mean_pmax <= HIGH_PMAX:
        reasons.append(
            f"a roundish map (radial share {evidence.radial_share:.2f}) with mean pmax {evidence.mean_pmax:.2f} "
            f"(outside {LOW_PMAX}-{HIGH_PMAX})"
        )
    if evidence.ring and evidence.ring["flagged"]:
        # a map averaged over a particle's near-symmetric poses is rounder than the particles (analysis.ring_spectra)
        reasons.append(
            f"the map's projections lack angular structure the particles have (ring misfit {evidence.ring['misfit']:.3f}, "
            f"{evidence.ring['ratio']:.1f}x its noise floor; flagged {flag_rule()}): "
            "possibly a wrong fold"
        )
    if close_finalists(evidence):
        a, b = evidence.finalists["pose_agreement"]
        reasons.append(
            f"two random starts ended in different maps that the particles hardly tell apart (half-set agreement {a:.3f} "
            f"and {b:.3f}): try another --seed and compare the maps"
        )
    if not evidence.settled():
        # a map still changing at the last iteration has not found its structure yet: a large asymmetric
        # particle went from a wrong fold to the right one in the 50 iterations after such a state
        compared = "<" if evidence.map_agreement < evidence.map_agreement_min else ">=, but not at the check before:"
        remedy = "more --iter or --max-extra-iter may help"
        if evidence.stopped_as_symmetric:  # initial_model.stops_as_symmetric: more iterations would not settle it
            remedy = "the run stopped at --iter: a symmetric particle's C1 map keeps changing"
        reasons.append(
            f"the map was still changing at the last iteration (agreement {evidence.map_agreement:.2f} with the map of "
            f"20 iterations before {compared} {evidence.map_agreement_min}; {remedy})"
        )
        if evidence.c1_map_looks:  # spread over symmetry mates, a symmetric particle's C1 map settles slowly
            reasons[-1] += (
                f"; the C1 map looks {evidence.c1_map_looks}-symmetric (the map alone): if the particle is, "
                f"--sym {evidence.c1_map_looks} or --sym auto gives its map in less time"
            )
    return reasons


def assess_run(state, particles, half: torch.Tensor, class_index: int, final_map: torch.Tensor, config) -> Evidence:
    """Evidence for a finished run: the class's pseudo half-sets at their final poses (see module doc)."""
    from novomap.reconstruct import Poses, half_set_maps

    started = time.perf_counter()
    members = evidence_members(state.class_number, class_index, config.seed)
    poses = Poses(state.rot_deg, state.tilt_deg, state.psi_deg, state.origin_x_a, state.origin_y_a)
    halves = half_set_maps(particles, members, poses, half)
    pmax = float(state.max_probability.cpu()[members].double().mean()) if members.numel() else 0.0
    radius = config.particle_diameter_a / (2 * particles.pixel_size_a)
    evidence = assess(halves, final_map, state.maps[class_index], particles.pixel_size_a, radius, config.mask_edge_px, pmax, started)
    evidence.n_half = (int((half[members] == 0).sum()), int((half[members] == 1).sum()))
    ring = ring_check(particles, members, poses, final_map, seed=config.seed)
    evidence.ring = {**ring.to_json(), "map": "final reconstruction"} if ring is not None else None
    race = next((f for f in state.history if "start_rounds" in f), None)
    if race is not None:
        evidence.start_rounds, evidence.chosen_start = race["start_rounds"], race["chosen_start"]
    evidence.finalists = next(({"iteration": f["iteration"], **f["finalists"]} for f in state.history if "finalists" in f), None)
    evidence.finalists_pruned = [f["finalists_pruned"] for f in state.history if "finalists_pruned" in f]
    check = next((f for f in reversed(state.history) if "map_agreement" in f), None)
    if check is not None and check["map_agreement"] is not None:
        evidence.map_agreement, evidence.map_agreement_min = float(check["map_agreement"]), float(config.convergence_min_fsc)
        from novomap.vdam.convergence import settled

        evidence.map_settled = settled(state.history, int(check["iteration"]), evidence.map_agreement, config)
    evidence.extra_iterations = max(0, int(state.iteration) - int(config.n_iter))
    if state.symmetry_axes is not None:  # the group was imposed on the class maps during the run
        evidence.agreement_min = MIN_AGREEMENT_CC_IMPOSED
    evidence.warnings = warnings_for(evidence)
    return evidence


def write_evidence(out_dir: str | Path, evidence: Evidence, symmetry: dict | None = None, pooled: list | None = None) -> Path:
    """DIR/evidence.json: every figure (and the symmetry decision and the classes pooled into the
    largest one, analysis.pool_classes.PooledClass, when given) for the report and benchmarks."""
    from novomap.io.atomic import write_text_atomic

    data = evidence.to_json()
    if symmetry is not None:
        data["symmetry"] = symmetry
    if pooled:
        data["pooled_classes"] = [asdict(p) for p in pooled]
    path = Path(out_dir) / EVIDENCE_JSON
    write_text_atomic(path, json.dumps(data, indent=1))
    return path


def _with_group(attempt: dict) -> str:
    """' (--sym I)' for an attempt run with a group of its own (symmetry.group_trial), else ''."""
    return f" (--sym {attempt['symmetry']})" if attempt.get("symmetry") else ""
