"""Compare particle orientations between two runs whose maps differ by a global rotation (and hand).

If map B is map A rotated, V_B(r) = V_A(Q r), a particle seen at pose A_a in run A is seen at
A_b = A_a Q in run B. With point-group symmetry G of the map, A_a may be any A_a g (g in G).
A mirrored map (hand flip through z = 0) changes poses to M A M, M = diag(1, 1, -1).
"""

from __future__ import annotations

import torch

from novomap.physics.euler import nearest_rotations, rotation_angle_deg

MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def global_rotation(poses_a: torch.Tensor, poses_b: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """The rotation Q (3, 3) with poses_b ~ poses_a g Q for most particles, g in `group` (G, 3, 3).

    Each particle proposes Q_i = A_a^T A_b (up to G); the proposal with the most particles within
    15 degrees wins, then Q is refined as the chordal mean of its inliers.
    """
    proposals = poses_a.transpose(-1, -2) @ poses_b  # (n, 3, 3)
    candidates = proposals[torch.randperm(proposals.shape[0], generator=torch.Generator().manual_seed(0))[:200]]
    best, best_count = None, -1
    for q in candidates:
        errors = pose_errors(poses_a, poses_b, q, group)
        count = int((errors < 15).sum())
        if count > best_count:
            best, best_count = q, count
    # refine: average the inliers' proposals, each mapped onto the closest symmetry copy of best
    errors = pose_errors(poses_a, poses_b, best, group)
    inliers = errors < 15
    aligned = []
    for a, b in zip(poses_a[inliers], poses_b[inliers]):
        options = group.transpose(-1, -2) @ a.T @ b  # g^T A_a^T A_b for every g
        aligned.append(options[torch.argmin(rotation_angle_deg(options, best.expand_as(options)))])
    return nearest_rotations(torch.stack(aligned).mean(0)) if aligned else best


def pose_errors(poses_a: torch.Tensor, poses_b: torch.Tensor, q: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Angle (deg) between A_b and the closest A_a g Q, per particle -> (n,)."""
    predicted = poses_a[:, None] @ group[None] @ q  # (n, G, 3, 3)
    return rotation_angle_deg(predicted, poses_b[:, None].expand_as(predicted)).min(-1).values


def compare_orientations(poses_a: torch.Tensor, poses_b: torch.Tensor, group: torch.Tensor, hand_flipped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-particle angular differences (deg) after the best global rotation -> (errors (n,), Q)."""
    poses_b = poses_b.double()
    if hand_flipped:
        poses_b = MIRROR @ poses_b @ MIRROR
    q = global_rotation(poses_a.double(), poses_b, group.double())
    return pose_errors(poses_a.double(), poses_b, q, group.double()), q
