"""RELION's CTF (vdam-spec 2) against physical constants and roots found independently."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import constants
from scipy.optimize import brentq

from novomap.physics.ctf import ctf_values, electron_wavelength_a, pixel_frequencies_a


def _ctf(fx, fy, dfu=10000.0, dfv=10000.0, angle=0.0, kv=200.0, cs=1.4, q0=0.1, phase=0.0, b=0.0, scale=1.0):
    fx = torch.as_tensor(fx, dtype=torch.float64)
    fy = torch.as_tensor(fy, dtype=torch.float64)
    return ctf_values(fx, fy, dfu, dfv, angle, kv, cs, q0, phase, b, scale)[0]


def _lambda_physics(kv: float) -> float:
    """Relativistic de Broglie wavelength (Å) from CODATA constants."""
    volts = kv * 1e3
    e, m, c, h = constants.e, constants.m_e, constants.c, constants.h
    momentum = math.sqrt(2 * m * e * volts * (1 + e * volts / (2 * m * c * c)))
    return h / momentum * 1e10


def _lambda_relion(kv: float) -> float:
    """RELION's wavelength formula (spec 2), written out here: 12.2643247 / sqrt(V (1 + 0.978466e-6 V))."""
    volts = kv * 1e3
    return 12.2643247 / math.sqrt(volts * (1 + 0.978466e-6 * volts))


def _isotropic_phase_arg(u: float, df: float, kv: float = 200.0, cs_mm: float = 1.4, q0: float = 0.1) -> float:
    """The argument of sin in CTF = sin(pi lam df u^2 - pi/2 Cs lam^3 u^4 + atan(Q0/sqrt(1-Q0^2)))."""
    lam = _lambda_relion(kv)
    cs = cs_mm * 1e7
    return math.pi * lam * df * u * u - 0.5 * math.pi * cs * lam**3 * u**4 + math.atan(q0 / math.sqrt(1 - q0 * q0))


def _first_zero(df: float) -> float:
    return brentq(lambda u: _isotropic_phase_arg(u, df) - math.pi, 1e-6, 0.2, xtol=1e-14)


@pytest.mark.parametrize("kv, expected", [(200.0, 0.025079), (300.0, 0.019687)])
def test_wavelength(kv, expected):
    lam = float(electron_wavelength_a(kv))
    assert lam == pytest.approx(expected, abs=1e-6)
    assert lam == pytest.approx(_lambda_relion(kv), rel=1e-14)
    # RELION's constants agree with CODATA physics to about 1e-5
    assert lam == pytest.approx(_lambda_physics(kv), rel=2e-5)


def test_ctf_at_zero_frequency_is_amplitude_contrast():
    for q0 in (0.07, 0.1, 0.2):
        value = float(_ctf([0.0], [0.0], q0=q0)[0])
        assert value == pytest.approx(math.sin(math.atan(q0 / math.sqrt(1 - q0 * q0))), abs=1e-14)
        assert value == pytest.approx(q0, abs=1e-12)
        assert value > 0


def test_first_zero_appendix_b_check_4():
    # first zero: pi lam df u^2 - pi/2 Cs lam^3 u^4 + atan(0.1/sqrt(0.99)) = pi (root from the test's own formula)
    u0 = _first_zero(10000.0)
    assert 0.055 < u0 < 0.07  # about 1/16 Å^-1 (lam df u^2 ~ 1) for 1 µm at 200 kV
    before, at, after = _ctf([u0 * 0.999, u0, u0 * 1.001], [0.0, 0.0, 0.0]).tolist()
    assert before > 0 > after
    assert abs(at) < 1e-5
    # and the values along the line follow the independent formula
    u = torch.linspace(0, 0.25, 200, dtype=torch.float64)
    expected = torch.tensor([math.sin(_isotropic_phase_arg(float(v), 10000.0)) for v in u], dtype=torch.float64)
    torch.testing.assert_close(_ctf(u, torch.zeros_like(u)), expected, atol=1e-6, rtol=0)


def test_astigmatism_u_along_angle_v_perpendicular():
    dfu, dfv, angle = 15000.0, 8000.0, 30.0
    for df, direction in ((dfu, angle), (dfv, angle + 90.0)):
        u0 = _first_zero(df)
        c, s = math.cos(math.radians(direction)), math.sin(math.radians(direction))
        u = torch.tensor([u0 * 0.999, u0 * 1.001], dtype=torch.float64)
        values = _ctf(u * c, u * s, dfu=dfu, dfv=dfv, angle=angle)
        assert float(values[0]) > 0 > float(values[1]), (df, direction)
        line = torch.linspace(0.001, 0.2, 100, dtype=torch.float64)
        expected = torch.tensor([math.sin(_isotropic_phase_arg(float(v), df)) for v in line], dtype=torch.float64)
        torch.testing.assert_close(_ctf(line * c, line * s, dfu=dfu, dfv=dfv, angle=angle), expected, atol=1e-6, rtol=0)
    # the mirrored direction (-angle) is not the U direction
    u0 = _first_zero(dfu)
    c, s = math.cos(math.radians(-angle)), math.sin(math.radians(-angle))
    value = float(_ctf([u0 * c], [u0 * s], dfu=dfu, dfv=dfv, angle=angle)[0])
    assert abs(value) > 0.3


def test_bfactor_envelope_and_scale():
    u = torch.linspace(0.01, 0.14, 50, dtype=torch.float64)
    plain = _ctf(u, 0.5 * u)
    damped = _ctf(u, 0.5 * u, b=80.0, scale=0.7)
    u2 = u * u * 1.25
    torch.testing.assert_close(damped, plain * torch.exp(-80.0 * u2 / 4) * 0.7, atol=1e-12, rtol=0)


def test_phase_shift_90_degrees():
    q0 = 0.1
    value = float(_ctf([0.0], [0.0], phase=90.0, q0=q0)[0])
    assert value == pytest.approx(math.sin(math.pi / 2 + math.atan(q0 / math.sqrt(1 - q0 * q0))), abs=1e-12)
    assert value == pytest.approx(math.sqrt(1 - q0 * q0), abs=1e-12)


def test_tiny_values_replaced_keeping_sign():
    # Q0 = 0 at u = 0 gives exactly 0 -> +1e-8
    assert float(_ctf([0.0], [0.0], q0=0.0)[0]) == pytest.approx(1e-8, rel=1e-6)
    # a B-factor damping by 1e-12 makes a value tiny (not zero); the sign of -sin(gamma) survives
    for u, sign in ((0.05, 1.0), (0.07, -1.0)):  # before / after the first zero (~0.062 Å^-1)
        raw = float(_ctf([u], [0.0])[0])
        assert raw * sign > 0.1
        b = 4 * math.log(1e12) / (u * u)
        assert float(_ctf([u], [0.0], b=b)[0]) == pytest.approx(sign * 1e-8, rel=1e-6)
    # values just above the threshold are kept
    b = 4 * math.log(1e6) / (0.05 * 0.05)
    assert float(_ctf([0.05], [0.0], b=b)[0]) == pytest.approx(float(_ctf([0.05], [0.0])[0]) * 1e-6, rel=1e-9)


def test_shapes_and_per_particle_parameters():
    fx = torch.zeros(4, 5, dtype=torch.float64)
    values = ctf_values(fx, fx, torch.tensor([1e4, 2e4]), torch.tensor([1e4, 2e4]), torch.zeros(2), 300.0, 2.7, torch.tensor([0.1, 0.07], dtype=torch.float64))
    assert values.shape == (2, 4, 5)
    assert float(values[1, 0, 0]) == pytest.approx(0.07, abs=1e-12)


def test_pixel_frequencies():
    fx, fy = pixel_frequencies_a(torch.tensor([0, 16, 32]), torch.tensor([-32, 8, 0]), 64, 3.54)
    assert fx.tolist() == pytest.approx([0.0, 16 / (64 * 3.54), 1 / (2 * 3.54)])
    assert fy.tolist() == pytest.approx([-1 / (2 * 3.54), 8 / (64 * 3.54), 0.0])
