"""The benchmark suite's specimens (benchmarks/specimens.py): each map builds, has its point group
and fits inside its mask; the suite spans the sizes, symmetries, box tightness and SNR it claims.

Building all nine maps takes ~25 s of CPU (gemmi density of up to 137,000 atoms; over 2 minutes on
the loaded 2-core machine), so that test is marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import specimens  # noqa: E402

NEEDED = [specimens.ADK_CHAIN, specimens.HAEMOGLOBIN, specimens.BETAGAL]


def test_the_suite_spans_what_it_claims():
    suite = list(specimens.SPECIMENS.values())
    assert len(suite) >= 7
    groups = {s.symmetry for s in suite}
    assert {"C1", "T", "O", "I"} <= groups
    assert any(g.startswith("C") and g != "C1" for g in groups) and any(g.startswith("D") for g in groups)
    fractions = [s.particle_fraction for s in suite]
    assert min(fractions) <= 0.5 and max(fractions) >= 0.9
    assert max(s.mask_fraction for s in suite) <= 0.95
    assert all(s.mask_fraction > s.particle_fraction for s in suite)
    snrs = [s.snr for s in suite]
    assert min(snrs) <= 0.05 and max(snrs) >= 0.1
    assert all(1000 <= s.n_particles <= 2000 for s in suite)
    assert len({s.key() for s in suite}) == len(suite)


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in NEEDED), reason="shared atomic models not found")
@pytest.mark.parametrize("name", list(specimens.SPECIMENS))
def test_specimen_map_builds_is_symmetric_and_fits_its_mask(name, one_thread):
    specimen = specimens.SPECIMENS[name]
    built = specimens.build_specimen(specimen, cache=None)  # from scratch, no cache
    box = specimen.box
    assert tuple(built.volume.shape) == (box, box, box)
    assert torch.isfinite(built.volume).all()
    assert abs(built.particle_fraction - specimen.particle_fraction) < 0.01
    assert specimens.symmetry_cc(built.volume, specimen.symmetry) > 0.99
    mask_px = built.mask_diameter_a / built.pixel_size_a
    assert built.diameter_a < built.mask_diameter_a
    assert specimens.fraction_outside(built.volume, mask_px) < 0.01
    # the map is not blank or inverted: most positive density lies inside the particle
    assert specimens.fraction_outside(built.volume, built.diameter_a / built.pixel_size_a) < 0.02


def _adk_subunit() -> tuple[np.ndarray, np.ndarray]:
    """The adenylate kinase chain's heavy atoms, centred, and its C-alpha atoms (Å)."""
    subunit = specimens._read_structure(str(specimens.ADK_CHAIN))
    points = specimens._positions(subunit[0])
    points = points - points.mean(0)
    return points, points[specimens._ca_mask(subunit[0])]


@pytest.mark.skipif(not specimens.ADK_CHAIN.is_file(), reason="shared atomic models not found")
def test_pack_cluster_copies_touch_without_clashing_and_are_reproducible():
    from scipy.spatial import cKDTree

    points, ca = _adk_subunit()
    placements = specimens.pack_cluster(points, ca, copies=5, seed=3)
    again = specimens.pack_cluster(points, ca, copies=5, seed=3)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(placements, again))
    copies = [points @ rotation.T + shift for rotation, shift in placements]
    # centred on the aggregate's centroid
    assert np.abs(np.concatenate(copies).mean(0)).max() < 1e-6
    for index, copy in enumerate(copies):
        others = [c for j, c in enumerate(copies) if j != index]
        closest = cKDTree(np.concatenate(others)).query(copy, k=1)[0].min()
        # no clash, and docked: within a 0.5 Å step of the contact distance of some other copy
        assert specimens.MIN_CONTACT_A <= closest < specimens.MIN_CONTACT_A + 0.6
    rotations = [rotation for rotation, _ in placements]
    assert all(abs(np.linalg.det(r) - 1) < 1e-9 for r in rotations)
    assert not any(np.allclose(rotations[0], r) for r in rotations[1:])


@pytest.mark.skipif(not specimens.ADK_CHAIN.is_file(), reason="shared atomic models not found")
def test_a_chain_cluster_is_an_elongated_rod_of_docked_copies():
    from scipy.spatial import cKDTree

    points, ca = _adk_subunit()
    placements = specimens.pack_cluster(points, ca, copies=4, seed=5, chain=True)
    copies = [points @ rotation.T + shift for rotation, shift in placements]
    atoms = np.concatenate(copies)
    # elongated: the longest principal axis is well over twice the others
    spread = np.sqrt(np.linalg.eigvalsh(np.cov((atoms - atoms.mean(0)).T)))
    assert spread[2] > 2.0 * spread[1]
    # each copy docks on the one before it, and no two copies clash
    for index in range(1, len(copies)):
        closest = cKDTree(copies[index - 1]).query(copies[index], k=1)[0].min()
        assert specimens.MIN_CONTACT_A <= closest < specimens.MIN_CONTACT_A + 0.6
        others = np.concatenate([c for j, c in enumerate(copies) if j != index])
        assert cKDTree(others).query(copies[index], k=1)[0].min() >= specimens.MIN_CONTACT_A


def test_the_compact_default_keeps_the_cached_maps_keys():
    # the keys name cached maps and simulated data sets: a new field at its default must not change them
    assert specimens.SPECIMENS["hb16_c1"].key() == "da60967a9c"
    assert specimens.HELD_OUT["hb6_c1"].key() == "2d9c2a6e12"
    rod = specimens.HELD_OUT["hb4_rod"]
    assert rod.key() != dataclasses.replace(rod, cluster_shape="compact").key()


def test_a_cached_data_set_simulated_with_other_settings_is_refused(tmp_path):
    """bench_suite.check_simulation: the data-set folder's name does not hold the SNR or defocus, so its
    record does; a folder without one (written before it existed) is used as it is."""
    import bench_suite

    settings = {"n": 10, "snr": 0.08, "defocus_min_a": 10000.0}
    bench_suite.check_simulation(tmp_path, settings)  # no record: nothing to compare
    (tmp_path / bench_suite.SIMULATION_RECORD).write_text(json.dumps(settings))
    bench_suite.check_simulation(tmp_path, dict(settings))
    with pytest.raises(SystemExit, match=r"other settings \(snr: 0.08 there, 0.05 now\)"):
        bench_suite.check_simulation(tmp_path, {**settings, "snr": 0.05})


def test_every_warning_of_the_evidence_has_a_short_name_in_the_suite_tables():
    """bench_suite.weak_reasons: a run made weak on every count gets one name per warning, none 'other'
    (a reworded warning in analysis.confidence must be renamed here too)."""
    import bench_suite
    from novomap.analysis.confidence import Evidence, warnings_for

    evidence = Evidence(
        pixel_size_a=3.54, box=64, n_half=(700, 700), half_fsc=[1.0] * 33, half_fsc05_a=None, half_fsc0143_a=None,
        agreement_fsc=[1.0] * 33, agreement_fsc05_a=15.0, agreement_cc=0.5, agreement_shift_px=0.3,
        radial_share=0.95, mean_pmax=0.3, seconds=1.0, map_agreement=0.9, map_agreement_min=0.95,
        ring={"flagged": True, "misfit": 0.05, "ratio": 3.0},
        finalists={"starts": (1, 2), "pose_agreement": (0.402, 0.404), "same_solution": False, "maps_agree_a": 30.0,
                   "chosen_start": 1},
    )  # fmt: skip
    names = bench_suite.weak_reasons(warnings_for(evidence))
    assert names == ["half-sets", "vs VDAM", "ball", "ring", "finalists", "unsettled"]
    roundish = dataclasses.replace(evidence, radial_share=0.75, mean_pmax=0.99, ring=None, finalists=None)
    assert "roundish" in bench_suite.weak_reasons(warnings_for(roundish))
    assert bench_suite.weak_reasons(["a warning nobody named"]) == ["other"]


def test_the_suite_summary_keeps_the_batch_that_finished_last_on_a_day(tmp_path):
    """suite_summary.latest_runs: of two batches of one day holding the same seed, the one that finished
    later wins whatever the files' names; files without a finishing time come first."""
    import suite_summary

    def batch(name: str, ratio: float, finished: str | None) -> None:
        run = {"seed": 3, "ratio": ratio, "fsc05_a": 10.0 * ratio, "wrong_fold": False}
        record = {"label": name, "extra_args": "", "iter": 100, "sim_seed": 7, "git": {"commit": "abc"},
                  "specimens": [{"name": "hb_c1", "n_particles": specimens.SPECIMENS["hb_c1"].n_particles, "runs": [run]}]}  # fmt: skip
        if finished is not None:
            record["finished"] = finished
        (tmp_path / f"2026-12-08-suite-{name}.json").write_text(json.dumps(record))

    batch("a-later", 2.18, "2026-12-08T05:54:30+00:00")
    batch("b-earlier", 2.79, "2026-12-08T05:10:51+00:00")
    batch("c-unrecorded", 1.93, None)
    latest = suite_summary.latest_runs(tmp_path, "2026-12-01")
    assert latest["hb_c1"][3][0]["ratio"] == 2.18
