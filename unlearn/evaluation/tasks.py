"""Find and build lm-eval tasks through lm-eval's documented interface, and check task files before any model work.

lm-eval is asked only through `TaskManager(include_path=..., include_defaults=...)`, its `all_*` name lists, and
building tasks by name (`TaskManager.load`); a built task's own
config (`task.config.to_dict`) is what the robustness tasks start from. Two things are checked here because
lm-eval would not say them clearly:

- its task index silently skips a YAML file it cannot parse, so a typo in a task file surfaces later as
  "unknown task": every YAML file of an include directory is parsed up front and a bad one is named;
- a missing, misplaced or wrong kind of local data file fails deep inside `datasets`: each `data_files` entry
  of a local task is looked at first (relative entries are read from the working directory, as lm-eval and
  `datasets` read them; the bundled demo tasks use `custom_dataset` to read the files beside their YAML).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import lm_eval
import yaml
from lm_eval.tasks import TaskManager

from unlearn import corpora
from unlearn.corpora import describe
from unlearn.errors import UnlearnError, first_line, one_line

LOCAL_BUILDERS = {"json": (".json", ".jsonl"), "csv": (".csv",), "parquet": (".parquet",), "text": (),
                  "arrow": (".arrow",)}  # datasets' file builders, with the file kinds each reads
WHAT_INSTEAD = (
    "run eval=demo (bundled local tasks), point eval.include_paths at a directory of task YAMLs with local "
    "data, or unset HF_DATASETS_OFFLINE and HF_HUB_OFFLINE on a machine with network access to download it once"
)


# ---------------------------------------------------------------------------------------------------------
# Include directories and their task files


def check_task_dirs(include_paths: tuple[str, ...]) -> tuple[Path, ...]:
    """The include directories as absolute paths, each checked to hold only valid lm-eval task YAMLs whose local
    data files are there."""
    dirs = []
    for given in include_paths:
        folder = corpora.resolve_path(given).resolve()  # absolute: lm-eval resolves include paths itself
        if not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK):
            raise UnlearnError(f"eval.include_paths: found {describe(folder)} at {given}, expected a directory "
                               "of lm-eval task YAML files (*.yaml)")
        yaml_files = sorted(p for p in folder.glob("**/*.yaml") if "__pycache__" not in p.parts)
        if not yaml_files:
            raise UnlearnError(f"eval.include_paths: {folder} holds no task YAML (*.yaml): expected a directory "
                               "of lm-eval task YAML files")
        for yaml_file in yaml_files:
            _check_data_files(yaml_file, _task_yaml(yaml_file))
        dirs.append(folder)
    return tuple(dirs)


class _Loader(yaml.SafeLoader):
    """YAML as lm-eval writes it; `!function x.y` stays a string (only checked here, never imported)."""


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _task_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A task YAML with its `include:` chain merged in (the including file wins), as lm-eval merges it."""
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UnlearnError(f"task file {path} is not valid lm-eval task YAML: {one_line(exc)[:300]}") from None
    if not isinstance(cfg, dict):
        raise UnlearnError(f"task file {path} is not valid lm-eval task YAML: it holds a "
                           f"{type(cfg).__name__}, expected a mapping of task settings")
    if not seen and not any(key in cfg for key in ("task", "group", "tag", "class")):
        raise UnlearnError(f"task file {path} defines no task: an lm-eval task YAML needs a 'task:' (or 'group:') key")
    include = cfg.pop("include", None)
    if isinstance(include, str):
        included = (path.parent / include).resolve()
        if not included.is_file() or included in seen:
            raise UnlearnError(f"task file {path} includes {include}: found {describe(included)}, expected a "
                               "task YAML file (relative paths start at the including file's directory)")
        cfg = {**_task_yaml(included, (*seen, path)), **cfg}
    return cfg


def _check_data_files(path: Path, cfg: dict[str, Any]) -> None:
    builder = cfg.get("dataset_path")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if builder not in LOCAL_BUILDERS or files is None or "custom_dataset" in cfg:
        return
    for name in _flatten(files):
        if "*" in name or "://" in name:
            continue
        data_file = Path(name).expanduser()
        found = Path.cwd() / data_file if not data_file.is_absolute() else data_file
        where = "" if data_file.is_absolute() else f" (relative paths are read from the working directory {Path.cwd()}, as lm-eval reads them)"
        kinds = LOCAL_BUILDERS[builder]
        if not found.is_file() or not os.access(found, os.R_OK):
            raise UnlearnError(f"task file {path} reads {name}{where}: found {describe(found)}, expected a "
                               f"{' or '.join(kinds) or 'text'} file: fix dataset_kwargs.data_files (an absolute "
                               "path works from anywhere)")
        if kinds and not any(found.name.endswith(kind) or found.name.endswith(kind + ".gz") for kind in kinds):
            raise UnlearnError(f"task file {path} reads {name} with dataset_path: {builder}: found "
                               f"{describe(found)}, expected a {' or '.join(kinds)} file (or set dataset_path to "
                               "the builder of its format: json, csv, parquet, text)")


def _flatten(files: Any) -> list[str]:
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [name for value in files.values() for name in _flatten(value)]
    return [name for value in files for name in _flatten(value)]


# ---------------------------------------------------------------------------------------------------------
# Names and built tasks


@functools.lru_cache(maxsize=8)
def task_manager(dirs: tuple[Path, ...], with_lm_eval_tasks: bool) -> TaskManager:
    """lm-eval's task index; indexing lm-eval's own ~15k tasks takes seconds, so it is built once per process."""
    return TaskManager(include_path=[str(d) for d in dirs] or None, include_defaults=with_lm_eval_tasks)


def find_tasks(names: tuple[str, ...], dirs: tuple[Path, ...]) -> TaskManager:
    """A task index that knows every name in `names`: the include directories alone when they suffice."""
    if dirs:
        local = task_manager(dirs, with_lm_eval_tasks=False)
        if set(names) <= set(local.all_tasks):
            return local
    manager = task_manager(dirs, with_lm_eval_tasks=True)
    for name in names:
        if name not in manager.all_tasks:
            raise UnlearnError(_unknown_task_message(name, manager, dirs))
    return manager


def _unknown_task_message(name: str, manager: TaskManager, dirs: tuple[Path, ...]) -> str:
    close = difflib.get_close_matches(name, manager.all_tasks, n=4, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    where = f"lm-eval {lm_eval.__version__}" + (f" and {', '.join(str(d) for d in dirs)}" if dirs else "")
    return (
        f"unknown lm-eval task '{name}'{hint}: tasks come from {where}; list them with `lm-eval ls tasks`, "
        "or add a directory of task YAMLs with eval.include_paths=[...]"
    )


def kind(name: str, manager: TaskManager) -> str:
    return "group" if name in manager.all_groups else "tag" if name in manager.all_tags else "task"


def build(manager: TaskManager, name: str) -> list:
    """The lm-eval Task objects that `name` (a task, group or tag) runs, in order; this loads their datasets."""
    try:
        return list(manager.load([name])["tasks"].values())
    except Exception as exc:  # ConnectionError, FileNotFoundError, DatasetNotFoundError, a !function that fails
        raise UnlearnError(f"lm-eval task '{name}' could not load its dataset ({first_line(exc)}): "
                           f"{WHAT_INSTEAD}") from None


def task_name(task) -> str:
    return task.config.task


def task_config(task) -> dict[str, Any]:
    """A built task's full config (includes merged, `!function`s imported), as lm-eval's own TaskConfig holds it:
    what a derived task (robustness) starts from, so it is scored exactly like the clean one."""
    cfg = task.config.to_dict(keep_callable=True)
    for key in ("group", "tag", "group_alias"):  # membership keys, not task settings
        cfg.pop(key, None)
    return cfg


def fingerprint(tasks: list) -> str:
    """A digest of the tasks' definitions and of the documents they score: edit a task file or its data, miss
    the cache. Where the task file lies is left out (lm-eval records it as `metadata.config_source`), so another
    checkout or install of the same tasks reads the same cache."""
    digest = hashlib.sha256()
    for task in sorted(tasks, key=task_name):
        definition = task.config.to_dict(keep_callable=False)
        (definition.get("metadata") or {}).pop("config_source", None)
        digest.update(json.dumps(definition, sort_keys=True, default=str).encode())
        for doc in task.eval_docs:
            digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
    return digest.hexdigest()
