"""outputs.continuation: a checkpoint's fingerprint, and what a continuation may change."""

from __future__ import annotations

import dataclasses

import pytest

from novomap.errors import InputError
from novomap.outputs.continuation import CONTINUE_MAY_CHANGE, check_continuation, file_sha256, run_fingerprint
from novomap.vdam.config import VdamConfig


@pytest.fixture
def star(tmp_path):
    path = tmp_path / "particles.star"
    path.write_text("data_particles\nloop_\n_rlnImageName #1\n1@a.mrcs\n")
    return path


def test_fingerprint_holds_the_file_hash_and_the_fixed_settings_only(star):
    config = VdamConfig(n_iter=50, seed=3)
    fingerprint = run_fingerprint(star, config, {"max_resolution": 7.0})
    assert fingerprint["particles_sha256"] == file_sha256(star) and len(fingerprint["particles_sha256"]) == 64
    assert fingerprint["options"]["seed"] == 3 and fingerprint["options"]["max_resolution"] == 7.0
    assert not CONTINUE_MAY_CHANGE & set(fingerprint["options"])  # --iter etc. may change


def test_a_continuation_may_change_the_iterations_but_not_the_settings(star):
    stored = run_fingerprint(star, VdamConfig(n_iter=50), {})
    check_continuation(stored, run_fingerprint(star, VdamConfig(n_iter=100, pool=8), {}), star, "run_it010_optimiser.star")
    check_continuation({}, stored, star, "old.star")  # checkpoints from before fingerprints: nothing to compare
    # float settings compare with a relative tolerance (written and read back through text)
    near = run_fingerprint(star, VdamConfig(particle_diameter_a=200.0 * (1 + 1e-9)), {})
    check_continuation(run_fingerprint(star, VdamConfig(particle_diameter_a=200.0), {}), near, star, "c.star")
    with pytest.raises(InputError, match=r"--sampling 15, not --sampling 7.5") as caught:
        check_continuation(stored, run_fingerprint(star, dataclasses.replace(VdamConfig(), healpix_order=2), {}), star, "run_it010_optimiser.star")
    assert "run_it010_optimiser.star" in str(caught.value)
    with pytest.raises(InputError, match=r"--no-flatten-solvent"):
        check_continuation(stored, run_fingerprint(star, VdamConfig(flatten_solvent=False), {}), star, "c.star")


def test_other_particles_are_refused(star, tmp_path):
    stored = run_fingerprint(star, VdamConfig(), {})
    other = tmp_path / "other.star"
    other.write_text(star.read_text().replace("1@a", "2@a"))
    with pytest.raises(InputError, match="other particles"):
        check_continuation(stored, run_fingerprint(other, VdamConfig(), {}), other, "c.star")
