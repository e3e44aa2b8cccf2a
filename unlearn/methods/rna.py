"""RNA, Random Noise Augmentation (Dang et al., 2025, "Improving LLM Unlearning Robustness via Random
Perturbations").

A wrapper over an RM method (RMU or Adaptive RMU). Its only change is on the retain side: the frozen target gets
fresh Gaussian noise at every step, independently per token and dimension,

    retain target = h_l^frozen(x_r) + eps,    eps ~ N(0, nu^2)    (nu absolute; the authors sweep 0.01 ... 0.1)

The forget side is untouched and the compute is the same.
"""

from __future__ import annotations

import torch


def noisy_retain_target(h_frozen_retain: torch.Tensor, nu: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(h_frozen_retain.shape, generator=generator, dtype=torch.float32, device=generator.device)
    return h_frozen_retain.float() + nu * noise
