"""Measure: how far the RNA authors' PO losses, as REFERENCE describes their code, are from unlearn's at step 0.

unlearn gives the reference model the attention mask, labels padding -100 in the NLL and computes the losses in
float32. The released code (REFERENCE, from its baselines/losses.py and utils.py) runs the reference without the
attention mask, counts the (eos) padding in the NLL, and casts the log-softmax vectors to bf16 in the retain
losses. At step 0 the updated model is the reference, so unlearn's NPO log-ratio and retain terms are exactly 0;
this prints what the released variant gives instead on the first demo forget and retain batches (batch 4,
left-padded to the longest document), and the bf16 cast's share of the retain terms.

    python docs/findings/scripts/po_differences.py                      # smollm2-135m
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from unlearn.corpora import BatchStream, CorpusSpec, read_texts
from unlearn.methods.losses import kl_retain, mse_retain, nll
from unlearn.models import load_model


def nll_with_padding(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The released NLL: Hugging Face's causal-LM loss with labels = input_ids, the eos padding included."""
    shifted = logits[:, :-1].float()
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), input_ids[:, 1:].reshape(-1))


def bf16_log_softmax_kl(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits.float(), dim=-1).to(torch.bfloat16).float().flatten(0, 1)
    log_ref = F.log_softmax(reference_logits.float(), dim=-1).to(torch.bfloat16).float().flatten(0, 1)
    return F.kl_div(log_p, log_ref, reduction="batchmean", log_target=True)


def bf16_log_softmax_mse(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits.float(), dim=-1).to(torch.bfloat16).float()
    log_ref = F.log_softmax(reference_logits.float(), dim=-1).to(torch.bfloat16).float()
    return ((log_p - log_ref) ** 2).mean()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=512)  # above the demo documents' lengths: padded batches
    args = parser.parse_args()
    model, tokenizer = load_model(args.model, seed=0)

    def first_batch(file: str) -> dict[str, torch.Tensor]:
        texts = read_texts(CorpusSpec("pkg://unlearn/data/demo/" + file))
        return BatchStream(texts, tokenizer, batch_size=4, max_length=args.max_length).batch(0)

    forget, retain = first_batch("forget.jsonl"), first_batch("retain.jsonl")
    padded = int((forget["attention_mask"] == 0).sum()), int((retain["attention_mask"] == 0).sum())
    sizes = forget["input_ids"].numel(), retain["input_ids"].numel()
    print(f"padding tokens in the first forget / retain batch: {padded[0]} / {padded[1]} of {sizes[0]} / {sizes[1]}")

    theta_f = model(**forget).logits  # the updated model, with the mask (both codes)
    ref_f_unmasked = model(input_ids=forget["input_ids"]).logits  # the released reference: no mask
    ours = torch.tensor(0.0)  # unlearn's reference at step 0 is the same model with the same mask and labels
    released = nll_with_padding(theta_f, forget["input_ids"]) - nll_with_padding(ref_f_unmasked, forget["input_ids"])
    beta = args.beta

    def npo_term(ratio: float) -> float:
        return -(2 / beta) * F.logsigmoid(torch.tensor(beta * ratio)).item()

    print(f"NPO log-ratio NLL_theta - NLL_ref at step 0: unlearn {ours.item():.4f}, released {released.item():+.4f}")
    print(f"NPO forget term at step 0: unlearn {npo_term(ours.item()):.4f} (= 20 log 2 = {20 * math.log(2):.4f}), "
          f"released {npo_term(released.item()):.4f}")
    print(f"SimNPO NLL_theta(x_f): unlearn {nll(theta_f, forget['attention_mask'], forget['input_ids']).item():.4f}, "
          f"released (padding counted) {nll_with_padding(theta_f, forget['input_ids']).item():.4f}")

    theta_r = model(**retain).logits
    ref_r_unmasked = model(input_ids=retain["input_ids"]).logits
    released_kl, float32_kl = bf16_log_softmax_kl(theta_r, ref_r_unmasked), kl_retain(theta_r, ref_r_unmasked)
    released_mse, float32_mse = bf16_log_softmax_mse(theta_r, ref_r_unmasked), mse_retain(theta_r, ref_r_unmasked)
    print(f"retain KL at step 0: unlearn {kl_retain(theta_r, theta_r).item():.3g}, released "
          f"{released_kl.item():.4g} (in float32: {float32_kl.item():.4g})")
    print(f"retain MSE at step 0: unlearn {mse_retain(theta_r, theta_r).item():.3g}, released "
          f"{released_mse.item():.4g} (in float32: {float32_mse.item():.4g})")
    noisy = theta_r + 0.05 * torch.randn_like(theta_r)  # a small change of the logits, as after a few steps
    print(f"bf16 cast alone, logits 0.05 apart: KL {bf16_log_softmax_kl(noisy, theta_r).item():.4g} "
          f"vs float32 {kl_retain(noisy, theta_r).item():.4g}; MSE {bf16_log_softmax_mse(noisy, theta_r).item():.4g} "
          f"vs {mse_retain(noisy, theta_r).item():.4g}")


if __name__ == "__main__":
    main()
