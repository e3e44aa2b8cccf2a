"""The multiple-choice loss the optimised attacks minimise: the cross-entropy of the correct choice among the
question's choices, each choice scored as lm-eval scores it (the summed log-likelihood of its continuation after
the context). For a letter task (WMDP, MMLU: " A" .. " D", one token each) that is the cross-entropy over the
letters' logits at the answer position; for a cloze task (the demo's) over the choices' summed continuation
log-likelihoods (REFERENCE, "Multiple-choice loss").

Each (question, choice) is one row: [prefix] + separator + context + continuation, split into tokens as lm-eval's
HFLM splits them (context and continuation encoded together, trailing spaces of the context moved to the
continuation). The prefix enters as embeddings, so GCG can take the gradient with respect to its one-hot tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from unlearn.evaluation.heldout import Question


@dataclass(frozen=True)
class Rows:
    """The train questions as token rows, one per (question, choice), grouped by question."""

    ids: list[list[int]]  # separator + context + continuation tokens (no prefix)
    continuation: list[int]  # where each row's continuation starts
    question: list[int]  # the question each row belongs to
    answers: list[int]  # per question, the correct choice
    choices: list[int]  # per question, its number of choices


def encode(tokenizer, questions: list[Question], separator: str) -> Rows:
    ids, starts, owner, answers, choices = [], [], [], [], []
    for number, question in enumerate(questions):
        for continuation in question.continuations:
            context = separator + question.context
            spaces = len(context) - len(context.rstrip())  # HFLM moves them into the continuation
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            context_ids = _tokens(tokenizer, context)
            whole = _tokens(tokenizer, context + continuation)
            ids.append(whole)
            starts.append(len(context_ids))
            owner.append(number)
        answers.append(question.answer)
        choices.append(len(question.continuations))
    return Rows(ids, starts, owner, answers, choices)


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def question_batches(rows: Rows, batch_size: int) -> Iterator[list[int]]:
    """The questions in order, in groups of about `batch_size` rows (a question's rows never split)."""
    group, size = [], 0
    for number, count in enumerate(rows.choices):
        if group and size + count > batch_size:
            yield group
            group, size = [], 0
        group.append(number)
        size += count
    if group:
        yield group


def choice_losses(model: nn.Module, rows: Rows, questions: list[int], prefixes: torch.Tensor | None,
                  prefix_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """(P, len(questions)): the cross-entropy of the correct choice of each question, under each of P prefixes
    (token ids (P, L), or one prefix as embeddings (1, L, d) that gradients reach; neither: no prefix)."""
    per_row = row_scores(model, rows, questions, prefixes, prefix_embeds)
    losses = []
    start = 0
    for q in questions:
        count = rows.choices[q]
        scores = per_row[:, start : start + count]  # (P, choices)
        losses.append(-torch.log_softmax(scores, dim=-1)[:, rows.answers[q]])
        start += count
    return torch.stack(losses, dim=1)


def row_scores(model: nn.Module, rows: Rows, questions: list[int], prefixes: torch.Tensor | None,
               prefix_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """(P, rows of `questions`): each choice's summed continuation log-likelihood, as lm-eval scores it."""
    embedding = model.get_input_embeddings()
    selected = [r for r, q in enumerate(rows.question) if q in set(questions)]
    n_prefixes = 1 if prefixes is None else prefixes.shape[0]
    if prefix_embeds is None and prefixes is not None:
        prefix_embeds = embedding(prefixes.to(embedding.weight.device))  # (P, L, d)
    length = 0 if prefix_embeds is None else prefix_embeds.shape[1]
    width = length + max(len(rows.ids[r]) for r in selected)
    device = embedding.weight.device
    ids = torch.zeros(len(selected), width - length, dtype=torch.long)
    mask = torch.zeros(len(selected), width, dtype=torch.long)
    targets, positions, row_of_target = [], [], []
    for i, r in enumerate(selected):
        row = rows.ids[r]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : length + len(row)] = 1
        for t in range(rows.continuation[r], len(row)):
            targets.append(row[t])
            positions.append(length + t - 1)  # the position that predicts token t
            row_of_target.append(i)
    body = embedding(ids.to(device))  # (R, T, d)
    if prefix_embeds is not None:
        prefix_embeds = prefix_embeds.expand(n_prefixes, -1, -1)
        body = torch.cat([prefix_embeds.repeat_interleave(len(selected), dim=0), body.repeat(n_prefixes, 1, 1)], dim=1)
    mask = mask.repeat(n_prefixes, 1).to(device)
    hidden = model.base_model(inputs_embeds=body, attention_mask=mask).last_hidden_state  # (P*R, T, d), normed
    rows_index = torch.tensor(row_of_target, device=device)
    offsets = (torch.arange(n_prefixes, device=device) * len(selected)).repeat_interleave(len(targets))
    picked = hidden[offsets + rows_index.repeat(n_prefixes), torch.tensor(positions, device=device).repeat(n_prefixes)]
    logprobs = torch.log_softmax(model.get_output_embeddings()(picked).float(), dim=-1)  # (P*n_targets, V)
    token_logprobs = logprobs.gather(1, torch.tensor(targets, device=device).repeat(n_prefixes)[:, None])[:, 0]
    per_row = torch.zeros(n_prefixes * len(selected), device=device).index_add(0, offsets + rows_index.repeat(n_prefixes),
                                                                               token_logprobs)
    return per_row.view(n_prefixes, len(selected))


def mean_loss(model: nn.Module, rows: Rows, batch_size: int, prefixes: torch.Tensor | None = None) -> torch.Tensor:
    """(P,): the mean loss over every question under each prefix ((1,) without one), without gradients; about
    `batch_size` rows per forward pass."""
    n_prefixes = 1 if prefixes is None else prefixes.shape[0]
    total = torch.zeros(n_prefixes)
    with torch.no_grad():
        for group in question_batches(rows, batch_size):
            step = max(1, batch_size // sum(rows.choices[q] for q in group))
            for first in range(0, n_prefixes, step):
                chunk = None if prefixes is None else prefixes[first : first + step]
                total[first : first + step] += choice_losses(model, rows, group, chunk).sum(dim=1).float().cpu()
    return total / len(rows.choices)


def backward_mean_loss(model: nn.Module, rows: Rows, batch_size: int, prefix_embeds: torch.Tensor | None = None) -> float:
    """The mean loss over every question, its gradient accumulated (backward per group of questions)."""
    total = 0.0
    for group in question_batches(rows, batch_size):
        loss = choice_losses(model, rows, group, None, prefix_embeds).sum() / len(rows.choices)
        loss.backward()
        total += loss.item()
    return total
