"""The contrast transfer function exactly as RELION computes it (vdam-spec 2).

CTF = -sin(gamma) * exp(-B u^2 / 4) * scale, with
gamma = -pi lambda df(theta) u^2 + pi/2 Cs lambda^3 u^4 - phase_shift - atan(Q0 / sqrt(1 - Q0^2)),
df(theta) = dfU cos^2(theta - angle) + dfV sin^2(theta - angle), positive defocus = underfocus.
The CTF is positive at low frequency, matching white (contrast-inverted) particles.
"""

from __future__ import annotations

import math

import torch


def electron_wavelength_a(voltage_kv: torch.Tensor | float) -> torch.Tensor:
    """Relativistic electron wavelength (Å) for an acceleration voltage in kV."""
    volts = torch.as_tensor(voltage_kv, dtype=torch.float64) * 1e3
    return 12.2643247 / torch.sqrt(volts * (1 + 0.978466e-6 * volts))


def ctf_values(
    freq_x: torch.Tensor,
    freq_y: torch.Tensor,
    defocus_u_a: torch.Tensor,
    defocus_v_a: torch.Tensor,
    defocus_angle_deg: torch.Tensor,
    voltage_kv: torch.Tensor,
    cs_mm: torch.Tensor,
    amplitude_contrast: torch.Tensor,
    phase_shift_deg: torch.Tensor | float = 0.0,
    bfactor_a2: torch.Tensor | float = 0.0,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """CTF at spatial frequencies (1/Å).

    freq_x, freq_y: (P,) or any shape S, the frequencies of the pixels.
    Per-particle parameters: (B,) tensors (or scalars). Returns (B, *S) float64.
    """
    shape = freq_x.shape
    fx = freq_x.reshape(1, -1).double()
    fy = freq_y.reshape(1, -1).double()

    def column(value) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float64, device=fx.device).reshape(-1, 1)

    wavelength = column(electron_wavelength_a(torch.as_tensor(voltage_kv)))
    angle = torch.deg2rad(column(defocus_angle_deg))
    theta = torch.atan2(fy, fx)
    cos2 = torch.cos(theta - angle).square()
    defocus = column(defocus_u_a) * cos2 + column(defocus_v_a) * (1 - cos2)
    u2 = fx * fx + fy * fy
    cs_a = column(cs_mm) * 1e7
    q0 = column(amplitude_contrast)
    gamma = (
        -math.pi * wavelength * defocus * u2
        + 0.5 * math.pi * cs_a * wavelength**3 * u2 * u2
        - torch.deg2rad(column(phase_shift_deg))
        - torch.atan(q0 / torch.sqrt(1 - q0 * q0))
    )
    ctf = -torch.sin(gamma) * torch.exp(-column(bfactor_a2) * u2 / 4) * column(scale)
    # RELION never lets a CTF value be exactly zero (it divides by it on the GPU path)
    tiny = 1e-8
    ctf = torch.where(ctf.abs() < tiny, torch.where(ctf < 0, -tiny, tiny), ctf)
    return ctf.reshape(-1, *shape)


def pixel_frequencies_a(kx: torch.Tensor, ky: torch.Tensor, box: int, pixel_size_a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer pixel frequencies (cycles per box) -> spatial frequencies in 1/Å."""
    scale = 1.0 / (box * pixel_size_a)
    return kx.double() * scale, ky.double() * scale
