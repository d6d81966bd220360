"""CTF-weighted Fourier reconstruction from known poses (like relion_reconstruct).

F(k) = sum_i BP[c_i X_i^aligned](k) / (sum_i BP[c_i^2](k) + lambda), where X^aligned is the
particle transform with its origin shift undone and BP the trilinear back-projection
(vdam-spec 1.4: X_raw(k) = CTF(k) P_A(k) exp(+2 pi i k.s/N), s = origin in px).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from novomap.physics import projection
from novomap.physics.ctf import ctf_values, pixel_frequencies_a
from novomap.physics.euler import euler_to_matrix
from novomap.physics.fourier import centred_ft_to_volume, centred_radius, rfft_image
from novomap.physics.projection import hermitian_symmetrise, insert_slices
from novomap.physics.window import FourierWindow, fourier_window, shift_phases


@dataclass
class FourierAccumulator:
    """Running sums of CTF-weighted back-projections on a centred (pad*N)^3 grid.

    On the CPU (with numba) the batches are scattered into float64 per-thread grids that are added into
    `data` and `weight` once, when the map is reconstructed (flush): scattering each batch into grids
    of its own and adding those had cost more than the scatter itself on large grids (10,000 particles
    of 128 px into a 256^3 grid: 37.5 -> 23.4 s, benchmarks/results/2026-12-06-s48-checks.md).
    """

    box: int
    pad: int = 2
    device: torch.device | str = "cpu"
    # single precision: half the memory traffic of the scatter and the grids (~2x faster); plenty for
    # a low-resolution map from up to tens of thousands of particles (the initial model's reconstruction)
    single_precision: bool = False
    data: torch.Tensor = field(init=False)
    weight: torch.Tensor = field(init=False)
    window: FourierWindow = field(init=False)
    _private: object = field(init=False, default=None, repr=False)  # numpy (n_parts, M, M, M, 3) float64, or None

    def __post_init__(self) -> None:
        m = self.pad * self.box
        real = torch.float32 if self.single_precision else torch.float64
        self.data = torch.zeros((m, m, m), dtype=real.to_complex(), device=self.device)
        self.weight = torch.zeros((m, m, m), dtype=real, device=self.device)
        self.window = fourier_window(self.box, self.box, self.device)

    def add(self, spectra: torch.Tensor, ctf: torch.Tensor, rotations: torch.Tensor, origins_px: torch.Tensor) -> None:
        """Back-project particles.

        spectra: (B, P) window vectors of the raw particle transforms (RELION-normalised);
        ctf: (B, P) real; rotations (B, 3, 3); origins_px (B, 2) as (x, y) in px.
        """
        aligned = spectra.to(torch.complex128) * shift_phases(self.window, origins_px.to(self.device))
        ctf = ctf.double()
        values, weights = (aligned * ctf).to(self.data.dtype), (ctf * ctf).to(self.weight.dtype)
        rotations = rotations.to(self.weight.dtype)
        compiled = projection.compiled_loops() if self.data.device.type == "cpu" else None
        if compiled is None:
            insert_slices(values, weights, rotations, self.window.kx, self.window.ky, self.pad, self.data, self.weight)
            return
        if self._private is None:
            self._private = compiled.private_grids(self.data.shape[-1])
        compiled.scatter_into_grids(self._private, torch.stack([values.real, values.imag, weights]), rotations, self.window.kx, self.window.ky, self.pad)

    def flush(self) -> None:
        """Add the per-thread grids (CPU) into data and weight, and free them."""
        if self._private is not None:
            projection.compiled_loops().add_grids_into(self._private, self.data, self.weight)
            self._private = None

    def reconstruct(self, regulariser: float = 0.2) -> torch.Tensor:
        """Volume (N, N, N): Wiener-like division with a constant regulariser.

        regulariser is relative to the mean weight inside the sphere of radius N/2, so the same
        value works for any number of particles, CTF and box.
        """
        self.flush()
        data, weight = hermitian_symmetrise(self.data, self.weight)
        m = weight.shape[-1]
        radius = centred_radius(m, self.pad, weight.device)
        inside = radius < self.box // 2
        lam = regulariser * weight[inside].mean()
        spectrum = torch.where(inside, data / (weight + lam), torch.zeros_like(data))
        return centred_ft_to_volume(spectrum, self.box)


def particle_ctf(particles, index: torch.Tensor, window: FourierWindow) -> torch.Tensor:
    """CTF of the given particles (B,) on a Fourier window -> (B, P) float64."""
    fx, fy = pixel_frequencies_a(window.kx, window.ky, window.box, particles.pixel_size_a)
    return ctf_values(
        fx,
        fy,
        particles.defocus_u_a[index],
        particles.defocus_v_a[index],
        particles.defocus_angle_deg[index],
        particles.voltage_kv[index],
        particles.cs_mm[index],
        particles.amplitude_contrast[index],
        particles.phase_shift_deg[index],
        particles.bfactor_a2[index],
        particles.ctf_scale[index],
    )


def reconstruct_particles(particles, pad: int = 2, regulariser: float = 0.2, batch_size: int = 256) -> torch.Tensor:
    """Reconstruct a ParticleSet from the poses in its table -> volume (N, N, N) float64 on RELION's greyscale."""
    poses = Poses(particles.rot_deg, particles.tilt_deg, particles.psi_deg, particles.origin_x_a, particles.origin_y_a)
    return reconstruct_with_poses(particles, torch.arange(particles.n), poses, pad, regulariser, batch_size)


@dataclass(frozen=True)
class Poses:
    """One pose per particle of a set: Euler angles (deg) and origins (Å), each (n,) float64."""

    rot_deg: torch.Tensor
    tilt_deg: torch.Tensor
    psi_deg: torch.Tensor
    origin_x_a: torch.Tensor
    origin_y_a: torch.Tensor


def reconstruct_with_poses(
    particles,
    index: torch.Tensor,
    poses: Poses,
    pad: int = 2,
    regulariser: float = 0.2,
    batch_size: int = 256,
    single_precision: bool = False,
) -> torch.Tensor:
    """Reconstruct particles `index` (0-based rows) at `poses` (indexed by row) -> (N, N, N) float64
    (float32 with single_precision: see FourierAccumulator).

    Images are read batch_size at a time, so memory does not grow with the number of particles.
    Each batch also costs a pass over the (pad N)^3 grids, so larger batches are faster.
    """
    accumulator = FourierAccumulator(particles.box_size, pad, single_precision=single_precision)
    for batch in torch.split(index, batch_size):
        spectra = accumulator.window.take(rfft_image(particles.images(batch.tolist()).double()))
        rotations = euler_to_matrix(poses.rot_deg[batch], poses.tilt_deg[batch], poses.psi_deg[batch])
        origins_px = torch.stack([poses.origin_x_a[batch], poses.origin_y_a[batch]], -1) / particles.pixel_size_a
        accumulator.add(spectra, particle_ctf(particles, batch, accumulator.window), rotations, origins_px)
    return accumulator.reconstruct(regulariser)


# Half-set maps are reconstructed without padding the Fourier grid (pad 1, not the final map's 2): 5x
# faster (0.96 s instead of 5.3 s for 582 particles of 64 px on one core), and the FSC barely moves
# (RELION's poses of the 582 tutorial particles: 16.9 instead of 17.8 Å at 0.5, 8.5 instead of 8.9 Å at 0.143).
HALF_SET_PAD = 1


def half_set_maps(particles, members: torch.Tensor, poses, half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pseudo half-set of `members` reconstructed at `poses` -> two (N, N, N) float64 maps."""
    maps = []
    for h in (0, 1):
        rows = members[half[members] == h]
        if rows.numel() == 0:
            maps.append(torch.zeros((particles.box_size,) * 3, dtype=torch.float64))
        else:
            batch = max(256, (1 << 22) // particles.box_size**2)  # as the final reconstruction: ~4 MB of pixels per batch
            maps.append(reconstruct_with_poses(particles, rows, poses, pad=HALF_SET_PAD, batch_size=batch, single_precision=True).double())
    return maps[0], maps[1]
