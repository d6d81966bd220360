"""The state a VDAM run carries from one iteration to the next; what a checkpoint holds."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch


# the per-particle arrays an E-step pass writes to
PER_PARTICLE = ("rot_deg", "tilt_deg", "psi_deg", "origin_x_a", "origin_y_a", "class_number", "max_probability", "n_significant", "log_likelihood")


@dataclass
class RunState:
    iteration: int
    maps: torch.Tensor  # (K, N, N, N) float64, real-space references (solvent-flattened)
    moment1: torch.Tensor  # (K, 2, M, M, M) complex128, first moments per pseudo half
    moment2: torch.Tensor  # (K, M, M, M) float64, second moment (init 1)
    sigma2: torch.Tensor  # (n_groups, N//2+1) float64 noise spectra
    class_fraction: torch.Tensor  # (K,) float64
    direction_prior: torch.Tensor  # (K, n_dir) float64, sums to 1 over (K, n_dir)
    sigma_offset_a: float
    resolution_shell: int  # last shell with SSNR >= 1 (max over classes)
    healpix_order: int
    offset_range_px: float
    offset_step_px: float
    perturbation: float
    rng_state: torch.Tensor  # torch.Generator state for perturbations and blobs
    # per particle (n,): the latest assignment of each particle
    rot_deg: torch.Tensor
    tilt_deg: torch.Tensor
    psi_deg: torch.Tensor
    origin_x_a: torch.Tensor
    origin_y_a: torch.Tensor
    class_number: torch.Tensor  # int64, 1-based (0 = never assigned)
    max_probability: torch.Tensor
    n_significant: torch.Tensor  # int64
    log_likelihood: torch.Tensor
    # per class (K, N//2+1), for model.star
    tau2: torch.Tensor
    ssnr: torch.Tensor
    acc_rot_deg: float = 999.0  # expected angular error of the model (sampling/accuracy.py)
    acc_trans_px: float = 999.0
    iterations_without_gain: int = 0  # iterations since the resolution last improved
    history: list[dict] = field(default_factory=list)  # per-iteration figures for reports
    # the particles file and settings the run was started with (commands.initial_model: --continue checks them)
    fingerprint: dict = field(default_factory=dict)
    # the particles of the last mini-batch, whose poses its E-step gave (vdam.iterate.assign_all reuses the sharp ones)
    last_batch: torch.Tensor | None = None
    # per class, (rotation (3, 3), shift_zyx_px (3,)) of the map's symmetry axes when the group was
    # last imposed (symmetry.impose; None before): where the next alignment starts
    symmetry_axes: list | None = None
    # class maps (K, N, N, N) float32 of recent iterations, by iteration (vdam.convergence)
    map_snapshots: dict = field(default_factory=dict)
    # the resolution shell (state.resolution_shell) at each snapshot's iteration, by iteration
    snapshot_shells: dict = field(default_factory=dict)
    # `--sym auto` decided during the run (auto_symmetry.group_mid_run): the decision as
    # symmetry.choice.symmetry_record gives it, with "chosen_at_iteration"; None: not decided yet
    auto_symmetry: dict | None = None
    # the race's runners-up carried alongside a one-class C1 run until the choices at the pruning
    # iteration and n_iter (vdam.finalists): [{"start": its start number, "state": its RunState,
    # "seconds": its time so far}, ...], the race's better first; []: none
    finalists: list = field(default_factory=list)
    # the class maps (K, N, N, N) float32 of this start at the race's end (vdam.restarts.compete; None
    # without a race, or with a group imposed): `--sym auto` compares its map there with the race's
    # (symmetry.group_trial)
    race_maps: torch.Tensor | None = None

    @property
    def n_classes(self) -> int:
        return int(self.maps.shape[0])

    def scratch_copy(self) -> "RunState":
        """A shallow copy whose per-particle arrays are cloned: a pass that assigns poses to the copy
        (scoring a start or a map) leaves this state untouched."""
        trial = copy.copy(self)
        for name in PER_PARTICLE:
            setattr(trial, name, getattr(self, name).clone())
        return trial

    def save(self, path: str | Path) -> None:
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, path)

    def to_bytes(self) -> bytes:
        """The checkpoint's content, as save writes it (RunState.load reads either)."""
        buffer = io.BytesIO()
        self.save(buffer)
        return buffer.getvalue()

    @staticmethod
    def load(path: str | Path) -> "RunState":
        stored = torch.load(path, weights_only=False)
        legacy = stored.pop("finalist", None)  # checkpoints of sessions 51-53 carried one runner-up
        if legacy is not None:
            stored["finalists"] = [{"seconds": 0.0, **legacy}]
        return RunState(**stored)
