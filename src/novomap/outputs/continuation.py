"""What a run's checkpoints record of how it was started, and whether a continuation matches it.

`novomap initial-model --continue` must resume the same run: the same particles (the STAR file's
SHA-256) and the same settings, except those RELION too lets change (CONTINUE_MAY_CHANGE). The
fingerprint is stored in every checkpoint (RunState.fingerprint); a mismatch is one InputError line
that names the option to restore.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

from novomap.errors import InputError
from novomap.sampling.healpix import angular_step_deg

#: Settings that may change when a run is continued (RELION too lets --iter grow); every other
#: VdamConfig field, and the working grid's options, must be those the run was started with.
CONTINUE_MAY_CHANGE = frozenset({"n_iter", "pool", "chunk_size", "write_every", "max_extra_iterations", "final_fine_grid", "retries", "retry_classes"})
#: Config field -> the option that sets it, for the message when a continuation finds it changed.
OPTION_OF_FIELD = {
    "n_classes": "--K",
    "particle_diameter_a": "--particle-diameter",
    "flatten_solvent": "--flatten-solvent",
    "healpix_order": "--sampling",
    "offset_range_px": "--offset-range",
    "offset_step_px": "--offset-step",
    "tau2_fudge": "--tau2-fudge",
    "auto_sampling": "--no-auto-sampling",
    "max_healpix_order": "--finest-sampling",
    "seed": "--seed",
    "runners_up": "--finalists",
    "n_starts": "--starts",
    "max_significant": "--maxsig",
    "initial_subset": "--grad-ini-subset",
    "final_subset": "--grad-fin-subset",
    "max_resolution": "--max-resolution",
    "output_pixel_size": "--output-pixel-size",
}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (~0.1 s for the STAR file of 200k particles)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_fingerprint(particles_file: str | Path, config, extra_options: dict) -> dict:
    """What a run's checkpoints record: its particles file (name and SHA-256) and the settings a
    continuation must keep (config fields outside CONTINUE_MAY_CHANGE, plus extra_options)."""
    options = {name: value for name, value in dataclasses.asdict(config).items() if name not in CONTINUE_MAY_CHANGE}
    options.update(extra_options)
    # the absolute path: a --continue run from another folder finds the file (RELION's projects run from one)
    return {"particles_sha256": file_sha256(particles_file), "particles_file": str(Path(particles_file).resolve()), "options": options}


def _same(then, now) -> bool:
    return then == now or (isinstance(then, float) and isinstance(now, float) and math.isclose(then, now, rel_tol=1e-6))


def _setting(name: str, value) -> str:
    """How the user wrote this setting on the command line."""
    if name == "flatten_solvent":
        return "--flatten-solvent" if value else "--no-flatten-solvent"
    if name == "auto_sampling":
        return "auto-sampling" if value else "--no-auto-sampling"
    if name in ("healpix_order", "max_healpix_order") and isinstance(value, int):
        value = angular_step_deg(value + 1)  # the option gives the fine step of the coarse order
    option = OPTION_OF_FIELD.get(name, name)
    return f"{option} {'(default)' if value is None else f'{value:g}' if isinstance(value, float) else value}"


def check_continuation(stored: dict, fingerprint: dict, particles_file: str | Path, checkpoint: str | Path) -> None:
    """Raise InputError (naming `checkpoint`) when the stored fingerprint is another run's:
    other particles, or a setting outside CONTINUE_MAY_CHANGE changed. An empty `stored` (checkpoints
    written before fingerprints existed) passes."""
    if not stored:
        return
    if stored.get("particles_sha256") != fingerprint["particles_sha256"]:
        raise InputError(
            f"--continue: this run was made from other particles ({stored.get('particles_file')}) than --i {particles_file} "
            "(or that file has changed since); continue with the same particles, or start a new run in another --o",
            checkpoint,
        )
    for name, then in stored.get("options", {}).items():
        if name not in fingerprint["options"]:
            continue
        now = fingerprint["options"][name]
        if not _same(then, now):
            raise InputError(
                f"--continue: the run was started with {_setting(name, then)}, not {_setting(name, now)}; continue with the options it was "
                "started with (only --iter, --pool and the compute options may change), or start a new run in another --o",
                checkpoint,
            )
