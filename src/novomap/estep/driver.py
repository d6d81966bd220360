"""The E-step over a mini-batch: particles in chunks, spread over one or more devices.

Each device holds its own copy of the references, their coarse projections, a projection cache
and its own sums; chunk i goes to device i mod n_devices. With several devices the chunks run in
threads (PyTorch releases the GIL in its kernels) and the sums are added on the first device
before the M-step, so the result depends on the number of devices only through floating-point
summation order.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from novomap.estep.accumulate import Sums, accumulate, flush_slices
from novomap.estep.cache import ProjectionCache
from novomap.estep.ctf_table import window_ctf
from novomap.estep.local import LocalPrior, local_chunk_size, local_coarse_pass
from novomap.estep.posterior_mean import posterior_mean_poses
from novomap.estep.prepare import SpectraCache, prepare_batch
from novomap.estep.search import (
    CoarseReferences,
    FineResult,
    SearchSettings,
    coarse_pass,
    coarse_references,
    fine_pass,
    fine_pass_needs_powers,
    project_references,
)
from novomap.io.particles import ParticleSet
from novomap.physics.euler import matrix_to_euler
from novomap.physics.fourier import power, rfft_shells
from novomap.physics.projection import projector_transform
from novomap.physics.window import FourierWindow, fourier_window, window_prefix
from novomap.sampling.grid import SearchGrid
from novomap.sampling.local import LocalCandidates
from novomap.vdam.state import RunState

PAD = 1  # the job uses --pad 1


@dataclass
class DeviceWork:
    """What one device needs to search and accumulate its chunks."""

    device: torch.device
    window: FourierWindow
    coarse: CoarseReferences
    projection_cache: ProjectionCache
    log_prior: torch.Tensor
    sigma2: torch.Tensor
    sums: Sums
    timings: dict = field(default_factory=dict)


_last_transforms: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (maps, their version, transforms)


def projector_transforms(maps: torch.Tensor) -> torch.Tensor:
    """Gridding-corrected centred transforms of the references: (K, N, N, N) -> (K, M, M, M) (shared:
    read-only).

    The E-step, the accuracy estimate and the M-step of one iteration all transform the same maps;
    the last result is kept while it is of the very same, unmodified tensor (5 ms per class at 64^3,
    ~1 s of the real tutorial job when made twice per iteration)."""
    global _last_transforms
    last = _last_transforms
    if last is not None and last[0] is maps and last[1] == maps._version:
        return last[2]
    transforms = torch.stack([projector_transform(m, PAD) for m in maps])
    _last_transforms = (maps, maps._version, transforms)
    return transforms


def pixels_per_shell(n: int) -> torch.Tensor:
    """Independent Fourier pixels per shell of an N-box image -> (N//2+1,)."""
    shells = rfft_shells(n)
    keep = (shells >= 0) & (shells <= n // 2)
    return torch.zeros(n // 2 + 1, dtype=torch.float64).index_add_(0, shells[keep], torch.ones(int(keep.sum()), dtype=torch.float64))


def chunk_size(grid: SearchGrid, n_classes: int, requested: int = 0, pool: int = 0, n_columns: int = 0) -> int:
    """Particles per chunk (read from disk and searched together).

    requested > 0: exactly that many. Otherwise the most that keep the coarse
    (particle x translation x orientation) arrays near 50 MB (measured fastest on CPU: larger
    chunks fall out of cache), but at least `pool` (RELION's pooled particles; larger pools give
    a GPU bigger kernels). n_columns > 0: the (class, orientation) hypotheses searched per
    translation (one asymmetric unit per class), else every class at every orientation; sizing
    by all of them made a unit search's chunks 2.8x smaller and its fine pass 25 % slower.
    """
    if requested > 0:
        return requested
    per_particle = grid.n_coarse_translations * (n_columns if n_columns > 0 else grid.n_coarse_orientations * n_classes)
    return int(max(8, pool, min(512, 12_000_000 // per_particle)))


def _device_work(
    state: RunState, device: torch.device, grid: SearchGrid, box: int, current_size: int, coarse_size: int, local: bool = False,
    coarse_columns: torch.Tensor | None = None, class_sizes: list[int] | None = None,
) -> DeviceWork:
    # classes of windows of their own need the pixels shell by shell (each class's a prefix)
    window = fourier_window(box, current_size, device, by_shell=class_sizes is not None)
    class_pixels = None if class_sizes is None else [window_prefix(window, size) for size in class_sizes]
    # single precision for the search: projections feed float32 matrix products anyway
    references = projector_transforms(state.maps).to(device=device, dtype=torch.complex64)
    started = time.perf_counter()
    if local:  # each chunk projects the coarse orientations of its own particles' windows (_chunk_coarse)
        empty = torch.empty((0, 0), dtype=torch.complex64, device=device)
        coarse_window = fourier_window(box, coarse_size, device, by_shell=window.by_shell)
        coarse = CoarseReferences(torch.nonzero(window.shell < coarse_size // 2).squeeze(1), coarse_window, empty, empty.real)
    else:
        coarse = coarse_references(references, grid, window, coarse_size, PAD, coarse_columns)
    fine_rotations = grid.fine_rotations.reshape(-1, 3, 3)
    sums = Sums.zeros(
        state.n_classes, box * PAD, box, state.sigma2.shape[0], grid.n_directions, pixels_per_shell(box), fine_rotations.shape[0], window.n_pixels, device,
        class_pixels,
    )
    batched_fine = fine_pass_needs_powers(device)
    return DeviceWork(
        device=device,
        window=window,
        coarse=coarse,
        # the batched fine sums read powers, the compiled CPU loop planes
        projection_cache=ProjectionCache(
            references, grid.fine_rotations, window, PAD, with_power=batched_fine, with_planes=not batched_fine, class_pixels=class_pixels
        ),
        log_prior=torch.log(state.direction_prior.clamp(min=1e-30)).to(device),
        sigma2=state.sigma2.to(device),
        sums=sums,
        timings={"project": time.perf_counter() - started},
    )


def _chunk_coarse(
    work: DeviceWork, grid: SearchGrid, candidates: torch.Tensor, classes: torch.Tensor | None = None
) -> tuple[CoarseReferences, torch.Tensor, torch.Tensor]:
    """The coarse projections a local chunk needs: (references of every class at `used` (K*u rows,
    class-major), used (u,), candidates (B, L) renumbered into used).

    classes (B,): each particle is searched in its own class only (local_coarse_pass), so class k's
    rows are projected only at the orientations of its own particles' candidates; the other rows are
    never read and stay zero (with three classes the final pass's polish projected three times the
    orientations it searched)."""
    valid = candidates >= 0
    used, inverse = torch.unique(candidates[valid], return_inverse=True)
    renumbered = torch.full_like(candidates, -1)
    renumbered[valid] = inverse
    references = work.projection_cache.references
    rotations = grid.coarse_rotations.to(references.device)[used]
    if classes is None or references.shape[0] == 1:
        projections = project_references(references, rotations, work.coarse.window, PAD)
        return dataclasses.replace(work.coarse, projections=projections, power=power(projections)), used, renumbered
    n_used = used.numel()
    projections = torch.zeros((references.shape[0] * n_used, work.coarse.window.n_pixels), dtype=torch.complex64, device=references.device)
    powers = torch.zeros(projections.shape, dtype=torch.float32, device=references.device)
    for k in torch.unique(classes).tolist():
        slots = renumbered[classes == k]
        rows = torch.unique(slots[slots >= 0])
        if rows.numel():
            own = project_references(references[k : k + 1], rotations[rows], work.coarse.window, PAD)
            projections[k * n_used + rows] = own
            powers[k * n_used + rows] = power(own)
    return dataclasses.replace(work.coarse, projections=projections, power=powers), used, renumbered


def _best_poses(result: FineResult, fine_rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each particle's best hypothesis: rotations (B, 3, 3) and translations (B, 2) px, on the CPU."""
    return fine_rotations[result.best_orientation.cpu()], result.best_translation_px.cpu()


def _mean_poses(result: FineResult, fine_rotations: torch.Tensor, grid: SearchGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Each particle's posterior-mean pose within the class of its best hypothesis (estep.posterior_mean):
    rotations (B, 3, 3) and translations (B, 2) px, on the CPU."""
    device = result.weights.device
    in_best_class = result.row_class == result.best_class[result.row_particle]
    weights = result.weights * in_best_class[:, None]
    rotations = fine_rotations.to(device)[result.row_orientation]
    translations = grid.fine_translations.to(device)[result.row_translation]  # (H, J, 2)
    mean_rotations, mean_shifts = posterior_mean_poses(weights, result.row_particle, rotations, translations, result.best_class.shape[0])
    return mean_rotations.cpu(), mean_shifts.cpu()


def _store_assignments(
    state: RunState, chunk: torch.Tensor, origin_px: torch.Tensor, result: FineResult, poses: tuple[torch.Tensor, torch.Tensor], pixel_size_a: float
) -> None:
    """Write the chunk's poses (rotations (B, 3, 3), translations (B, 2) px from the rounded origins), classes and figures into `state`."""
    rotations, translations_px = poses
    rot, tilt, psi = matrix_to_euler(rotations)
    state.rot_deg[chunk], state.tilt_deg[chunk], state.psi_deg[chunk] = rot, tilt, psi
    new_origin = (origin_px + translations_px) * pixel_size_a
    state.origin_x_a[chunk], state.origin_y_a[chunk] = new_origin[:, 0], new_origin[:, 1]
    state.class_number[chunk] = result.best_class.cpu() + 1
    state.max_probability[chunk] = result.max_probability.cpu()
    state.n_significant[chunk] = result.n_significant.cpu()
    state.log_likelihood[chunk] = result.log_likelihood.cpu()


def _add_time(timings: dict, name: str, seconds: float) -> None:
    timings[name] = timings.get(name, 0.0) + seconds


# per particle set: {device: SpectraCache}, for as long as the set is in use (the race's starts, the
# iterations, the scores and the final pass of a run all prepare the same particles)
_SPECTRA_CACHES: "weakref.WeakKeyDictionary[ParticleSet, dict[str, SpectraCache]]" = weakref.WeakKeyDictionary()


def spectra_cache(particles: ParticleSet, device: torch.device) -> SpectraCache | None:
    """The particles' SpectraCache on `device` (CPU only: a GPU prepares a batch faster than it
    would keep the spectra in its memory)."""
    if torch.device(device).type != "cpu":
        return None
    caches = _SPECTRA_CACHES.setdefault(particles, {})
    key = str(device)
    if key not in caches:
        caches[key] = SpectraCache(particles.n, particles.box_size, device)
    return caches[key]


def run_estep(
    state: RunState,
    particles: ParticleSet,
    batch_index: torch.Tensor,
    half: torch.Tensor,
    grid: SearchGrid,
    current_size: int,
    coarse_size: int,
    settings: SearchSettings,
    devices: list[torch.device],
    with_sums: bool = True,
    requested_chunk: int = 0,
    pool: int = 0,
    local: LocalCandidates | None = None,
    narrow: tuple[torch.Tensor, SearchGrid] | None = None,
    coarse_columns: torch.Tensor | None = None,
    class_sizes: list[int] | None = None,
    posterior_mean: bool = False,
) -> tuple[Sums | None, dict]:
    """Search every particle of the batch; store each one's best pose in `state`.

    local: a local search (sampling.local): `grid` is then local.grid, and each particle is
    searched only among its own candidates (rows aligned with batch_index).
    narrow: (rows (len(batch_index),) bool, a grid of the same orientations with fewer translations
    (sampling.grid.narrowed)): those particles are searched on it, in chunks of their own.
    coarse_columns: (C,) ascending keys class * O + orientation, the only (class, coarse orientation)
    hypotheses the global coarse pass searches (one asymmetric unit per class); None: all.
    class_sizes: each class's own window (px, <= current_size; vdam.iterate.class_sizes): its
    projections hold nothing beyond it; None: current_size for all.
    posterior_mean: with `local`, store each particle's posterior-mean pose (estep.posterior_mean)
    instead of its best hypothesis; a global search always stores the best hypothesis.
    Returns the sums on devices[0] (None when with_sums is False: the final assignment pass)
    and the seconds spent per phase, added over devices.
    """
    box = particles.box_size
    works = [_device_work(state, device, grid, box, current_size, coarse_size, local is not None, coarse_columns, class_sizes) for device in devices]
    fine_rotations = grid.fine_rotations.reshape(-1, 3, 3)
    n_columns = 0 if coarse_columns is None else coarse_columns.numel()
    if local is None:
        size = chunk_size(grid, state.n_classes, requested_chunk, pool, n_columns)
    else:
        size = local_chunk_size(local.candidates.shape[1], state.n_classes if local.classes is None else 1, grid.n_coarse_translations, works[0].coarse.pixels.numel(), requested_chunk)
    everyone = torch.arange(batch_index.numel())
    if narrow is None:
        chunks = [(position, grid) for position in torch.split(everyone, size)]
    else:
        # narrow chunks are sized by their own grid's hypotheses, like full ones (more particles, as
        # many hypotheses): real K=3 (2,374 particles; 81 -> 182 particles per narrow chunk) 128.6 -> 122.7 s,
        # every phase shorter, the same classes (benchmarks/results/2026-12-05-s44-openblas.md). With MKL's
        # products (session 12, one class, a full grid) 200 instead of 89 particles had been slower.
        rows, narrow_grid = narrow
        narrow_size = chunk_size(narrow_grid, state.n_classes, requested_chunk, pool, n_columns)
        chunks = [(position, grid) for position in torch.split(everyone[~rows], size) if position.numel()]
        chunks += [(position, narrow_grid) for position in torch.split(everyone[rows], narrow_size) if position.numel()]
    lock = threading.Lock()

    def process(work: DeviceWork, position: torch.Tensor, grid: SearchGrid) -> None:
        chunk = batch_index[position]
        t0 = time.perf_counter()
        origins = torch.stack([state.origin_x_a[chunk], state.origin_y_a[chunk]], -1) / particles.pixel_size_a
        batch = prepare_batch(
            particles.images(chunk).to(device=work.device, dtype=torch.float32),
            chunk,
            half[chunk].to(work.device),
            particles.optics_group[chunk].to(work.device),
            origins.to(work.device),
            work.window,
            window_ctf(particles, chunk, work.window).to(work.device),
            work.sigma2,
            settings.mask_radius_px,
            spectra_cache(particles, work.device),
        )
        t1 = time.perf_counter()
        if local is None:
            prior = None
            hits = coarse_pass(batch, work.coarse, grid, work.log_prior, settings)
        else:
            prior = LocalPrior(local.previous[position].to(work.device), local.sigma_deg)
            classes = None if local.classes is None else local.classes[position].to(work.device)
            chunk_coarse, used, candidates = _chunk_coarse(work, grid, local.candidates[position].to(work.device), classes)
            hits = local_coarse_pass(batch, chunk_coarse, grid, candidates, used, prior, work.log_prior, settings, classes)
        t2 = time.perf_counter()
        result = fine_pass(batch, work.window, hits, work.projection_cache, grid, work.log_prior, settings, prior)
        t3 = time.perf_counter()
        if with_sums:
            accumulate(work.sums, batch, result, work.window, grid, PAD, particles.pixel_size_a)
        t4 = time.perf_counter()
        for name, seconds in (("prepare", t1 - t0), ("coarse", t2 - t1), ("fine", t3 - t2), ("backproject", t4 - t3)):
            _add_time(work.timings, name, seconds)
        poses = _mean_poses(result, fine_rotations, grid) if posterior_mean and local is not None else _best_poses(result, fine_rotations)
        with lock:
            _store_assignments(state, chunk, batch.origin_px.cpu(), result, poses, particles.pixel_size_a)

    def run_device(d: int) -> None:
        work = works[d]
        for position, chunk_grid in chunks[d :: len(works)]:
            process(work, position, chunk_grid)
        work.projection_cache.release()
        if with_sums:
            t0 = time.perf_counter()
            flush_slices(work.sums, grid, work.window, PAD)
            work.sums.slices.release()
            _add_time(work.timings, "backproject", time.perf_counter() - t0)

    if len(works) == 1:
        run_device(0)
    else:
        with ThreadPoolExecutor(max_workers=len(works)) as executor:
            list(executor.map(run_device, range(len(works))))
    timings: dict = {}
    for work in works:
        for name, seconds in work.timings.items():
            _add_time(timings, name, seconds)
    if not with_sums:
        return None, timings
    total = works[0].sums
    for work in works[1:]:
        total.add_(work.sums)
    return total, timings
