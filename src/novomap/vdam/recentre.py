"""Move a class map's particle to the box centre, and everything that refers to the map with it.

A map from random blobs settles wherever the data put it: on real beta-gal its D2 centre sat
(2.2, 1.7, -0.3) px off the box centre for the whole run. The spherical solvent mask and the
Gaussian prior on the origins are both centred on the box, so such a map loses its far end to the
mask and its particles' origins drift (rms 16 -> 21 Å, sigma_offset 11 -> 14 Å over the run).

Moving the content by s (3D) is a change of frame, not of model, when every quantity that refers
to the map moves with it:
- the map and its earlier snapshots: content moved by s;
- the first moments of the VDAM update, which live in the map's Fourier frame: times
  exp(-2 pi i k.s / N) (the second moments hold squared moduli: unchanged);
- the origins of the particles assigned to the class: the projection at rotation A moves by
  p = (A s)_xy in the image (the slice k3 = A^T k2 sees the phase of k3.s = k2.(A s)), so an image
  that matched with origin o matches the moved projection with o + p.
"""

from __future__ import annotations

import torch

from novomap.maps.transform import shift_volume
from novomap.physics.euler import euler_to_matrix
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState


def centred_ft_phase(m: int, pad: int, shift_zyx_px: torch.Tensor) -> torch.Tensor:
    """exp(-2 pi i k.s / N) on a centred (M, M, M) transform of an N = M / pad box -> (M, M, M) complex128.

    Multiplying volume_to_centred_ft(v, pad) by it gives the transform of v with content moved by s.
    """
    k = (torch.arange(m, dtype=torch.float64) - m // 2) / pad
    n = m / pad
    s = torch.as_tensor(shift_zyx_px, dtype=torch.float64)
    phase = (k[:, None, None] * s[0] + k[None, :, None] * s[1] + k[None, None, :] * s[2]) * (-2 * torch.pi / n)
    return torch.polar(torch.ones_like(phase), phase)


def image_shift_px(rot_deg: torch.Tensor, tilt_deg: torch.Tensor, psi_deg: torch.Tensor, shift_zyx_px: torch.Tensor) -> torch.Tensor:
    """How far (B, 2) (x, y px) the projection at each pose moves when the map's content moves by shift (3,) zyx px."""
    rotations = euler_to_matrix(rot_deg, tilt_deg, psi_deg).double()  # (B, 3, 3)
    s_xyz = torch.as_tensor(shift_zyx_px, dtype=torch.float64).flip(0)
    return rotations[:, :2, :] @ s_xyz


def recentre_class(state: RunState, k: int, shift_zyx_px: torch.Tensor, pixel_size_a: float, pad: int) -> None:
    """Move class k's content by shift (3,) zyx px, in place: map, snapshots, first moments, and the
    origins of the particles assigned to class k (module docstring)."""
    shift = torch.as_tensor(shift_zyx_px, dtype=torch.float64)
    state.maps[k] = shift_volume(state.maps[k], shift)
    for snapshot in state.map_snapshots.values():
        if snapshot.shape[0] > k:
            snapshot[k] = shift_volume(snapshot[k], shift)
    m = state.moment1.shape[-1]
    state.moment1[k] = state.moment1[k] * centred_ft_phase(m, pad, shift).to(state.moment1.dtype)
    rows = torch.nonzero(state.class_number == k + 1).squeeze(1)
    if rows.numel():
        moved_a = image_shift_px(state.rot_deg[rows], state.tilt_deg[rows], state.psi_deg[rows], shift) * pixel_size_a
        state.origin_x_a[rows] += moved_a[:, 0].to(state.origin_x_a.dtype)
        state.origin_y_a[rows] += moved_a[:, 1].to(state.origin_y_a.dtype)


# a symmetry centre further than this share of the box from its centre is not trusted: the particle
# would not fit the solvent mask there, so such axes are more likely wrong than the map's position
MAX_SHIFT_BOX_FRACTION = 0.1


def recentre_on_axes(state: RunState, axes: list, pixel_size_a: float, pad: int, min_shift_px: float = 0.25) -> list:
    """Bring each class's symmetry centre to the box centre (symmetry.impose's axes: (rotation,
    shift_zyx_px), the shift that centres the map) -> the axes in the new frame (shift 0 where moved).

    Shifts under min_shift_px (nothing to gain) or over MAX_SHIFT_BOX_FRACTION of the box are left alone."""
    largest = MAX_SHIFT_BOX_FRACTION * state.maps.shape[-1]
    moved_axes = []
    for k, (rotation, shift) in enumerate(axes):
        shift = torch.as_tensor(shift, dtype=torch.float64)
        if min_shift_px <= float(shift.norm()) <= largest:
            recentre_class(state, k, shift, pixel_size_a, pad)
            shift = torch.zeros(3, dtype=torch.float64)
        moved_axes.append((rotation, shift))
    return moved_axes


def untrusted_shift_px(state: RunState, config: VdamConfig) -> float | None:
    """The symmetry-centre distance (px) beyond which symmetry.impose_group imposes a class's group
    about the box centre instead (config.centre_untrusted_classes, several classes only), or None.

    With one class the map is the particle, and a far centre is left alone (recentre_on_axes)."""
    if state.n_classes < 2 or not config.recentre_on_symmetry or not config.centre_untrusted_classes:
        return None
    return MAX_SHIFT_BOX_FRACTION * state.maps.shape[-1]


def centred_classes(state: RunState, tolerance_px: float = 0.5) -> list[bool]:
    """Per class, whether the group has been imposed on it and its symmetry centre sits at the box
    centre (recentre_on_axes moved it there, or it was within tolerance_px): its frame is pinned."""
    if state.symmetry_axes is None or len(state.symmetry_axes) < state.n_classes:
        return [False] * state.n_classes
    return [float(torch.as_tensor(shift).norm()) <= tolerance_px for _, shift in state.symmetry_axes[: state.n_classes]]

