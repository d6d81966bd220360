"""Pool the particles of classes that hold the same structure into the largest class.

With K > 1 on data without much junk, the classes often share out one structure (hb_c2_tight with
--K 2: 61/39), and initial_model.mrc, reconstructed from the largest class alone, loses the rest of
the particles (1.30x the true-pose bound instead of 1.13-1.25x with one class; session 30). Where
another class's map superposes on the largest class's map as the same structure (correlation at
least config.pool_min_cc after alignment, either hand, and a resolution estimate within
config.pool_max_resolution_ratio of the largest class's), its particles' poses are carried into the
largest class's frame and they join it for the final reconstruction. The class maps and the
run_it files keep the classes apart.

A particle of class k seen at rotation A shows V_k(A^T x). If the alignment puts V_k onto the
largest class's map as V_L(r) = V_k(R^T (r - s)) (maps.align: rotate by R, then shift by s), then
V_k(y) = V_L(R y + s), and the same image is V_L seen at B = A R^T, displaced by -(B s)_xy: its
origin (the negative of the particle's displacement) grows by (B s)_xy.

On data without junk two classes are often the two hands of one structure (hb_c2_tight, --K 2:
aligned cc 0.97 with the hand flipped), since projections cannot tell the hand. With F the mirror
through z = 0, M(V)(r) = V(F r), the image V_k(A^T x) integrated over z equals M(V_k) seen at F A F
(z -> -z under the integral leaves the image's x and y alone): the mirror is one more rotation of
the poses, with the origins unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from novomap.maps.align import align_maps
from novomap.model.params import resolution_shell
from novomap.physics.euler import euler_to_matrix, matrix_to_euler
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState


@dataclass
class PooledClass:
    """A class whose particles joined the largest class: its number (1-based), particles, the
    correlation of its aligned map with the largest class's map, and whether it was the mirror image."""

    class_number: int
    n_particles: int
    cc: float
    hand_flipped: bool


def poses_onto_aligned_map(
    rot_deg: torch.Tensor, tilt_deg: torch.Tensor, psi_deg: torch.Tensor, origin_x_a: torch.Tensor, origin_y_a: torch.Tensor,
    rotation: torch.Tensor, shift_zyx_px: torch.Tensor, pixel_size_a: float, hand_flipped: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Poses (n,) against a map V -> the same particles' poses against shift(rotate(H(V), rotation), shift_zyx_px),
    H the mirror through z = 0 when hand_flipped, else the identity (maps.transform and maps.align
    conventions; rotation (3, 3), shift (3,) zyx px): (rot, tilt, psi, origin x, origin y)."""
    seen = euler_to_matrix(rot_deg, tilt_deg, psi_deg).to(torch.float64)
    if hand_flipped:
        mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
        seen = mirror @ seen @ mirror
    seen = seen @ rotation.to(torch.float64).T
    moved = (seen @ shift_zyx_px.to(torch.float64).flip(0))[:, :2] * pixel_size_a  # (B s)_xy in Å
    rot, tilt, psi = matrix_to_euler(seen)
    return rot, tilt, psi, origin_x_a + moved[:, 0], origin_y_a + moved[:, 1]


def pool_same_structure(state: RunState, largest: int, pixel_size_a: float, config: VdamConfig) -> list[PooledClass]:
    """Move the particles of every class whose map is the largest class's structure into that class,
    with their poses carried into its frame (state changed in place) -> the classes pooled."""
    pooled: list[PooledClass] = []
    if state.n_classes < 2 or config.pool_min_cc > 1:
        return pooled
    for k in range(state.n_classes):
        members = torch.nonzero(state.class_number == k + 1).squeeze(1)
        if k == largest or members.numel() < config.pool_min_particles:
            continue
        # a class of poor particles can look like a blurred copy of the structure: its map must resolve
        # about as far (all real beta-gal particles, --K 2: the junk class at 17.4 Å against 8.7 Å)
        if resolution_shell(state.ssnr[k]) * config.pool_max_resolution_ratio < resolution_shell(state.ssnr[largest]):
            continue
        alignment = align_maps(state.maps[largest].float(), state.maps[k].float(), pixel_size_a)
        if alignment.cc < config.pool_min_cc:
            continue
        rot, tilt, psi, x, y = poses_onto_aligned_map(
            state.rot_deg[members], state.tilt_deg[members], state.psi_deg[members], state.origin_x_a[members], state.origin_y_a[members],
            alignment.rotation, alignment.shift_zyx_px, pixel_size_a, alignment.hand_flipped,
        )  # fmt: skip
        state.rot_deg[members], state.tilt_deg[members], state.psi_deg[members] = rot.to(state.rot_deg.dtype), tilt.to(state.tilt_deg.dtype), psi.to(state.psi_deg.dtype)
        state.origin_x_a[members], state.origin_y_a[members] = x.to(state.origin_x_a.dtype), y.to(state.origin_y_a.dtype)
        state.class_number[members] = largest + 1
        pooled.append(PooledClass(k + 1, int(members.numel()), float(alignment.cc), bool(alignment.hand_flipped)))
    return pooled
