"""An lm-eval model that runs each distinct context once: HFLM's numbers at a fraction of its cost.

A multiple-choice task in cloze format sends lm-eval one log-likelihood request per choice, and HFLM runs each
as its own sequence: a 15-token question with four 3-token answers goes through the model four times, and the LM
head is applied at every position although only the answer positions are read. `SharedContextLM` is HFLM with
one method replaced, `_loglikelihood_tokens` (the token-level hook of lm-eval's `TemplateLM`), so tokenization,
BOS handling, the split of a continuation that starts mid-word, the model's window and generation all stay
HFLM's own. It then packs each context and all its continuations into one row,

    context c0 c1 c2 c3 | choice A a0 a1 | choice B b0 | choice C c0' c1' c2'     (each choice without its last token)

with a block-causal attention mask (a choice sees the context and itself, never another choice) and position ids
that restart after the context for each choice, so every choice is computed exactly as in its own sequence. The
last context position predicts every choice's first token; the LM head runs only on the row's tail (the last
context position and the choices), which left padding lines up across the rows of a batch. A batch holds
`batch_size` rows, i.e. `batch_size` distinct contexts (HFLM: `batch_size` requests).

Exactness: per-request log-likelihoods agree with HFLM's to float rounding (tests/test_scorer.py: within 1e-4 in
float32 on CPU, identical accuracies). What it cannot reproduce exactly it hands to HFLM's own code, with one
log line: generation and perplexity requests, `batch_size=auto`, a model whose attention cannot take a custom mask
(flash attention) or whose forward takes no position ids, and a request longer than a sliding attention window.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

log = logging.getLogger(__name__)

NAME = "unlearn-shared-context"  # lm-eval's name for it: `lm_eval --model unlearn-shared-context` after an import
MASKABLE_ATTENTION = ("eager", "sdpa")  # implementations that apply a custom 4D additive mask as given


@dataclass
class _Row:
    """One context and the continuations scored after it, packed into one sequence."""

    context: tuple[int, ...]
    requests: list[int] = field(default_factory=list)  # indices into the request list
    continuations: list[list[int]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(tokens) - 1 for tokens in self.continuations)

    @property
    def read(self) -> int:
        """Positions whose log-probabilities are read: the last context one and every continuation input."""
        return self.length - len(self.context) + 1


@register_model(NAME)
class SharedContextLM(HFLM):
    """HFLM whose log-likelihood requests run each distinct context once (module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unsupported = self._unsupported()
        if self.unsupported:
            log.info("log-likelihoods scored by lm-eval's HFLM: %s", self.unsupported)
        self._takes_logits_to_keep = _accepts(self.model, "logits_to_keep")

    def _unsupported(self) -> str | None:
        """Why this model must be scored by HFLM itself, or None."""
        if self.backend != "causal":
            return f"a {self.backend} model (the shared context is for decoder-only models)"
        if not isinstance(self.batch_size, int):
            return f"batch_size={self.batch_size} (give an integer to share contexts)"
        attention = getattr(self.model.config, "_attn_implementation", None)  # set by transformers on every model
        if attention not in MASKABLE_ATTENTION:
            return f"attention implementation {attention!r} takes no custom mask (use one of {MASKABLE_ATTENTION})"
        if not _accepts(self.model, "position_ids"):
            return "the model's forward takes no position_ids"
        return None

    # -- what is not log-likelihood: HFLM's own, said once per call -------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        log.info("generation requests of %s: scored by lm-eval's HFLM", _tasks(requests))
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        log.info("perplexity (rolling log-likelihood) requests of %s: scored by lm-eval's HFLM", _tasks(requests))
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    # -- log-likelihood --------------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """`requests`: ((context, continuation), context tokens, continuation tokens), as TemplateLM encodes them.
        Returns (log-likelihood, greedy) per request, in order."""
        if self.unsupported or override_bs is not None:  # override_bs: HFLM's rolling windows
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        rows, too_long = self._pack(requests)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        if too_long:
            log.info("%d requests longer than the sliding attention window: scored by lm-eval's HFLM", len(too_long))
            for index, answer in zip(too_long, super()._loglikelihood_tokens([requests[i] for i in too_long])):
                results[index] = answer
        rows.sort(key=lambda row: (-row.length, row.context))  # little padding; the longest (most memory) first
        with tqdm(total=len(requests) - len(too_long), disable=disable_tqdm or self.rank != 0,
                  desc="Running loglikelihood requests (shared contexts)") as bar:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                for index, answer in self._score(batch):
                    results[index] = answer
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
                bar.update(sum(len(row.requests) for row in batch))
        return results

    def _pack(self, requests) -> tuple[list[_Row], list[int]]:
        """Requests grouped by their context as HFLM would feed it (left-truncated to the window with the
        continuation), each group cut into rows of at most `max_length` tokens; and the requests a sliding
        attention window would reach, for HFLM."""
        window = getattr(self.model.config, "sliding_window", None)
        by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
        too_long = []
        for index, (_, context, continuation) in enumerate(requests):
            assert context and continuation and len(continuation) <= self.max_length  # as HFLM asserts
            whole = (context + continuation)[-(self.max_length + 1) :]  # HFLM's left truncation
            if window and len(whole) - 1 > window:
                too_long.append(index)
            else:
                by_context[tuple(whole[: len(whole) - len(continuation)])].append(index)
        rows = []
        for context, indices in by_context.items():
            row = _Row(context)
            for index in indices:
                continuation = requests[index][2]
                if row.requests and row.length + len(continuation) - 1 > self.max_length:
                    rows.append(row)
                    row = _Row(context)
                row.requests.append(index)
                row.continuations.append(continuation)
            rows.append(row)
        return rows, too_long

    def _score(self, batch: list[_Row]) -> list[tuple[int, tuple[float, bool]]]:
        """One forward pass over `batch`: (request index, (log-likelihood, greedy)) for each of its requests."""
        width = max(row.length for row in batch)
        tail = max(row.read for row in batch)  # the LM head's positions, the same last ones in every row
        tokens = torch.zeros(len(batch), width, dtype=torch.long)  # HFLM pads with 0 too; masked out here
        positions = torch.zeros(len(batch), width, dtype=torch.long)
        segments = torch.full((len(batch), width), -1, dtype=torch.long)  # -1 padding, 0 context, i: i-th choice
        read_rows, read_slots, targets, owners = [], [], [], []
        for b, row in enumerate(batch):
            offset = width - row.length  # left padding
            context = len(row.context)
            tokens[b, offset : offset + context] = torch.tensor(row.context)
            positions[b, offset : offset + context] = torch.arange(context)
            segments[b, offset : offset + context] = 0
            start = offset + context
            for segment, (index, continuation) in enumerate(zip(row.requests, row.continuations), start=1):
                inputs = continuation[:-1]
                end = start + len(inputs)
                tokens[b, start:end] = torch.tensor(inputs, dtype=torch.long)
                positions[b, start:end] = torch.arange(context, context + len(inputs))
                segments[b, start:end] = segment
                # the position before each continuation token, counted in the tail the head runs on
                slots = [offset + context - 1, *range(start, end)]
                read_rows += [b] * len(continuation)
                read_slots += [slot - (width - tail) for slot in slots]
                targets += continuation
                owners += [index] * len(continuation)
                start = end
        logprobs = self._tail_logprobs(tokens, positions, _block_causal(segments), tail)  # (B, tail, vocab)
        device = logprobs.device
        picked = logprobs[torch.tensor(read_rows, device=device), torch.tensor(read_slots, device=device)]  # (read, V)
        target = torch.tensor(targets, device=device)
        token_logprob = picked.gather(1, target[:, None]).squeeze(1)
        token_greedy = picked.argmax(dim=-1) == target
        answers: dict[int, list] = defaultdict(list)
        for owner, value, greedy in zip(owners, token_logprob.tolist(), token_greedy.tolist()):
            answers[owner].append((value, greedy))
        return [(index, (float(sum(v for v, _ in read)), all(g for _, g in read))) for index, read in answers.items()]

    def _tail_logprobs(self, tokens, positions, allowed, tail: int) -> torch.Tensor:
        """Log-softmax of the model's logits at the last `tail` positions of each row, as HFLM takes them
        (its autocast and softmax dtype)."""
        device, dtype = self.device, self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed.to(device), torch.finfo(dtype).min)  # additive: what eager and sdpa both take
        kwargs = {"logits_to_keep": tail} if self._takes_logits_to_keep else {}
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            logits = self.model(input_ids=tokens.to(device), attention_mask=mask[:, None], use_cache=False,
                                position_ids=positions.to(device), **kwargs).logits[:, -tail:]
        return F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)


def _block_causal(segments: torch.Tensor) -> torch.Tensor:
    """(B, W, W) boolean: query i may attend key j. `segments` (B, W): -1 padding, 0 the context, i >= 1 the i-th
    continuation. A context position sees the context before it; a continuation position sees the whole context
    and its own continuation up to itself; a padding position sees itself only. One vectorised expression, not a
    triangle per row and choice (small tensor operations cost more than their maths on a busy CPU)."""
    query, key = segments[:, :, None], segments[:, None, :]
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    return (causal & (query >= 0) & ((key == 0) | (key == query))) | torch.eye(width, dtype=torch.bool)


def _accepts(model, argument: str) -> bool:
    """Whether the transformers model under `model` (a peft wrapper passes keywords through) names `argument`
    in its forward."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(inner.forward).parameters


def _tasks(requests) -> str:
    return ", ".join(sorted({str(getattr(request, "task_name", None)) for request in requests})) or "no task"
