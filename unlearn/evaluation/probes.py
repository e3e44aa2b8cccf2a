"""Representation probes at the unlearn layer (the analyses of the Adaptive RMU paper).

On held-out forget and retain text: the mean token norm of h_l (the output of decoder block `unlearn_layer`),
the mean cosine between h_l and each topic's control vector u, and the token confidence (the mean over
positions of the largest next-token probability). RMU steers forget-text h_l towards c·u, so after training
the forget norm moves towards c, the forget cosine towards 1 and the forget confidence falls, while the retain
numbers should not move.

Positions that hold a special token (padding, and the BOS token the tokenizer adds) are left out: BOS sees only
itself, so its h_l is the same for every text (and, as the attention sink, many times larger than the rest);
it would dilute the difference between forget and retain text without saying anything about either.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.blocks import capture_block_outputs


def probe_sums(
    model: nn.Module,
    tokenizer,
    texts: dict[str, list[str]],
    *,
    unlearn_layer: int,
    max_documents: int,
    max_length: int,
    batch_size: int,
) -> dict[str, dict[str, Any]]:
    """The model's work for the probes, JSON-serialisable (the base model's is cached): for each text set, over
    every kept position of its first `max_documents` documents, the number of documents and tokens and the sums
    of |h_l|, of the confidence and of the unit vectors h_l/|h_l| (whose dot product with a unit u, over the
    tokens, is the mean cosine: the sums serve any control vector)."""
    return {name: _text_sums(model, tokenizer, documents[:max_documents], unlearn_layer=unlearn_layer,
                             max_length=max_length, batch_size=batch_size)
            for name, documents in texts.items()}


def probe_statistics(sums: dict[str, dict[str, Any]], *, unlearn_layer: int,
                     control_vectors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`{"layer": l, "<set>": statistics}` for each text set of `probe_sums`: documents, tokens, mean_norm,
    cosine (per topic), confidence; the means token-weighted, None without tokens."""
    results: dict[str, Any] = {"layer": unlearn_layer}
    for name, total in sums.items():
        tokens = total["tokens"]

        def mean(value: float) -> float | None:
            return value / tokens if tokens else None

        direction = torch.tensor(total["direction"], dtype=torch.float64)  # empty without tokens
        cosines = {topic: mean(float(direction @ F.normalize(u.double().flatten(), dim=0))) if tokens else None
                   for topic, u in control_vectors.items()}
        results[name] = {"documents": total["documents"], "tokens": tokens, "mean_norm": mean(total["norm"]),
                         "cosine": cosines, "confidence": mean(total["confidence"])}
    return results


@torch.no_grad()
def _text_sums(model: nn.Module, tokenizer, documents: list[str], *, unlearn_layer: int, max_length: int,
               batch_size: int) -> dict[str, Any]:
    norm = confidence = 0.0
    tokens = 0
    direction = None
    for start in range(0, len(documents), batch_size):
        batch = _tokenize(tokenizer, documents[start : start + batch_size], max_length, _input_device(model))
        hidden, logits = _forward_with_hidden(model, batch, unlearn_layer)
        keep = batch["keep"]  # (B, T) bool
        h = hidden.float()[keep.to(hidden.device)]  # (N, d)
        norm += h.norm(dim=-1).sum().item()
        confidence += logits.float().softmax(dim=-1).amax(dim=-1)[keep.to(logits.device)].sum().item()
        tokens += int(keep.sum())
        units = F.normalize(h.double(), dim=-1).sum(dim=0)
        direction = units if direction is None else direction + units
    return {"documents": len(documents), "tokens": tokens, "norm": norm, "confidence": confidence,
            "direction": direction.cpu().tolist() if direction is not None else []}


def _tokenize(tokenizer, documents: list[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    encoded = tokenizer(
        documents, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
        return_special_tokens_mask=True,
    )
    keep = encoded["attention_mask"].bool() & ~encoded["special_tokens_mask"].bool()
    return {
        "input_ids": encoded["input_ids"].to(device),
        "attention_mask": encoded["attention_mask"].to(device),
        "keep": keep.to(device),
    }


def _forward_with_hidden(model: nn.Module, batch: dict[str, torch.Tensor], unlearn_layer: int):
    """One forward pass; returns (h_l (B, T, d), logits (B, T, V)), h_l caught by a hook on block `unlearn_layer`."""
    with capture_block_outputs(model, [unlearn_layer]) as captured:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return captured[unlearn_layer], logits


def _input_device(model: nn.Module) -> torch.device:
    # The embedding's device, not the first parameter's: with device_map=auto the model spans several devices.
    return model.get_input_embeddings().weight.device
