"""Iteration 0 of a de novo run: noise spectra, a random-orientation reconstruction and random blobs (vdam-spec 4.6)."""

from __future__ import annotations

import math

import torch

from novomap.physics.euler import euler_to_matrix
from novomap.physics.fourier import centred_ft_to_volume, centred_radius, power_spectrum_images, rfft_image, volume_to_centred_ft
from novomap.physics.masks import mask_images_with_background, mask_volume_with_background
from novomap.physics.projection import hermitian_symmetrise, insert_slices
from novomap.physics.window import FourierWindow, fourier_window


def initial_noise_spectrum(images: torch.Tensor, mask_radius_px: float) -> torch.Tensor:
    """sigma^2 per shell from background-masked images (B, N, N) -> (N//2+1,).

    Mean power of the images minus the power of their average: what varies from image to image.
    """
    spectra = rfft_image(mask_images_with_background(images.double(), mask_radius_px, 5.0))
    n = images.shape[-1]
    mean_power = power_spectrum_images(spectra, n).mean(0)
    average_power = power_spectrum_images(spectra.mean(0, keepdim=True), n)[0]
    sigma2 = mean_power - average_power
    for shell in range(1, sigma2.numel()):  # negative estimates take the previous shell's value
        if sigma2[shell] <= 0:
            sigma2[shell] = sigma2[shell - 1]
    if sigma2[0] <= 0:
        sigma2[0] = sigma2[1]
    return sigma2


def initial_window(box: int) -> FourierWindow:
    """The window of the random-orientation reconstruction: |k| < round(0.07 N)/2.

    RELION passes a shell index where a box size is expected, so only about 2 shells are used
    for N = 64; the blobs, not this reconstruction, carry the start's structure.
    The cut is on |k| itself, not on round(|k|) < size // 2: for an odd size (N = 43..49 gives 3)
    the latter would keep the DC term alone, a constant map, and blobs scaled to its zero std.
    At least 3 (|k| < 1.5, the DC term and its 8 neighbours), or boxes under 36 px (size 2: |k| < 1)
    would keep the DC term alone too, and start from a blank map.
    """
    size = max(3, round(0.07 * box))
    full = fourier_window(box, box)
    keep = torch.sqrt(full.kx**2 + full.ky**2) < size / 2
    return FourierWindow(box, size, full.flat_index[keep], full.kx[keep], full.ky[keep], full.shell[keep])


def random_orientation_reconstruction(
    spectra: torch.Tensor, ctf: torch.Tensor, window: FourierWindow, class_of: torch.Tensor, n_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Back-project CTF-weighted images at random orientations -> (K, N, N, N).

    spectra, ctf: (B, P) on `window`. rot and psi uniform in [0, 360), tilt uniform in [0, 180)
    (not uniform on the sphere, as in RELION).
    """
    n = window.box
    b = spectra.shape[0]
    angles = torch.rand((b, 3), generator=generator, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0], dtype=torch.float64)
    rotations = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    maps = []
    for k in range(n_classes):
        rows = class_of == k
        data = torch.zeros((n, n, n), dtype=torch.complex128)
        weight = torch.zeros((n, n, n), dtype=torch.float64)
        insert_slices(spectra[rows] * ctf[rows], ctf[rows].square(), rotations[rows], window.kx, window.ky, 1, data, weight)
        data, weight = hermitian_symmetrise(data, weight)
        spectrum = torch.where(weight > 1e-12, data / weight.clamp(min=1e-12), torch.zeros_like(data))
        maps.append(centred_ft_to_volume(spectrum, n))
    return torch.stack(maps)


def lowpass_raised_cosine(volume: torch.Tensor, radius_shells: float, width_shells: float = 2.0) -> torch.Tensor:
    """Low-pass a volume (N, N, N): raised cosine through 0.5 at radius_shells, `width_shells` wide."""
    n = volume.shape[-1]
    r = centred_radius(n, 1, volume.device)
    t = ((r - (radius_shells - width_shells / 2)) / width_shells).clamp(0.0, 1.0)
    filt = 0.5 + 0.5 * torch.cos(math.pi * t)
    return centred_ft_to_volume(volume_to_centred_ft(volume) * filt, n)


def random_blobs(reference: torch.Tensor, diameter_px: float, generator: torch.Generator, n_blobs: int = 40) -> torch.Tensor:
    """Random blob start (N, N, N): 40 positive minus half of 40 negative Gaussian blobs, on the reference's scale.

    Blob centres ~ Normal(box centre, d/6); amplitude |reference at the centre|; profile
    exp(-|r - c|^2 (10/d)^2) within d/3 of the centre; rescaled to the reference's standard deviation.
    """
    n = reference.shape[-1]
    coords = torch.arange(n, dtype=torch.float64) - n // 2
    reach = diameter_px / 3
    positive = torch.zeros_like(reference)
    negative = torch.zeros_like(reference)
    for target in (positive, negative):
        centres = torch.randn((n_blobs, 3), generator=generator, dtype=torch.float64) * diameter_px / 6
        for cx, cy, cz in centres.tolist():
            ix, iy, iz = int(cx) + n // 2, int(cy) + n // 2, int(cz) + n // 2
            inside_box = all(0 <= i < n for i in (ix, iy, iz))
            amplitude = abs(float(reference[iz, iy, ix])) if inside_box else 0.0
            # only the cube within `reach` of the centre changes (5x fewer voxels than the box for a
            # typical mask); a margin of one voxel, the same tests and sums: bit for bit the full-box result
            box = [slice(max(0, math.floor(c - reach) + n // 2 - 1), min(n, math.ceil(c + reach) + n // 2 + 2)) for c in (cz, cy, cx)]
            if any(part.start >= part.stop for part in box):
                continue
            z, y, x = torch.meshgrid(coords[box[0]], coords[box[1]], coords[box[2]], indexing="ij")
            dist2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
            near = (x - cx).abs().le(reach) & (y - cy).abs().le(reach) & (z - cz).abs().le(reach)
            target[box[0], box[1], box[2]] += torch.where(near, amplitude * torch.exp(-dist2 * (10.0 / diameter_px) ** 2), torch.zeros_like(dist2))
    blobs = positive - negative / 2
    scale = reference.std() / blobs.std().clamp(min=1e-30)
    return blobs * scale


def initial_references(
    spectra: torch.Tensor,
    ctf: torch.Tensor,
    window: FourierWindow,
    n_classes: int,
    diameter_px: float,
    ini_high_shells: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The de novo start (K, N, N, N): random reconstruction, low-pass, blobs, low-pass, soft mask.

    spectra, ctf: (B, P) of up to 1,000 particles on `initial_window`; particles are dealt to
    classes round-robin so that every class starts from different data and different blobs.
    """
    class_of = torch.arange(spectra.shape[0]) % n_classes
    start = random_orientation_reconstruction(spectra, ctf, window, class_of, n_classes, generator)
    refs = []
    for k in range(n_classes):
        smooth = lowpass_raised_cosine(start[k], ini_high_shells)
        blobs = lowpass_raised_cosine(random_blobs(smooth, diameter_px, generator), ini_high_shells)
        refs.append(mask_volume_with_background(blobs, diameter_px / 2, 5.0))
    return torch.stack(refs)
