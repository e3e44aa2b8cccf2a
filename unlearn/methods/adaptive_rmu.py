"""Adaptive RMU (Dang et al., 2025, "On Effects of Steering Latent Representation for LLM Unlearning").

Same loss as RMU; only the steering coefficient changes. Instead of a fixed `c`, the forget target is

    beta * N_topic * u,    N_topic = mean over the batch of the mean over tokens of ||h_l^frozen(x)||_2

measured once, on the topic's first forget batch, with padding included, then fixed for the run. Activation
norms grow with depth, so a fixed `c` that works at one layer is too small deeper in; this one follows them.

Differs from the authors' released code on purpose: it measures topic 1's norm at step 1 on the model being
trained, after one optimizer step on topic 0; here every topic's norm comes from the frozen model, as the paper
words it. Measured on SmolLM2-135M at layer 7 (docs/findings/scripts/adaptive_second_topic.py): the updated
model's norm is 0.02% lower at the published lr 5e-5, 1.7% lower at lr 5e-3.
"""

from __future__ import annotations

import torch

from unlearn.methods.rmu import RMU


def mean_token_norm(h_frozen_forget: torch.Tensor) -> float:
    """N_topic: per-token L2 norm (B, T), averaged over tokens, then over the batch."""
    return h_frozen_forget.float().norm(dim=-1).mean(dim=1).mean().item()


class AdaptiveRMU(RMU):
    """RMU whose coefficients are set in `setup`, from the frozen model, and logged at every step."""

    def __init__(self, control_vectors: list[torch.Tensor], beta: float, alphas: list[float], mask_padding: bool = False):
        super().__init__(control_vectors, [float("nan")] * len(control_vectors), alphas, mask_padding)
        self.beta = beta

    def setup(self, engine, first_forget_batches) -> None:
        norms = [mean_token_norm(engine.frozen(engine.prepare(batch))) for batch in first_forget_batches]
        self.steering.adaptive_norms = norms
        self.steering.coefficients = [self.beta * norm for norm in norms]

    def loss(self, engine, topic, forget_batch, retain_batch):
        parts = super().loss(engine, topic, forget_batch, retain_batch)
        parts.logs["adaptive_coeff"] = self.steering.coefficients[topic]
        return parts
