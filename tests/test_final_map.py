"""final_map.final_map: the final reconstruction combined with the last VDAM maps."""

from __future__ import annotations

import torch

from novomap.final_map import final_map
from novomap.maps.fsc import fsc
from novomap.maps.transform import shift_volume
from novomap.physics.masks import soft_edge_mask
from novomap.vdam.config import VdamConfig
from novomap.vdam.state import RunState

N = 32
CONFIG = VdamConfig(particle_diameter_a=2 * 12.0, mask_edge_px=3.0)  # 1 Å/px: mask radius 12 px


def _truth(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coords = torch.stack(torch.meshgrid(*[torch.arange(N, dtype=torch.float64) - N / 2] * 3, indexing="ij"), -1)
    volume = torch.zeros((N, N, N), dtype=torch.float64)
    for centre in (torch.rand((10, 3), generator=g, dtype=torch.float64) - 0.5) * 12:
        volume += torch.exp(-((coords - centre) ** 2).sum(-1) / 3.0)
    return volume


def _noise(sigma: float, seed: int) -> torch.Tensor:
    return sigma * torch.randn((N, N, N), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _state(maps: torch.Tensor, iteration: int, snapshots: dict) -> RunState:
    """A RunState with only what final_map reads filled in."""
    empty = torch.zeros(0)
    return RunState(
        iteration=iteration, maps=maps, moment1=empty, moment2=empty, sigma2=empty,
        class_fraction=torch.ones(maps.shape[0], dtype=torch.float64) / maps.shape[0], direction_prior=empty, sigma_offset_a=10.0,
        resolution_shell=8, healpix_order=1, offset_range_px=6.0, offset_step_px=2.0, perturbation=0.0,
        rng_state=torch.Generator().get_state(), rot_deg=empty, tilt_deg=empty, psi_deg=empty, origin_x_a=empty,
        origin_y_a=empty, class_number=empty.long(), max_probability=empty, n_significant=empty.long(),
        log_likelihood=empty, tau2=empty, ssnr=empty, map_snapshots=snapshots,
    )  # fmt: skip


def test_maps_that_agree_give_back_the_masked_reconstruction():
    truth = _truth()
    state = _state(3.0 * truth[None].float(), 100, {})  # another greyscale: it does not matter
    combined = final_map(state, truth.float(), 0, CONFIG, 1.0)
    mask = soft_edge_mask((N, N, N), 12.0, 3.0).double()
    assert torch.allclose(combined.double(), truth * mask, atol=1e-4 * float(truth.abs().max()))


def test_independent_errors_average_out_and_a_shifted_reconstruction_is_moved_back():
    truth = _truth()
    iterates = {it: (truth + _noise(0.4, it))[None].float() for it in (80, 90)}
    state = _state((truth + _noise(0.4, 100))[None].float(), 100, {**iterates, 100: (truth + _noise(0.4, 100))[None].float()})
    reconstruction = shift_volume(truth + _noise(0.4, 7), (1.0, -2.0, 0.0))  # off by a few px, as final-pass origins may be
    combined = final_map(state, reconstruction.float(), 0, CONFIG, 1.0).double()
    mask = soft_edge_mask((N, N, N), 12.0, 3.0).double()
    closest_alone = max(float(fsc(m * mask, truth * mask)[1:9].mean()) for m in (state.maps[0].double(), shift_volume(reconstruction, (-1.0, 2.0, 0.0))))
    assert float(fsc(combined, truth * mask)[1:9].mean()) > closest_alone


def test_snapshots_older_than_the_lag_or_of_another_shape_are_left_out():
    truth = _truth()
    wrong = _truth(seed=5)
    snapshots = {
        50: wrong[None].float(),  # older than convergence_lag (20) before iteration 100
        90: torch.stack([wrong, wrong]).float(),  # a run continued with another K
        100: truth[None].float(),
    }
    state = _state(truth[None].float(), 100, snapshots)
    combined = final_map(state, truth.float(), 0, CONFIG, 1.0)
    mask = soft_edge_mask((N, N, N), 12.0, 3.0).double()
    assert torch.allclose(combined.double(), truth * mask, atol=1e-4 * float(truth.abs().max()))


def test_a_flat_vdam_map_leaves_the_reconstruction_alone():
    # a very short run's VDAM map can still be flat inside the mask: the reconstruction is then the result
    truth = _truth()
    state = _state(torch.zeros((1, N, N, N)), 2, {})
    combined = final_map(state, truth.float(), 0, CONFIG, 1.0)
    mask = soft_edge_mask((N, N, N), 12.0, 3.0).double()
    assert torch.allclose(combined.double(), truth * mask, atol=1e-4 * float(truth.abs().max()))
