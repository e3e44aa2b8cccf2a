"""The two mean-squared errors every RM method is built from, in float32 whatever the model dtype.

fp16 overflows here (the first token's activations are huge), so both sides are upcast before the difference.
`mask` (B, T), when given, leaves padding out of the mean; the reference includes padding (mask=None).
"""

from __future__ import annotations

import torch


def mse(activations: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over batch x tokens x d of (activations - target)^2; `target` broadcasts, e.g. c*u of shape (d,)."""
    squared = (activations.float() - target.float()) ** 2  # (B, T, d)
    if mask is None:
        return squared.mean()
    weights = mask.to(squared.dtype).unsqueeze(-1)  # (B, T, 1)
    return (squared * weights).sum() / (weights.sum() * squared.shape[-1])
