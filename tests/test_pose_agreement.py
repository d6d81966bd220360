"""benchmarks/pose_agreement.py: the share of particles a run placed right, in the run's own frame and hand."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pose_agreement  # noqa: E402

from novomap.analysis.poses import MIRROR
from novomap.simulate import random_rotations


def _run_poses(truth: torch.Tensor, right: torch.Tensor, frame: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Poses of a run whose map is the truth rotated by `frame`: right rows exact, the others random."""
    estimated = random_rotations(truth.shape[0], generator).double()
    estimated[right] = truth[right] @ frame
    return estimated


def test_share_in_the_runs_frame():
    generator = torch.Generator().manual_seed(3)
    truth = random_rotations(600, generator).double()
    frame = random_rotations(1, generator).double()[0]
    right = torch.arange(600) % 4 == 0
    estimated = _run_poses(truth, right, frame, generator)
    errors = pose_agreement.agreement(truth, estimated, torch.eye(3, dtype=torch.float64)[None])
    placed_right = errors < pose_agreement.RIGHT_DEG
    assert torch.equal(placed_right[right], torch.ones(int(right.sum()), dtype=torch.bool))
    # a random pose lands within 15 degrees of a given one with probability ~0.001
    assert float(placed_right[~right].double().mean()) < 0.02


def test_share_of_a_mirrored_run():
    generator = torch.Generator().manual_seed(4)
    truth = random_rotations(400, generator).double()
    frame = random_rotations(1, generator).double()[0]
    right = torch.arange(400) < 300
    mirrored = MIRROR @ _run_poses(truth, right, frame, generator) @ MIRROR  # the run found the other hand
    errors = pose_agreement.agreement(truth, mirrored, torch.eye(3, dtype=torch.float64)[None])
    assert abs(float((errors < pose_agreement.RIGHT_DEG).double().mean()) - 0.75) < 0.02
