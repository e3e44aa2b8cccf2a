"""Run lm-eval on a live model object: no save, no reload, through lm-eval's documented interface only.

The model lm-eval scores with is `SharedContextLM` (unlearn.evaluation.scorer: HFLM's numbers, each distinct
context run once) or, with `scorer="hflm"`, lm-eval's `HFLM` itself. The batch size goes to the model itself. `simple_evaluate(batch_size=...)` only reaches a model that lm-eval
builds from a name; a pre-built `HFLM` keeps its own, which defaults to 1 (several times slower).

`check_interfaces` looks, before any weights load, for each piece of lm-eval's interface used here, so an
lm-eval release that moved one fails with one line naming it and the tested releases, not deep in a traceback.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
from collections.abc import Iterator
from typing import Any

import lm_eval
import numpy as np
import torch
from lm_eval.evaluator import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from torch import nn

from unlearn.errors import UnlearnError
from unlearn.evaluation.scorer import SharedContextLM
from unlearn.schema import Scorer

LM_EVAL_VERSION = lm_eval.__version__
LM_EVAL_TESTED = ("0.4.12", "0.4.13")  # the oldest (pyproject's floor, scripts/check_floors.sh) and newest tried
METRICS = ("acc", "acc_norm")  # acc is the papers' metric; acc_norm kept where the task defines it
SCORERS = {Scorer.shared_context: SharedContextLM, Scorer.hflm: HFLM}  # both take HFLM's arguments


def check_interfaces() -> None:
    """Each part of lm-eval's interface this package calls is there, else one error naming what moved."""
    wanted = {
        "TaskManager(include_path=, include_defaults=)": _accepts(TaskManager, "include_path", "include_defaults"),
        "TaskManager.all_tasks / all_groups / all_tags": all(
            hasattr(TaskManager, name) for name in ("all_tasks", "all_groups", "all_tags")),
        "simple_evaluate(model=, tasks=, task_manager=, num_fewshot=, limit=, log_samples=)": _accepts(
            simple_evaluate, "model", "tasks", "task_manager", "num_fewshot", "limit", "log_samples"),
        "HFLM(pretrained=<model object>, tokenizer=, batch_size=)": _accepts(
            HFLM, "pretrained", "tokenizer", "batch_size"),
        "TaskManager.load": hasattr(TaskManager, "load"),
        "HFLM._loglikelihood_tokens(requests, disable_tqdm=, override_bs=)": _accepts(
            HFLM._loglikelihood_tokens, "requests", "disable_tqdm", "override_bs"),  # what SharedContextLM replaces
    }
    moved = [name for name, present in wanted.items() if not present]
    if moved:
        oldest, newest = LM_EVAL_TESTED
        raise UnlearnError(
            f"lm-eval {LM_EVAL_VERSION} no longer has {'; '.join(moved)}, which unlearn's evaluation calls: "
            f"unlearn is tested with lm-eval {oldest} to {newest}; install one of those, e.g. "
            f"pip install 'lm-eval[hf]=={newest}'"
        )


def _accepts(function, *names: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters for name in names)


def run_tasks(
    model: nn.Module,
    tokenizer,
    tasks: list,
    manager: TaskManager,
    *,
    batch_size: int | str,
    limit: int | float | None,
    num_fewshot: int,
    scorer: Scorer | str,
    log_samples: bool = False,
) -> dict[str, Any]:
    """lm-eval's raw results for task specs: registered names (tasks, groups, tags) and task config dicts,
    scored by `scorer` (a `Scorer` or its name)."""
    with _global_rng_kept(), eval_mode(model), quiet():
        lm = SCORERS[Scorer(scorer)](pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        return simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=manager,  # otherwise it indexes all of lm-eval's tasks again (seconds)
            num_fewshot=num_fewshot,
            limit=limit,
            log_samples=log_samples,  # per-document scores under "samples" (scripts/score_demo_questions.py)
        )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval logs each phase at INFO and warns that it was handed a built model (as intended); datasets draws
    a progress bar per map. Neither helps a user reading the run's output."""
    import datasets

    logger = logging.getLogger("lm_eval")
    level = logger.level
    bars = datasets.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def task_metrics(results: dict[str, Any], name: str) -> dict[str, Any]:
    """`{"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "num_fewshot"}` of one task or group (absent
    metrics left out)."""
    raw = results["results"][name]
    metrics: dict[str, Any] = {}
    for metric in METRICS:
        if f"{metric},none" in raw:
            metrics[metric] = raw[f"{metric},none"]
            stderr = raw.get(f"{metric}_stderr,none")
            metrics[f"{metric}_stderr"] = stderr if isinstance(stderr, float) else None
    metrics["n"] = _documents(results, name)
    shots = results.get("n-shot", {}).get(name)
    if shots is not None:  # the examples lm-eval actually put in each prompt
        metrics["num_fewshot"] = int(shots)
    return metrics


def _documents(results: dict[str, Any], name: str) -> int:
    """Documents scored: a task's own count, a group's the sum over its tasks."""
    if name in results.get("n-samples", {}):
        return int(results["n-samples"][name]["effective"])
    return sum(_documents(results, child) for child in results.get("group_subtasks", {}).get(name, []))


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """simple_evaluate reseeds Python's, NumPy's and torch's global generators (to 0 / 1234 / 1234);
    evaluating before training must not change the training run."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) inside, the caller's mode after (HFLM switches the model to eval and leaves it)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
