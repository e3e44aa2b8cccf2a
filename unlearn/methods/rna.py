"""RNA, Random Noise Augmentation (Dang et al., 2025, "Improving LLM Unlearning Robustness via Random
Perturbations").

A wrapper over any base method. Its only change is on the retain side: fresh Gaussian noise at every step,
independently per token and dimension, `eps ~ N(0, nu^2)` (nu absolute; the authors sweep 0.01 ... 0.1), added
where the authors' released code adds it:

- over RMU / Adaptive RMU, to the frozen model's h_l(x_r), the retain target:
      alpha * MSE(h_l^upd(x_r), h_l^frozen(x_r) + eps)
  Not propagated. The expected loss is the clean one plus alpha * nu^2 and the expected gradient is the clean
  gradient: over RM methods RNA is zero-mean noise on the retain gradient.
- over NPO / SimNPO, to the reference model's h_l in the retain forward, then propagated through the blocks
  above l to the reference logits: the retain term compares the updated model's clean logits with the
  reference's behaviour under perturbed layer-l states. The forget term keeps the clean reference.

The forget side is untouched and the compute is the same.
"""

from __future__ import annotations

import torch


def noisy(h: torch.Tensor, nu: float, generator: torch.Generator) -> torch.Tensor:
    """h + eps, eps ~ N(0, nu^2) drawn fresh; float32 (the RM retain target is compared in float32 anyway)."""
    noise = torch.randn(h.shape, generator=generator, dtype=torch.float32, device=generator.device)
    return h.float() + nu * noise


def wrap(base, nu: float, generator: torch.Generator):
    """Turn `base` (any method with a `perturb_retain` slot) into RNA over it; returns the same object."""
    base.perturb_retain = lambda h: noisy(h, nu, generator)
    return base
