"""vdam.recentre: moving a class map is a change of frame that the moments and origins follow."""

from __future__ import annotations

import torch

from _synthetic_maps import blob_map, random_rotation
from novomap.maps.transform import shift_volume
from novomap.physics.euler import matrix_to_euler
from novomap.physics.fourier import volume_to_centred_ft
from novomap.physics.window import shift_phases
from novomap.simulate import make_projector
from novomap.physics.projection import extract_slices
from novomap.vdam.recentre import centred_ft_phase, image_shift_px, recentre_class, recentre_on_axes
from novomap.vdam.state import RunState

SHIFT_ZYX = torch.tensor([1.7, -2.3, 0.6], dtype=torch.float64)


def _poses(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rotations = torch.stack([random_rotation(seed) for seed in range(n)])
    return matrix_to_euler(rotations)


def test_centred_ft_phase_is_the_transform_of_the_moved_map():
    volume = blob_map("C1", size=32).double()
    for pad in (1, 2):
        moved = volume_to_centred_ft(shift_volume(volume, SHIFT_ZYX), pad)
        predicted = volume_to_centred_ft(volume, pad) * centred_ft_phase(32 * pad, pad, SHIFT_ZYX)
        assert torch.linalg.norm(moved - predicted) < 1e-3 * torch.linalg.norm(moved)
        wrong_sign = volume_to_centred_ft(volume, pad) * centred_ft_phase(32 * pad, pad, -SHIFT_ZYX)
        assert torch.linalg.norm(moved - wrong_sign) > 0.5 * torch.linalg.norm(moved)


def test_an_image_keeps_matching_with_the_moved_origin():
    """An image that is the projection moved by -o (origin o) is the moved map's projection moved by -(o + p)."""
    volume = blob_map("C1", size=32).double()
    before, after = make_projector(volume, 3.0), make_projector(shift_volume(volume, SHIFT_ZYX), 3.0)
    rot, tilt, psi = _poses(6)
    rotations = torch.stack([random_rotation(seed) for seed in range(6)]).float()
    origin = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    window = before.window
    kx, ky = window.kx.float(), window.ky.float()
    image = extract_slices(before.volume_ft, rotations, kx, ky, 2) * shift_phases(window, -origin).to(torch.complex64)
    moved_origin = origin + image_shift_px(rot, tilt, psi, SHIFT_ZYX)
    predicted = extract_slices(after.volume_ft, rotations, kx, ky, 2) * shift_phases(window, -moved_origin).to(torch.complex64)
    assert torch.linalg.norm(image - predicted) < 0.03 * torch.linalg.norm(image)
    stale = extract_slices(after.volume_ft, rotations, kx, ky, 2) * shift_phases(window, -origin).to(torch.complex64)
    assert torch.linalg.norm(image - stale) > 0.3 * torch.linalg.norm(image)


def _state(n_particles: int = 6) -> RunState:
    maps = torch.stack([blob_map("C1", size=32, seed=1).double(), blob_map("C1", size=32, seed=2).double()])
    rot, tilt, psi = _poses(n_particles)
    zeros = torch.zeros(n_particles, dtype=torch.float64)
    generator = torch.Generator().manual_seed(5)
    return RunState(
        iteration=40, maps=maps.clone(),
        moment1=torch.randn((2, 2, 32, 32, 32), dtype=torch.complex128, generator=generator),
        moment2=torch.rand((2, 32, 32, 32), dtype=torch.float64, generator=generator) + 1,
        sigma2=torch.ones(1, 17, dtype=torch.float64), class_fraction=torch.full((2,), 0.5, dtype=torch.float64),
        direction_prior=torch.full((2, 48), 1 / 96, dtype=torch.float64), sigma_offset_a=10.0, resolution_shell=8,
        healpix_order=1, offset_range_px=6.0, offset_step_px=2.0, perturbation=0.0, rng_state=torch.Generator().get_state(),
        rot_deg=rot, tilt_deg=tilt, psi_deg=psi,
        origin_x_a=torch.randn(n_particles, dtype=torch.float64, generator=generator) * 5,
        origin_y_a=torch.randn(n_particles, dtype=torch.float64, generator=generator) * 5,
        class_number=torch.tensor([1, 2, 1, 0, 2, 1]), max_probability=zeros.clone(),
        n_significant=torch.zeros(n_particles, dtype=torch.long), log_likelihood=zeros.clone(),
        tau2=torch.zeros(2, 17, dtype=torch.float64), ssnr=torch.zeros(2, 17, dtype=torch.float64),
        map_snapshots={30: maps.float().clone()},
    )


def test_recentre_class_moves_only_that_class_and_its_particles():
    state = _state()
    before = _state()
    recentre_class(state, 0, SHIFT_ZYX, pixel_size_a=3.0, pad=1)
    assert torch.allclose(state.maps[0], shift_volume(before.maps[0], SHIFT_ZYX))
    assert torch.equal(state.maps[1], before.maps[1])
    assert torch.allclose(state.map_snapshots[30][0], shift_volume(before.map_snapshots[30][0], SHIFT_ZYX), atol=1e-5)
    assert torch.equal(state.map_snapshots[30][1], before.map_snapshots[30][1])
    # first moments are moved like transforms, second moments (squared moduli) are not touched
    assert torch.allclose(state.moment1[0], before.moment1[0] * centred_ft_phase(32, 1, SHIFT_ZYX))
    assert torch.equal(state.moment1[1], before.moment1[1]) and torch.equal(state.moment2, before.moment2)
    assert torch.allclose(state.moment1[0].abs(), before.moment1[0].abs())
    of_class = state.class_number == 1
    expected = image_shift_px(before.rot_deg[of_class], before.tilt_deg[of_class], before.psi_deg[of_class], SHIFT_ZYX) * 3.0
    assert torch.allclose(state.origin_x_a[of_class] - before.origin_x_a[of_class], expected[:, 0])
    assert torch.allclose(state.origin_y_a[of_class] - before.origin_y_a[of_class], expected[:, 1])
    assert torch.equal(state.origin_x_a[~of_class], before.origin_x_a[~of_class])  # other class, never assigned


def test_recentre_on_axes_zeroes_the_centre_and_skips_small_shifts():
    state = _state()
    before = _state()
    rotation = torch.eye(3, dtype=torch.float64)
    axes = recentre_on_axes(state, [(rotation, SHIFT_ZYX), (rotation, torch.tensor([0.1, 0.0, 0.0]))], 3.0, 1)
    assert torch.equal(axes[0][1], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(axes[1][1].double(), torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(state.maps[1], before.maps[1])
    assert not torch.allclose(state.maps[0], before.maps[0])


def test_a_centre_far_off_is_not_trusted():
    state = _state()
    before = _state()
    far = torch.tensor([0.0, 4.0, 0.0], dtype=torch.float64)  # beyond a tenth of the 32-px box
    axes = recentre_on_axes(state, [(torch.eye(3, dtype=torch.float64), far)], 3.0, 1)
    assert torch.equal(axes[0][1], far)
    assert torch.equal(state.maps, before.maps) and torch.equal(state.origin_x_a, before.origin_x_a)


def test_imposing_then_recentring_puts_the_symmetry_centre_at_the_box_centre():
    """symmetry.impose finds the centre of a D2 map moved off the box centre (D2's axes cross at one
    point; a Cn axis has none, where the centre along the axis is the centre of mass); recentring
    moves the map there, so a fresh alignment finds no shift left."""
    from novomap.symmetry.align import align_to_symmetry
    from novomap.symmetry.groups import point_group
    from novomap.symmetry.impose import impose_group

    move = torch.tensor([1.5, -2.0, 1.0], dtype=torch.float64)
    state = _state()
    state.maps = torch.stack([shift_volume(blob_map("D2", size=32, seed=3).double(), move)] * 2)
    state.maps, axes = impose_group(state.maps, point_group("D2"), 3.0)
    assert torch.allclose(axes[0][1], -move, atol=0.3)  # the shift that centres the map
    axes = recentre_on_axes(state, axes, 3.0, 1)
    assert float(axes[0][1].norm()) == 0.0
    assert float(align_to_symmetry(state.maps[0].float(), 3.0, "D2").shift_zyx_px.norm()) < 0.3


def test_centred_classes_need_imposed_axes_at_the_box_centre():
    from novomap.vdam.recentre import centred_classes

    def centred_on_symmetry(state) -> bool:
        return all(centred_classes(state))

    state = _state()
    assert not centred_on_symmetry(state)  # no group imposed yet
    eye = torch.eye(3, dtype=torch.float64)
    state.symmetry_axes = [(eye, torch.zeros(3, dtype=torch.float64)), (eye, torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64))]
    assert centred_on_symmetry(state)
    state.symmetry_axes[1] = (eye, torch.tensor([0.0, 4.0, 0.0], dtype=torch.float64))  # a centre left alone
    assert not centred_on_symmetry(state)
    state.symmetry_axes = state.symmetry_axes[:1]  # one class of two has axes
    assert not centred_on_symmetry(state)


def test_several_classes_impose_a_far_centre_at_the_box_centre():
    """With two classes, a class map whose D2 centre lies beyond a tenth of the box is made symmetric
    about the box centre (symmetry.impose max_shift_px), so it counts as centred and is searched by
    unit; one class keeps its far centre (untrusted_shift_px None)."""
    from novomap.symmetry.groups import point_group
    from novomap.symmetry.impose import impose_group
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.recentre import centred_classes, untrusted_shift_px

    state = _state()
    far = torch.tensor([0.0, 4.5, 0.0], dtype=torch.float64)  # 32-px box: 3.2 px is a tenth
    state.maps = torch.stack([blob_map("D2", size=32, seed=3).double(), shift_volume(blob_map("D2", size=32, seed=4).double(), far)])
    config = VdamConfig(n_classes=2)
    assert untrusted_shift_px(state, config) == 3.2
    assert untrusted_shift_px(state, VdamConfig(n_classes=2, centre_untrusted_classes=False)) is None
    state.maps, axes = impose_group(state.maps, point_group("D2"), 3.0, None, untrusted_shift_px(state, config))
    state.symmetry_axes = recentre_on_axes(state, axes, 3.0, 1)
    assert centred_classes(state) == [True, True]
    one = _state()
    one.maps = state.maps[1:].clone()
    assert one.n_classes == 1 and untrusted_shift_px(one, VdamConfig(n_classes=1)) is None


def test_axes_settle_after_two_intervals_searched_by_unit():
    """vdam.unit_search.settled_axes: a centred class keeps its axes once the last 2 x every iterations
    all searched by unit; an uncentred class, a shorter or interrupted record, or the option off do not."""
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.unit_search import settled_axes

    state = _state()
    eye = torch.eye(3, dtype=torch.float64)
    state.symmetry_axes = [(eye, torch.zeros(3, dtype=torch.float64)), (eye, torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))]
    config = VdamConfig(n_classes=2, impose_symmetry_every=5)
    state.history = [{"unit_fraction": 1.0}] * 5 + [{"unit_fraction": 0.4}] * 10
    assert settled_axes(state, config) == [True, False]
    state.history = [{"unit_fraction": 0.4}] * 9
    assert settled_axes(state, config) == [False, False]
    state.history = [{"unit_fraction": 0.4}] * 5 + [{"unit_fraction": 1.0}] + [{"unit_fraction": 0.4}] * 4
    assert settled_axes(state, config) == [False, False]
    state.history = [{"unit_fraction": 0.4}] * 10
    assert settled_axes(state, VdamConfig(n_classes=2, impose_symmetry_every=5, keep_settled_axes=False)) == [False, False]
