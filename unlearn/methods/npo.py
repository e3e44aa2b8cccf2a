"""NPO, Negative Preference Optimization (Zhang et al., 2024), as the RNA authors' released code runs it.

    forget = -(2 / beta) * logsigmoid(beta * (NLL_theta(x_f) - NLL_ref(x_f)))
    retain = alpha * KL(p_ref || p_theta)(x_r)      (method.retain_loss=kl; or =mse on log-softmax vectors)

`NLL_m` is the mean next-token cross-entropy over the batch's real tokens (one scalar per batch); the reference
is the original model, which differs from the updated one only in the trained blocks (the engine computes it
without a second model). Cleaner than the released code, as REFERENCE says: both models get the attention
mask, padding is labelled -100, the losses are float32 and the retain batch keeps its own max_length; the
released code runs the reference without the mask, counts the eos padding in the NLL, casts log-probabilities to
bf16 in the retain terms and truncates the retain batch at the forget length (sizes: README, "Methods, exactly";
docs/findings/scripts/po_differences.py). The optimizer is torch's AdamW: which one the released code used is not
known here.
RNA (rna.py) perturbs the reference's h_l in the retain forward through `perturb_retain`; the forget term
always uses the clean reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unlearn.methods.losses import RETAIN_TERMS, LossParts, nll


def npo_forget_loss(nll_theta: torch.Tensor, nll_ref: torch.Tensor, beta: float) -> torch.Tensor:
    return -(2 / beta) * F.logsigmoid(beta * (nll_theta - nll_ref))


class PreferenceMethod:
    """What NPO and SimNPO share: the retain term and the forward passes; `forget_term` is each one's own."""

    steering = None

    def __init__(self, beta: float, alphas: list[float], retain_loss: str, mask_padding: bool = False):
        self.beta = beta
        self.alphas = alphas
        self.retain_term = RETAIN_TERMS[retain_loss]
        self.mask_padding = mask_padding
        self.perturb_retain: Callable[[torch.Tensor], torch.Tensor] | None = None  # set by RNA

    def setup(self, engine, first_forget_batches) -> None:
        pass

    def forget_term(self, engine, forget_input, forget_batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def loss(self, engine, topic, forget_batch, retain_batch) -> LossParts:
        forget_loss, logs = self.forget_term(engine, engine.prepare(forget_batch), forget_batch)
        retain_input = engine.prepare(retain_batch)
        logits = engine.updated_logits(retain_input)  # (B, T, V)
        reference = engine.reference_logits(retain_input, perturb=self.perturb_retain)
        mask = retain_batch["attention_mask"] if self.mask_padding else None
        retain_loss = self.alphas[topic] * self.retain_term(logits, reference, mask)
        return LossParts(forget_loss + retain_loss, forget_loss, retain_loss, logs)


class NPO(PreferenceMethod):
    def forget_term(self, engine, forget_input, forget_batch):
        ids, mask = forget_batch["input_ids"], forget_batch["attention_mask"]
        nll_theta = nll(engine.updated_logits(forget_input), mask, ids)
        nll_ref = nll(engine.reference_logits(forget_input), mask, ids)  # clean reference, even under RNA
        loss = npo_forget_loss(nll_theta, nll_ref, self.beta)
        return loss, {"forget_nll": nll_theta.item(), "forget_nll_ref": nll_ref.item()}
