"""VDAM schedules against the numbers of vdam-spec 4.1 (phases, step size, T, batch sizes) and Appendix B check 6."""

from __future__ import annotations

import math

import pytest

from novomap.vdam import schedules


def _ramp_span(values: dict[int, float], start: float, end: float) -> tuple[int, int]:
    """(first iteration with >= 10 % of the change done, first with >= 90 % done): the spec's '10-90 % span'."""
    change = [(it, (v - start) / (end - start)) for it, v in sorted(values.items())]
    first10 = next(it for it, frac in change if frac >= 0.1)
    first90 = next(it for it, frac in change if frac >= 0.9)
    return first10, first90


@pytest.mark.parametrize(
    "n_iter, ini, between, fin",
    [(100, 30, 50, 20), (200, 60, 100, 40), (3, 0, 3, 0), (7, 2, 4, 1)],
)
def test_phase_lengths(n_iter, ini, between, fin):
    p = schedules.phases(n_iter)
    assert (p.initial, p.in_between, p.final) == (ini, between, fin)
    assert p.initial + p.in_between + p.final == n_iter


def test_phases_renormalised_when_fractions_leave_no_middle():
    # 0.6 + 0.6 > 0.9: RELION scales both so that they sum to 0.9 -> 0.45 / 0.45
    p = schedules.phases(100, 0.6, 0.6)
    assert (p.initial, p.final, p.in_between) == (45, 45, 10)


def test_appendix_b_check_6_ends_of_the_schedules():
    for n_iter in (100, 200):
        p = schedules.phases(n_iter)
        assert schedules.step_size(1, p) == pytest.approx(0.9, abs=1e-3)
        assert schedules.step_size(n_iter, p) == pytest.approx(0.5, abs=1e-3)
        assert schedules.tau2_fudge(1, p) == pytest.approx(1.0, abs=1e-3)
        assert schedules.tau2_fudge(n_iter, p) == pytest.approx(4.0, abs=1e-3)
        # monotone: eta only falls, T only rises
        etas = [schedules.step_size(i, p) for i in range(1, n_iter + 1)]
        taus = [schedules.tau2_fudge(i, p) for i in range(1, n_iter + 1)]
        assert all(a >= b - 1e-12 for a, b in zip(etas, etas[1:]))
        assert all(a <= b + 1e-12 for a, b in zip(taus, taus[1:]))


def test_tutorial_row_100_iterations():
    """Spec table: eta 0.7 at it 42.5 (span 37-49), T 2.5 at it 36 (span 34-39)."""
    p = schedules.phases(100)
    eta = {i: schedules.step_size(i, p) for i in range(1, 101)}
    tau = {i: schedules.tau2_fudge(i, p) for i in range(1, 101)}
    # the eta midpoint 42.5 lies between iterations 42 and 43, symmetrically (the sigmoid is odd about it)
    assert eta[42] > 0.7 > eta[43]
    assert (eta[42] - 0.7) == pytest.approx(0.7 - eta[43], abs=1e-12)
    # by hand: s(42) = 1 / (10^(-0.5/6.25) + 1) = 0.5460 -> eta = 0.5 + 0.4 * 0.5460
    assert eta[42] == pytest.approx(0.5 + 0.4 / (10 ** (-0.5 / 6.25) + 1), abs=1e-12)
    assert tau[36] == pytest.approx(2.5, abs=1e-12)
    assert _ramp_span(eta, 0.9, 0.5) == (37, 49)
    assert _ramp_span(tau, 1.0, 4.0) == (34, 39)


def test_gui_default_row_200_iterations():
    """Spec table: eta 0.7 at it 85 (span 74-97), T 2.5 at it 72.5 (span 67-79)."""
    p = schedules.phases(200)
    eta = {i: schedules.step_size(i, p) for i in range(1, 201)}
    tau = {i: schedules.tau2_fudge(i, p) for i in range(1, 201)}
    assert eta[85] == pytest.approx(0.7, abs=1e-12)
    assert tau[72] < 2.5 < tau[73]
    assert (2.5 - tau[72]) == pytest.approx(tau[73] - 2.5, abs=1e-12)
    assert _ramp_span(eta, 0.9, 0.5) == (74, 97)
    assert _ramp_span(tau, 1.0, 4.0) == (67, 79)


def test_other_base_values_keep_the_scheme_shape():
    # eta0 = 0.3 (3D classification): "3-step", 0.9 -> 0.3; T0 = 2: 1 -> 2
    p = schedules.phases(100)
    assert schedules.step_size(1, p, base=0.3) == pytest.approx(0.9, abs=1e-3)
    assert schedules.step_size(100, p, base=0.3) == pytest.approx(0.3, abs=1e-3)
    assert schedules.tau2_fudge(1, p, final=2.0) == pytest.approx(1.0, abs=1e-3)
    assert schedules.tau2_fudge(100, p, final=2.0) == pytest.approx(2.0, abs=1e-3)


def test_tutorial_batch_sizes_and_particle_passes():
    """N = 5800: 200 for 1-29, linear 200 -> 1000 over 30-79, 1000 for 80-100; 56,400 passes (~9.7 epochs)."""
    n = 5800
    p = schedules.phases(100)
    ini, fin = schedules.default_subset_sizes(n)
    assert (ini, fin) == (200, 1000)
    sizes = {i: schedules.subset_size(i, p, ini, fin, n) for i in range(1, 101)}
    assert all(sizes[i] == 200 for i in range(1, 30))
    assert all(sizes[i] == 200 + round((i - 30) / 50 * 800) for i in range(30, 80))
    assert sizes[30] == 200 and sizes[55] == 600 and sizes[79] == 984
    assert all(sizes[i] == 1000 for i in range(80, 101))
    assert all(sizes[i] <= sizes[i + 1] for i in range(1, 100))
    total = sum(sizes.values())
    assert total == 29 * 200 + sum(200 + round((i - 30) * 16) for i in range(30, 80)) + 21 * 1000
    assert total == 56_400
    assert total / n == pytest.approx(9.7, abs=0.05)


@pytest.mark.parametrize(
    "n, expected",
    [
        (100, (200, 1000)),  # floors: max(min(0.005 N, 5000), 200), max(min(0.1 N, 50000), 1000)
        (5_800, (200, 1000)),
        (100_000, (500, 10_000)),
        (400_000, (2000, 40_000)),
        (2_000_000, (5000, 50_000)),  # caps
    ],
)
def test_default_subset_sizes(n, expected):
    assert schedules.default_subset_sizes(n) == expected


def test_subset_capped_at_the_data_set():
    p = schedules.phases(100)
    assert schedules.subset_size(1, p, 200, 1000, 150) == 150
    assert schedules.subset_size(90, p, 200, 1000, 700) == 700
    assert schedules.subset_size(90, p, 200, 1000, 5000) == 1000


@pytest.mark.parametrize(
    "n, fraction, expected",
    [
        (1_455, 0.0, (200, 1000)),  # no cap: RELION's sizes
        (1_455, 1 / 3, (200, 485)),  # the tutorial's good classes: a third of the data
        (900, 1 / 3, (200, 300)),
        (450, 1 / 3, (200, 200)),  # never below the initial size
        (3_000, 1 / 3, (200, 1000)),  # RELION's 1,000 is already a third
        (100_000, 1 / 3, (500, 10_000)),  # large data sets: RELION's 10 %
    ],
)
def test_final_subset_capped_at_a_fraction_of_the_data(n, fraction, expected):
    assert schedules.subset_sizes(n, final_max_fraction=fraction) == expected


def test_explicit_subset_sizes_win_over_the_automatic_ones():
    assert schedules.subset_sizes(1_455, initial=100, final=1200, final_max_fraction=1 / 3) == (100, 1200)
    assert schedules.subset_sizes(1_455, initial=-1, final=700, final_max_fraction=1 / 3) == (200, 700)


def test_sigmoid_is_finite_for_extreme_iterations():
    p = schedules.phases(10_000)
    assert math.isfinite(schedules.step_size(1, p)) and math.isfinite(schedules.step_size(10_000, p))


@pytest.mark.parametrize(
    "n, expected_final",
    [
        (1_000, 500),  # RELION's floor of 1,000 would be the whole data set in every late mini-batch
        (1_455, 728),  # the tutorial's good classes
        (2_000, 1000),  # from 2,000 particles on RELION's sizes stand
        (50_000, 5000),
    ],
)
def test_the_default_job_caps_the_final_mini_batch_at_half_the_data(n, expected_final):
    from novomap.vdam.config import VdamConfig

    config = VdamConfig()
    sizes = schedules.subset_sizes(n, config.initial_subset, config.final_subset, config.final_subset_max_fraction)
    assert sizes == (schedules.default_subset_sizes(n)[0], expected_final)
    phases = schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction)
    assert schedules.subset_size(config.n_iter, phases, *sizes, n) == expected_final < n
