"""The loss terms the methods are built from, all computed in float32 whatever the model dtype.

RM methods compare block outputs (`mse`); PO methods compare next-token distributions (`nll`, `kl_retain`,
`mse_retain`). fp16 overflows on squared differences of large activations, and bf16 log-softmax differences
lose the small KL terms, so every input is upcast first. A `mask` (B, T) leaves padding out of a mean; the
reference includes padding (mask=None).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    """The total and its two terms (`retain_loss` already weighted by alpha), plus per-step values to log."""

    loss: torch.Tensor
    forget_loss: torch.Tensor
    retain_loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


def mse(activations: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over batch x tokens x d of (activations - target)^2; `target` broadcasts, e.g. c*u of shape (d,)."""
    squared = (activations.float() - target.float()) ** 2  # (B, T, d)
    if mask is None:
        return squared.mean()
    weights = mask.to(squared.device, squared.dtype).unsqueeze(-1)  # (B, T, 1)
    return (squared * weights).sum() / (weights.sum() * squared.shape[-1])


def nll(logits: torch.Tensor, attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's real tokens: Hugging Face's causal-LM loss with the
    padding labelled -100. One scalar per batch."""
    labels = input_ids.to(logits.device).masked_fill(attention_mask.to(logits.device) == 0, -100)
    shifted = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def kl_retain(logits: torch.Tensor, reference_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_ref || p_theta) per position, summed over the vocabulary, averaged over the B*T positions
    (`kl_div(..., reduction="batchmean", log_target=True)` on the flattened positions), padding included."""
    log_p = F.log_softmax(logits.float(), dim=-1).flatten(0, 1)  # (B*T, V)
    log_ref = F.log_softmax(reference_logits.float(), dim=-1).flatten(0, 1)
    if mask is None:
        return F.kl_div(log_p, log_ref, reduction="batchmean", log_target=True)
    per_position = F.kl_div(log_p, log_ref, reduction="none", log_target=True).sum(-1)  # (B*T,)
    weights = mask.to(per_position.device, per_position.dtype).flatten()
    return (per_position * weights).sum() / weights.sum()


def mse_retain(logits: torch.Tensor, reference_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between the two full-vocabulary log-softmax vectors, over B*T*V."""
    log_p = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    log_ref = F.log_softmax(reference_logits.float(), dim=-1)
    return mse(log_p, log_ref, mask)


RETAIN_TERMS = {"kl": kl_retain, "mse": mse_retain}
