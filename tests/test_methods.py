"""The losses against hand-worked values. Each docstring shows the working."""

from __future__ import annotations

import pytest
import torch

from unlearn.methods import adaptive_coefficient, control_vector, mean_token_norm, noisy_retain_target, rmu_loss
from unlearn.methods.losses import mse

U = torch.tensor([0.6, 0.8])  # a unit vector, d = 2


def test_forget_mse_by_hand():
    """h = [(1,2), (3,4)] (one sample, two tokens), target c*u = 5*(0.6,0.8) = (3,4).
    Squared differences: (4,4) and (0,0); mean over 1 x 2 x 2 = 8/4 = 2."""
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert mse(h, 5 * U).item() == pytest.approx(2.0)


def test_padding_mask_leaves_pad_tokens_out():
    """Same h; mask (1, 0) keeps the first token only: 8 / (1 token x 2 dims) = 4. Mask (0, 1): 0."""
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert mse(h, 5 * U, torch.tensor([[1, 0]])).item() == pytest.approx(4.0)
    assert mse(h, 5 * U, torch.tensor([[0, 1]])).item() == pytest.approx(0.0)


def test_rmu_loss_by_hand():
    """forget: 2 (above). retain: h_r = [(1,1),(1,1)], frozen = [(1,1),(1,3)]: squared (0,0,0,4), mean 1,
    times alpha = 10 -> 10. Total 12."""
    h_f = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    h_r = torch.ones(1, 2, 2)
    frozen = torch.tensor([[[1.0, 1.0], [1.0, 3.0]]])
    parts = rmu_loss(h_f, h_r, frozen, U, steering_coeff=5.0, alpha=10.0)
    assert parts.forget_loss.item() == pytest.approx(2.0)
    assert parts.retain_loss.item() == pytest.approx(10.0)
    assert parts.loss.item() == pytest.approx(12.0)


def test_losses_are_float32_for_half_precision_inputs():
    """fp16 overflows on the squared differences of large activations: (300 - 0)^2 * 2 tokens... in fp16 the
    square 90000 is above fp16's max (65504); the loss must still be finite because it is computed in fp32."""
    h = torch.full((1, 2, 2), 300.0, dtype=torch.float16)
    loss = mse(h, torch.zeros(2))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(90000.0)


def test_adaptive_coefficient_by_hand():
    """Sample 1 tokens (3,4), (0,0): norms 5, 0 -> mean 2.5. Sample 2 tokens (6,8), (0,0): norms 10, 0 -> 5.
    Batch mean N = 3.75 (padding included); beta = 5 -> coefficient 18.75."""
    h = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[6.0, 8.0], [0.0, 0.0]]])
    assert mean_token_norm(h) == pytest.approx(3.75)
    assert adaptive_coefficient(h, beta=5.0) == pytest.approx(18.75)


def test_control_vector_is_uniform_positive_unit_and_seeded():
    u = control_vector(4096, torch.Generator().manual_seed(42))
    assert u.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert (u > 0).all()  # uniform on [0, 1), not Gaussian
    # before normalisation the entries are uniform: mean 0.5 -> after dividing by the norm sqrt(d/3)
    assert (u * (4096 / 3) ** 0.5).mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(u, control_vector(4096, torch.Generator().manual_seed(42)))
    assert not torch.equal(u, control_vector(4096, torch.Generator().manual_seed(43)))


def test_rna_noise_is_fresh_absolute_gaussian():
    frozen = torch.full((4, 64, 256), 100.0)
    generator = torch.Generator().manual_seed(0)
    first = noisy_retain_target(frozen, nu=0.05, generator=generator)
    second = noisy_retain_target(frozen, nu=0.05, generator=generator)
    noise = first - frozen
    assert noise.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert noise.std().item() == pytest.approx(0.05, rel=0.02)  # absolute, not relative to the activations' 100
    assert not torch.equal(first, second)  # fresh at every step
    assert torch.equal(noisy_retain_target(frozen, 0.0, generator), frozen)
