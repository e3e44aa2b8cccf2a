"""RMU, Representation Misdirection for Unlearning (Li et al., 2024, "The WMDP Benchmark", Sec. 5).

    L = || h_l^upd(x_f) - c u ||^2  +  alpha || h_l^upd(x_r) - h_l^frozen(x_r) ||^2

with `u` a fixed unit vector per topic (uniform [0, 1) entries, normalised), `||.||^2` the mean squared error
over batch x tokens x d, padding included, as in the published code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearn.methods.losses import mse


@dataclass
class LossParts:
    loss: torch.Tensor
    forget_loss: torch.Tensor
    retain_loss: torch.Tensor


def rmu_loss(
    h_forget: torch.Tensor,  # (B, T, d) updated model, forget batch
    h_retain: torch.Tensor,  # (B, T, d) updated model, retain batch
    retain_target: torch.Tensor,  # (B, T, d) frozen model, retain batch (RNA adds noise to it)
    control_vector: torch.Tensor,  # (d,) u
    steering_coeff: float,  # c
    alpha: float,
    forget_mask: torch.Tensor | None = None,
    retain_mask: torch.Tensor | None = None,
) -> LossParts:
    forget_loss = mse(h_forget, steering_coeff * control_vector, forget_mask)
    retain_loss = alpha * mse(h_retain, retain_target, retain_mask)
    return LossParts(forget_loss + retain_loss, forget_loss, retain_loss)


def control_vector(hidden_size: int, generator: torch.Generator) -> torch.Tensor:
    """`u`: d values uniform on [0, 1), divided by their L2 norm (not Gaussian: every entry is positive)."""
    u = torch.rand(hidden_size, generator=generator)
    return u / u.norm()
