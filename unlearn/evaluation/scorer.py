"""An lm-eval model that runs each distinct prefix once: HFLM's numbers at a fraction of its cost.

A multiple-choice task in cloze format sends lm-eval one log-likelihood request per choice, and HFLM runs each
as its own sequence: a 15-token question with four 3-token answers goes through the model four times, and the LM
head is applied at every position although only the answer positions are read. `SharedContextLM` is HFLM with
one method replaced, `_loglikelihood_tokens` (the token-level hook of lm-eval's `TemplateLM`), so tokenization,
BOS handling, the split of a continuation that starts mid-word, the model's window and generation all stay
HFLM's own. It then puts the sequences HFLM would run (context and continuation, left-truncated to the window,
without the last token) into a prefix tree and runs each node once: the four choices of a question share its
context, the keyword-perturbed copies of a question share the words before the keyword, the questions of a
few-shot task share their examples.

A row of a batch holds a subtree: its nodes in any order, each attending to itself and its ancestors only (a
tree attention mask), with its depth as its position id, so every node is computed exactly as in its own
sequence. The nodes whose next-token log-probabilities are read (the last context token and the continuation's
inputs) come last in their row and left padding lines them up across the batch, so the LM head runs on that tail
only. A row holds at most as many nodes as the widest context with all its continuations (the model's window at
most), so that a question's choices are never split from their context; a batch holds `batch_size` rows.

Exactness: per-request log-likelihoods agree with HFLM's to float rounding (tests/test_scorer.py: within 1e-4 in
float32 on CPU, identical accuracies). What it cannot reproduce exactly it hands to HFLM's own code, with one
log line: generation and perplexity requests, `batch_size=auto`, a model whose attention cannot take a custom mask
(flash attention) or whose forward takes no position ids, and a request longer than a sliding attention window.
"""

from __future__ import annotations

import inspect
import itertools
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
    """A subtree of the prefix tree: nodes in the order they were added (a parent before its children), and what
    is read where."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # index of the parent node in this row; -1 for a root
    depths: list[int] = field(default_factory=list)  # the node's position in its sequence
    reads: list[tuple[int, int, int]] = field(default_factory=list)  # (request index, node, target token)

    def add(self, sequence: tuple[int, ...], shared: int, path: list[int]) -> None:
        """Add `sequence`, whose first `shared` tokens are `path`'s nodes (the previous sequence's, in sorted
        order); `path` becomes this sequence's nodes."""
        del path[shared:]
        for depth in range(shared, len(sequence)):
            self.parents.append(path[-1] if path else -1)
            self.tokens.append(sequence[depth])
            self.depths.append(depth)
            path.append(len(self.tokens) - 1)

    @property
    def read_nodes(self) -> set[int]:
        return {node for _, node, _ in self.reads}

    def ancestry(self) -> torch.Tensor:
        """(nodes, nodes) boolean: [i, j] when node j is node i or one of its ancestors. The nodes were added in
        the sorted order of their sequences, so a node's subtree is the run of nodes from it to its last
        descendant: j is an ancestor of i when j <= i < j + the size of j's subtree."""
        sizes = [1] * len(self.tokens)
        for node in range(len(self.tokens) - 1, -1, -1):
            if self.parents[node] >= 0:
                sizes[self.parents[node]] += sizes[node]
        nodes = torch.arange(len(self.tokens))
        ends = nodes + torch.tensor(sizes)
        return (nodes[None, :] <= nodes[:, None]) & (nodes[:, None] < ends[None, :])


@register_model(NAME)
class SharedContextLM(HFLM):
    """HFLM whose log-likelihood requests run each distinct prefix once (module docstring)."""

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
        rows.sort(key=lambda row: -len(row.tokens))  # little padding; the widest (most memory) first
        with tqdm(total=len(requests) - len(too_long), disable=disable_tqdm or self.rank != 0,
                  desc="Running loglikelihood requests (shared prefixes)") as bar:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                answers = self._score(batch)
                for index, answer in answers:
                    results[index] = answer
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
                bar.update(len(answers))
        return results

    def _pack(self, requests) -> tuple[list[_Row], list[int]]:
        """The sequences HFLM would run (left-truncated to the window with the continuation, without the last
        token), sorted so that shared prefixes are neighbours, cut into rows no wider than the widest context
        with all its continuations (or the model's window); and the requests a sliding attention window would
        reach, for HFLM."""
        window = getattr(self.model.config, "sliding_window", None)
        sequences, too_long = [], []
        for index, (_, context, continuation) in enumerate(requests):
            assert context and continuation and len(continuation) <= self.max_length  # as HFLM asserts
            whole = (context + continuation)[-(self.max_length + 1) :]  # HFLM's left truncation
            if window and len(whole) - 1 > window:
                too_long.append(index)
            else:
                sequences.append((tuple(whole[:-1]), len(whole) - len(continuation), index))
        sequences.sort()
        contexts: dict[tuple[int, ...], int] = defaultdict(int)  # each context's tokens and its continuations'
        for sequence, context_length, _ in sequences:
            contexts[sequence[:context_length]] += len(sequence) - context_length
        budget = min(self.max_length, max((len(c) + n for c, n in contexts.items()), default=0))
        rows = []
        for run in _subtrees([sequence for sequence, _, _ in sequences], budget):
            row, path, previous = _Row(), [], ()
            for sequence, context_length, index in sequences[run.start : run.stop]:
                row.add(sequence, _common_prefix(previous, sequence), path)
                # the node before each continuation token: the last context node, then the continuation's inputs
                row.reads += [(index, path[context_length - 1 + j], token)
                              for j, token in enumerate(requests[index][2])]
                previous = sequence
            rows.append(row)
        return rows, too_long

    def _score(self, batch: list[_Row]) -> list[tuple[int, tuple[float, bool]]]:
        """One forward pass over `batch`: (request index, (log-likelihood, greedy)) for each of its requests."""
        width = max(len(row.tokens) for row in batch)
        tail = max(len(row.read_nodes) for row in batch)  # the LM head's positions, the last ones of every row
        tokens = torch.zeros(len(batch), width, dtype=torch.long)  # HFLM pads with 0 too; masked out here
        positions = torch.zeros(len(batch), width, dtype=torch.long)
        allowed = torch.eye(width, dtype=torch.bool).repeat(len(batch), 1, 1)  # padding sees itself only
        read_rows, read_slots, targets, owners = [], [], [], []
        for b, row in enumerate(batch):
            read = row.read_nodes
            order = [n for n in range(len(row.tokens)) if n not in read] + sorted(read)  # read nodes last
            slots = torch.empty(len(order), dtype=torch.long)
            slots[order] = torch.arange(width - len(order), width)  # left padding
            tokens[b, slots] = torch.tensor(row.tokens)
            positions[b, slots] = torch.tensor(row.depths)
            allowed[b, slots[:, None], slots[None, :]] = row.ancestry()
            for index, node, target in row.reads:
                read_rows.append(b)
                read_slots.append(int(slots[node]) - (width - tail))
                targets.append(target)
                owners.append(index)
        logprobs = self._tail_logprobs(tokens, positions, allowed, tail)  # (B, tail, vocab)
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


def _subtrees(sequences: list[tuple[int, ...]], budget: int) -> list[range]:
    """Sorted `sequences` cut into runs whose prefix trees have at most `budget` nodes: whole subtrees of the tree
    of all of them where they fit, neighbours sharing a run while they fit; a subtree too large for one run is
    split among its children, whose runs repeat the path to it."""
    shared = [0] + [_common_prefix(a, b) for a, b in zip(sequences, sequences[1:])]  # with the one before
    added = list(itertools.accumulate((len(s) - p for s, p in zip(sequences, shared)), initial=0))

    def size(start: int, end: int) -> int:  # nodes of the tree of sequences[start:end]
        return len(sequences[start]) + added[end] - added[start + 1]

    runs: list[range] = []
    pending = [range(0, len(sequences))] if sequences else []  # subtrees still to place, the next one last
    while pending:
        run = pending.pop()
        if len(run) > 1 and size(run.start, run.stop) > budget:
            depth = min(shared[run.start + 1 : run.stop])  # what every sequence of the run shares
            cuts = [run.start, *(k for k in run[1:] if shared[k] == depth), run.stop]  # a child per next token
            pending += reversed([range(a, b) for a, b in zip(cuts, cuts[1:])])
        elif runs and size(runs[-1].start, run.stop) <= budget:
            runs[-1] = range(runs[-1].start, run.stop)
        else:
            runs.append(run)
    return runs


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """The length of the longest common prefix of `a` and `b`."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def _accepts(model, argument: str) -> bool:
    """Whether the transformers model under `model` (a peft wrapper passes keywords through) names `argument`
    in its forward."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(inner.forward).parameters


def _tasks(requests) -> str:
    return ", ".join(sorted({str(getattr(request, "task_name", None)) for request in requests})) or "no task"
