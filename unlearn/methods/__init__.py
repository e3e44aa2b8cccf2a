"""The unlearning methods, each a small component behind one interface, built from its config in one place.

A method owns its loss: the training loop hands it a topic's forget and retain batches and gets back the loss
parts; it knows nothing of any method. RM methods (RMU, Adaptive RMU) read the unlearn block's output `h_l`; PO
methods (NPO, SimNPO) read the LM head's output. RNA wraps any of them with noise on the retain side.

    spec = config.method(cfg, topic_names)          # checked plain values, before any weights load
    method = build(spec, hidden_size=..., device=..., seed=...)
    method.setup(engine, first_forget_batches)      # e.g. Adaptive RMU's coefficients
    parts = method.loss(engine, topic, forget_batch, retain_batch)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from unlearn.methods import adaptive_rmu, npo, rmu, rna, simnpo
from unlearn.methods.losses import LossParts
from unlearn.methods.rmu import Steering, control_vector

# Each base method and the config keys (under `method.`) it reads; RNA reads `base`, `nu` and its base's keys.
METHOD_KEYS = {
    "rmu": ("steering_coeff", "alpha"),
    "adaptive_rmu": ("beta", "alpha"),
    "npo": ("beta", "alpha", "retain_loss"),
    "simnpo": ("beta", "alpha", "retain_loss"),
}
BASES = tuple(METHOD_KEYS)
METHODS = (*BASES, "rna")
PO_METHODS = ("npo", "simnpo")


class Method(Protocol):
    steering: Steering | None  # the control vectors and coefficients of an RM method; None for PO methods

    def setup(self, engine, first_forget_batches: list[dict[str, torch.Tensor]]) -> None:
        """Once, before the first step: anything measured on the frozen model (Adaptive RMU's N_topic)."""

    def loss(self, engine, topic: int, forget_batch: dict[str, torch.Tensor],
             retain_batch: dict[str, torch.Tensor]) -> LossParts: ...


@dataclass
class MethodSpec:
    """A method's checked settings, per topic where the config allows a list; built from the config in config.py."""

    name: str  # rmu | adaptive_rmu | npo | simnpo | rna
    base: str  # the method that computes the loss: `name`, or what RNA wraps
    alphas: list[float]
    steering_coeffs: list[float] | None = None  # rmu
    beta: float | None = None  # adaptive_rmu: the adaptive scale; npo, simnpo: the inverse temperature
    retain_loss: str | None = None  # npo, simnpo: kl | mse
    nu: float | None = None  # rna: the noise scale
    mask_padding: bool = False
    settings: dict = field(default_factory=dict)  # what the manifest records of the method

    @property
    def reads_logits(self) -> bool:
        return self.base in PO_METHODS


def base_of(name: str, base: str | None = None) -> str:
    """The method that computes the loss: RNA's `base` (RMU when unset), any other method itself."""
    return (base or "rmu") if name == "rna" else name


def variant(name: str, base: str | None = None, retain_loss: str | None = None) -> str:
    """The method as its runs are compared and named: `rmu`, `adaptive_rmu`, `npo+kl`, `rna/rmu`,
    `rna/simnpo+mse`. RNA shows its base; a PO method its retain term."""
    base = base_of(name, base)
    label = base + (f"+{retain_loss}" if base in PO_METHODS else "")
    return f"rna/{label}" if name == "rna" else label


def build(spec: MethodSpec, *, n_topics: int, hidden_size: int, device: torch.device | str, seed: int) -> Method:
    """The method object for `spec`: control vectors drawn (RM methods), RNA's noise seeded apart from them."""
    if spec.base == "rmu":
        method = rmu.RMU(_draw_vectors(n_topics, hidden_size, device, seed), spec.steering_coeffs, spec.alphas,
                         spec.mask_padding)
    elif spec.base == "adaptive_rmu":
        method = adaptive_rmu.AdaptiveRMU(_draw_vectors(n_topics, hidden_size, device, seed), spec.beta,
                                          spec.alphas, spec.mask_padding)
    elif spec.base == "npo":
        method = npo.NPO(spec.beta, spec.alphas, spec.retain_loss, spec.mask_padding)
    elif spec.base == "simnpo":
        method = simnpo.SimNPO(spec.beta, spec.alphas, spec.retain_loss, spec.mask_padding)
    else:
        raise ValueError(f"unknown base method {spec.base!r}")
    if spec.name == "rna":
        rna.wrap(method, spec.nu, torch.Generator(device=device).manual_seed(seed + 1))
    return method


def _draw_vectors(n_topics: int, hidden_size: int, device, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [control_vector(hidden_size, generator).to(device) for _ in range(n_topics)]


__all__ = [
    "BASES", "METHODS", "METHOD_KEYS", "PO_METHODS", "LossParts", "Method", "MethodSpec",
    "Steering", "base_of", "build", "control_vector", "variant",
]
