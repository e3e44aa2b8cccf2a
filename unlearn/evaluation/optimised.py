"""The optimised attacks (REFERENCE, "Optimised attacks"): fitted on the train split of the forget questions with
the multiple-choice loss (unlearn.evaluation.choice_loss), scored by lm-eval on the held-out questions only.

- `prefix`: one universal adversarial prefix found by greedy coordinate gradient search (Zou et al. 2023). Each
  step takes the gradient of the loss with respect to the prefix's one-hot tokens, keeps per position the `top_k`
  tokens with the most negative gradient, samples `search_width` candidates (one position changed in each), scores
  them in batches and moves to the best. Candidates whose text does not come back as the same tokens are dropped,
  so lm-eval, which reads the prefix as text (the task's description), sees the tokens that were fitted. The best
  prefix met is kept.
- `latent`: universal additive vectors at chosen block outputs (and the embeddings), fitted with AdamW; each is
  `scale * v` with `scale` the mean token norm at its place on the train questions and `||v|| <= norm_bound`, so
  the bound reads as a fraction of the activations' own norm. Forward hooks add them during the held-out
  evaluation and are removed afterwards.

Controls: with `control: true` the same attack, same settings and split, is fitted and scored on the base model
(the trained weights' original values are put back for it, then the trained ones). The base model's held-out
accuracy (clean) is measured either way: it is the reference of the recovered fraction on the held-out questions.
The base model's results are cached on disk, keyed by everything they depend on, so a sweep pays them once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from unlearn.blocks import capture_block_outputs, decoder_blocks, rewrite_block_outputs
from unlearn.errors import UnlearnError
from unlearn.evaluation import cache
from unlearn.evaluation.attack_context import AttackContext
from unlearn.evaluation.choice_loss import Rows, backward_mean_loss, encode, mean_loss
from unlearn.evaluation.harness import eval_mode
from unlearn.evaluation.heldout import Split, forget_questions, score_heldout, split_questions
from unlearn.evaluation.tasks import fingerprint
from unlearn.schema import EvalSpec, LatentSpec, PrefixSpec, Scorer

log = logging.getLogger(__name__)

SEPARATOR = "\n"  # between the prefix and the prompt
LATENT_SPREAD = 2  # latent's default blocks: the unlearn layer and this many blocks either side
EMBEDDINGS = "embeddings"


@dataclass
class Fitted:
    """A fitted attack: how to apply it, and what the fit left to report."""

    description: str | None  # the prefix text lm-eval puts before each prompt (prefix); None
    hooks: Callable[[nn.Module], contextlib.AbstractContextManager]  # forward hooks while scoring (latent)
    details: dict[str, Any] = field(default_factory=dict)


def check(spec: EvalSpec, n_blocks: int) -> None:
    """Before any weights load: the split's size against the forget questions, readable choices, latent's blocks."""
    if spec.attack is None or spec.attack.split is None:
        return
    split_questions(forget_questions(spec), spec.attack.split)
    if spec.attack.latent is not None:
        for block in spec.attack.latent.blocks or ():
            if not 0 <= block < n_blocks:
                raise UnlearnError(f"eval.attack.latent.blocks lists block {block}, which the model does not have "
                                   f"(blocks 0..{n_blocks - 1}): list existing blocks, or null for the unlearn layer "
                                   f"and {LATENT_SPREAD} blocks either side")


def latent_places(settings: LatentSpec, unlearn_layer: int, n_blocks: int) -> list[str | int]:
    blocks = settings.blocks if settings.blocks is not None else [
        b for b in range(unlearn_layer - LATENT_SPREAD, unlearn_layer + LATENT_SPREAD + 1) if 0 <= b < n_blocks]
    return ([EMBEDDINGS] if settings.embeddings else []) + list(blocks)


# ---------------------------------------------------------------------------------------------------------
# The two attacks behind the table's signature


def prefix_attack(context: AttackContext) -> tuple[dict[str, Any], dict[str, Any]]:
    return _optimised(context, "prefix", lambda model, rows: fit_prefix(model, context.tokenizer, rows,
                                                                         context.spec.attack.prefix))


def latent_attack(context: AttackContext) -> tuple[dict[str, Any], dict[str, Any]]:
    settings = context.spec.attack.latent
    places = latent_places(settings, context.unlearn_layer, len(decoder_blocks(context.model)))
    return _optimised(context, "latent", lambda model, rows: fit_latent(model, rows, settings, places))


def _optimised(context: AttackContext, name: str, fit: Callable[[nn.Module, Rows], Fitted]):
    spec, model, tokenizer = context.spec, context.model, context.tokenizer
    settings = getattr(spec.attack, name)
    split = context.memo("split", lambda: split_questions(forget_questions(spec), spec.attack.split))
    rows = encode(tokenizer, split.train, SEPARATOR)
    clean = context.memo("heldout_clean", lambda: score_heldout(model, tokenizer, spec, split, retain=False))
    log.info("%s: fitting on %d train questions", name, len(split.train))
    fitted = fit(model, rows)
    with fitted.hooks(model):
        attacked = score_heldout(model, tokenizer, spec, split, description=fitted.description)
    base = _base_results(context, name, settings, split, fit)
    reference = {"forget_acc_before": base["clean"], "forget_acc_after": clean["forget_acc"]}
    heldout = {"forget_acc_unlearned": clean["forget_acc"], "forget_acc_attacked": attacked["forget_acc"],
               "base_forget_acc_clean": base["clean"], "base_forget_acc_attacked": base.get("attacked"),
               "base_gain": None if base.get("attacked") is None else base["attacked"] - base["clean"]}
    details = {"reference": reference, "heldout": heldout, **split.sizes, **fitted.details,
               "control": base.get("control"), "control_from_cache": base.get("from_cache", False)}
    return attacked, details


def _base_results(context: AttackContext, name: str, settings, split: Split, fit) -> dict[str, Any]:
    """The base model's held-out accuracy, clean and (with `control`) under the same attack fitted on it."""
    spec, model, tokenizer = context.spec, context.model, context.tokenizer
    if context.base_weights is None:
        return {"clean": None}
    key = {"attack": name, "settings": {k: v for k, v in asdict(settings).items() if k != "control"},
           "split": asdict(spec.attack.split), "model": context.base_identity, "unlearn_layer": context.unlearn_layer,
           "dtype": str(next(model.parameters()).dtype), "device_type": next(model.parameters()).device.type,
           "batch_size": spec.batch_size, "scorer": Scorer(spec.scorer).value, "limit": spec.limit, "num_fewshot": spec.num_fewshot,
           "tasks": fingerprint(_forget_tasks(spec)), "versions": cache.versions()}
    path = cache.cache_file(context.cache_dir, key) if context.base_identity is not None and context.cache_dir else None
    if path is not None and settings.control:
        cached = cache.read(path, key)
        if cached is not None:
            log.info("%s: base-model control read from %s", name, path)
            return {**cached, "from_cache": True}
    with context.base_weights():
        clean = context.memo("base_heldout_clean",
                             lambda: score_heldout(model, tokenizer, spec, split, retain=False))["forget_acc"]
        if not settings.control:
            return {"clean": clean}
        log.info("%s: base-model control", name)
        fitted = fit(model, encode(tokenizer, split.train, SEPARATOR))
        with fitted.hooks(model):
            attacked = score_heldout(model, tokenizer, spec, split, description=fitted.description, retain=False)
    results = {"clean": clean, "attacked": attacked["forget_acc"], "control": fitted.details}
    if path is not None:
        cache.write(path, key, results)
    return results


def _forget_tasks(spec: EvalSpec) -> list:
    from unlearn.evaluation.suite import forget_leaves

    return forget_leaves(spec)


def _no_hooks(_model: nn.Module) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------------
# GCG


def fit_prefix(model: nn.Module, tokenizer, rows: Rows, settings: PrefixSpec, snapshots: tuple[int, ...] = ()) -> Fitted:
    """GCG for `settings.steps` steps; `snapshots`: steps after which the best prefix so far is also kept (in
    details["snapshots"], step -> text; scripts/bench_attacks.py scores them)."""
    start = time.perf_counter()
    kept: dict[int, str] = {0: tokenizer.decode(initial_prefix(tokenizer, settings).tolist())} if 0 in snapshots else {}
    prefix = initial_prefix(tokenizer, settings)
    allowed = allowed_tokens(tokenizer, model.get_input_embeddings().weight.shape[0])
    generator = torch.Generator().manual_seed(settings.seed)
    current_loss = float(mean_loss(model, rows, settings.batch_size, prefix[None])[0])
    best, best_loss = prefix.clone(), current_loss
    losses = [current_loss]
    with eval_mode(model), tqdm(range(settings.steps), desc="prefix (GCG)", unit="step") as bar:
        for step in bar:
            gradient = token_gradient(model, rows, prefix, settings.batch_size)
            gradient[:, ~allowed] = float("inf")
            top = (-gradient).topk(settings.top_k, dim=1).indices  # (L, k)
            candidates = sample_candidates(prefix, top, settings.search_width, generator)
            candidates = [c for c in candidates if round_trips(tokenizer, c)]
            if candidates:
                stacked = torch.stack(candidates)
                scores = mean_loss(model, rows, settings.batch_size, stacked)
                choice = int(scores.argmin())
                prefix, current_loss = stacked[choice], float(scores[choice])
                if current_loss < best_loss:
                    best, best_loss = prefix.clone(), current_loss
            losses.append(current_loss)
            bar.set_postfix(loss=f"{current_loss:.4f}")
            if step + 1 in snapshots:
                kept[step + 1] = tokenizer.decode(best.tolist())
    text = tokenizer.decode(best.tolist())
    return Fitted(description=text + SEPARATOR, hooks=_no_hooks, details={
        "prefix": text, "prefix_ids": best.tolist(), "losses": [round(v, 5) for v in losses],
        "loss_first": losses[0], "loss_last": best_loss, "fit_seconds": round(time.perf_counter() - start, 1),
        **({"snapshots": kept} if snapshots else {})})


def initial_prefix(tokenizer, settings: PrefixSpec) -> torch.Tensor:
    """The first `length` tokens of `init` repeated space-separated (GCG's "! ! ! ...")."""
    ids = tokenizer(" ".join([settings.init] * settings.length), add_special_tokens=False)["input_ids"]
    if len(ids) < settings.length:
        raise UnlearnError(f"eval.attack.prefix.init={settings.init!r} repeated {settings.length} times is only "
                           f"{len(ids)} token(s) for this tokenizer: give the text of one token (e.g. '!')")
    return torch.tensor(ids[: settings.length])


def allowed_tokens(tokenizer, vocabulary: int) -> torch.Tensor:
    """(V,) bool: printable ASCII tokens, no special tokens, no braces or percent signs (the prefix passes
    through lm-eval's template engine as raw text)."""
    allowed = torch.zeros(vocabulary, dtype=torch.bool)
    special = set(tokenizer.all_special_ids)
    known = min(vocabulary, len(tokenizer))
    for index, text in enumerate(tokenizer.batch_decode([[i] for i in range(known)])):
        allowed[index] = (index not in special and text.isascii() and text.isprintable() and bool(text.strip())
                          and not set(text) & set("{}%"))
    return allowed


def token_gradient(model: nn.Module, rows: Rows, prefix: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(L, V): the gradient of the mean loss with respect to the prefix's one-hot tokens."""
    weight = model.get_input_embeddings().weight
    one_hot = torch.zeros(len(prefix), weight.shape[0], dtype=weight.dtype, device=weight.device)
    one_hot[torch.arange(len(prefix)), prefix.to(weight.device)] = 1
    one_hot.requires_grad_(True)
    backward_mean_loss(model, rows, batch_size, (one_hot @ weight)[None])
    return one_hot.grad.float().cpu()


def sample_candidates(prefix: torch.Tensor, top: torch.Tensor, width: int, generator: torch.Generator) -> list[torch.Tensor]:
    """`width` distinct copies of `prefix`, each with one position replaced by one of its top tokens."""
    positions = torch.randint(len(prefix), (width,), generator=generator)
    picks = torch.randint(top.shape[1], (width,), generator=generator)
    seen, candidates = {tuple(prefix.tolist())}, []
    for position, pick in zip(positions.tolist(), picks.tolist()):
        candidate = prefix.clone()
        candidate[position] = top[position, pick]
        if tuple(candidate.tolist()) not in seen:
            seen.add(tuple(candidate.tolist()))
            candidates.append(candidate)
    return candidates


def round_trips(tokenizer, prefix: torch.Tensor) -> bool:
    """Whether the prefix's text, followed by the separator, is read back as the same tokens."""
    ids = prefix.tolist()
    separator = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    text = tokenizer.decode(ids)
    return tokenizer(text + SEPARATOR, add_special_tokens=False)["input_ids"] == ids + separator


# ---------------------------------------------------------------------------------------------------------
# Latent perturbation


def fit_latent(model: nn.Module, rows: Rows, settings: LatentSpec, places: list[str | int]) -> Fitted:
    start = time.perf_counter()
    scales = mean_norms(model, rows, places, settings.batch_size)
    hidden = model.get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(settings.seed)
    device = model.get_input_embeddings().weight.device
    directions = {place: (torch.randn(hidden, generator=generator) * 1e-3).to(device).requires_grad_(True)
                  for place in places}
    optimizer = torch.optim.AdamW(list(directions.values()), lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=settings.decay)
    losses = []

    def vectors() -> dict[str | int, torch.Tensor]:
        return {place: scales[place] * v for place, v in directions.items()}

    with eval_mode(model), tqdm(range(settings.steps), desc="latent (AdamW)", unit="step") as bar:
        for _ in bar:
            with perturbed(model, vectors()):
                losses.append(backward_mean_loss(model, rows, settings.batch_size))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            with torch.no_grad():
                for v in directions.values():
                    v.mul_(torch.clamp(settings.norm_bound / v.norm().clamp_min(1e-12), max=1.0))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    final = {place: v.detach() for place, v in vectors().items()}
    with perturbed(model, final):
        last = float(mean_loss(model, rows, settings.batch_size)[0])
    losses.append(last)
    return Fitted(description=None, hooks=lambda m: perturbed(m, final), details={
        "places": [str(p) for p in places], "mean_norms": {str(p): round(float(s), 4) for p, s in scales.items()},
        "relative_norms": {str(p): round(float(directions[p].detach().norm()), 4) for p in places},
        "losses": [round(v, 5) for v in losses], "loss_first": losses[0], "loss_last": last,
        "fit_seconds": round(time.perf_counter() - start, 1)})


@torch.no_grad()
def mean_norms(model: nn.Module, rows: Rows, places: list[str | int], batch_size: int) -> dict[str | int, float]:
    """The mean token norm at each place (the embeddings' output, a block's output) over the train rows."""
    caught_embeddings: list[torch.Tensor] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: caught_embeddings.append(out))
    blocks = [p for p in places if p != EMBEDDINGS]
    sums = {place: 0.0 for place in places}
    tokens = 0
    try:
        with capture_block_outputs(model, blocks) as caught, eval_mode(model):
            for first in range(0, len(rows.ids), batch_size):
                batch = rows.ids[first : first + batch_size]
                ids = torch.zeros(len(batch), max(map(len, batch)), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, row in enumerate(batch):
                    ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
                device = model.get_input_embeddings().weight.device
                caught_embeddings.clear()
                model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device))
                keep = mask.bool()
                outputs = {EMBEDDINGS: caught_embeddings[-1], **caught}
                for place in places:
                    sums[place] += float(outputs[place].float()[keep.to(outputs[place].device)].norm(dim=-1).sum())
                tokens += int(keep.sum())
    finally:
        handle.remove()
    return {place: total / tokens for place, total in sums.items()}


@contextlib.contextmanager
def perturbed(model: nn.Module, vectors: dict[str | int, torch.Tensor]) -> Iterator[None]:
    """Inside, `vectors[place]` is added at every token to the embeddings' output and to the named blocks'
    outputs; the hooks go on the way out (also on an error)."""
    handle = None
    if EMBEDDINGS in vectors:
        added = vectors[EMBEDDINGS]
        handle = model.get_input_embeddings().register_forward_hook(
            lambda _m, _i, out: out + added.to(device=out.device, dtype=out.dtype))
    try:
        with rewrite_block_outputs(model, {place: _adder(v) for place, v in vectors.items() if place != EMBEDDINGS}):
            yield
    finally:
        if handle is not None:
            handle.remove()


def _adder(vector: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda hidden: hidden + vector.to(device=hidden.device, dtype=hidden.dtype)
