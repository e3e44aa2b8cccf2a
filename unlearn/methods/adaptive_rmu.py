"""Adaptive RMU (Dang et al., 2025, "On Effects of Steering Latent Representation for LLM Unlearning").

Same loss as RMU; only the steering coefficient changes. Instead of a fixed `c`, the forget target is

    beta * N_topic * u,    N_topic = mean over the batch of the mean over tokens of ||h_l^frozen(x)||_2

measured once, on the topic's first forget batch, with padding included, then fixed for the run. Activation
norms grow with depth, so a fixed `c` that works at one layer is too small deeper in; this one follows them.
"""

from __future__ import annotations

import torch


def mean_token_norm(h_frozen_forget: torch.Tensor) -> float:
    """N_topic: per-token L2 norm (B, T), averaged over tokens, then over the batch."""
    return h_frozen_forget.float().norm(dim=-1).mean(dim=1).mean().item()


def adaptive_coefficient(h_frozen_forget: torch.Tensor, beta: float) -> float:
    return beta * mean_token_norm(h_frozen_forget)
