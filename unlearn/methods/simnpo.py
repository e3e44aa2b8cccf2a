"""SimNPO (Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning"), as the RNA authors' released code runs it: NPO without the reference in the forget term, the
length-normalised log-likelihood in its place, and margin gamma = 0 (as the RNA paper sets it).

    forget = -(2 / beta) * logsigmoid(beta * NLL_theta(x_f))
    retain = alpha * KL(p_ref || p_theta)(x_r)      (method.retain_loss=kl; or =mse)

The retain term, its RNA noise, the optimizer and the differences from the released code (masks, padding in the
NLL, float32) are NPO's (npo.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.methods.losses import nll
from unlearn.methods.npo import PreferenceMethod


def simnpo_forget_loss(nll_theta: torch.Tensor, beta: float) -> torch.Tensor:
    return -(2 / beta) * F.logsigmoid(beta * nll_theta)


class SimNPO(PreferenceMethod):
    def forget_term(self, engine, forget_input, forget_batch):
        nll_theta = nll(engine.updated_logits(forget_input), forget_batch["attention_mask"], forget_batch["input_ids"])
        return simnpo_forget_loss(nll_theta, self.beta), {"forget_nll": nll_theta.item()}
