"""The RM methods: RMU, Adaptive RMU and RNA, one small module each, plus `Steering`, the per-run state they
share (one control vector and one coefficient per topic)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearn.methods.adaptive_rmu import adaptive_coefficient, mean_token_norm
from unlearn.methods.rmu import LossParts, control_vector, rmu_loss
from unlearn.methods.rna import noisy_retain_target

METHODS = ("rmu", "adaptive_rmu", "rna")


@dataclass
class MethodSpec:
    """What the train loop needs to know of a method; built from the config in one place (run.py)."""

    name: str  # rmu | adaptive_rmu | rna
    steering_coeffs: list[float] | None  # per topic; None when adaptive
    alphas: list[float]  # per topic
    beta: float | None = None  # Adaptive RMU scale (adaptive_rmu, or rna over it)
    nu: float | None = None  # RNA noise scale (rna only)

    @property
    def adaptive(self) -> bool:
        return self.steering_coeffs is None


__all__ = [
    "METHODS", "LossParts", "MethodSpec", "adaptive_coefficient", "control_vector", "mean_token_norm",
    "noisy_retain_target", "rmu_loss",
]
