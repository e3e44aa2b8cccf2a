"""Reading `h_l`, the output of the unlearn block, for the updated and the frozen model.

The methods need three activations per step: the updated model's `h_l` on the forget batch and on the retain
batch (with gradient), and the frozen model's `h_l` on the retain batch. The reference code gets them by
running the whole model three times, LM head included, beside a full frozen copy, with gradients enabled
everywhere. `FastEngine` computes the same tensors with far less work:

1. the forward stops after block `l`;
2. blocks below the first trained block are the same in both models: they run once per batch, without
   gradient, and their output feeds both the updated and the frozen computation;
3. the frozen model is a copy of the trained blocks `l0..l` only;
4. nothing but the trained weights requires grad.

`ReferenceEngine` is the plain approach, kept for the equivalence test and the benchmark.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from unlearn.models import decoder_blocks


class Engine(Protocol):
    def prepare(self, batch: dict[str, torch.Tensor]) -> Any: ...

    def updated(self, prepared: Any) -> torch.Tensor: ...

    def frozen(self, prepared: Any) -> torch.Tensor: ...


@dataclass
class BlockInput:
    """What the model hands its first trained block: the hidden state and the call's other arguments."""

    hidden: torch.Tensor  # (B, T, d)
    args: tuple
    kwargs: dict


class _StopForward(Exception):
    pass


def _block_output(output) -> torch.Tensor:
    # Decoder blocks return a tensor (transformers >= 4.54 for most models) or a tuple led by it.
    return output[0] if isinstance(output, (tuple, list)) else output


class FastEngine:
    def __init__(self, model: nn.Module, unlearn_layer: int, first_trained_layer: int):
        if not 0 <= first_trained_layer <= unlearn_layer:
            raise ValueError("the first trained block must be at or below the unlearn layer")
        self.model = model
        blocks = decoder_blocks(model)
        self.first_trained = blocks[first_trained_layer]
        self.updated_blocks = list(blocks[first_trained_layer : unlearn_layer + 1])
        # Frozen copies of the trained blocks only: the blocks below them are shared, the ones above unused.
        self.frozen_blocks = [copy.deepcopy(block).requires_grad_(False) for block in self.updated_blocks]

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

    @staticmethod
    def _run(blocks: list[nn.Module], prepared: BlockInput) -> torch.Tensor:
        hidden = prepared.hidden
        for block in blocks:
            hidden = _block_output(block(hidden, *prepared.args, **prepared.kwargs))
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

    def _forward_with_hook(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        captured = []
        block = decoder_blocks(model)[self.layer]
        handle = block.register_forward_hook(lambda module, args, output: captured.append(_block_output(output)))
        device = next(block.parameters()).device
        try:
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False)
        finally:
            handle.remove()
        return captured[0]
