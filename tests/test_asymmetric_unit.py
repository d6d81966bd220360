"""sampling.asymmetric_unit: one asymmetric unit of a point group's orientations, and the sums that
make a search over it that of a full search (estep.accumulate.symmetrise_sums)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from novomap.physics.projection import insert_slices
from novomap.physics.window import fourier_window
from novomap.sampling.asymmetric_unit import (
    grid_spacing,
    in_asymmetric_unit,
    orbit_average_directions,
    orientations_in_unit,
    pixel_directions,
)
from novomap.sampling.grid import build_search_grid
from novomap.symmetry.groups import point_group

GROUPS = ("C2", "C4", "D2", "D7", "T", "O", "I")


def _frame(seed: int) -> torch.Tensor:
    """A random proper rotation: the map's axes, not the standard ones."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q if torch.det(q) > 0 else -q


def _directions(n: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


@pytest.mark.parametrize("name", GROUPS)
def test_each_orbit_has_exactly_one_direction_in_the_unit(name):
    operators = point_group(name).in_frame(_frame(1)).operators
    directions = _directions(300, 2)
    orbits = torch.einsum("gij,nj->ngi", operators, directions)  # (n, G, 3): every equivalent direction
    kept = in_asymmetric_unit(orbits.reshape(-1, 3), operators).reshape(orbits.shape[:2])
    assert (kept.sum(1) == 1).all()


@pytest.mark.parametrize("name", GROUPS)
def test_the_nearest_grid_direction_to_some_equivalent_is_searched(name):
    """Whatever a particle's pose, the grid direction nearest to its equivalent in the unit is kept."""
    operators = point_group(name).in_frame(_frame(3)).operators
    grid = build_search_grid(2, 2, 1, perturbation=0.3)
    keep = orientations_in_unit(grid.coarse_rotations, operators, 2)
    grid_directions = grid.coarse_rotations[:, 2, :]
    poses = _directions(400, 4)
    orbits = torch.einsum("gij,nj->ngi", operators, poses)
    in_unit = in_asymmetric_unit(orbits.reshape(-1, 3), operators).reshape(orbits.shape[:2])
    representative = orbits[in_unit]  # (n, 3): one per pose
    nearest = torch.argmax(representative @ grid_directions.T, dim=1)
    assert keep[nearest].all()
    # and the unit is a real saving: near 1/|G| of the grid plus a band one spacing wide
    assert float(keep.float().mean()) < min(0.75, 4.5 / operators.shape[0])


def test_grid_spacing_bounds_the_distance_to_the_nearest_pixel():
    for order in (1, 2, 3):
        sample = _directions(5000, 5)
        nearest = (sample @ pixel_directions(order).T).max(1).values
        assert float(torch.sqrt(2 - 2 * nearest.clamp(max=1)).max()) <= grid_spacing(order)
        assert grid_spacing(order) < 2 * math.radians(60 / 2**order)


def test_unit_columns_are_each_class_unit_in_its_own_frame():
    """Two classes with different axes: each class's keys are its own unit's orientations, offset by class."""
    from novomap.vdam.iterate import unit_columns

    grid = build_search_grid(1, 2, 1)
    group = point_group("D2")
    operators = [group.in_frame(_frame(11)).operators, group.in_frame(_frame(12)).operators, None]
    columns = unit_columns(grid, operators)
    n = grid.n_coarse_orientations
    assert torch.all(columns[1:] > columns[:-1])
    for k in range(2):
        mine = columns[columns // n == k] % n
        assert torch.equal(mine, torch.nonzero(orientations_in_unit(grid.coarse_rotations, operators[k], 1)).squeeze(1))
    assert not torch.equal(columns[columns // n == 0] % n, columns[columns // n == 1] % n)  # the frames differ
    assert torch.equal(columns[columns // n == 2] % n, torch.arange(n))  # a class without operators: every orientation


def test_only_classes_centred_on_their_symmetry_are_searched_by_unit():
    """A class whose symmetry centre stayed off the box centre (recentring refused the shift) is
    searched whole; the others keep their units, each in its own frame."""
    from novomap.vdam import schedules
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.state import RunState
    from novomap.vdam.unit_search import unit_operators

    config = VdamConfig(n_iter=100)
    group = point_group("D2")
    state = RunState.__new__(RunState)
    state.maps = torch.zeros(3, 4, 4, 4)
    state.iteration = schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction).initial
    frames = [_frame(17), _frame(18), _frame(19)]
    state.symmetry_axes = [(frames[0], torch.zeros(3)), (frames[1], torch.tensor([-7.9, -2.5, -0.7])), (frames[2], torch.tensor([0.2, 0.0, 0.1]))]
    operators = unit_operators(state, config, group, with_sums=True)
    assert operators[1] is None
    for k in (0, 2):
        assert torch.allclose(operators[k], group.in_frame(frames[k]).operators)
    # the final pass searches everything by default; asked to, with several classes it searches the same units
    assert unit_operators(state, config, group, with_sums=False) is None
    by_unit = dataclasses.replace(config, final_unit_search=True)
    final = unit_operators(state, by_unit, group, with_sums=False)
    assert final[1] is None and all(torch.allclose(final[k], operators[k]) for k in (0, 2))
    # one class: the final pass searches everything even then
    state.maps, state.symmetry_axes = state.maps[:1], state.symmetry_axes[:1]
    assert unit_operators(state, by_unit, group, with_sums=True) is not None
    assert unit_operators(state, by_unit, group, with_sums=False) is None
    state.symmetry_axes = [(f, torch.tensor([3.0, 0.0, 0.0])) for f in frames]
    assert unit_operators(state, config, group, with_sums=True) is None  # no class centred


@pytest.mark.parametrize("name", ("D2", "C4"))
def test_orbit_average_keeps_the_total_and_makes_equivalent_directions_equal(name):
    operators = point_group(name).operators  # standard axes: the HEALPix grid maps onto itself under D2 and C4
    weights = torch.rand(1, 48, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    averaged = orbit_average_directions(weights, operators, 1)
    assert torch.allclose(averaged.sum(), weights.sum())
    directions = pixel_directions(1)
    for g in operators:
        image = torch.argmax((directions @ g.T) @ directions.T, dim=1)
        assert torch.allclose(averaged[0, image], averaged[0])


def test_only_proper_groups_of_more_than_one_operator_are_searched_by_unit():
    from novomap.vdam.unit_search import searchable_by_unit

    assert searchable_by_unit(point_group("D2"))
    assert searchable_by_unit(point_group("O")) and searchable_by_unit(point_group("I"))
    assert not searchable_by_unit(point_group("C1"))
    assert not searchable_by_unit(point_group("Cs"))


def test_symmetrised_sums_are_those_of_slices_inserted_at_every_equivalent_orientation():
    """symmetrise_sums makes a class's sums, both pseudo halves, those of its slices inserted at every
    A g with 1/|G| of them (exactly, for a D2 whose operators permute the grid: about z and the xy
    diagonals); a class without operators (searched whole) keeps its sums."""
    from novomap.estep.accumulate import Sums, symmetrise_sums

    generator = torch.Generator().manual_seed(7)
    m = 16
    window = fourier_window(m, 12, "cpu")
    rotations = build_search_grid(0, 1, 1).fine_rotations.reshape(-1, 3, 3)[torch.tensor([3, 40, 77])]
    c = math.sqrt(0.5)
    tilted = torch.tensor([[c, -c, 0.0], [c, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    operators = tilted.T @ point_group("D2").operators.to(torch.float64) @ tilted
    data = torch.complex(torch.randn(3, window.n_pixels, generator=generator), torch.randn(3, window.n_pixels, generator=generator))
    weight = torch.rand(3, window.n_pixels, generator=generator)
    sums = Sums.zeros(2, m, m, 1, 12, torch.ones(m // 2 + 1), rotations.shape[0], window.n_pixels, "cpu")
    expected_gradient, expected_weight = torch.zeros_like(sums.gradient), torch.zeros_like(sums.weight)
    for h in range(2):
        for k in range(2):
            insert_slices(data * (h + 1), weight * (k + 1), rotations.float(), window.kx, window.ky, 1, sums.gradient[h, k], sums.weight[h, k])
            for g in operators if k == 0 else torch.eye(3, dtype=torch.float64)[None]:
                share = 1 / 4 if k == 0 else 1.0
                insert_slices(data * (h + 1) * share, weight * (k + 1) * share, (rotations.double() @ g).float(), window.kx, window.ky, 1, expected_gradient[h, k], expected_weight[h, k])
    symmetrise_sums(sums, [operators.float(), None], radius=m / 2 + 2)
    assert torch.allclose(sums.gradient, expected_gradient, atol=1e-5)
    assert torch.allclose(sums.weight, expected_weight, atol=1e-5)
    assert float(expected_weight[:, 0].abs().sum()) > 0


@pytest.fixture(scope="module")
def d2_particles(tmp_path_factory):
    from novomap.demo_data import load_demo_map
    from novomap.simulate import SimulationOptions, simulate

    volume, pixel = load_demo_map()
    out = tmp_path_factory.mktemp("unit_sim")
    return simulate(volume, out, SimulationOptions(n=80, snr=1.0, seed=3, box=64, pixel_size_a=pixel)).star_path


def _asymmetry(volume: torch.Tensor, group, axes) -> float:
    """Relative distance of a map from its own average over the group about its axes."""
    from novomap.symmetry.symmetrise import symmetrise_in_place

    rotation, shift = axes
    symmetric = symmetrise_in_place(volume.float(), group, rotation, shift)
    return float((volume.float() - symmetric).norm() / symmetric.norm())


@pytest.mark.usefixtures("one_thread")
def test_a_unit_search_iteration_keeps_the_imposed_map_symmetric(d2_particles):
    """After the group is imposed and centred, one mini-batch iteration searches a third of the
    orientations and its VDAM update leaves the map symmetric; a full C1 search's update does not."""
    import dataclasses

    from novomap.io.particles import ParticleSet
    from novomap.symmetry.symmetrise import symmetrise
    from novomap.vdam import schedules
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.iterate import pseudo_halves, run_iteration
    from novomap.vdam.start import initial_state

    particles = ParticleSet.from_star(d2_particles, preread=True)
    config = VdamConfig(n_iter=10, particle_diameter_a=200.0, seed=2, n_starts=1, max_extra_iterations=0)
    group = point_group("D2")
    state = initial_state(particles, config)
    # the random start averaged over the group about the box centre, as an imposition that recentred it leaves it
    state.maps = symmetrise(state.maps[0], group)[None]
    state.symmetry_axes = [(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))]
    state.iteration = schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction).initial
    half = pseudo_halves(particles)

    asymmetry = {}
    for unit in (True, False):
        trial = state.scratch_copy()
        figures = run_iteration(trial, particles, half, dataclasses.replace(config, search_asymmetric_unit=unit), "cpu", group)
        assert (figures["unit_fraction"] < 0.6) if unit else figures["unit_fraction"] == 1.0
        asymmetry[unit] = _asymmetry(trial.maps[0], group, trial.symmetry_axes[0])
    before = _asymmetry(state.maps[0], group, state.symmetry_axes[0])
    assert before < 0.02
    assert asymmetry[True] < 0.5 * asymmetry[False], (before, asymmetry)


@pytest.mark.usefixtures("one_thread")
def test_with_two_classes_each_map_is_searched_by_its_own_unit_and_stays_symmetric(d2_particles):
    """Two classes whose group was imposed about different axes: one iteration searches about a third
    of the (class, orientation) hypotheses, and each class's update stays symmetric about its own
    axes, as much as a full search's does for the same data (the unit search adds no asymmetry)."""
    import dataclasses

    from novomap.io.particles import ParticleSet
    from novomap.symmetry.symmetrise import symmetrise, symmetrise_in_place
    from novomap.vdam import schedules
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.iterate import pseudo_halves, run_iteration
    from novomap.vdam.start import initial_state

    particles = ParticleSet.from_star(d2_particles, preread=True)
    config = VdamConfig(n_iter=10, n_classes=2, particle_diameter_a=200.0, seed=2, n_starts=1, max_extra_iterations=0)
    group = point_group("D2")
    state = initial_state(particles, config)
    # D2 about z and the xy diagonals: its operators permute the grid, as the standard D2's do, so
    # re-symmetrising is exact and any asymmetry measured is the update's own
    c = math.sqrt(0.5)
    tilted = torch.tensor([[c, -c, 0.0], [c, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    state.maps = torch.stack([symmetrise(state.maps[0], group), symmetrise_in_place(state.maps[1].float(), group, tilted, torch.zeros(3)).to(state.maps.dtype)])
    state.symmetry_axes = [(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)), (tilted, torch.zeros(3, dtype=torch.float64))]
    state.iteration = schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction).initial
    half = pseudo_halves(particles)
    for k in range(2):
        assert _asymmetry(state.maps[k], group, state.symmetry_axes[k]) < 0.02

    asymmetry = {}
    for unit in (True, False):
        trial = state.scratch_copy()
        figures = run_iteration(trial, particles, half, dataclasses.replace(config, search_asymmetric_unit=unit), "cpu", group)
        assert (figures["unit_fraction"] < 0.6) if unit else figures["unit_fraction"] == 1.0
        asymmetry[unit] = [_asymmetry(trial.maps[k], group, trial.symmetry_axes[k]) for k in range(2)]
    for k in range(2):
        assert asymmetry[True][k] < 0.5 * asymmetry[False][k], asymmetry


def test_final_poses_are_spread_over_their_equivalents_after_a_unit_search():
    """Poses left in one unit are each replaced by an equivalent A g, the g drawn evenly; runs that
    never searched by unit, and C1, keep theirs."""
    from novomap.physics.euler import euler_to_matrix
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.unit_search import spread_equivalent_poses
    from novomap.vdam.state import RunState

    n = 400
    generator = torch.Generator().manual_seed(9)
    axes = _frame(10)
    state = RunState.__new__(RunState)
    state.rot_deg = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * 360
    state.tilt_deg = torch.rand(n, generator=generator, dtype=torch.float64) * 180
    state.psi_deg = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * 360
    state.class_number = torch.ones(n, dtype=torch.long)
    state.maps = torch.zeros(1, 4, 4, 4)
    state.symmetry_axes = [(axes, torch.zeros(3, dtype=torch.float64))]
    state.history = [{"unit_fraction": 1.0}]
    group = point_group("D2")
    before = euler_to_matrix(state.rot_deg, state.tilt_deg, state.psi_deg)
    assert spread_equivalent_poses(state, group, VdamConfig()) == 0  # never searched by unit
    state.history.append({"unit_fraction": 0.35})
    assert spread_equivalent_poses(state, point_group("C1"), VdamConfig()) == 0
    assert spread_equivalent_poses(state, group, VdamConfig()) == n
    after = euler_to_matrix(state.rot_deg, state.tilt_deg, state.psi_deg)
    relative = before.transpose(1, 2) @ after  # A^T (A g) = g
    operators = group.in_frame(axes).operators
    distance = (relative[:, None] - operators[None]).abs().amax(dim=(-1, -2))  # (n, G)
    assert float(distance.min(dim=1).values.max()) < 1e-6  # each new pose is an equivalent one
    counts = torch.bincount(distance.argmin(dim=1), minlength=4)
    assert int(counts.min()) > 60  # all four operators drawn, about evenly (100 each expected)


def test_with_two_classes_each_pose_is_spread_over_its_own_class_equivalents():
    from novomap.physics.euler import euler_to_matrix
    from novomap.vdam.config import VdamConfig
    from novomap.vdam.unit_search import spread_equivalent_poses
    from novomap.vdam.state import RunState

    n = 200
    generator = torch.Generator().manual_seed(14)
    frames = [_frame(15), _frame(16)]
    state = RunState.__new__(RunState)
    state.rot_deg = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * 360
    state.tilt_deg = torch.rand(n, generator=generator, dtype=torch.float64) * 180
    state.psi_deg = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * 360
    state.class_number = 1 + torch.arange(n) % 3
    state.maps = torch.zeros(3, 4, 4, 4)
    # class 3's centre stayed off the box centre: searched whole, its poses are kept
    state.symmetry_axes = [(f, torch.zeros(3, dtype=torch.float64)) for f in frames] + [(_frame(20), torch.tensor([8.0, 0.0, 0.0]))]
    state.history = [{"unit_fraction": 0.35}]
    group = point_group("D2")
    before = euler_to_matrix(state.rot_deg, state.tilt_deg, state.psi_deg)
    assert spread_equivalent_poses(state, group, VdamConfig()) == int((state.class_number < 3).sum())
    relative = before.transpose(1, 2) @ euler_to_matrix(state.rot_deg, state.tilt_deg, state.psi_deg)
    assert torch.allclose(relative[state.class_number == 3], torch.eye(3, dtype=relative.dtype).expand(int((state.class_number == 3).sum()), 3, 3), atol=1e-9)
    for k in range(2):
        rows = state.class_number == k + 1
        own = group.in_frame(frames[k]).operators
        other = group.in_frame(frames[1 - k]).operators
        to_own = (relative[rows][:, None] - own[None]).abs().amax(dim=(-1, -2)).min(dim=1).values
        to_other = (relative[rows][:, None] - other[None]).abs().amax(dim=(-1, -2)).min(dim=1).values
        assert float(to_own.max()) < 1e-6
        # only the identity is shared with the other class's group: about 1 pose in 4
        assert float((to_other < 1e-6).float().mean()) < 0.45
