"""The optimizers a run can use (`optimizer=`): both AdamW with eps 1e-6 and no weight decay, as REFERENCE gives
them, differing in where eps enters.

- `transformers_adamw`: the update of `transformers.AdamW` (removed in transformers 4.50), the class the WMDP
  paper's RMU code and the Adaptive RMU authors' code import. It adds eps to the square root of the
  *uncorrected* second moment and folds both bias corrections into the step size:
      m_t = b1 m_{t-1} + (1 - b1) g        v_t = b2 v_{t-1} + (1 - b2) g^2
      p  -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps)
- `adamw`: `torch.optim.AdamW`, which adds eps after the correction:
      p  -= lr / (1 - b1^t) * m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps)

The two agree up to eps; with eps 1e-6 at step 1 (sqrt(1 - b2) ~ 1/32) the first acts like torch's with an eps
about 32 times larger, which matters for weights whose gradients are tiny (some down-projection rows). REFERENCE
reports 0.6% on the retain term after one step, side by side with the Adaptive RMU authors' code; on the
embedded default the two differ as docs/findings.md measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

BETAS = (0.9, 0.999)  # both classes' defaults, kept by every published recipe
EPS = 1e-6  # transformers.AdamW's default, which the recipes kept (torch's is 1e-8)


class TransformersAdamW(torch.optim.Optimizer):
    """`transformers.AdamW(params, lr)` as the published RMU code called it: correct_bias=True, weight decay 0."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = BETAS,
                 eps: float = EPS):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                m.mul_(beta1).add_(param.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                denom = v.sqrt().add_(group["eps"])  # eps on the uncorrected sqrt(v): the difference from torch
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                param.addcdiv_(m, denom, value=-step_size)
        return loss


def torch_adamw(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0)


OPTIMIZERS: dict[str, Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]] = {
    "transformers_adamw": TransformersAdamW,
    "adamw": torch_adamw,
}


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer `name` (a key of OPTIMIZERS; the schema admits no other) over `params`."""
    return OPTIMIZERS[name](params, lr)
