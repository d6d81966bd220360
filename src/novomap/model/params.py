"""The model's non-map parameters and their updates (vdam-spec 4.3): noise, SSNR, resolution, priors.

Every parameter estimated from a mini-batch is blended into its previous value with momentum mu,
since one mini-batch sees only a fraction of the data.
"""

from __future__ import annotations

import torch

from novomap.physics.fourier import power, shell_average

MIN_RESOLUTION_SHELLS = 5  # RELION's minres_map
INCREMENT_SHELLS = 10  # RELION's incr_size


def reference_power(reference_ft: torch.Tensor, shells: torch.Tensor, n_shells: int) -> torch.Tensor:
    """tau^2: per-shell mean |F|^2 / 2 of a projector transform (M, M, M) -> (n_shells,)."""
    return shell_average(power(reference_ft) / 2, shells, n_shells)


def spectral_snr(weight_half0: torch.Tensor, tau2: torch.Tensor, shells: torch.Tensor, tau2_fudge: float, pad: int) -> torch.Tensor:
    """SSNR per shell = shell mean of pad^3 T W_0(k) tau^2(shell) (RELION's data_vs_prior) -> (n_shells,)."""
    n_shells = tau2.numel()
    w = shell_average(weight_half0, shells, n_shells)
    return pad**3 * tau2_fudge * w * tau2


def resolution_shell(ssnr: torch.Tensor) -> int:
    """Last shell before the SSNR first drops below 1 (at least MIN_RESOLUTION_SHELLS)."""
    below = torch.nonzero(ssnr[1:] < 1).squeeze(1)
    first_below = int(below[0]) + 1 if below.numel() else ssnr.numel()
    return max(first_below - 1, MIN_RESOLUTION_SHELLS)


def image_sizes(resolution_shell_index: int, box: int, coarse_step_deg: float, particle_diameter_a: float, pixel_size_a: float) -> tuple[int, int]:
    """(current_size, coarse_size) in px for the E-step (vdam-spec 3.1)."""
    current = min(2 * (resolution_shell_index + INCREMENT_SHELLS), box)
    rotated_distance_a = coarse_step_deg / 360.0 * torch.pi * particle_diameter_a
    coarse_resolution_a = rotated_distance_a / 1.2
    coarse = 2 * int(torch.ceil(torch.tensor(pixel_size_a * box / coarse_resolution_a)))
    return current, min(coarse, current)


def class_image_sizes(resolution_shell_index: int, class_shells: list[int], current_size: int) -> list[int]:
    """Each class's own window (px): current_size narrowed by two pixels per shell that the class's
    resolution shell trails the best class's (so the best class keeps current_size, and a class keeps
    INCREMENT_SHELLS shells beyond its own resolution, as the run beyond its best class's)."""
    best = max(class_shells)
    return [max(2, min(current_size, 2 * (resolution_shell_index - (best - shell) + INCREMENT_SHELLS))) for shell in class_shells]


def update_sigma2(sigma2: torch.Tensor, noise_sums: torch.Tensor, weight_per_group: torch.Tensor, pixels_per_shell: torch.Tensor, mu: float) -> torch.Tensor:
    """sigma^2 <- mu sigma^2 + (1-mu) sum w|X-cP|^2 / (2 sum_w N_pix); tiny values copy the previous shell."""
    counts = weight_per_group[:, None] * pixels_per_shell[None, :]
    estimate = torch.where(counts > 0, noise_sums / (2 * counts.clamp(min=1e-30)), sigma2)
    estimate = torch.where(weight_per_group[:, None] > 0, estimate, sigma2)
    updated = mu * sigma2 + (1 - mu) * estimate
    for shell in range(1, updated.shape[1]):
        updated[:, shell] = torch.where(updated[:, shell] < 1e-14, updated[:, shell - 1], updated[:, shell])
    return updated


def update_with_momentum(previous: torch.Tensor, estimate: torch.Tensor, mu: float) -> torch.Tensor:
    return mu * previous + (1 - mu) * estimate
