"""Knowledge-recovery attacks on the unlearned model (REFERENCE, "Knowledge-recovery attacks").

Each attack runs after the "after" evaluation on its own copy or view of the model, re-evaluates the forget and
retain tasks, and reports the **recovered fraction of the forget gap**:

    recovered_fraction = (forget_acc_attacked - forget_acc_after) / (forget_acc_before - forget_acc_after)

0 = nothing came back, 1 = the base model's forget accuracy is back (above 1: the attack adds knowledge the base
model did not show). It is null when there is no gap to recover (no "before" evaluation, or before == after).
Forget accuracy is the unweighted mean `acc` over `eval.forget_tasks`, as everywhere else.

- `relearn` (Lucki et al. 2024; Fan et al. 2025): fine-tune for a few steps on held-out text, never one of the
  run's training corpora. LoRA adapters are added to the model in place and removed afterwards (`peft`'s
  `unload`, which does not merge); `lora=false` fine-tunes every weight of a deep copy instead.
- `ablate` (Arditi & Chughtai 2024): per block b, d_b = mean h_b(unlearned) - mean h_b(original) over the
  tokens of forget-domain text (special tokens and each document's first `skip_tokens` tokens left out); during
  the evaluation a forward hook replaces every block output h_b by h_b - (h_b . d_hat_b) d_hat_b. The original
  model's means are taken before training (`mean_block_outputs`, called by run.py), so no second model is
  needed. A block whose outputs did not move (d_b = 0, e.g. below the first trained block) is left alone.
- `fewshot` (Doshi & Stickland 2024): the forget and retain tasks again with `num_fewshot` examples in the
  prompt (lm-eval draws them; a task with only a test split draws them from its other questions).

    check_attack_files(spec, training_corpora)              # pre-check, no weights
    texts = load_attack_texts(spec, topics)                  # before weights load; refuses trained-on documents
    original = mean_block_outputs(model, tokenizer, texts.ablate, spec.attack.ablate)   # before training
    ...
    attacks = run_attacks(model, tokenizer, spec, texts, original, before=..., after=..., ...)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.corpora import CorpusSpec, Topic, describe, is_local, read_texts, resolve_path
from unlearn.errors import UnlearnError
from unlearn.evaluation import optimised
from unlearn.evaluation.attack_context import AttackContext, AttackTexts
from unlearn.evaluation.harness import eval_mode
from unlearn.evaluation.suite import evaluate
from unlearn.models import capture_block_outputs, decoder_blocks, rewrite_block_outputs
from unlearn.schema import ATTACKS, AblateSpec, EvalSpec, RelearnSpec

log = logging.getLogger(__name__)

# A direction whose norm is below this fraction of the original mean output's norm is float noise, not a
# change the training made: projecting it out would only remove a random direction.
ZERO_DIRECTION = 1e-6


# ---------------------------------------------------------------------------------------------------------
# Checks and texts (before any weights load)


def check_attack_files(spec: EvalSpec, training_corpora: list[CorpusSpec]) -> None:
    """Fail now on a missing attack text file, or on a relearn text that is one of the run's own corpora
    (relearning on trained-on text says nothing about held-out knowledge)."""
    for name in spec.attacks:
        if name not in ("relearn", "ablate"):
            continue
        settings = getattr(spec.attack, name)
        found = resolve_path(settings.path)
        if is_local(settings.path) and not found.is_file():
            raise UnlearnError(f"eval.attack.{name}.path: found {describe(found)} at {settings.path}, expected a "
                               f"JSONL or .txt file: point it at one, or leave {name} out of eval.attacks")
    if "relearn" not in spec.attacks:
        return
    relearn = _relearn_corpus(spec.attack.relearn)
    for corpus in training_corpora:
        if _same_corpus(relearn, corpus):
            raise UnlearnError(
                f"eval.attack.relearn.path={relearn.path} is one of the run's training corpora: relearning on "
                "trained-on text is not an attack on held-out knowledge; give held-out text (for the demo "
                "pkg://unlearn/data/demo/forget_heldout.jsonl or retain_heldout.jsonl)"
            )


def check_optimised(spec: EvalSpec, n_blocks: int) -> None:
    """prefix, latent: the split against the forget questions, choices the loss can read, latent's blocks."""
    optimised.check(spec, n_blocks)


def _relearn_corpus(settings: RelearnSpec) -> CorpusSpec:
    return CorpusSpec(settings.path, text_field=settings.text_field, max_length=settings.max_length,
                      name=settings.name, split=settings.split)


def _same_corpus(a: CorpusSpec, b: CorpusSpec) -> bool:
    if is_local(a.path) and is_local(b.path):
        first, second = resolve_path(a.path), resolve_path(b.path)
        if first.is_file() and second.is_file():
            return os.path.samefile(first, second)
        return first.absolute() == second.absolute()
    return (a.path, a.name, a.split) == (b.path, b.name, b.split)


def load_attack_texts(spec: EvalSpec, topics: list[Topic]) -> AttackTexts:
    """The relearn and ablate documents; refuses relearn documents found in a training corpus (a copied file
    passes the path check, not this one)."""
    relearn = ablate = None
    if "relearn" in spec.attacks:
        relearn = read_texts(_relearn_corpus(spec.attack.relearn))[: spec.attack.relearn.max_documents]
        trained = {text for topic in topics for text in (*topic.forget, *topic.retain)}
        overlap = sum(text in trained for text in relearn)
        if overlap:
            raise UnlearnError(
                f"eval.attack.relearn.path={spec.attack.relearn.path}: {overlap} of its {len(relearn)} documents "
                "are in the run's training corpora: relearning on trained-on text is not an attack on held-out "
                "knowledge; give documents the run does not train on"
            )
    if "ablate" in spec.attacks:
        settings = spec.attack.ablate
        ablate = read_texts(CorpusSpec(settings.path, text_field=settings.text_field))[: settings.max_documents]
    return AttackTexts(relearn=relearn, ablate=ablate)


def attack_settings(spec: EvalSpec) -> dict[str, Any]:
    """The settings of the attacks the spec runs (for the manifest)."""
    return {name: asdict(getattr(spec.attack, name)) for name in spec.attacks}


# ---------------------------------------------------------------------------------------------------------
# Running them


def run_attacks(
    model: nn.Module,
    tokenizer,
    spec: EvalSpec,
    texts: AttackTexts,
    original_means: torch.Tensor | None,
    *,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    trained_blocks: list[int],
    unlearn_layer: int,
    control_vectors: dict[str, torch.Tensor],
    base_weights: Callable[[], contextlib.AbstractContextManager] | None = None,
    base_identity: Any = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """`{attack: entry}` in the order of `spec.attacks`; each entry holds the per-task metrics after the attack,
    forget_acc / retain_acc, the before/after forget accuracies it is measured against, recovered_fraction, the
    attack's own details and its wall time. The model comes back as it went in (weights, hooks, mode).

    `base_weights()`, a context manager that puts the base model's values into the trained weights, lets the
    optimised attacks measure the base model on their held-out questions (and fit their controls)."""
    reference = {f"{domain}_acc_{section}": (evaluation or {}).get(f"{domain}_acc")  # as evaluate() stored them
                 for section, evaluation in (("before", before), ("after", after)) for domain in ("forget", "retain")}
    context = AttackContext(model, tokenizer, spec, texts, original_means, trained_blocks, unlearn_layer,
                            control_vectors, base_weights, base_identity, cache_dir)
    results: dict[str, Any] = {}
    for name in spec.attacks:
        start = time.perf_counter()
        log.info("knowledge-recovery attack: %s", name)
        evaluation, details = ATTACK_FUNCTIONS[name](context)
        measured_against = {**reference, **details.pop("reference", {})}  # prefix, latent: the held-out questions'
        results[name] = {
            "tasks": evaluation["tasks"],
            "forget_acc": evaluation["forget_acc"],
            "retain_acc": evaluation["retain_acc"],
            **measured_against,
            "recovered_fraction": recovered_fraction(measured_against["forget_acc_before"],
                                                     measured_against["forget_acc_after"], evaluation["forget_acc"]),
            **details,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return results


@contextlib.contextmanager
def weights_swapped(weights: dict[str, tuple[nn.Parameter, torch.Tensor]]) -> Iterator[None]:
    """Inside, each parameter holds the other value given beside it (the base model's, for the trained weights);
    its own value comes back on the way out (also on an error)."""
    own = {name: parameter.detach().clone() for name, (parameter, _) in weights.items()}
    try:
        with torch.no_grad():
            for parameter, other in weights.values():
                parameter.copy_(other)
        yield
    finally:
        with torch.no_grad():
            for name, (parameter, _) in weights.items():
                parameter.copy_(own[name])


def recovered_fraction(before: float | None, after: float | None, attacked: float | None) -> float | None:
    """(attacked - after) / (before - after); None without a gap (a missing number, or before == after)."""
    if before is None or after is None or attacked is None or math.isclose(before, after, abs_tol=1e-12):
        return None
    return (attacked - after) / (before - after)


def evaluate_tasks(model, tokenizer, spec: EvalSpec, num_fewshot: int) -> dict[str, Any]:
    """The forget and retain tasks only (no robustness pass, no probes), never cached."""
    tasks = tuple(dict.fromkeys(spec.forget_tasks + spec.retain_tasks))
    only_tasks = replace(spec, tasks=tasks, num_fewshot=num_fewshot, attacks=(),
                         robustness=replace(spec.robustness, enabled=False), probes=replace(spec.probes, enabled=False))
    return evaluate(model, tokenizer, only_tasks, unlearn_layer=0, control_vectors={}, keywords={},
                    probe_texts=None, cache_key=None)


# ---------------------------------------------------------------------------------------------------------
# Relearning


def _relearn_attack(context: AttackContext):
    model, tokenizer, spec, texts = context.model, context.tokenizer, context.spec, context.texts.relearn
    settings = spec.attack.relearn
    with relearned(model, tokenizer, texts, settings) as (attacked, losses, trainable):
        evaluation = evaluate_tasks(attacked, tokenizer, spec, spec.num_fewshot)
    details = {"lora": settings.lora, "documents": len(texts), "steps": settings.steps,
               "trainable_parameters": trainable, "loss_first": losses[0], "loss_last": losses[-1]}
    return evaluation, details


@contextlib.contextmanager
def relearned(model: nn.Module, tokenizer, texts: list[str], settings: RelearnSpec) -> Iterator[tuple[nn.Module, list[float], int]]:
    """`(fine-tuned model, per-step losses, trainable parameter count)` inside; afterwards `model` is exactly as
    it was: the LoRA adapters are unloaded without merging, or the full fine-tune happened on a copy."""
    if settings.lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0, bias="none",
                            target_modules=settings.lora_targets if isinstance(settings.lora_targets, str)
                            else list(settings.lora_targets))
        with _seeded(settings.seed), warnings.catch_warnings():  # A is drawn at random (B starts at zero)
            warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated question
            wrapped = get_peft_model(model, config)
        try:
            params = [p for p in model.parameters() if p.requires_grad]
            losses = _fine_tune(model, tokenizer, texts, params, settings)
            yield model, losses, sum(p.numel() for p in params)
        finally:
            wrapped.unload()  # puts the original layers back; nothing merged
        return
    attacked = copy.deepcopy(model)
    try:
        attacked.requires_grad_(True)
        params = list(attacked.parameters())
        losses = _fine_tune(attacked, tokenizer, texts, params, settings)
        attacked.requires_grad_(False)
        yield attacked, losses, sum(p.numel() for p in params)
    finally:
        del attacked


def _fine_tune(model: nn.Module, tokenizer, texts: list[str], params: list[nn.Parameter], settings: RelearnSpec) -> list[float]:
    """`steps` AdamW steps (constant lr, no weight decay) of the next-token loss on consecutive batches of the
    documents, in order, wrapping around; dropout off (eval mode), so a CPU run is deterministic."""
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    device = model.get_input_embeddings().weight.device
    losses = []
    with eval_mode(model), _seeded(settings.seed):
        for step in range(settings.steps):
            start = step * settings.batch_size
            batch = [texts[(start + i) % len(texts)] for i in range(settings.batch_size)]
            input_ids, attention_mask = _right_padded(tokenizer, batch, settings.max_length)
            labels = input_ids.masked_fill(attention_mask == 0, -100)  # no loss on padding
            loss = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                         labels=labels.to(device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            log.debug("relearn step %d: loss %.4f", step, losses[-1])
    return losses


def _right_padded(tokenizer, documents: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and mask, padded on the right: the positions of every document start at 0, as in training
    without padding (the run's tokenizer pads on the left, which shifts them)."""
    encoded = tokenizer(documents, truncation=True, max_length=max_length, padding=True, padding_side="right",
                        return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    devices = range(torch.cuda.device_count())
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------------------
# Direction ablation


@torch.no_grad()
def mean_block_outputs(model: nn.Module, tokenizer, texts: list[str], settings: AblateSpec) -> torch.Tensor:
    """(n_blocks, d) float32 on the CPU: the mean output of every decoder block over the kept tokens of `texts`
    (special tokens and each document's first `skip_tokens` tokens left out)."""
    n_blocks = len(decoder_blocks(model))
    sums, tokens = None, 0
    device = model.get_input_embeddings().weight.device
    with capture_block_outputs(model, range(n_blocks)) as caught:
        with eval_mode(model):
            for start in range(0, len(texts), settings.batch_size):
                encoded = tokenizer(texts[start : start + settings.batch_size], return_tensors="pt", padding=True,
                                    truncation=True, max_length=settings.max_length, return_special_tokens_mask=True)
                keep = encoded["attention_mask"].bool() & ~encoded["special_tokens_mask"].bool()  # (B, T)
                keep &= keep.cumsum(dim=-1) > settings.skip_tokens  # rank among the document's own tokens
                model(input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device))
                batch_sums = torch.stack([caught[i].float()[keep.to(caught[i].device)].sum(dim=0).cpu()
                                          for i in range(n_blocks)])  # (n_blocks, d)
                sums = batch_sums if sums is None else sums + batch_sums
                tokens += int(keep.sum())
    if not tokens:
        raise UnlearnError(f"eval.attack.ablate: no tokens left after skipping {settings.skip_tokens} per document: "
                           "lower eval.attack.ablate.skip_tokens or give longer documents")
    return sums / tokens


def _ablate_attack(context: AttackContext):
    model, tokenizer, spec, texts = context.model, context.tokenizer, context.spec, context.texts.ablate
    original_means, trained_blocks, unlearn_layer = context.original_means, context.trained_blocks, context.unlearn_layer
    control_vectors = context.control_vectors
    if original_means is None:
        raise UnlearnError("the ablate attack needs the original model's block outputs, taken before training")
    settings = spec.attack.ablate
    differences = mean_block_outputs(model, tokenizer, texts, settings) - original_means  # (n_blocks, d)
    candidates = range(len(differences)) if settings.blocks == "all" else trained_blocks
    directions = {}
    for index in candidates:
        if differences[index].norm() > ZERO_DIRECTION * original_means[index].norm():
            directions[index] = differences[index]
    with projected_out(model, directions):
        evaluation = evaluate_tasks(model, tokenizer, spec, spec.num_fewshot)
    details = {
        "blocks": settings.blocks,
        "ablated_blocks": sorted(directions),
        "direction_norm": {str(i): differences[i].norm().item() for i in candidates},
        # RMU pushes h_l towards c*u: a "shallow" unlearning shows up as a direction at l that is u itself
        "unlearn_layer_cosine_u": {topic: torch.nn.functional.cosine_similarity(
            differences[unlearn_layer], u.float().cpu(), dim=0).item() for topic, u in control_vectors.items()},
    }
    return evaluation, details


def projected_out(model: nn.Module, directions: dict[int, torch.Tensor]) -> contextlib.AbstractContextManager:
    """Inside, block `b`'s output h becomes h - (h . d_hat_b) d_hat_b for every `b` in `directions`, through
    forward hooks that are removed on the way out (also on an error)."""
    return rewrite_block_outputs(model, {index: _projection(direction / direction.norm())
                                         for index, direction in directions.items()})


def _projection(unit: torch.Tensor):
    return lambda hidden: project_out(hidden, unit.to(device=hidden.device, dtype=hidden.dtype))  # (B, T, d)


def project_out(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """h - (h . u) u for a unit vector u, along the last dimension."""
    return hidden - (hidden @ unit).unsqueeze(-1) * unit


# ---------------------------------------------------------------------------------------------------------
# Few-shot prompting


def _fewshot_attack(context: AttackContext):
    shots = context.spec.attack.fewshot.num_fewshot
    return evaluate_tasks(context.model, context.tokenizer, context.spec, shots), {"num_fewshot": shots}


# Every attack, by the name eval.attacks lists (unlearn.schema.ATTACKS, in that order): one function of the
# AttackContext returning (an evaluation with tasks, forget_acc and retain_acc; the attack's own details).
ATTACK_FUNCTIONS: dict[str, Callable[[AttackContext], tuple[dict[str, Any], dict[str, Any]]]] = {
    "relearn": _relearn_attack,
    "ablate": _ablate_attack,
    "fewshot": _fewshot_attack,
    "prefix": optimised.prefix_attack,
    "latent": optimised.latent_attack,
}
assert tuple(ATTACK_FUNCTIONS) == ATTACKS, "unlearn.schema.ATTACKS and ATTACK_FUNCTIONS list the same attacks"
