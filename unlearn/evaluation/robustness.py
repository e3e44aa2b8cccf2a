"""Forget-token robustness (RNA paper): retain questions again, with a forget keyword inserted into each.

A model that misdirects every representation near a forget token also wrecks benign questions that merely
mention one; RNA's claim is that it does so less than RMU. The perturbed task is the clean task's own lm-eval
config with one change, a `process_docs` that rewrites the question field, so prompt format, choices, metric
and `limit` (the first N documents) are exactly those of the clean task.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

from unlearn.errors import UnlearnError


def insert_keyword(text: str, keyword: str, *, position: str, insertions: int, rng: random.Random) -> str:
    """`text` with `insertions` copies of `keyword` at its start, its end, or random word boundaries.

    Word boundaries are the single spaces of `text` plus its two ends; other whitespace is kept as it is.
    """
    words = text.split(" ")
    for _ in range(insertions):
        if position == "start":
            words.insert(0, keyword)
        elif position == "end":
            words.append(keyword)
        else:
            words.insert(rng.randint(0, len(words)), keyword)
    return " ".join(words)


def question_rng(seed: int, index: int) -> random.Random:
    """The generator for question `index`: the same positions for every keyword, whatever the document order."""
    return random.Random(f"{seed}:{index}")


def perturbed_task_config(
    clean: dict[str, Any], *, task_name: str, keyword: str, field: str, position: str, insertions: int, seed: int
) -> dict[str, Any]:
    """The lm-eval config of the perturbed copy of a clean task config (few-shot examples stay clean)."""
    original = clean.get("process_docs")
    config = dict(clean, task=task_name, task_alias=task_name)
    config["process_docs"] = _perturb_docs(original, clean["task"], keyword, field, position, insertions, seed)
    config["fewshot_config"] = dict(clean.get("fewshot_config") or {}, process_docs=original)
    return config


def _perturb_docs(
    original: Callable | None, task: str, keyword: str, field: str, position: str, insertions: int, seed: int
) -> Callable:
    def process_docs(dataset):
        if original is not None:
            dataset = original(dataset)
        if field not in dataset.column_names:
            raise UnlearnError(
                f"robustness: task '{task}' has no document field '{field}' to insert keywords into (fields: "
                f"{', '.join(dataset.column_names)}): set eval.robustness.field"
            )

        def perturb(doc: dict, index: int) -> dict:
            rng = question_rng(seed, index)
            return {field: insert_keyword(doc[field], keyword, position=position, insertions=insertions, rng=rng)}

        # An explicit fingerprint, from the column perturbed and the settings: datasets would otherwise try
        # (and fail) to hash this closure.
        tag = json.dumps([list(dataset[field]), keyword, field, position, insertions, seed])
        return dataset.map(perturb, with_indices=True, keep_in_memory=True,
                           new_fingerprint=hashlib.sha256(tag.encode()).hexdigest()[:16])

    return process_docs


def perturbed_task_name(task: str, keyword_index: int) -> str:
    return f"{task}__forget_keyword_{keyword_index}"


def summarize(
    clean: dict[str, dict[str, Any]],
    perturbed: dict[str, dict[str, dict[str, Any]]],
    topics: dict[str, str],
) -> dict[str, Any]:
    """Clean accuracy, perturbed accuracy and drop, overall, per keyword and per task.

    `clean[task]` and `perturbed[task][keyword]` are metric dicts with `acc` and `n`; `topics[keyword]` names the
    keyword's topic. Means over tasks weight each task by its number of documents.
    """
    per_keyword = {}
    for keyword, topic in topics.items():
        accuracy = weighted_mean([(perturbed[task][keyword]["acc"], clean[task]["n"]) for task in clean])
        per_keyword[keyword] = {"topic": topic, "perturbed": accuracy, "drop": None}
    per_task = {}
    for task, metrics in clean.items():
        task_perturbed = sum(perturbed[task][k]["acc"] for k in topics) / len(topics)
        per_task[task] = {
            "n": metrics["n"], "clean": metrics["acc"], "perturbed": task_perturbed,
            "drop": metrics["acc"] - task_perturbed,
            "keywords": {k: perturbed[task][k]["acc"] for k in topics},
        }
    clean_accuracy = weighted_mean([(m["acc"], m["n"]) for m in clean.values()])
    for entry in per_keyword.values():
        entry["drop"] = clean_accuracy - entry["perturbed"]
    perturbed_accuracy = sum(e["perturbed"] for e in per_keyword.values()) / len(per_keyword)
    return {
        "clean": clean_accuracy,
        "perturbed": perturbed_accuracy,
        "drop": clean_accuracy - perturbed_accuracy,
        "keywords": per_keyword,
        "tasks": per_task,
    }


def weighted_mean(pairs: list[tuple[float, int]]) -> float:
    """The mean of `(value, documents)` pairs weighted by their document counts."""
    total = sum(n for _, n in pairs)
    return sum(value * n for value, n in pairs) / total
