"""What an attack reads: the texts loaded before any weights, and the one argument every attack function takes
(unlearn.evaluation.attacks.ATTACK_FUNCTIONS; the optimised attacks: unlearn.evaluation.optimised)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.schema import EvalSpec


@dataclass(frozen=True)
class AttackTexts:
    """The documents the attacks read, loaded before any weights."""

    relearn: list[str] | None  # None: relearn is not asked for
    ablate: list[str] | None


@dataclass
class AttackContext:
    """What an attack may read: the one argument of every function in `ATTACK_FUNCTIONS`."""

    model: nn.Module
    tokenizer: Any
    spec: EvalSpec
    texts: AttackTexts
    original_means: torch.Tensor | None  # the base model's mean block outputs (ablate), taken before training
    trained_blocks: list[int]
    unlearn_layer: int
    control_vectors: dict[str, torch.Tensor]
    base_weights: Callable[[], contextlib.AbstractContextManager] | None = None  # inside: the base model's weights
    base_identity: Any = None  # the base model's cache identity (evaluation.cache.model_identity); None: no cache
    cache_dir: Path | None = None
    _memo: dict[str, Any] = field(default_factory=dict)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()` once per run (e.g. the unlearned model's clean held-out accuracy, which both optimised
        attacks compare against)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]
