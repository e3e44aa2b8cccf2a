"""The forget questions the optimised attacks are fitted on, and the held-out ones they are scored on.

An attack fitted with the gold answers as its target "recovers" accuracy even on a model that never knew
anything (the label leaks), so `prefix` and `latent` are fitted on a seeded **train split** of the forget tasks'
questions and scored, through lm-eval, on the **held-out** rest only (REFERENCE, "Optimised attacks").

    questions = forget_questions(spec)                 # at start-up: lm-eval's own contexts and choices
    split = split_questions(questions, settings)       # seeded; refuses a split too large or too small
    scores = score_heldout(model, tokenizer, spec, split, description=prefix_text)

The held-out evaluation hands lm-eval a copy of each forget task's own config (as the robustness and few-shot
copies do) with one `process_docs` added that keeps the held-out questions, and, for the prefix, the prefix as
the task's `description` (lm-eval puts it before everything else in each prompt). The retain tasks run in full.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from unlearn.errors import UnlearnError
from unlearn.evaluation.harness import run_tasks, task_metrics
from unlearn.evaluation.robustness import weighted_mean
from unlearn.evaluation.tasks import task_config, task_name
from unlearn.schema import EvalSpec, SplitSpec

HELDOUT_SUFFIX = "__heldout"
RETAIN_SUFFIX = "__attacked"


@dataclass(frozen=True)
class Question:
    """One multiple-choice question as lm-eval scores it: each continuation's log-likelihood after the context."""

    task: str  # the lm-eval task (a leaf, never a group)
    index: int  # its position among the task's evaluation documents
    context: str  # lm-eval's 0-shot prompt
    continuations: tuple[str, ...]  # target delimiter + choice, one per choice
    answer: int  # index of the correct choice


@dataclass(frozen=True)
class Split:
    train: list[Question]  # what the attacks are fitted on
    heldout: dict[str, list[int]]  # leaf task -> held-out document indices (what they are scored on)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train_questions": len(self.train),
                "heldout_questions": sum(len(indices) for indices in self.heldout.values())}


def forget_questions(spec: EvalSpec) -> list[Question]:
    """Every question of the forget tasks (groups expanded), read through lm-eval's built tasks; refuses a task
    whose choices the attacks cannot read, naming it and why."""
    from unlearn.evaluation.suite import forget_leaves

    questions = []
    for task in forget_leaves(spec):
        name = task_name(task)
        why = _unreadable(task)
        if why:
            raise UnlearnError(
                f"eval.attacks prefix/latent: cannot read the choices of forget task '{name}': {why}; the optimised "
                "attacks fit the cross-entropy of the correct choice among a multiple-choice question's choices: "
                "leave them out of eval.attacks or use multiple-choice forget tasks"
            )
        delimiter = task.config.target_delimiter
        for index, doc in enumerate(task.eval_docs):
            choices = task.doc_to_choice(doc)
            target = task.doc_to_target(doc)
            answer = choices.index(target) if isinstance(target, str) else int(target)
            questions.append(Question(task=name, index=index, context=task.fewshot_context(doc, num_fewshot=0),
                                      continuations=tuple(f"{delimiter}{choice}" for choice in choices), answer=answer))
    return questions


def _unreadable(task) -> str | None:
    if task.config.output_type != "multiple_choice":
        return f"its output_type is {task.config.output_type}, not multiple_choice"
    if getattr(task, "multiple_input", False):
        return "it scores several contexts against one continuation (multiple_input), not choices after one context"
    return None


def split_questions(questions: list[Question], settings: SplitSpec) -> Split:
    """`settings.train_questions` questions drawn with `settings.seed` for the fit; the rest held out."""
    total = len(questions)
    if settings.train_questions >= total:
        raise UnlearnError(
            f"eval.attack.split.train_questions={settings.train_questions} leaves no held-out question: the forget "
            f"tasks have {total} questions; use at most {total - 1} (at least 2)"
        )
    order = list(range(total))
    random.Random(settings.seed).shuffle(order)
    train = sorted(order[: settings.train_questions])
    heldout: dict[str, list[int]] = {}
    chosen = set(train)
    for position, question in enumerate(questions):
        heldout.setdefault(question.task, [])
        if position not in chosen:
            heldout[question.task].append(question.index)
    return Split(train=[questions[i] for i in train], heldout=heldout)


def score_heldout(model: nn.Module, tokenizer, spec: EvalSpec, split: Split, *, description: str | None = None,
                  retain: bool = True) -> dict[str, Any]:
    """lm-eval on the held-out forget questions (and, with `retain`, every retain question), with `description`
    before each prompt: `{"tasks", "forget_acc", "retain_acc"}`; accuracies as elsewhere (unweighted over
    eval.forget_tasks / eval.retain_tasks, a group's from its tasks weighted by their questions)."""
    from unlearn.evaluation.suite import task_leaves

    plan_leaves, manager = task_leaves(spec)
    configs = []
    for name in spec.forget_tasks:
        for task in plan_leaves[name]:
            configs.append(_copy(task, HELDOUT_SUFFIX, spec.num_fewshot, description, _keep(split.heldout[task_name(task)])))
    retain_names = spec.retain_tasks if retain else ()
    for name in retain_names:
        for task in plan_leaves[name]:
            configs.append(_copy(task, RETAIN_SUFFIX, spec.num_fewshot, description, None))
    raw = run_tasks(model, tokenizer, configs, manager, batch_size=spec.batch_size, limit=spec.limit,
                    num_fewshot=spec.num_fewshot, scorer=spec.scorer)
    tasks: dict[str, Any] = {}
    for names, suffix in ((spec.forget_tasks, HELDOUT_SUFFIX), (retain_names, RETAIN_SUFFIX)):
        for name in names:
            members = [task_metrics(raw, task_name(task) + suffix) for task in plan_leaves[name]]
            tasks[name + suffix] = {"acc": weighted_mean([(m["acc"], m["n"]) for m in members]),
                                    "n": sum(m["n"] for m in members)}
    forget = [tasks[name + HELDOUT_SUFFIX]["acc"] for name in spec.forget_tasks]
    kept = [tasks[name + RETAIN_SUFFIX]["acc"] for name in retain_names]
    return {"tasks": tasks, "forget_acc": sum(forget) / len(forget),
            "retain_acc": sum(kept) / len(kept) if kept else None}


def _copy(task, suffix: str, num_fewshot: int, description: str | None, keep: Callable | None) -> dict[str, Any]:
    config = task_config(task)
    name = task_name(task) + suffix
    config.update(task=name, task_alias=name)
    if num_fewshot:
        config["num_fewshot"] = num_fewshot
    if description is not None:  # raw: the prefix is text, never a template
        config["description"] = "{% raw %}" + description + "{% endraw %}" + (config.get("description") or "")
    if keep is not None:
        original = config.get("process_docs")
        config["process_docs"] = (lambda dataset: keep(original(dataset))) if original else keep
        config["fewshot_config"] = dict(config.get("fewshot_config") or {}, process_docs=original)
    return config


def _keep(indices: list[int]) -> Callable:
    return lambda dataset: dataset.select(indices, keep_in_memory=True)
