"""Sums of one E-step chunk for the M-step (vdam-spec 3.6).

For every retained (particle, class, fine orientation) pair with translation weights w_t:
  gradient  g += BP[ sum_t w_t c (X_t - c P) / sigma^2 ] = BP[ (c/sigma^2) (X A - c P s) ]
  weight    W += BP[ s c^2 / sigma^2 ]
with A(p) = sum_t w_t e_t(p) (one matrix product over translations) and s = sum_t w_t,
back-projected into the grid of the pair's class and the particle's pseudo half-set.
Noise: sum w |X_t - c P|^2 per shell on the masked image, plus the image power beyond the window.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from novomap.estep.cache import SliceBuffer, compiled_sparse_cpu
from novomap.estep.prepare import PreparedBatch
from novomap.estep.search import FineResult, projection_rows, sub_shift_phases
from novomap.estep.unique import unique_bounded
from novomap.physics.fourier import power
from novomap.physics.projection import average_over_operators
from novomap.physics.window import FourierWindow, shift_phases
from novomap.sampling.grid import SearchGrid

# torch warns on the first unchecked sparse tensor even when the check is turned off explicitly
# (check_invariants=False below: the indices are built in range); a GPU run printed it to stderr
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


@dataclass
class Sums:
    """Everything one iteration's E-step adds up, over all chunks of the mini-batch.

    Double precision: each voxel and shell sums contributions of up to tens of thousands of
    particles (and, across devices, of several partial sums), where float32 rounding would
    bias the small high-frequency terms the VDAM step and the noise estimate depend on. The
    per-chunk slices feeding these sums stay single precision (see SliceBuffer).
    """

    gradient: torch.Tensor  # (2, K, M, M, M) complex128: pseudo half x class
    weight: torch.Tensor  # (2, K, M, M, M) float64
    noise: torch.Tensor  # (n_groups, N//2+1) float64: sum of weighted |X - cP|^2 per shell
    noise_pixels: torch.Tensor  # (N//2+1,) float64: half-plane pixels per shell of the N box
    particles_per_group: torch.Tensor  # (n_groups,) float64: sum of weights (= particles)
    class_weight: torch.Tensor  # (K,) float64
    direction_weight: torch.Tensor  # (K, n_dir) float64
    offset_sq_a2: torch.Tensor  # () float64: sum w |new origin|^2 (Å^2)
    slices: SliceBuffer  # back-projection slices not yet inserted into gradient/weight
    log_likelihood: torch.Tensor  # () float64
    max_probability: torch.Tensor  # () float64: sum of Pmax

    def add_(self, other: "Sums") -> None:
        """Add another device's sums into these (in place; slices must have been flushed)."""
        for name in ("gradient", "weight", "noise", "particles_per_group", "class_weight", "direction_weight", "offset_sq_a2", "log_likelihood", "max_probability"):
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))

    @staticmethod
    def zeros(
        n_classes: int, grid_size: int, box: int, n_groups: int, n_directions: int, noise_pixels: torch.Tensor, n_fine: int, n_pixels: int, device,
        class_pixels: list[int] | None = None,
    ) -> "Sums":
        m = grid_size
        f64 = dict(dtype=torch.float64, device=device)
        return Sums(
            gradient=torch.zeros((2, n_classes, m, m, m), dtype=torch.complex128, device=device),
            weight=torch.zeros((2, n_classes, m, m, m), **f64),
            noise=torch.zeros((n_groups, box // 2 + 1), **f64),
            noise_pixels=noise_pixels.to(device=device, dtype=torch.float64),
            particles_per_group=torch.zeros(n_groups, **f64),
            class_weight=torch.zeros(n_classes, **f64),
            direction_weight=torch.zeros((n_classes, n_directions), **f64),
            offset_sq_a2=torch.zeros((), **f64),
            slices=SliceBuffer(2 * n_classes * n_fine, n_pixels, device, class_pixels=class_pixels),
            log_likelihood=torch.zeros((), **f64),
            max_probability=torch.zeros((), **f64),
        )


def flush_slices(sums: Sums, grid: SearchGrid, window: FourierWindow, pad: int) -> None:
    """Back-project every buffered slice into the gradient and weight grids."""
    sums.slices.flush(grid.fine_rotations.reshape(-1, 3, 3), sums.gradient.shape[1], window, pad, sums.gradient, sums.weight)


def _insert_now(
    sums: Sums, keys: torch.Tensor, data: torch.Tensor, weight: torch.Tensor, reference: torch.Tensor, reference_rows: torch.Tensor,
    grid: SearchGrid, window: FourierWindow, pad: int,
) -> None:
    buffer = SliceBuffer(sums.slices.slot.numel(), data.shape[1], data.device, max_slices=keys.numel(), class_pixels=sums.slices.class_pixels)
    buffer.add(keys, data, weight, reference, reference_rows)
    buffer.flush(grid.fine_rotations.reshape(-1, 3, 3), sums.gradient.shape[1], window, pad, sums.gradient, sums.weight)


def symmetrise_sums(sums: Sums, operators: list[torch.Tensor | None], radius: float | None = None) -> None:
    """Make the gradient and weight sums of each class those of its symmetric map, in place:
    operators per class, its group in its map's frame (G, 3, 3), or None (left as is). After a search
    over one asymmetric unit (sampling.asymmetric_unit) the sums are then those of a full search whose
    posterior splits equally over equivalent poses (physics.projection.average_over_operators).
    radius: voxels from the centre beyond which the sums hold nothing (None: unknown)."""
    for k, ops in enumerate(operators):
        if ops is None or ops.shape[0] < 2:
            continue
        for h in range(sums.gradient.shape[0]):
            grids = (sums.gradient[h, k], sums.weight[h, k])
            average_over_operators(*grids, ops.to(sums.weight.device), radius, out=grids)


def _dense_rows(row_to: torch.Tensor, col: torch.Tensor, value: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """A dense (n_rows, n_cols) matrix with `value` summed at (row_to, col); for small sparse sums as matmuls."""
    out = torch.zeros(n_rows * n_cols, dtype=value.dtype, device=value.device)
    return add_at(out, row_to * n_cols + col, value).view(n_rows, n_cols)


def add_at(flat: torch.Tensor, index: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """flat (n,) += value (m,) summed at index (m,), in place, in the order of `index` on the CPU.

    Not index_put_(accumulate=True): on the CPU its threads add duplicate indices in an order that
    varies from call to call (30 distinct results in 30 calls of 200,000 values), so runs of one seed
    differed, the more on a busy machine (maps by up to 0.02 after 12 iterations). index_add_ on a
    1-D tensor adds serially. (CUDA adds atomically in any order, either way.)"""
    return flat.index_add_(0, index, value)


_compiled_sparse_sums = compiled_sparse_cpu  # a module attribute: tests switch the compiled path off here


def _weighted_rows(rows: torch.Tensor, columns: torch.Tensor, weights: torch.Tensor, n_rows: int, dense: torch.Tensor) -> torch.Tensor:
    """out[r] = sum over the retained rows u with rows[u] = r of weights[u] * dense[columns[u]]:
    rows, columns, weights (U,); dense (C, P) real -> (n_rows, P) float32. On the CPU one compiled
    pass over the rows (estep.sparse_cpu.real_row_sums; the dense (n_rows, C) matrix of the weights
    is mostly zeros, and its product was 40 % of an early chunk's accumulation); elsewhere that
    matrix product."""
    compiled = _compiled_sparse_sums() if dense.device.type == "cpu" else None
    if compiled is not None:
        return compiled.real_row_sums(rows, columns, weights, n_rows, dense)
    return _dense_rows(rows, columns, weights.float(), n_rows, dense.shape[0]) @ dense.float()


def _sparse_product(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, n_rows: int, dense: torch.Tensor) -> torch.Tensor:
    """M @ dense for the sparse M with `values` summed at (rows, columns): dense (C, P) complex64 -> (n_rows, P).

    A sparse-dense product is an order of magnitude faster than gathering the dense rows per
    entry and adding them with index_add_, and never materialises one row per entry.
    """
    shape = (n_rows, dense.shape[0])
    matrix = torch.sparse_coo_tensor(torch.stack([rows, columns]), values, shape, check_invariants=False).coalesce()
    real = torch.view_as_real(dense.resolve_conj().contiguous()).reshape(dense.shape[0], -1)  # (C, 2P), re/im interleaved
    return torch.view_as_complex(torch.sparse.mm(matrix, real).reshape(n_rows, dense.shape[1], 2))


def _child_sums(rows: torch.Tensor, columns: torch.Tensor, weights: torch.Tensor, children: torch.Tensor, n_rows: int, dense: torch.Tensor) -> torch.Tensor:
    """out[r] = sum over the retained rows u with rows[u] = r of dense[columns[u]] * sum_j weights[u, j] children[j].

    rows, columns (U,); weights (U, J) real: a row's weights of its J child translations; children
    (J, P) complex64: their sub-shift phases; dense (C, P) complex64 -> (n_rows, P) complex64.
    On the CPU one compiled pass over the rows (estep.sparse_cpu.child_row_sums): each dense row is
    read once per retained row rather than once per child, and the (C * J, P) products are never
    formed; memory traffic bounded the two products of the sparse form in the early iterations (real
    tutorial, 2 threads: a chunk of ~140,000 retained rows at 333 pixels accumulated in 150 ms, now
    ~95). Elsewhere (or for J other than 4 and 1) the sparse product of the U * J entries with dense[c] * children[j].
    """
    compiled = _compiled_sparse_sums() if dense.device.type == "cpu" and children.shape[0] in (1, 4) else None
    if compiled is not None:
        return compiled.child_row_sums(rows, columns, weights, children, n_rows, dense)
    n_children = children.shape[0]
    products = (dense[:, None, :] * children[None]).reshape(-1, dense.shape[1])  # (C * J, P)
    entry_columns = (columns[:, None] * n_children + torch.arange(n_children, device=columns.device)).reshape(-1)
    return _sparse_product(rows.repeat_interleave(n_children), entry_columns, weights.float().reshape(-1), n_rows, products)


def accumulate(
    sums: Sums,
    batch: PreparedBatch,
    result: FineResult,
    window: FourierWindow,
    grid: SearchGrid,
    pad: int,
    pixel_size_a: float,
) -> None:
    """Add one chunk's posterior-weighted sums into `sums` (in place).

    Rows sharing (pseudo half, class, fine orientation) are summed as 2D slices first, so each
    distinct orientation is back-projected once per chunk, however many particles chose it.
    Terms that factor per particle or per projection are sums of rows weighted by the retained
    hypotheses (sparse rows on the CPU, estep.sparse_cpu, which reads the projection store in place;
    matrix products elsewhere).
    """
    device = batch.masked.device
    keep = torch.nonzero(result.weights.sum(-1) > 0).squeeze(1)
    weights = result.weights[keep]  # (U, J): J = 4 child translations, or 1
    b = result.row_particle[keep]
    k = result.row_class[keep]
    compiled = _compiled_sparse_sums() if device.type == "cpu" else None
    # the CPU's projection store (planes (n_stored, 2, P)) is read in place by the compiled sums; elsewhere
    # the retained rows' projections are gathered as complex rows (they use only some of the store)
    in_place = compiled is not None and result.projections.dim() == 3 and weights.shape[1] in (1, 4)
    if in_place:
        projections, proj_index = result.projections, result.row_projection[keep]
    else:
        used, proj_index = unique_bounded(result.row_projection[keep], result.projections.shape[0])
        projections = projection_rows(result.projections, used)
    total = weights.sum(-1)  # s (U,)
    n_batch = batch.masked.shape[0]

    # rows sharing (particle, coarse translation) share the phases e_{t + delta_j}: every sum over rows
    # below is a sparse (row weights) x dense (per-pair or per-projection) product, no (U, P) array
    n_trans = grid.n_coarse_translations
    pairs, pair_of_row = unique_bounded(b * n_trans + result.row_translation[keep], n_batch * n_trans)
    coarse_phases = shift_phases(window, grid.coarse_translations.to(device)).to(torch.complex64)
    sub = sub_shift_phases(window, grid).to(torch.complex64)
    # e_{t + delta_j} = e_t e_{delta_j}: the (n_pairs, J, P) phases are never formed on their own
    pair_coarse_phases = coarse_phases[pairs % n_trans]  # (n_pairs, P)

    ctf = batch.ctf.float()
    inv_sigma2 = batch.inv_sigma2.float()
    image_term = (ctf * inv_sigma2 * batch.unmasked).to(torch.complex64)  # (B, P): c X / sigma^2
    ctf2_inv_sigma2 = ctf * ctf * inv_sigma2  # (B, P)

    # gradient of slice (h, k, f): sum_rows c X A / sigma^2 - P_f * sum_rows s c^2 / sigma^2
    n_classes = sums.gradient.shape[1]
    n_fine = grid.fine_rotations.shape[0] * 8
    slice_key = (batch.half[b] * n_classes + k) * n_fine + result.row_orientation[keep]
    keys, slice_of_row = unique_bounded(slice_key, 2 * n_classes * n_fine)
    n_slices = keys.numel()
    slice_weight = _weighted_rows(slice_of_row, b, total, n_slices, ctf2_inv_sigma2)  # (S, P)
    slice_proj = torch.zeros(n_slices, dtype=torch.long, device=device).index_put_((slice_of_row,), proj_index)
    # sum_rows sum_j w_j c X e_t e_{delta_j} / sigma^2
    slice_gradient = _child_sums(slice_of_row, pair_of_row, weights, sub, n_slices, image_term[pairs // n_trans] * pair_coarse_phases)
    if result.class_pixels is not None:
        # a class narrower than the window gets nothing beyond its own window (its update ignores it
        # there, vdam.iterate.maximization), as no class gets anything beyond the window. (Row sums
        # that stop at each class's pixels were tried: the same map to the bit, no time saved, session 45)
        slice_pixels = result.class_pixels.to(device)[(keys // n_fine) % n_classes]
        beyond = torch.arange(window.n_pixels, device=device)[None, :] >= slice_pixels[:, None]
        slice_gradient.masked_fill_(beyond, 0)
        slice_weight.masked_fill_(beyond, 0)
    # the slices added are slice_gradient - projections[slice_proj] * slice_weight
    if not sums.slices.room_for(keys):
        flush_slices(sums, grid, window, pad)
    if sums.slices.room_for(keys):
        sums.slices.add(keys, slice_gradient, slice_weight, projections, slice_proj)
    else:  # more distinct slices in one chunk than the buffer holds: insert them directly
        _insert_now(sums, keys, slice_gradient, slice_weight, projections, slice_proj, grid, window, pad)

    # noise per particle and pixel on the masked image:
    # sum_rows s|X|^2 - 2 Re(X c conj(sum_rows P A)) + c^2 sum_rows s |P|^2
    x = batch.masked.to(torch.complex64)
    particle_total = torch.zeros(n_batch, dtype=torch.float32, device=device).index_add_(0, b, total.float())
    # sum_rows conj(P) A = e_t sum_rows conj(P) sum_j w_j e_{delta_j}, per (particle, translation) pair
    if in_place:
        model_power = compiled.power_row_sums(b, proj_index, total, n_batch, projections)  # (B, P)
        pair_cross = compiled.child_row_sums(pair_of_row, proj_index, weights, sub, pairs.numel(), projections, conjugate=True)
    else:
        model_power = _weighted_rows(b, proj_index, total, n_batch, power(projections))
        pair_cross = _child_sums(pair_of_row, proj_index, weights, sub, pairs.numel(), projections.conj())
    pair_cross = pair_cross * pair_coarse_phases  # (n_pairs, P)
    cross = torch.zeros((n_batch, window.n_pixels), dtype=torch.complex64, device=device).index_add_(0, pairs // n_trans, pair_cross)
    x_power = power(x)
    diff2 = particle_total[:, None] * x_power - 2 * ctf * (x * cross).real + ctf * ctf * model_power
    n_shells = sums.noise.shape[1]
    in_window = torch.zeros((n_batch, n_shells), dtype=torch.float64, device=device).index_add_(1, window.shell.to(device), diff2.double())
    # beyond the window the model predicts nothing: the whole image power is noise there
    beyond = torch.arange(n_shells, device=device) >= window.size // 2
    per_shell = torch.where(beyond[None, :], batch.masked_power, in_window)
    sums.noise.index_add_(0, batch.optics_group, per_shell)
    sums.particles_per_group.index_add_(0, batch.optics_group, torch.ones(n_batch, dtype=torch.float64, device=device))

    sums.class_weight.index_add_(0, k, total)
    n_directions = sums.direction_weight.shape[1]
    add_at(sums.direction_weight.view(-1), k * n_directions + result.row_direction[keep], total)
    # sum w |new origin|^2 over the rows, per (particle, coarse translation) pair: the pairs share the
    # origins, and there are a tenth as many (the rows' own (U, J, 2) origins took 10 % of an early chunk)
    pair_weights = torch.zeros((pairs.numel(), weights.shape[1]), dtype=weights.dtype, device=device).index_add_(0, pair_of_row, weights)
    fine_translations = grid.fine_translations.to(device)[pairs % n_trans]  # (n_pairs, J, 2)
    new_origin_a = (batch.origin_px[pairs // n_trans][:, None, :] + fine_translations) * pixel_size_a
    sums.offset_sq_a2 += (pair_weights * new_origin_a.square().sum(-1)).sum()
    sums.log_likelihood += result.log_likelihood.sum()
    sums.max_probability += result.max_probability.sum()
