"""Simulated particle data sets: the forward model of vdam-spec 1.4, run forwards.

A raw particle is X(k) = CTF(k) · P_A(k) · exp(+2 pi i k.s/N) + noise, with P_A the central slice
of the map at A^T (kx, ky, 0) and s = (rlnOriginXAngst, rlnOriginYAngst) / pixel size. A particle
whose centre is displaced by +d px from the box centre therefore has origin s = -d px.

Noise is white and Gaussian. Its level comes from the signal-to-noise ratio

    SNR = mean over particles of var(clean CTF-modulated particle inside the particle circle)
          / noise variance,

the circle being that of the particle diameter (real beta-gal at 64 px, 3.54 Å/px measures about
0.1). The noise variance is fixed once per data set (real data have one noise level and particles
of varying contrast), from the first min(n, 500) particles. Images are then normalised as RELION's
extraction does: background (outside the circle) mean 0 and standard deviation 1, per image.
Particles come out white (CTF > 0 at low frequency), as the forward model gives for positive density.

Output (`simulate`): DIR/particles.star (RELION 3.1+), DIR/Particles/stack_NNNN.mrcs, DIR/truth.mrc.
Everything random comes from one seed, so the same options give the same images and STAR values
(the MRC and STAR headers carry a time stamp written by mrcfile/starfile).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from novomap.errors import InputError, NovomapError
from novomap.io.mrc import read_map, write_map, write_stack
from novomap.io.star import numeric_column, read_particle_star, write_particle_star
from novomap.maps.transform import fourier_resize, resample_map
from novomap.physics.ctf import ctf_values, pixel_frequencies_a
from novomap.physics.euler import euler_to_matrix, matrix_to_euler
from novomap.physics.fourier import image_frequencies, irfft_image, volume_to_centred_ft
from novomap.physics.projection import extract_slices, gridding_correction
from novomap.physics.window import FourierWindow, shift_phases

#: Particles used to fix the noise level (the SNR is exact for data sets up to this size).
CALIBRATION_PARTICLES = 500
#: Upper bound on (images per batch) x (Fourier pixels per image): about 150 MB of temporaries.
_BATCH_PIXELS = 1 << 19
#: Largest calibration set kept in memory for reuse (floats; 128 MB).
_CACHE_FLOATS = 1 << 25
#: Decimals written to the STAR file (format_star_float); parameters are rounded to them first
#: so that the images are exactly those of the poses and CTFs a reader gets back.
_STAR_DECIMALS = 6


# --------------------------------------------------------------------------------------------
# Maps from atomic models (resampling a map: maps.transform.resample_map)


def structure_density(
    structure,
    box: int,
    pixel_size_a: float,
    centre_a: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
    rotation: np.ndarray | None = None,
    oversample: int = 2,
    blur_a2: float = 40.0,
) -> torch.Tensor:
    """Electron-scattering potential of an atomic model (gemmi Peng form factors) -> (N, N, N) (z, y, x).

    Atom position p (Å) goes to map coordinate R (p - centre_a), in Å from the box centre voxel
    (N//2 on each axis); R = rotation (3, 3) or the identity. The density is computed on a grid
    `oversample` times finer, with an extra blur B = blur_a2 (so that little lies beyond the fine
    grid's Nyquist and aliases), then Fourier-cropped to N and un-blurred: the result is the
    model's potential band-limited to the map's Nyquist. Units: gemmi's (per Å^3); scale freely.
    Raises InputError if an atom lies outside the box (the cell is periodic, so it would wrap).
    """
    import gemmi  # imported here: only model input needs it

    st = structure.clone()
    st.remove_hydrogens()
    st.remove_waters()
    st.remove_empty_chains()
    model = st[0]
    fine_box = box * oversample
    fine_pixel = pixel_size_a / oversample
    cell = fine_box * fine_pixel
    # the fine grid's centre voxel fine_box//2 becomes voxel box//2 after fourier_resize
    centre_in_cell = (fine_box // 2) * fine_pixel
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    shift = centre_in_cell - rot @ np.asarray(centre_a, dtype=np.float64)
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(rot.tolist()), gemmi.Vec3(*shift.tolist())))

    positions = np.array([atom.pos.tolist() for residue in _residues(model) for atom in residue])
    if positions.size == 0:
        raise InputError("the model has no atoms")
    reach = np.abs(positions - centre_in_cell).max()
    if reach > (box / 2 - 1) * pixel_size_a:
        raise InputError(
            f"the model reaches {reach:.0f} Å from its centre but the box ({box} px of {pixel_size_a:g} Å) "
            f"only holds {(box / 2 - 1) * pixel_size_a:.0f} Å; use a larger --box"
        )
    st.cell = gemmi.UnitCell(cell, cell, cell, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    calculator = gemmi.DensityCalculatorE()
    calculator.grid.set_unit_cell(st.cell)
    calculator.grid.spacegroup = gemmi.find_spacegroup_by_name("P 1")
    calculator.grid.set_size(fine_box, fine_box, fine_box)
    calculator.blur = blur_a2
    calculator.add_model_density_to_grid(model)
    # gemmi's array is indexed (x, y, z); maps here are (z, y, x)
    fine = torch.from_numpy(np.array(calculator.grid, copy=True)).permute(2, 1, 0).double()
    return fourier_resize(fine, box, bfactor_a2=-blur_a2, pixel_size_a=pixel_size_a).float()


def _residues(model):
    for chain in model:
        yield from chain


def model_map(path: str | Path, box: int, pixel_size_a: float) -> torch.Tensor:
    """Read a PDB/mmCIF model and compute its map (N, N, N) with its centre of mass at the box centre."""
    import gemmi

    try:
        structure = gemmi.read_structure(str(path))
    except Exception as error:  # gemmi raises RuntimeError/ValueError on unreadable files
        raise InputError(f"not a readable atomic model ({error})", path) from None
    if len(structure) == 0:
        raise InputError("the model file holds no model", path)
    # the centre of what is drawn (structure_density leaves out waters and hydrogens too)
    structure.remove_hydrogens()
    structure.remove_waters()
    centre = np.array(structure[0].calculate_center_of_mass().tolist())
    try:
        return structure_density(structure, box, pixel_size_a, centre)
    except InputError as error:
        raise InputError(str(error), path) from None


def load_input_map(
    map_path: str | Path, box: int, pixel_size_a: float, map_pixel_size_a: float | None = None
) -> torch.Tensor:
    """Read a map and bring it to (box, box, box) at pixel_size_a (Fourier resampling if needed).

    map_pixel_size_a overrides the header's pixel size (needed when the header has none).
    """
    data, header_pixel = read_map(map_path)
    if data.shape[0] != data.shape[1] or data.shape[1] != data.shape[2]:
        raise InputError(f"the map must be cubic, found {data.shape[2]} x {data.shape[1]} x {data.shape[0]}", map_path)
    source_pixel = map_pixel_size_a or header_pixel
    if not source_pixel or source_pixel <= 0:
        raise InputError("the map header has no pixel size; give it with --map-pixel-size", map_path)
    volume = torch.from_numpy(data)
    try:
        return resample_map(volume, source_pixel, box, pixel_size_a)
    except InputError as error:
        raise InputError(str(error), map_path) from None


# --------------------------------------------------------------------------------------------
# Random particle parameters


@dataclass
class CtfParameters:
    """Per-particle defocus (n,) in Å (positive = underfocus) and degrees, shared optics."""

    defocus_u_a: torch.Tensor
    defocus_v_a: torch.Tensor
    defocus_angle_deg: torch.Tensor
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float


@dataclass
class ParticleParameters:
    """Everything that makes particle i: pose, displacement, CTF. All (n,) or (n, 2), float64.

    shifts_px is where the particle's centre lies relative to the box centre, (x, y) in px;
    the STAR origin is its negative (origins_a).
    """

    rot_deg: torch.Tensor
    tilt_deg: torch.Tensor
    psi_deg: torch.Tensor
    shifts_px: torch.Tensor
    ctf: CtfParameters

    @property
    def n(self) -> int:
        return int(self.rot_deg.numel())

    def rotations(self, index: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """RELION matrices A (B, 3, 3) of the selected particles."""
        return euler_to_matrix(self.rot_deg[index], self.tilt_deg[index], self.psi_deg[index])

    def origins_a(self, pixel_size_a: float) -> torch.Tensor:
        """(n, 2) rlnOriginX/YAngst = -shift * pixel size."""
        return -self.shifts_px * pixel_size_a


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    """n rotation matrices (n, 3, 3) float64, uniform on SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn((n, 4), generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def random_shifts_px(n: int, max_shift_px: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) displacements (x, y) in px, uniform over the disc of radius max_shift_px."""
    u = torch.rand((n, 2), generator=generator, dtype=torch.float64)
    radius = max_shift_px * torch.sqrt(u[:, 0])
    angle = 2 * math.pi * u[:, 1]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], -1)


def random_defocus(
    n: int, defocus_min_a: float, defocus_max_a: float, astigmatism_a: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, V, angle) each (n,): mean defocus uniform in [min, max] Å, U - V uniform in
    [0, astigmatism_a] Å (U >= V, as CTFFIND writes them), angle uniform in [0, 180) degrees."""
    u = torch.rand((n, 3), generator=generator, dtype=torch.float64)
    mean = defocus_min_a + (defocus_max_a - defocus_min_a) * u[:, 0]
    half = 0.5 * astigmatism_a * u[:, 1]
    return mean + half, mean - half, 180.0 * u[:, 2]


def ctf_from_star(
    path: str | Path, n: int, generator: torch.Generator
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], tuple[float, float, float]]:
    """Sample n particle rows (with replacement) of a STAR file for their CTF.

    Returns ((U, V, angle) each (n,) in Å/degrees, (voltage kV, Cs mm, amplitude contrast) of the
    file's first optics group).
    """
    table = read_particle_star(path)
    rows = torch.randint(len(table.particles), (n,), generator=generator).numpy()
    columns = [
        torch.from_numpy(numeric_column(table.particles, label, path)[rows].copy())
        for label in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
    ]
    first = table.optics.iloc[0]
    optics = tuple(float(first[label]) for label in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"))
    return (columns[0], columns[1], columns[2]), optics  # type: ignore[return-value]


def _round(values: torch.Tensor, decimals: int = _STAR_DECIMALS) -> torch.Tensor:
    return torch.round(values * 10**decimals) / 10**decimals


# --------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class Projector:
    """A map ready for Fourier-space projection: the gridding-corrected, padded, centred 3D transform.

    window: every rfft pixel with |k| < N/2 (both halves of the kx = 0 column, so the inverse
    transform needs no Hermitian completion).
    """

    volume_ft: torch.Tensor  # (pad*N,)*3 complex64
    pad: int
    window: FourierWindow
    pixel_size_a: float

    @property
    def box(self) -> int:
        return self.window.box


def disc_window(box: int) -> FourierWindow:
    """All rfft pixels (N, N//2+1) with |k| < N/2, flattened: the band the projections fill."""
    ky, kx = image_frequencies(box)
    radius = torch.sqrt(kx * kx + ky * ky)
    flat_index = torch.nonzero((radius < box / 2).reshape(-1)).squeeze(1)
    return FourierWindow(
        box=box,
        size=box,
        flat_index=flat_index,
        kx=kx.reshape(-1)[flat_index].double(),
        ky=ky.reshape(-1)[flat_index].double(),
        shell=torch.round(radius.reshape(-1)[flat_index]).long(),
    )


def make_projector(volume: torch.Tensor, pixel_size_a: float, pad: int = 2) -> Projector:
    """Map (N, N, N) -> Projector. Dividing by trilinear interpolation's sinc^2 attenuation first
    (RELION's gridding correction) makes the slices match true line-integral projections."""
    n = volume.shape[-1]
    corrected = volume.double() / gridding_correction(n, pad)
    volume_ft = volume_to_centred_ft(corrected.float(), pad).to(torch.complex64)
    return Projector(volume_ft, pad, disc_window(n), float(pixel_size_a))


def particle_ctfs(projector: Projector, ctf: CtfParameters, index: torch.Tensor | slice) -> torch.Tensor:
    """CTF of the selected particles on the projector's window -> (B, P) float32."""
    window = projector.window
    fx, fy = pixel_frequencies_a(window.kx, window.ky, window.box, projector.pixel_size_a)
    values = ctf_values(
        fx,
        fy,
        ctf.defocus_u_a[index],
        ctf.defocus_v_a[index],
        ctf.defocus_angle_deg[index],
        ctf.voltage_kv,
        ctf.cs_mm,
        ctf.amplitude_contrast,
    )
    return values.float()


def clean_images(projector: Projector, parameters: ParticleParameters, index: torch.Tensor | slice) -> torch.Tensor:
    """Noise-free particles (B, N, N) float32: CTF-modulated projections moved by their shifts.

    Same greyscale as the map's line integral (RELION's Fourier normalisation, vdam-spec 1.3).
    """
    window = projector.window
    kx, ky = window.kx.float(), window.ky.float()
    slices = extract_slices(projector.volume_ft, parameters.rotations(index).float(), kx, ky, projector.pad)
    phases = shift_phases(window, parameters.shifts_px[index]).to(torch.complex64)
    values = slices * particle_ctfs(projector, parameters.ctf, index) * phases
    n = projector.box
    spectra = torch.zeros((values.shape[0], n * (n // 2 + 1)), dtype=torch.complex64)
    spectra[:, window.flat_index] = values
    return irfft_image(spectra.reshape(-1, n, n // 2 + 1), n)


def particle_mask(box: int, diameter_px: float) -> torch.Tensor:
    """(N, N) bool: pixels within diameter/2 of the box centre (N//2, N//2)."""
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    radius = torch.sqrt(axis[:, None] ** 2 + axis[None, :] ** 2)
    return radius <= diameter_px / 2


def masked_variance(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Variance (population) of each image's pixels where mask is True: (B, N, N) -> (B,)."""
    values = images[..., mask].double()
    return values.var(dim=-1, unbiased=False)


def normalise_background(images: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """RELION-style normalisation: per image, mean 0 and std 1 over the pixels outside `inside` (N, N)."""
    background = images[..., ~inside].double()
    mean = background.mean(dim=-1)
    std = background.std(dim=-1, unbiased=False).clamp(min=1e-12)
    return ((images.double() - mean[:, None, None]) / std[:, None, None]).to(images.dtype)


def batch_size_for(box: int) -> int:
    """Images per batch so that the projection temporaries stay around 150 MB."""
    return max(1, _BATCH_PIXELS // (box * (box // 2 + 1)))


# --------------------------------------------------------------------------------------------
# The data set


@dataclass(frozen=True)
class SimulationOptions:
    """What `novomap simulate` does. Lengths in Å unless the name says px; defocus in Å.

    voltage_kv, cs_mm, amplitude_contrast: None = from ctf_from's optics table, else 200 kV,
    1.4 mm, 0.1. With ctf_from set, the defocus range is not used.
    """

    n: int
    snr: float
    box: int = 64
    pixel_size_a: float = 3.54
    seed: int = 0
    defocus_min_a: float = 8000.0
    defocus_max_a: float = 25000.0
    astigmatism_a: float = 600.0
    ctf_from: Path | None = None
    voltage_kv: float | None = None
    cs_mm: float | None = None
    amplitude_contrast: float | None = None
    max_shift_px: float = 3.0
    particle_diameter_a: float = 200.0
    float16: bool = False
    particles_per_stack: int = 1000

    def check(self) -> None:
        """Raise NovomapError for values that cannot make a data set."""
        if self.n < 1:
            raise NovomapError(f"the number of particles must be at least 1, not {self.n}")
        if not self.snr > 0 or not math.isfinite(self.snr):
            raise NovomapError(f"the SNR must be a positive number, not {self.snr}")
        if self.box < 16:
            raise NovomapError(f"the box must be at least 16 px, not {self.box}")
        if not self.pixel_size_a > 0:
            raise NovomapError(f"the pixel size must be positive, not {self.pixel_size_a}")
        if self.particles_per_stack < 1:
            raise NovomapError("particles per stack must be at least 1")
        if self.max_shift_px < 0:
            raise NovomapError("the maximum shift must not be negative")
        if self.ctf_from is None and not 0 <= self.defocus_min_a <= self.defocus_max_a:
            raise NovomapError(
                f"need 0 <= defocus min <= defocus max, got {self.defocus_min_a:g} and {self.defocus_max_a:g} Å"
            )
        if self.amplitude_contrast is not None and not 0 <= self.amplitude_contrast < 1:
            raise NovomapError("the amplitude contrast must lie in [0, 1)")
        if self.voltage_kv is not None and not self.voltage_kv > 0:
            raise NovomapError("the voltage must be positive")
        diameter_px = self.particle_diameter_a / self.pixel_size_a
        # the background ring (corners included) must keep enough pixels to normalise on
        outside = int((~particle_mask(self.box, diameter_px)).sum())
        if not self.particle_diameter_a > 0 or outside < 0.1 * self.box**2:
            raise NovomapError(
                f"the particle diameter ({self.particle_diameter_a:g} Å = {diameter_px:.1f} px) leaves too little "
                f"background in a {self.box} px box to normalise on; use a smaller diameter or a larger box"
            )


@dataclass
class SimulationResult:
    star_path: Path
    truth_path: Path
    stack_paths: list[Path]
    noise_sigma: float  # noise std on the map's greyscale, before normalisation
    mean_signal_variance: float  # of the calibration particles, inside the particle circle
    parameters: ParticleParameters


def _generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Independent streams for the parameters and the noise, both from one seed."""
    states = np.random.SeedSequence(int(seed)).spawn(2)
    gens = []
    for state in states:
        g = torch.Generator()
        g.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
        gens.append(g)
    return gens[0], gens[1]


def draw_parameters(options: SimulationOptions, generator: torch.Generator) -> ParticleParameters:
    """Random poses (uniform on SO(3)), displacements (uniform in a disc) and CTFs.

    Values are rounded to the decimals of the STAR file, so the images match what is written.
    """
    n = options.n
    rotations = random_rotations(n, generator)
    rot, tilt, psi = (_round(a) for a in matrix_to_euler(rotations))
    shifts = random_shifts_px(n, options.max_shift_px, generator)
    shifts = -_round(-shifts * options.pixel_size_a) / options.pixel_size_a
    voltage, cs, q0 = 200.0, 1.4, 0.1
    if options.ctf_from is not None:
        (u, v, angle), (voltage, cs, q0) = ctf_from_star(options.ctf_from, n, generator)
    else:
        u, v, angle = random_defocus(n, options.defocus_min_a, options.defocus_max_a, options.astigmatism_a, generator)
    ctf = CtfParameters(
        _round(u),
        _round(v),
        _round(angle),
        options.voltage_kv if options.voltage_kv is not None else voltage,
        options.cs_mm if options.cs_mm is not None else cs,
        options.amplitude_contrast if options.amplitude_contrast is not None else q0,
    )
    return ParticleParameters(rot, tilt, psi, shifts, ctf)


def noise_sigma_for(
    projector: Projector, parameters: ParticleParameters, snr: float, mask: torch.Tensor
) -> tuple[float, float]:
    """(noise std, mean signal variance inside mask) from the first CALIBRATION_PARTICLES particles."""
    sigma, signal, _ = _calibrate(projector, parameters, snr, mask, keep_images=False)
    return sigma, signal


def _calibrate(
    projector: Projector, parameters: ParticleParameters, snr: float, mask: torch.Tensor, keep_images: bool
) -> tuple[float, float, torch.Tensor | None]:
    """noise_sigma_for, plus the clean calibration images (count, N, N) if keep_images (else None).

    Keeping them saves projecting those particles twice; small data sets are all calibration.
    """
    count = min(parameters.n, CALIBRATION_PARTICLES)
    batch = batch_size_for(projector.box)
    total = 0.0
    kept = []
    for start in range(0, count, batch):
        index = torch.arange(start, min(start + batch, count))
        clean = clean_images(projector, parameters, index)
        total += float(masked_variance(clean, mask).sum())
        if keep_images:
            kept.append(clean)
    signal = total / count
    if not signal > 0:
        raise NovomapError("the map projects to blank images (all zero inside the particle circle)")
    return math.sqrt(signal / snr), signal, torch.cat(kept) if keep_images else None


def _stack_and_micrograph_names(number: int, n_stacks: int) -> tuple[str, str]:
    """Relative names of stack `number` (1-based) and of its fake micrograph (one per stack)."""
    digits = f"{number:0{max(4, len(str(n_stacks)))}d}"
    return f"Particles/stack_{digits}.mrcs", f"Micrographs/sim_{digits}.mrc"


def simulate(
    volume: torch.Tensor,
    out_dir: str | Path,
    options: SimulationOptions,
    parameters: ParticleParameters | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Simulate a particle data set from a map (box, box, box) at options.pixel_size_a into out_dir.

    parameters: use these instead of drawing them (their n wins over options.n).
    progress(done, total) is called after each stack is written.
    Memory holds one stack of images plus one batch of temporaries, whatever n is.
    """
    options.check()
    box, pixel = options.box, options.pixel_size_a
    if tuple(volume.shape) != (box, box, box):
        raise NovomapError(f"the map is {tuple(volume.shape)} but the box is {box} px")
    out_dir = Path(out_dir)
    parameter_gen, noise_gen = _generators(options.seed)
    if parameters is None:
        parameters = draw_parameters(options, parameter_gen)
    n = parameters.n

    projector = make_projector(volume, pixel)
    inside = particle_mask(box, options.particle_diameter_a / pixel)
    keep = min(n, CALIBRATION_PARTICLES) * box * box <= _CACHE_FLOATS
    sigma, signal, calibration = _calibrate(projector, parameters, options.snr, inside, keep_images=keep)

    per_stack = options.particles_per_stack
    n_stacks = (n + per_stack - 1) // per_stack
    batch = batch_size_for(box)
    stack_paths: list[Path] = []
    image_names: list[str] = []
    micrographs: list[str] = []
    for number in range(1, n_stacks + 1):
        first = (number - 1) * per_stack
        count = min(per_stack, n - first)
        images = torch.empty((count, box, box), dtype=torch.float32)
        for start in range(0, count, batch):
            stop = min(start + batch, count)
            if calibration is not None and first + stop <= calibration.shape[0]:
                clean = calibration[first + start : first + stop]
            else:
                clean = clean_images(projector, parameters, torch.arange(first + start, first + stop))
            noisy = clean + sigma * torch.randn(clean.shape, generator=noise_gen, dtype=torch.float32)
            images[start:stop] = normalise_background(noisy, inside)
        name, micrograph = _stack_and_micrograph_names(number, n_stacks)
        write_stack(out_dir / name, images, pixel, dtype="float16" if options.float16 else "float32")
        stack_paths.append(out_dir / name)
        image_names += [f"{i:06d}@{name}" for i in range(1, count + 1)]
        micrographs += [micrograph] * count
        if progress is not None:
            progress(first + count, n)

    truth_path = out_dir / "truth.mrc"
    write_map(truth_path, volume, pixel)
    star_path = out_dir / "particles.star"
    optics, particles = star_tables(parameters, options, image_names, micrographs)
    write_particle_star(star_path, optics, particles)
    return SimulationResult(star_path, truth_path, stack_paths, sigma, signal, parameters)


def star_tables(
    parameters: ParticleParameters, options: SimulationOptions, image_names: list[str], micrographs: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(optics, particles) tables of a simulated data set (RELION 3.1+ labels, one optics group)."""
    ctf = parameters.ctf
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [float(options.pixel_size_a)],
            "rlnImageSize": [int(options.box)],
            "rlnImageDimensionality": [2],
            "rlnVoltage": [float(ctf.voltage_kv)],
            "rlnSphericalAberration": [float(ctf.cs_mm)],
            "rlnAmplitudeContrast": [float(ctf.amplitude_contrast)],
        }
    )
    origins = parameters.origins_a(options.pixel_size_a).numpy()
    n = parameters.n
    particles = pd.DataFrame(
        {
            "rlnImageName": image_names,
            "rlnMicrographName": micrographs,
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnDefocusU": ctf.defocus_u_a.numpy(),
            "rlnDefocusV": ctf.defocus_v_a.numpy(),
            "rlnDefocusAngle": ctf.defocus_angle_deg.numpy(),
            "rlnCtfBfactor": np.zeros(n),
            "rlnCtfScalefactor": np.ones(n),
            "rlnPhaseShift": np.zeros(n),
            "rlnAngleRot": parameters.rot_deg.numpy(),
            "rlnAngleTilt": parameters.tilt_deg.numpy(),
            "rlnAnglePsi": parameters.psi_deg.numpy(),
            "rlnOriginXAngst": origins[:, 0],
            "rlnOriginYAngst": origins[:, 1],
        }
    )
    return optics, particles

