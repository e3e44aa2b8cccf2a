"""The two update rules of unlearn.optim, step by step against hand-worked numbers, and the rest of the run
through them."""

from __future__ import annotations

import pytest
import torch

from unlearn.optim import OPTIMIZERS, TransformersAdamW, make_optimizer
from unlearn.schema import Optimizer


def _steps(optimizer_class, gradients, **settings) -> list[float]:
    """The parameter after each step, starting at 1.0, the gradients given (float64)."""
    param = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    optimizer = optimizer_class([param], **settings)
    values = []
    for gradient in gradients:
        param.grad = torch.tensor([gradient], dtype=torch.float64)
        optimizer.step()
        values.append(param.item())
    return values


def test_transformers_adamw_by_hand():
    """lr 0.1, betas (0.9, 0.999), eps 0.01 (large, so that where it enters shows), p0 = 1, gradients 0.5, -0.1, 0.2.

    Step 1: m = 0.1 * 0.5 = 0.05; v = 0.001 * 0.25 = 0.00025, sqrt(v) = 0.0158114; denom = 0.0258114;
    step size = 0.1 * sqrt(1 - 0.999) / (1 - 0.9) = 0.0316228; p = 1 - 0.0316228 * 0.05 / 0.0258114 = 0.9387426.
    Step 2: m = 0.045 - 0.01 = 0.035; v = 0.00024975 + 0.00001 = 0.00025975, sqrt(v) = 0.0161168;
    step size = 0.1 * sqrt(0.001999) / 0.19 = 0.0235317; p = 0.9387426 - 0.0235317 * 0.035 / 0.0261168 = 0.9072070.
    Step 3: m = 0.0315 + 0.02 = 0.0515; v = 0.00025949 + 0.00004 = 0.00029949, sqrt(v) = 0.0173058;
    step size = 0.1 * sqrt(0.002997) / 0.271 = 0.0202011; p = 0.9072070 - 0.0202011 * 0.0515 / 0.0273058 = 0.8691068.

    torch's AdamW divides sqrt(v) by sqrt(1 - b2^t) before adding eps: step 1 is p = 1 - 1.0 * 0.05 / (0.0158114 /
    0.0316228 + 0.01) = 1 - 0.05 / 0.51 = 0.9019608; eps there is 32x smaller relative to the denominator.
    """
    settings = {"lr": 0.1, "betas": (0.9, 0.999), "eps": 0.01}
    gradients = [0.5, -0.1, 0.2]
    assert _steps(TransformersAdamW, gradients, **settings) == pytest.approx([0.9387426, 0.9072070, 0.8691068], abs=1e-7)
    torch_steps = _steps(torch.optim.AdamW, gradients, weight_decay=0.0, **settings)
    assert torch_steps == pytest.approx([0.9019608, 0.8522376, 0.7939650], abs=1e-7)


def test_the_two_rules_agree_without_eps():
    """With eps = 0 the rules are the same algebra: only where eps enters differs."""
    torch.manual_seed(0)
    gradients = torch.randn(5).tolist()
    ours = _steps(TransformersAdamW, gradients, lr=1e-2, eps=0.0)
    theirs = _steps(torch.optim.AdamW, gradients, lr=1e-2, eps=0.0, weight_decay=0.0)
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_adamw_is_torchs_with_the_recipes_eps_and_no_weight_decay():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(4))]
    twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    ours = make_optimizer("adamw", weights, 1e-3)
    plain = torch.optim.AdamW(twins, lr=1e-3, eps=1e-6, weight_decay=0.0)
    assert type(ours) is torch.optim.AdamW
    for _ in range(4):
        for w, twin in zip(weights, twins):
            w.grad = torch.randn_like(w) * 1e-4
            twin.grad = w.grad.clone()
        ours.step()
        plain.step()
    for w, twin in zip(weights, twins):
        assert torch.equal(w, twin)


def test_transformers_adamw_keeps_the_recipes_defaults():
    optimizer = make_optimizer("transformers_adamw", [torch.nn.Parameter(torch.zeros(2))], 5e-5)
    assert isinstance(optimizer, TransformersAdamW)
    assert optimizer.defaults == {"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-6}
    assert set(OPTIMIZERS) == {choice.value for choice in Optimizer}  # the schema's choices, each with its rule
