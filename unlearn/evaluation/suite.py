"""One evaluation of a live model: lm-eval tasks, forget-token robustness, probes at the unlearn layer.

    check_tasks(spec)                      # at start-up, before any weights load
    results = evaluate(model, tokenizer, spec, ...)

The lm-eval part (tasks and robustness) of a base model is the same in every job of a sweep, so with a
`cache_key` it is read from / written to an on-disk cache. So are the base model's probe sums: the cosines with
the control vectors u, which each run draws, are computed from them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lm_eval.tasks import TaskManager
from torch import nn

from unlearn.accuracy import domain_accuracies
from unlearn.corpora import describe, resolve_path
from unlearn.errors import UnlearnError
from unlearn.evaluation import cache, robustness
from unlearn.evaluation.harness import LM_EVAL_VERSION, check_interfaces, eval_mode, quiet, run_tasks, task_metrics
from unlearn.evaluation.probes import probe_statistics, probe_sums
from unlearn.evaluation.tasks import build, check_task_dirs, find_tasks, fingerprint, kind, task_config, task_name
from unlearn.schema import EvalSpec, RobustnessSpec, Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    """The checked task names of a spec, with the lm-eval index that knows them and the tasks each one runs."""

    manager: TaskManager | None  # None when the spec names no task
    leaves: dict[str, list]  # every task/group/tag name of the spec -> the lm-eval Tasks it runs (built)
    clean: tuple[str, ...]  # the names to hand lm-eval for the clean tasks, each task once

    def all_leaves(self) -> list:
        return list({task_name(t): t for tasks in self.leaves.values() for t in tasks}.values())


def check_tasks(spec: EvalSpec) -> None:
    """Fail now, with the fix, on an unknown task name, a bad task directory or data file, a dataset that can't
    be loaded or a missing held-out text file."""
    _plan(spec)
    if spec.probes.enabled:
        _check_probe_file("forget_path", spec.probes.forget_path)
        _check_probe_file("retain_path", spec.probes.retain_path)


def _check_probe_file(key: str, path: str) -> None:
    looks_local = path.startswith("pkg://") or Path(path).suffix in (".jsonl", ".json", ".txt")
    found = resolve_path(path)
    if looks_local and not found.is_file():
        raise UnlearnError(
            f"eval.probes.{key}: found {describe(found)} at {path}, expected a held-out JSONL or .txt file (or "
            "set eval.probes.enabled=false)"
        )


def task_leaves(spec: EvalSpec) -> tuple[dict[str, list], TaskManager | None]:
    """Every task name of the spec -> the lm-eval Tasks it runs (built), and the index that knows them."""
    plan = _plan(spec)
    return plan.leaves, plan.manager


def forget_leaves(spec: EvalSpec) -> list:
    """The lm-eval Tasks the forget tasks run (groups expanded), each once, in order."""
    leaves, _ = task_leaves(spec)
    return list({task_name(task): task for name in spec.forget_tasks for task in leaves[name]}.values())


def _plan(spec: EvalSpec) -> _Plan:
    robustness_tasks = spec.robustness.tasks if spec.robustness.enabled else ()
    names = tuple(dict.fromkeys(spec.tasks + robustness_tasks))
    dirs = check_task_dirs(spec.include_paths)
    if not names:
        return _Plan(manager=None, leaves={}, clean=())
    check_interfaces()
    return _built_plan(names, robustness_tasks, dirs, _files_stamp(dirs))


@functools.lru_cache(maxsize=16)
def _built_plan(names: tuple[str, ...], robustness_tasks: tuple[str, ...], dirs: tuple[Path, ...],
                stamp: tuple) -> _Plan:
    """The tasks built (their datasets loaded) once per process: a sweep's pre-check, each job's plan, its
    evaluations and its attacks share them. `stamp` is the include directories' files by path, size and
    modification time, so a task file or data file edited there is read again."""
    manager = find_tasks(names, dirs)
    with quiet():  # building tasks maps their datasets: one progress bar each
        leaves = {name: build(manager, name) for name in names}
    for name in robustness_tasks:
        if [task_name(t) for t in leaves[name]] != [name]:
            raise UnlearnError(
                f"eval.robustness.tasks: '{name}' is a {kind(name, manager)}; list its YAML tasks instead "
                f"(e.g. {', '.join(task_name(t) for t in leaves[name][:3])})"
            )
    return _Plan(manager=manager, leaves=leaves, clean=_each_task_once(leaves))


def _files_stamp(dirs: tuple[Path, ...]) -> tuple:
    files = sorted(path for folder in dirs for path in folder.rglob("*")
                   if path.is_file() and "__pycache__" not in path.parts)
    stats = [path.stat() for path in files]
    return tuple((str(path), stat.st_size, stat.st_mtime_ns) for path, stat in zip(files, stats))


def _each_task_once(leaves: dict[str, list]) -> tuple[str, ...]:
    """The names to run so that each task runs once, although a group asked for may also hold a task asked for
    (lm-eval refuses a task in two places: `mmlu` already runs `mmlu_virology`)."""
    covered: set[str] = set()
    names = []
    for name in sorted(leaves, key=lambda n: -len(leaves[n])):  # the largest groups first
        tasks = {task_name(task) for task in leaves[name]}
        if tasks <= covered:
            continue
        if tasks & covered:
            raise UnlearnError(
                f"eval task '{name}' shares some but not all of its tasks with another group asked for "
                f"({', '.join(sorted(tasks & covered))}): list the groups' tasks individually"
            )
        covered |= tasks
        names.append(name)
    return tuple(names)


def evaluate(
    model: nn.Module,
    tokenizer,
    spec: EvalSpec,
    *,
    unlearn_layer: int,
    control_vectors: dict[str, torch.Tensor],
    keywords: dict[str, list[str]],
    probe_texts: dict[str, list[str]] | None,
    cache_key: str | dict[str, Any] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """A JSON-serialisable dict: lm_eval_version, settings, domains, tasks, robustness, from_cache, forget_acc and
    retain_acc (`unlearn.accuracy`), probes.

    `keywords` are the forget keywords per topic from the data config (`eval.robustness.keywords` overrides
    them); `probe_texts` maps a text set name ("forget", "retain") to held-out documents, None to skip the
    probes. `cache_key` identifies the model weights (`cache.model_identity`); give it for the base model only,
    with the `cache_dir` its results are kept in.
    """
    results: dict[str, Any] = {
        "lm_eval_version": LM_EVAL_VERSION,
        "settings": {"limit": spec.limit, "num_fewshot": spec.num_fewshot, "batch_size": spec.batch_size},
        "domains": {"forget": list(spec.forget_tasks), "retain": list(spec.retain_tasks)},
    }
    results.update(_lm_eval_part(model, tokenizer, spec, keywords, cache_key, cache_dir))
    results.update(domain_accuracies(results))  # stored, so that readers never recompute them
    results["probes"] = _probes(model, tokenizer, spec, probe_texts, unlearn_layer, control_vectors, cache_key,
                                cache_dir)
    return results


# ---------------------------------------------------------------------------------------------------------
# lm-eval tasks and robustness (cached for the base model)


def _lm_eval_part(model, tokenizer, spec: EvalSpec, keywords, cache_key, cache_dir) -> dict[str, Any]:
    if not spec.tasks and not spec.robustness.enabled:
        return {"tasks": {}, "robustness": None, "from_cache": False}
    plan = _plan(spec)
    keyword_topics = _keyword_topics(spec.robustness, keywords)
    if cache_key is None:
        return {**_run_lm_eval(model, tokenizer, spec, plan, keyword_topics), "from_cache": False}
    key = _cache_key(model, cache_key, spec, plan, keyword_topics)
    path = cache.cache_file(cache_dir, key)
    cached = cache.read(path, key)
    if cached is not None:
        log.info("lm-eval results of the base model read from %s", path)
        return {**cached, "from_cache": True}
    fresh = _run_lm_eval(model, tokenizer, spec, plan, keyword_topics)
    cache.write(path, key, fresh)
    return {**fresh, "from_cache": False}


def _cache_key(model, cache_key, spec: EvalSpec, plan: _Plan, keyword_topics: dict[str, str]) -> dict[str, Any]:
    """What the lm-eval part of an evaluation depends on: the weights (`cache_key`, see cache.model_identity),
    how they run (dtype, device type, batch size and scorer: padding and packing change the sums slightly), the task definitions and
    documents, the settings and the versions of the code that scores them."""
    settings = spec.robustness
    weight = next(model.parameters())
    return {
        "model": cache_key,
        "dtype": str(weight.dtype).removeprefix("torch."),
        "device_type": weight.device.type,
        "batch_size": spec.batch_size,
        "scorer": Scorer(spec.scorer).value,  # the same numbers to float rounding, which can still tip a tie
        "tasks": list(spec.tasks),
        "task_definitions": fingerprint(plan.all_leaves()),
        "limit": spec.limit,
        "num_fewshot": spec.num_fewshot,
        "robustness": {
            "enabled": settings.enabled, "tasks": list(settings.tasks), "position": settings.position,
            "insertions": settings.insertions, "seed": settings.seed, "field": settings.field,
            "keywords": keyword_topics,
        } if settings.enabled else None,
        "versions": cache.versions(),
    }


def _keyword_topics(settings: RobustnessSpec, keywords: dict[str, list[str]]) -> dict[str, str]:
    """keyword -> topic, in order, each keyword once."""
    if not settings.enabled:
        return {}
    per_topic = settings.keywords if settings.keywords is not None else keywords
    topics: dict[str, str] = {}
    for topic, words in (per_topic or {}).items():
        for word in words or ():
            topics.setdefault(word, topic)
    return topics


def _run_lm_eval(model, tokenizer, spec: EvalSpec, plan: _Plan, keyword_topics: dict[str, str]) -> dict:
    specs: list[str | dict[str, Any]] = _fewshot_copies(plan, spec.num_fewshot) if spec.num_fewshot else list(plan.clean)
    perturbed_names = _perturbed_names(spec, keyword_topics)
    settings = spec.robustness
    for task, by_keyword in perturbed_names.items():
        clean = _with_fewshot(task_config(plan.leaves[task][0]), spec.num_fewshot)
        for keyword, name in by_keyword.items():
            specs.append(robustness.perturbed_task_config(
                clean, task_name=name, keyword=keyword, field=settings.field, position=settings.position,
                insertions=settings.insertions, seed=settings.seed,
            ))
    raw = run_tasks(model, tokenizer, specs, plan.manager, batch_size=spec.batch_size, limit=spec.limit,
                    num_fewshot=spec.num_fewshot, scorer=spec.scorer)
    tasks = {reported: task_metrics(raw, reported) for name in spec.tasks for reported in _reported(raw, name, plan)}
    if spec.num_fewshot:  # the copies ran as tasks: a group's accuracy from its tasks', as lm-eval weighs MMLU's
        tasks.update({name: _size_weighted(tasks, plan.leaves[name]) for name in spec.tasks
                      if name in plan.manager.all_groups})
    return {"tasks": tasks, "robustness": _robustness_summary(raw, spec, perturbed_names, keyword_topics)}


def _fewshot_copies(plan: _Plan, num_fewshot: int) -> list[dict[str, Any]]:
    """Each task's own config with `num_fewshot` set. lm-eval leaves a requested num_fewshot unapplied for a
    task whose YAML fixes it (WMDP's and the bundled demo tasks' say 0), so a few-shot evaluation (the fewshot
    attack, eval.num_fewshot) hands lm-eval these copies instead of the names."""
    tasks = {task_name(task): task for name in plan.clean for task in plan.leaves[name]}
    return [_with_fewshot(task_config(task), num_fewshot) for task in tasks.values()]


def _with_fewshot(config: dict[str, Any], num_fewshot: int) -> dict[str, Any]:
    return dict(config, num_fewshot=num_fewshot) if num_fewshot else config


def _size_weighted(tasks: dict[str, dict[str, Any]], leaves: list) -> dict[str, Any]:
    """A group's metrics as the mean of its tasks' weighted by their document counts (stderr not derived)."""
    members = [tasks[task_name(task)] for task in leaves if task_name(task) in tasks]
    total = sum(member["n"] for member in members)
    metrics: dict[str, Any] = {}
    for metric in ("acc", "acc_norm"):
        if total and all(metric in member for member in members):
            metrics[metric] = robustness.weighted_mean([(member[metric], member["n"]) for member in members])
            metrics[f"{metric}_stderr"] = None
    return {**metrics, "n": total}


def _reported(raw: dict[str, Any], name: str, plan: _Plan) -> list[str]:
    """The result entries of a name: its own (task, group) or its tasks' (a tag has no aggregate)."""
    if name in raw["results"]:
        return [name]
    return [task_name(task) for task in plan.leaves[name]]


def _perturbed_names(spec: EvalSpec, keyword_topics: dict[str, str]) -> dict[str, dict[str, str]]:
    """task -> keyword -> the perturbed task's name."""
    if not spec.robustness.enabled or not keyword_topics:
        return {}
    return {
        task: {keyword: robustness.perturbed_task_name(task, i) for i, keyword in enumerate(keyword_topics)}
        for task in spec.robustness.tasks
    }


def _robustness_summary(raw, spec: EvalSpec, perturbed_names, keyword_topics) -> dict[str, Any] | None:
    settings = spec.robustness
    if not settings.enabled:
        return None
    if not keyword_topics:
        message = ("no forget keywords: set them per topic in the data config (data.topics.<topic>.keywords) "
                   "or in eval.robustness.keywords")
        log.warning("robustness skipped: %s", message)
        return {"skipped": message}
    clean = {task: task_metrics(raw, task) for task in settings.tasks}
    perturbed = {
        task: {keyword: task_metrics(raw, name) for keyword, name in by_keyword.items()}
        for task, by_keyword in perturbed_names.items()
    }
    summary = robustness.summarize(clean, perturbed, keyword_topics)
    return {"position": settings.position, "insertions": settings.insertions, "seed": settings.seed, **summary}


# ---------------------------------------------------------------------------------------------------------
# Probes (the base model's sums cached; the cosines with this run's control vectors computed from them)


def _probes(model, tokenizer, spec: EvalSpec, probe_texts, unlearn_layer, control_vectors, cache_key,
            cache_dir) -> dict | None:
    """The probes' statistics; the base model's sums (which serve any control vector) are cached like its lm-eval
    results."""
    if not spec.probes.enabled or not probe_texts:
        return None
    settings = spec.probes
    key = path = None
    if cache_key is not None:
        weight = next(model.parameters())
        key = {"probes_of": cache_key, "dtype": str(weight.dtype).removeprefix("torch."),
               "device_type": weight.device.type, "layer": unlearn_layer, "max_documents": settings.max_documents,
               "max_length": settings.max_length, "batch_size": settings.batch_size,
               "texts": hashlib.sha256(json.dumps(probe_texts, sort_keys=True).encode()).hexdigest(),
               "versions": cache.versions()}
        path = cache.cache_file(cache_dir, key)
    sums = cache.read(path, key) if path is not None else None
    if sums is not None:
        log.info("probe sums of the base model read from %s", path)
    else:
        with eval_mode(model):
            sums = probe_sums(model, tokenizer, probe_texts, unlearn_layer=unlearn_layer,
                              max_documents=settings.max_documents, max_length=settings.max_length,
                              batch_size=settings.batch_size)
        if path is not None:
            cache.write(path, key, sums)
    return probe_statistics(sums, unlearn_layer=unlearn_layer, control_vectors=control_vectors)
