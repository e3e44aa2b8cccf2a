"""Find lm-eval tasks by name (lm-eval's own and those in `eval.include_paths`) and check them before any model work.

Three things lm-eval 0.4.13 does that a user should never have to debug:

- its task index silently skips a YAML file it cannot parse, so a typo in a task file surfaces later as
  "unknown task": here every YAML file of an include directory is parsed up front and a bad one is named;
- a hub dataset that is not cached fails only when the task is built (after the model is loaded), and
  without offline mode after retries: here, in offline mode, every hub dataset is looked up in the local cache
  first (milliseconds) and a missing one is one line saying what to use instead;
- relative `data_files` of a local task resolve against the working directory: here they are resolved against
  the task YAML's directory when the index is built, so a task directory works from anywhere.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
from copy import deepcopy
from pathlib import Path
from typing import Any

import datasets
import lm_eval
import lm_eval.tasks
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
from lm_eval.tasks import TaskManager
from lm_eval.tasks._index import Entry, Kind
from lm_eval.tasks._yaml_loader import load_yaml

from unlearn import corpora, hub
from unlearn.errors import UnlearnError, first_line

LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent  # lm-eval's own task YAMLs
LOCAL_BUILDERS = frozenset(_PACKAGED_DATASETS_MODULES)  # json, csv, parquet, text, ...: files, not hub ids
WHAT_INSTEAD = (
    "run eval=demo (bundled local tasks), point eval.include_paths at a directory of task YAMLs with local "
    "data, or unset HF_DATASETS_OFFLINE and HF_HUB_OFFLINE on a machine with network access to download it once"
)


def resolve_path(path: str) -> Path:
    """An absolute path; `pkg://unlearn/x` is a path inside the installed package."""
    return corpora.resolve_path(path).resolve()


# ---------------------------------------------------------------------------------------------------------
# Include directories


def check_task_dirs(include_paths: tuple[str, ...]) -> tuple[Path, ...]:
    """The include directories as absolute paths, each checked to hold only valid lm-eval task YAMLs."""
    dirs = []
    for path in include_paths:
        folder = resolve_path(path)
        if not folder.is_dir():
            raise UnlearnError(f"eval.include_paths: {path} is not a directory of lm-eval task YAMLs")
        yaml_files = _task_yaml_files(folder)
        if not yaml_files:
            raise UnlearnError(f"eval.include_paths: {folder} holds no task YAML (*.yaml)")
        for yaml_file in yaml_files:
            _check_task_yaml(yaml_file)
        dirs.append(folder)
    return tuple(dirs)


def _task_yaml_files(folder: Path) -> list[Path]:
    # The same files lm-eval indexes: **/*.yaml outside __pycache__ (templates are named *_yaml, not *.yaml)
    return sorted(p for p in folder.glob("**/*.yaml") if "__pycache__" not in p.parts)


def _check_task_yaml(path: Path) -> None:
    try:
        cfg = load_yaml(path, resolve_func=False)
    except Exception as exc:  # yaml syntax, a missing include, not a mapping
        raise UnlearnError(f"task file {path} is not valid lm-eval task YAML: {_one_line(exc)}") from None
    if not any(key in cfg for key in ("task", "group", "class")):
        raise UnlearnError(
            f"task file {path} defines no task: an lm-eval task YAML needs a 'task:' (or 'group:') key"
        )


# ---------------------------------------------------------------------------------------------------------
# The task index


@functools.lru_cache(maxsize=8)
def task_manager(dirs: tuple[Path, ...], with_lm_eval_tasks: bool) -> TaskManager:
    """lm-eval's task index, local data anchored; indexing lm-eval's own ~15k tasks takes seconds, so it is
    built once per process."""
    manager = TaskManager(include_path=list(dirs) or None, include_defaults=with_lm_eval_tasks)
    _anchor_local_data(manager.task_index, dirs)
    return manager


def _anchor_local_data(index: dict[str, Entry], dirs: tuple[Path, ...]) -> None:
    """Give each task of the include directories whose data paths are relative an entry holding its full
    config, those paths made absolute.

    lm-eval builds a task from its entry's config when the entry has no YAML path, whether the task is named
    alone, in a group or through a tag, so every way of asking for it reads the files beside its YAML.
    """
    for name, entry in list(index.items()):
        if (entry.kind == Kind.TASK and entry.yaml_path is not None
                and any(Path(entry.yaml_path).is_relative_to(d) for d in dirs) and _has_relative_data(entry)):
            index[name] = Entry(name=name, kind=Kind.TASK, yaml_path=None, cfg=_full_config(entry), tags=entry.tags)


def find_tasks(names: tuple[str, ...], dirs: tuple[Path, ...], *, quick: bool = False) -> TaskManager:
    """A task index that knows every name in `names`: the include directories alone when they suffice.

    `quick` (for start-up checks) first tries an index of only those lm-eval directories holding a YAML named
    after a name (`wmdp_bio.yaml`, `_mmlu.yaml`): milliseconds instead of seconds. Evaluation always uses the
    full index, so a group's members are never taken from a partial one.
    """
    if dirs:
        local = task_manager(dirs, with_lm_eval_tasks=False)
        if _knows(local, names):
            return local
    if quick:
        partial = task_manager(_lm_eval_dirs_named(names) + dirs, with_lm_eval_tasks=False)
        if _knows(partial, names):
            return partial
    manager = task_manager(dirs, with_lm_eval_tasks=True)
    for name in names:
        if name not in manager.task_index:
            raise UnlearnError(_unknown_task_message(name, manager, dirs))
    return manager


def _knows(manager: TaskManager, names: tuple[str, ...]) -> bool:
    return all(name in manager.task_index and _members_known(name, manager.task_index) for name in names)


def _members_known(name: str, index: dict[str, Entry]) -> bool:
    entry = index[name]
    if entry.kind != Kind.GROUP:
        return True
    members = (entry.cfg or {}).get("task", [])
    for member in members if isinstance(members, list) else [members]:
        if isinstance(member, str) and not (member in index and _members_known(member, index)):
            return False
    return True


def _lm_eval_dirs_named(names: tuple[str, ...]) -> tuple[Path, ...]:
    wanted = {f"{name}.yaml" for name in names} | {f"_{name}.yaml" for name in names}
    found = {Path(folder) for folder, _, files in os.walk(LM_EVAL_TASKS) if wanted.intersection(files)}
    return tuple(sorted(found))


def _unknown_task_message(name: str, manager: TaskManager, dirs: tuple[Path, ...]) -> str:
    close = difflib.get_close_matches(name, manager.all_tasks, n=4, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    where = f"lm-eval {lm_eval.__version__}" + (f" and {', '.join(str(d) for d in dirs)}" if dirs else "")
    return (
        f"unknown lm-eval task '{name}'{hint}: tasks come from {where}; list them with `lm-eval ls tasks`, "
        "or add a directory of task YAMLs with eval.include_paths=[...]"
    )


def leaf_entries(name: str, index: dict[str, Entry]) -> list[Entry]:
    """The index entries of the tasks that `name` (a task, group or tag) runs, in order."""
    entry = index[name]
    if entry.kind in (Kind.TASK, Kind.PY_TASK):
        return [entry]
    if entry.kind == Kind.TAG:
        return [index[task] for task in sorted(entry.tags) if task in index]
    members = (entry.cfg or {}).get("task", [])
    leaves: list[Entry] = []
    for member in members if isinstance(members, list) else [members]:
        member_name = member if isinstance(member, str) else member.get("task") or member.get("group")
        if isinstance(member_name, str) and member_name in index:  # inline task definitions have no entry
            leaves += leaf_entries(member_name, index)
    return list({leaf.name: leaf for leaf in leaves}.values())


# ---------------------------------------------------------------------------------------------------------
# Datasets


def check_datasets(leaves: dict[str, list[Entry]]) -> None:
    """For each asked-for name's tasks: local data files exist; in offline mode, hub datasets are cached."""
    checked_hub: set[str] = set()
    for asked, entries in leaves.items():
        for entry in entries:
            label = f"'{asked}'" if entry.name == asked else f"'{asked}' (its task {entry.name})"
            cfg = entry.cfg or {}
            path = cfg.get("dataset_path")
            if not isinstance(path, str) or "custom_dataset" in cfg:
                continue
            if path in LOCAL_BUILDERS:
                _check_data_files(label, entry)
            elif _is_hub_id(path, entry) and path not in checked_hub:
                # One configuration per dataset is enough to tell "never downloaded" (MMLU has 57 of them).
                checked_hub.add(path)
                if datasets.config.HF_HUB_OFFLINE:
                    _check_cached(label, path, cfg.get("dataset_name"))
                elif not hub.reachable():  # fail now, not after the datasets client's retries
                    raise UnlearnError(
                        f"lm-eval task {label} needs the hub dataset {path} and the Hugging Face hub is "
                        f"unreachable (set HF_DATASETS_OFFLINE=1 to read your local cache): {WHAT_INSTEAD}"
                    )


def _check_data_files(label: str, entry: Entry) -> None:
    for data_file in _data_files(entry.cfg or {}, _yaml_dir(entry)):
        if "*" not in data_file and not Path(data_file).exists():
            raise UnlearnError(
                f"lm-eval task {label} reads {data_file}, which does not exist: create "
                "it, or fix dataset_kwargs.data_files (relative paths start at the YAML's directory)"
            )


def _check_cached(label: str, path: str, name: str | None) -> None:
    try:
        datasets.load_dataset_builder(path, name)
    except Exception:  # ConnectionError(OfflineModeIsEnabled), DatasetNotFoundError, ...
        config = f", configuration {name}" if name else ""
        raise UnlearnError(
            f"lm-eval task {label} needs the hub dataset {path}{config}, which is not in the local cache and "
            f"offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE): {WHAT_INSTEAD}"
        ) from None


def unreachable_message(task: str, exc: Exception) -> str:
    """For a dataset that failed while lm-eval built the task (when `check_datasets` could not tell)."""
    return f"lm-eval task '{task}' could not load its dataset ({first_line(exc)}): {WHAT_INSTEAD}"


def _is_hub_id(path: str, entry: Entry) -> bool:
    return not (Path(path).expanduser().exists() or (_yaml_dir(entry) / path).exists())


def _yaml_dir(entry: Entry) -> Path:
    return Path(entry.yaml_path).parent if entry.yaml_path else Path.cwd()


def _data_files(cfg: dict[str, Any], base: Path) -> list[str]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return []
    return [str(_resolved(name, base)) for name in _flatten(files)]


def _flatten(files: Any) -> list[str]:
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [name for value in files.values() for name in _flatten(value)]
    return [name for value in files for name in _flatten(value)]


def _resolved(name: str, base: Path) -> str:
    if "://" in name or Path(name).expanduser().is_absolute():
        return name
    return str((base / name).resolve())


def _resolve_data_files(files: Any, base: Path) -> Any:
    if isinstance(files, str):
        return _resolved(files, base)
    if isinstance(files, dict):
        return {split: _resolve_data_files(value, base) for split, value in files.items()}
    return [_resolve_data_files(value, base) for value in files]


# ---------------------------------------------------------------------------------------------------------
# Task configs


def task_config(entry: Entry) -> dict[str, Any]:
    """The full config of a YAML task (includes merged, `!function`s imported, local paths absolute): what a
    derived task (robustness) starts from, so it is scored exactly like the clean one."""
    if entry.kind != Kind.TASK:
        raise UnlearnError(f"'{entry.name}' is not a YAML task (it is a {entry.kind.name.lower()})")
    return deepcopy(entry.cfg) if entry.yaml_path is None else _full_config(entry)


def _full_config(entry: Entry) -> dict[str, Any]:
    try:
        cfg = deepcopy(load_yaml(entry.yaml_path, resolve_func=True))
    except Exception as exc:  # a `!function` that does not import
        raise UnlearnError(f"task file {entry.yaml_path} failed to load: {first_line(exc)}") from None
    for key in ("group", "tag"):  # membership keys, not task settings
        cfg.pop(key, None)
    base = Path(entry.yaml_path).parent
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if kwargs.get("data_files") is not None:
        kwargs["data_files"] = _resolve_data_files(kwargs["data_files"], base)
        cfg["dataset_kwargs"] = kwargs
    path = cfg.get("dataset_path")
    if _is_relative_dir(path, base):
        cfg["dataset_path"] = str((base / path).resolve())
    return cfg


def _has_relative_data(entry: Entry) -> bool:
    cfg, base = entry.cfg or {}, Path(entry.yaml_path).parent
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    relative_files = files is not None and any(_resolved(name, base) != name for name in _flatten(files))
    return relative_files or _is_relative_dir(cfg.get("dataset_path"), base)


def _is_relative_dir(path: Any, base: Path) -> bool:
    return (isinstance(path, str) and path.strip() != "" and path not in LOCAL_BUILDERS
            and not Path(path).is_absolute() and (base / path).is_dir())


def fingerprint(entries: list[Entry]) -> str:
    """A digest of the task definitions and their local data, for the cache key: edit either, miss the cache."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.name):
        digest.update(json.dumps(entry.cfg, sort_keys=True, default=_stable_repr).encode())
        cfg = entry.cfg or {}
        if cfg.get("dataset_path") in LOCAL_BUILDERS:
            for data_file in _data_files(cfg, _yaml_dir(entry)):
                if Path(data_file).is_file():
                    digest.update(hashlib.sha256(Path(data_file).read_bytes()).digest())
    return digest.hexdigest()


def _stable_repr(value: Any) -> str:
    # functions by name, not by their address in this process
    return getattr(value, "__qualname__", type(value).__name__)


def build(manager: TaskManager, spec: str | dict[str, Any]) -> list:
    """lm-eval Task / Group objects for one spec (a registered name, or a task config dict); this is where
    lm-eval loads the dataset."""
    name = spec if isinstance(spec, str) else spec["task"]
    try:
        loaded = manager.load([spec])
    except OSError as exc:  # ConnectionError, FileNotFoundError, DatasetNotFoundError
        raise UnlearnError(unreachable_message(name, exc)) from None
    if name in loaded["groups"]:
        return [loaded["groups"][name]]
    return list(loaded["tasks"].values())


def _one_line(exc: Exception) -> str:
    """A YAML error spreads over several lines (what, where, why): join them."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text[:300] or type(exc).__name__
