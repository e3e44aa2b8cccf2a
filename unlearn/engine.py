"""The forward passes the methods read, for the updated model and the frozen (reference) one.

RM methods need `h_l`, the output of the unlearn block: the updated model's on the forget and retain batches
(with gradient) and the frozen model's on the retain batch. PO methods need logits: the updated model's (with
gradient) and the reference's (without), the reference's optionally with RNA's noise on its `h_l`. The
reference code gets them by running whole models, LM head included, beside a full frozen copy, with gradients
enabled everywhere. `FastEngine` computes the same tensors with far less work:

1. for `h_l`, the forward stops after block `l`;
2. blocks below the first trained block are the same in both models: they run once per batch, without
   gradient, and their output feeds both the updated and the frozen computation;
3. the frozen model is a copy of the trained blocks `l0..l` only: for logits, both sides continue through the
   same untrained blocks above `l`, final norm and head (the reference without gradient);
4. nothing but the trained weights requires grad.

`ReferenceEngine` is the plain approach, kept for the equivalence test and the benchmark.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from unlearn.blocks import block_output, capture_block_outputs, decoder_blocks, output_head, rewrite_block_outputs


Perturb = Callable[[torch.Tensor], torch.Tensor]  # applied to the reference's h_l (RNA's noise)


class Engine(Protocol):
    def prepare(self, batch: dict[str, torch.Tensor]) -> Any: ...

    def updated(self, prepared: Any) -> torch.Tensor:
        """The updated model's h_l (B, T, d), with gradient."""

    def frozen(self, prepared: Any) -> torch.Tensor:
        """The frozen model's h_l (B, T, d)."""

    def updated_logits(self, prepared: Any) -> torch.Tensor:
        """The updated model's logits (B, T, V), with gradient."""

    def reference_logits(self, prepared: Any, perturb: Perturb | None = None) -> torch.Tensor:
        """The frozen model's logits (B, T, V), with `perturb` applied to its h_l first."""


@dataclass
class BlockInput:
    """What the model hands its first trained block: the hidden state and the call's other arguments."""

    hidden: torch.Tensor  # (B, T, d)
    args: tuple
    kwargs: dict


class _StopForward(Exception):
    pass


class FastEngine:
    def __init__(self, model: nn.Module, unlearn_layer: int, first_trained_layer: int):
        if not 0 <= first_trained_layer <= unlearn_layer:
            raise ValueError("the first trained block must be at or below the unlearn layer")
        self.model = model
        blocks = decoder_blocks(model)
        self.first_trained = blocks[first_trained_layer]
        self.updated_blocks = list(blocks[first_trained_layer : unlearn_layer + 1])
        # Frozen copies of the trained blocks only: the blocks below them are shared, and so are the ones above
        # (untrained, so the same in both models), which only the logits need.
        self.frozen_blocks = [copy.deepcopy(block).requires_grad_(False) for block in self.updated_blocks]
        self.upper_blocks = list(blocks[unlearn_layer + 1 :])

    @torch.no_grad()
    def prepare(self, batch: dict[str, torch.Tensor]) -> BlockInput:
        """Run the embeddings and the shared blocks once; stop at the first trained block's input."""
        captured: dict[str, Any] = {}

        def capture(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, dict(kwargs)
            raise _StopForward

        device = next(self.first_trained.parameters()).device
        handle = self.first_trained.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        args, kwargs = captured["args"], captured["kwargs"]
        if args:
            return BlockInput(args[0], args[1:], kwargs)
        return BlockInput(kwargs.pop("hidden_states"), (), kwargs)

    def updated(self, prepared: BlockInput) -> torch.Tensor:
        return self._run(self.updated_blocks, prepared)

    @torch.no_grad()
    def frozen(self, prepared: BlockInput) -> torch.Tensor:
        return self._run(self.frozen_blocks, prepared)

    def updated_logits(self, prepared: BlockInput) -> torch.Tensor:
        return self._logits(self.updated(prepared), prepared)

    @torch.no_grad()
    def reference_logits(self, prepared: BlockInput, perturb: Perturb | None = None) -> torch.Tensor:
        h = self.frozen(prepared)
        if perturb is not None:
            h = perturb(h).to(h.dtype)
        return self._logits(h, prepared)

    def _logits(self, h: torch.Tensor, prepared: BlockInput) -> torch.Tensor:
        final_norm, head = output_head(self.model)
        return head(final_norm(self._run(self.upper_blocks, prepared, h)))  # (B, T, V)

    @staticmethod
    def _run(blocks: list[nn.Module], prepared: BlockInput, hidden: torch.Tensor | None = None) -> torch.Tensor:
        hidden = prepared.hidden if hidden is None else hidden
        for block in blocks:
            hidden = block_output(block(hidden, *prepared.args, **prepared.kwargs))
        return hidden  # (B, T, d)


class ReferenceEngine:
    """The plain approach of the reference code: full forwards with a hook, a full frozen copy, and (as there)
    `requires_grad` left on for every weight of the updated model."""

    def __init__(self, model: nn.Module, unlearn_layer: int, grad_everywhere: bool = True):
        self.model = model
        self.frozen_model = copy.deepcopy(model).requires_grad_(False)
        if grad_everywhere:
            model.requires_grad_(True)
        self.layer = unlearn_layer

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    def updated(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward_with_hook(self.model, batch)

    @torch.no_grad()
    def frozen(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward_with_hook(self.frozen_model, batch)

    def updated_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward(self.model, batch).logits

    @torch.no_grad()
    def reference_logits(self, batch: dict[str, torch.Tensor], perturb: Perturb | None = None) -> torch.Tensor:
        if perturb is None:
            return self._forward(self.frozen_model, batch).logits
        with rewrite_block_outputs(self.frozen_model, {self.layer: perturb}):
            return self._forward(self.frozen_model, batch).logits

    def _forward_with_hook(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with capture_block_outputs(model, [self.layer]) as captured:
            self._forward(model, batch)
        return captured[self.layer]

    @staticmethod
    def _forward(model: nn.Module, batch: dict[str, torch.Tensor]):
        device = next(model.parameters()).device
        return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                     use_cache=False)
