"""RMU, Representation Misdirection for Unlearning (Li et al., 2024, "The WMDP Benchmark", Sec. 5).

    L = || h_l^upd(x_f) - c u ||^2  +  alpha || h_l^upd(x_r) - h_l^frozen(x_r) ||^2

with `u` a fixed unit vector per topic (uniform [0, 1) entries, normalised), `||.||^2` the mean squared error
over batch x tokens x d, padding included, as in the published code. RNA (rna.py) replaces the retain target
`h_l^frozen(x_r)` by a noisy copy through `perturb_retain`. Unlike the published code, the MSEs are float32
whatever the model dtype (it computes them in bf16) and `u` is drawn in float32 from this project's seeded
generator (it draws in the model's dtype on its device); the optimizer is its transformers.AdamW on the 7B
presets (unlearn.optim).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unlearn.methods.losses import LossParts, mse


@dataclass
class Steering:
    """An RM method's per-topic state: the control vectors u and the coefficients of the targets c*u."""

    control_vectors: list[torch.Tensor]  # (d,) each
    coefficients: list[float]
    adaptive_norms: list[float | None]  # Adaptive RMU's N_topic; None for a fixed c


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


class RMU:
    def __init__(self, control_vectors: list[torch.Tensor], steering_coeffs: list[float], alphas: list[float],
                 mask_padding: bool = False):
        self.steering = Steering(control_vectors, list(steering_coeffs), [None] * len(control_vectors))
        self.alphas = alphas
        self.mask_padding = mask_padding
        self.perturb_retain: Callable[[torch.Tensor], torch.Tensor] | None = None  # set by RNA

    def setup(self, engine, first_forget_batches) -> None:
        pass

    def loss(self, engine, topic, forget_batch, retain_batch) -> LossParts:
        retain_input = engine.prepare(retain_batch)
        h_forget = engine.updated(engine.prepare(forget_batch))
        h_retain = engine.updated(retain_input)
        retain_target = engine.frozen(retain_input)
        if self.perturb_retain is not None:
            retain_target = self.perturb_retain(retain_target)
        u = self.steering.control_vectors[topic]
        return rmu_loss(
            h_forget, h_retain, retain_target, u.to(h_forget.device), self.steering.coefficients[topic],
            self.alphas[topic],
            forget_mask=forget_batch["attention_mask"] if self.mask_padding else None,
            retain_mask=retain_batch["attention_mask"] if self.mask_padding else None,
        )
