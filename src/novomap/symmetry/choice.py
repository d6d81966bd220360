"""`--sym auto`: the point group of a finished run's map, chosen by novomap.symmetry.detect.

The job runs in C1 either way; only the last step (apply_point_group) differs. With an explicit group the map is aligned
to that group and symmetrised; with `auto` the group is first detected on the same C1 map (the final
reconstruction), then exactly the same alignment and symmetrisation follow, so the result is the
map the explicit group would have given. The decision and the detection table go to
DIR/symmetry.txt, evidence.json (under "symmetry"), run.out and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from novomap.maps.transform import shift_volume
from novomap.physics.masks import soft_edge_mask
from novomap.symmetry.align import SymmetryAlignment, align_to_symmetry
from novomap.symmetry.detect import DetectionResult, detect_point_group
from novomap.symmetry.groups import PointGroup, point_group
from novomap.symmetry.symmetrise import symmetrise

AUTO = "auto"
SYMMETRY_TXT = "symmetry.txt"


def is_auto(symmetry: str) -> bool:
    return symmetry.strip().lower() == AUTO


def requested_group(symmetry: str) -> PointGroup | None:
    """The explicit group (validated), or None for `auto`."""
    return None if is_auto(symmetry) else point_group(symmetry)


def choose_group(volume: torch.Tensor, pixel_size_a: float, group: PointGroup | None) -> tuple[PointGroup, DetectionResult | None]:
    """The group to apply: the explicit one, or the one detected on the C1 map (with its detection)."""
    if group is not None:
        return group, None
    # de novo mode: the final reconstruction is asymmetric beyond noise (alignment errors), so groups are
    # also judged on the map's own scale (novomap.symmetry.detect, module doc)
    detection = detect_point_group(volume, pixel_size_a, de_novo=True)
    return point_group(detection.point_group), detection


@dataclass
class AppliedSymmetry:
    """The final map (N, N, N) with its group applied, the group, the alignment and (auto only) the detection."""

    volume: torch.Tensor
    group: PointGroup
    alignment: SymmetryAlignment
    detection: DetectionResult | None


def apply_point_group(
    volume: torch.Tensor, pixel_size_a: float, group: PointGroup | None, config, alignment: SymmetryAlignment | None = None
) -> AppliedSymmetry:
    """Align a C1 map to its point group's standard axes and symmetrise it (group None: detect it first).
    alignment: the group's align_to_symmetry of this very map when the caller has it already (not redone).

    The group's alignment and symmetrisation do not depend on how the group was chosen, so `auto`
    gives the map of the explicit group whenever it detects that group. With config.flatten_solvent
    the centred, symmetrised map is multiplied by the soft particle mask (config.particle_diameter_a,
    config.mask_edge_px), as the class maps are. C1 hands the map back unchanged.
    """
    group, detection = choose_group(volume, pixel_size_a, group)
    if alignment is None or alignment.group != group.name:
        alignment = align_to_symmetry(volume, pixel_size_a, group)
    if group.order == 1:
        return AppliedSymmetry(alignment.volume, group, alignment, detection)
    final_map = symmetrise_on_axes(volume, pixel_size_a, group, alignment.rotation, alignment.shift_zyx_px, config)
    return AppliedSymmetry(final_map, group, alignment, detection)


#: align_near's result stands when its score is at most this; above it, the global search runs. The final
#: maps of finished runs score 0.002-0.037 at their best alignment (0.086 after only 12 iterations), a
#: wrong fold ~0.45; a local refinement from stale axes that lost scored 18x the global search's
#: (benchmarks/results/2026-12-02-final-alignment.md)
NEAR_MAX_SCORE = 0.15


def align_near(
    volume: torch.Tensor, pixel_size_a: float, group: PointGroup, axes: tuple[torch.Tensor, torch.Tensor], max_score: float = NEAR_MAX_SCORE
) -> SymmetryAlignment | None:
    """The group's alignment of a map (N, N, N) refined locally from axes found on an earlier version of
    it -> the alignment, or None when it scores above max_score (then search globally).

    axes: (rotation (3, 3), shift_zyx_px (3,)) of symmetry.impose on the class map the final map was
    made from. A global search costs 0.4-1.5 s on one core for C3-D7 maps of 64 px, 1.6-2.6 s for O
    and T, 4.3 s for I; from the imposed axes, with the centre refined as after a global search,
    0.2-0.5 s, 0.7-0.9 s and 2.6 s. On the final maps of 45 finished runs (C3 to I, real and
    simulated) it scored as well as the global search (at most 0.0009 higher, lower on 24).
    """
    # the centre as well: the final map is a new reconstruction combined with VDAM maps, and a centre
    # off by a third of a pixel doubles the score of a D2 map
    alignment = align_to_symmetry(volume, pixel_size_a, group, near=axes, refine_near_centre=True)
    return alignment if alignment.score <= max_score else None


def symmetrise_on_axes(
    volume: torch.Tensor, pixel_size_a: float, group: PointGroup, rotation: torch.Tensor, shift_zyx_px: torch.Tensor, config
) -> torch.Tensor:
    """A map (N, N, N) moved by shift_zyx_px, rotated by `rotation` onto the group's standard axes and
    symmetrised (an alignment's rotation and shift, in this map's pixels), then, with
    config.flatten_solvent, multiplied by the soft particle mask -> (N, N, N). Group C1: moved and masked."""
    # rotation and symmetrisation composed: the map is interpolated once, not twice
    centred = shift_volume(volume, shift_zyx_px)
    final_map = symmetrise(centred, group, rotation) if group.order > 1 else centred
    if config.flatten_solvent:  # now the particle is centred: flatten the solvent as in the class maps
        n = volume.shape[-1]
        final_map = final_map * soft_edge_mask((n, n, n), config.particle_diameter_a / (2 * pixel_size_a), config.mask_edge_px)
    return final_map


def reason(detection: DetectionResult) -> str:
    """Why the detected group was chosen, in one phrase: its score, and the larger groups turned down."""
    chosen = next(row for row in detection.table if row.group == detection.point_group)
    rejected = sorted((row for row in detection.table if row.order > chosen.order and row.refined), key=lambda row: row.score / max(row.threshold, 1e-12))
    if detection.note:
        text = detection.note
    elif chosen.order == 1:
        text = "no group of order > 1 scored within its threshold"
    else:
        text = f"score {chosen.score:.4f} <= threshold {chosen.threshold:.4f}, the largest group accepted"
    if rejected:
        closest = rejected[0]
        text += f"; closest larger group {closest.group} scored {closest.score:.4f} > {closest.threshold:.4f}"
    return text


def particle_reason(by_particles) -> str:
    """Why the particles chose their group, in one phrase (by_particles: analysis.symmetry_by_particles.GroupByParticles)."""
    if by_particles.unjudged:  # the map-only detection decided (too few particles, or only C1 plausible)
        return reason(by_particles.detection) + f" ({by_particles.unjudged})"
    chosen = by_particles.group.name
    others = ", ".join(f"{name} {margin:+.2f}" for name, margin in by_particles.margins()[1:])
    text = (f"chosen by the particles: {chosen}'s symmetrised half maps explain the other half's images best "
            f"(explained energy per particle against {chosen}: {others or 'no other candidate'})")
    if by_particles.detection.point_group != chosen:
        text += f"; the map alone suggested {by_particles.detection.point_group}"
    return text


def symmetry_record(requested: str, group: PointGroup, alignment_score: float, detection: DetectionResult | None, by_particles=None) -> dict:
    """The decision as plain data (evidence.json's "symmetry"). by_particles: the particles' choice
    (analysis.symmetry_by_particles.GroupByParticles, for `initial-model --sym auto`), or None; it
    holds the map-only detection its candidates came from, which then stands for `detection`."""
    record: dict = {"requested": requested, "applied": group.name, "alignment_score": float(alignment_score)}
    if by_particles is not None:
        detection = by_particles.detection
        record["particle_scores"] = [{"group": name, "explained": float(score)} for name, score in by_particles.scores]
        record["map_only_group"] = by_particles.detection.point_group
    if detection is not None:
        record["reason"] = particle_reason(by_particles) if by_particles is not None else reason(detection)
        record["noise_fraction"] = float(detection.noise_fraction)
        record["resampling_floor"] = float(detection.resampling_floor)
        record["table"] = [
            {"group": row.group, "order": row.order, "score": float(row.score), "threshold": float(row.threshold),
             "accepted": bool(row.accepted), "refined": bool(row.refined),
             "null_score": None if row.null_score is None else float(row.null_score), "note": row.note}
            for row in detection.table
        ]  # fmt: skip
    return record


def summary_line(record: dict) -> str:
    """One line for run.out and the terminal."""
    trial = record.get("group_trial")  # symmetry.group_trial: polyhedral groups run imposed after a weak --sym auto map
    if trial is not None and trial["kept"]:
        return f"symmetry: {record['applied']} (--sym auto): {trial['summary']}"
    line = _decision_line(record)
    return f"{line}; {trial['summary']}" if trial is not None else line


def _decision_line(record: dict) -> str:
    if "table" in record:
        when, check = "", record.get("larger_groups_check", {}).get("summary")
        if record.get("chosen_at_iteration") is not None:
            when = f" at iteration {record['chosen_at_iteration']}, imposed from there"
            if record.get("enlarged_from") is not None:
                when += f" ({record['enlarged_from']} from iteration {record['enlarged_from_iteration']})"
        elif record.get("enlarged_from") is not None:  # enlarged at the end: the check says how
            return f"symmetry: {record['applied']} detected (--sym auto) ({check}): {record['reason']}"
        return f"symmetry: {record['applied']} detected (--sym auto){when}: {record['reason']}" + (f"; {check}" if check else "")
    return f"symmetry: {record['applied']} as given (--sym), alignment score {record['alignment_score']:.3f}"


def table_lines(record: dict) -> list[str]:
    """The detection table as text (as `novomap detect-symmetry` prints it); empty for an explicit group."""
    if "table" not in record:
        return []
    lines = [f"{'group':<6} {'order':>5} {'score':>9} {'threshold':>9}  refined  accepted  {'null':>7}  de novo test"]
    for row in record["table"]:
        null = row.get("null_score")
        lines.append(
            f"{row['group']:<6} {row['order']:>5} {row['score']:>9.4f} {row['threshold']:>9.4f}  "
            f"{'yes' if row['refined'] else 'no':<7}  {'yes' if row['accepted'] else 'no':<8}  "
            f"{'-' if null is None else f'{null:.4f}':>7}  {row.get('note', '')}".rstrip()
        )
    lines.append(f"noise fraction {record['noise_fraction']:.4f}, resampling floor {record['resampling_floor']:.5f}")
    if "particle_scores" in record:
        best = record["particle_scores"][0]["explained"]
        lines += ["", "the plausible groups judged by the particles (cross-validated explained energy per particle; the largest wins):"]
        lines += [f"{row['group']:<6} {row['explained']:>12.2f} {row['explained'] - best:>+9.2f}" for row in record["particle_scores"]]
    return lines


def write_symmetry_file(out_dir: str | Path, record: dict) -> Path:
    """DIR/symmetry.txt: the group applied, why, and (for auto) the whole detection table."""
    from novomap.io.atomic import write_text_atomic

    lines = [f"point group: {record['applied']}", f"requested: --sym {record['requested']}", summary_line(record)]
    lines.append(f"alignment score of the applied group (0 = symmetric): {record['alignment_score']:.4f}")
    table = table_lines(record)
    if table:
        header = "detection on the C1 final reconstruction (score <= threshold: accepted; the largest accepted group wins)"
        if "particle_scores" in record:
            where = "the C1 final reconstruction"
            if record.get("chosen_at_iteration") is not None:
                where = f"the C1 reconstruction at the poses of iteration {record['chosen_at_iteration']}"
            header = f"map-only detection on {where} (score <= threshold: accepted); its plausible groups then went to the particles"
        lines += ["", header + ":", *table]
    path = Path(out_dir) / SYMMETRY_TXT
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
