"""Sweep bookkeeping: the jobs a sweep will run, each job's run-directory name, which jobs are already done,
what each invocation did with them, and its summary.

A multirun puts every job in `<hydra.sweep.dir>/<name from its overrides>`, e.g.
`multirun/2026-11-22/10-00-00-123456/layer=5,method.steering_coeff=10`. Re-running the same command with the
same `hydra.sweep.dir=` skips every job whose directory holds a completed run of the same resolved config, so
a sweep killed halfway (even by SIGKILL) finishes on the next invocation without redoing finished jobs.

Every invocation of a multirun gets an id; each run's manifest names the invocation that ran it, and every job
Hydra sees end leaves a record under `<sweep dir>/.invocations/<id>/` saying whether it completed, was skipped
or failed. The summary counts that invocation's records, so it needs no clock (nodes of a cluster disagree).

Hydra resolves each job's directory name in the job's own process (a joblib worker, a SLURM node); the
`SweepSummary` callback that `conf/config.yaml` installs is pickled into those processes along with Hydra's
context, so importing this module there registers the name resolver before Hydra needs it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import logging
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException, HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from unlearn import rundir

log = logging.getLogger(__name__)

RUN_NAME_RESOLVER = "unlearn.run_name"
MAX_NAME_LENGTH = 200  # file names are capped at 255 bytes; longer names end in a hash of the full one
UNSAFE = re.compile(r"[^A-Za-z0-9._+@%-]+")  # anything a shell, a file system or a URL could trip over


# ---------------------------------------------------------------------------------------------------------
# Run-directory names


def run_name(overrides: list[str], exclude_keys: list[str]) -> str:
    """`key=value` items of a job's overrides, sorted and joined by commas, without the keys that don't change
    results (a key excludes its sub-keys: `logger` also drops `logger.mode`).

    Values are made safe for a directory name: a path keeps its file name, other characters that a shell or a
    file system could trip over become `+`; whenever that loses information, `~` and a hash of the original
    value follow, so two different jobs never share a directory."""
    items = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if is_excluded(override.key_or_group, exclude_keys):
            continue
        key = UNSAFE.sub("+", override.get_key_element())
        items.append(key if override.is_delete() else f"{key}={_safe_value(override.get_value_element_as_str())}")
    name = ",".join(sorted(items)) or "default"
    if len(name) > MAX_NAME_LENGTH:
        name = f"{name[:MAX_NAME_LENGTH - 9]}~{_short_hash(name)}"
    return name


def is_excluded(key: str, exclude_keys: list[str]) -> bool:
    return any(key == excluded or key.startswith(excluded + ".") for excluded in exclude_keys)


def _safe_value(value: str) -> str:
    readable = value.rstrip("/").rsplit("/", 1)[-1] if "/" in value else value  # a path: its file name
    readable = UNSAFE.sub("+", readable.strip("'\"[]{}")).strip("+") or "+"
    return readable if readable == value else f"{readable}~{_short_hash(value)}"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _run_name_resolver(overrides, exclude_keys) -> str:
    return run_name(list(overrides), list(exclude_keys or []))


OmegaConf.register_new_resolver(RUN_NAME_RESOLVER, _run_name_resolver, replace=True)


# ---------------------------------------------------------------------------------------------------------
# The jobs of a sweep

def planned_jobs(config_loader, master: DictConfig) -> tuple[list[list[str]], list[str]]:
    """Each job's overrides, in the order Hydra's basic sweeper launches them, and the swept keys.

    As the sweeper does: `hydra.sweeper.params` (an experiment preset's) first, then the command line's
    overrides; a key given in both keeps the preset's place and takes the command line's values; every
    combination of the swept values (`a=1,2`, `range(...)`, `choice(...)`, `glob(...)`), the first key varying
    slowest. conf/ configures no other sweeper."""
    params = [f"{key}={value}" for key, value in (master.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=config_loader)
    overrides = parser.parse_overrides([*params, *master.hydra.overrides.task])
    swept = list(dict.fromkeys(o.get_key_element() for o in overrides if o.is_sweep_override()))
    values_by_key: dict[str, list[str]] = {}  # insertion-ordered: a key given again keeps its first place
    for override in overrides:
        values_by_key[override.get_key_element()] = _job_values(override)
    return [list(job) for job in itertools.product(*values_by_key.values())], swept


def _job_values(override: Override) -> list[str]:
    """The `key=value` items one override gives the jobs: one per value of a sweep, else itself."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [f"{key}={override.get_value_element_as_str()}"]
    if not override.is_discrete_sweep():  # interval(...) needs a sweeper that samples (Optuna, Nevergrad)
        raise HydraException(f"BasicSweeper does not support sweep type : {override.value_type.name}")
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


# ---------------------------------------------------------------------------------------------------------
# Resume


def already_completed(cfg: DictConfig, run_dir: Path) -> bool:
    """True when `run_dir` holds a completed run of this exact config (and the sweep was not forced).

    "Exact" compares the resolved config the run wrote (config.yaml) with this job's, leaving out
    `sweep.ignore_keys` (keys that don't change results: this setting itself, the logger, output locations).
    Failed, interrupted and still-"running" runs (a killed job never got to say how it ended) are redone.
    """
    run_dir = Path(run_dir)
    manifest = rundir.read_json(run_dir / rundir.MANIFEST)
    if manifest is None:
        return False
    if manifest.get("status") != "completed":
        log.info(f"Redoing {run_dir}: its previous attempt is {manifest.get('status')}")
        return False
    if cfg.sweep.force:
        log.info(f"Redoing {run_dir}: sweep.force=true")
        return False
    ignore = list(cfg.sweep.ignore_keys)
    previous = _saved_config(run_dir / rundir.CONFIG)
    current = _without(OmegaConf.to_container(cfg, resolve=True), ignore)
    if previous is None:
        log.info(f"Redoing {run_dir}: its config.yaml is missing or unreadable")
        return False
    previous = _without(_read_through_schemas(previous, cfg), ignore)
    if _canonical(previous) != _canonical(current):
        changed = sorted(set(_differences(previous, current)))
        log.info(f"Redoing {run_dir}: its completed run had a different config ({', '.join(changed[:5])})")
        return False
    return True


def _saved_config(path: Path) -> dict | None:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # missing, half-written by an old version, or not YAML: the job is simply redone
        return None


def _read_through_schemas(saved: dict, cfg: DictConfig) -> dict:
    """The saved config as today's schemas read it: a default a schema has gained since the run was written (a
    corpus's `split`, a topic's `reference`) then compares equal, instead of redoing every run of the sweep."""
    read = dict(saved)
    for key in cfg:
        schema = OmegaConf.get_type(cfg, key)
        if dataclasses.is_dataclass(schema) and isinstance(saved.get(key), dict):
            try:
                read[key] = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), saved[key]))
            except OmegaConfBaseException:  # a key today's schema does not have: compared as written
                pass
    return read


def _without(config: dict, dotted_keys: list[str]) -> dict:
    """A copy of `config` without the given (dotted) keys."""
    config = OmegaConf.to_container(OmegaConf.create(config))
    for dotted in dotted_keys:
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def _canonical(config: dict) -> str:
    # YAML text, not dict equality: a NaN in the config then compares equal to itself. Whole numbers as floats:
    # a float-typed key written `5` by an older run and `5.0` by the schema is the same setting.
    return OmegaConf.to_yaml(OmegaConf.create(_ints_as_floats(config)), sort_keys=True)


def _ints_as_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _ints_as_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_ints_as_floats(item) for item in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in set(old) | set(new):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if _canonical({"v": old}) == _canonical({"v": new}) else [prefix.rstrip(".")]


# ---------------------------------------------------------------------------------------------------------
# What a sweep left behind


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """The run directories under `sweep_dir`: those with a manifest, or with Hydra's `.hydra/` record of a job
    that never reached the point of writing one."""
    sweep_dir = Path(sweep_dir)
    found = {path.parent for path in sweep_dir.rglob(rundir.MANIFEST)}
    found |= {path.parent.parent for path in sweep_dir.rglob(".hydra/overrides.yaml")}
    return sorted(path for path in found if "wandb" not in path.relative_to(sweep_dir).parts)


def job_outcomes(sweep_dir: Path, invocation: str) -> dict[str, list[Path]]:
    """The jobs of one invocation of the sweep by outcome: completed (run by it), skipped (completed before),
    failed (anything else).

    Each job that Hydra saw end left a record under `.invocations/<invocation>/`; a job that started but never
    ended (its process was interrupted or killed) left only a manifest naming the invocation, and counts as
    failed. No clock is read: jobs of other invocations, earlier or still running on another node, are told
    apart by the id alone."""
    sweep_dir = Path(sweep_dir)
    outcomes: dict[str, set[Path]] = {"completed": set(), "skipped": set(), "failed": set()}
    for record in (sweep_dir / INVOCATIONS_DIR / invocation).glob("job-*.json"):
        job = rundir.read_json(record) or {}
        if job.get("outcome") in outcomes:
            outcomes[job["outcome"]].add(sweep_dir / job["run"])
    recorded = set().union(*outcomes.values())
    for run_dir in find_run_dirs(sweep_dir):
        manifest = rundir.read_json(run_dir / rundir.MANIFEST) or {}
        if run_dir not in recorded and manifest.get("sweep_invocation") == invocation:
            outcomes["failed"].add(run_dir)
    return {outcome: sorted(runs) for outcome, runs in outcomes.items()}


def record_job(sweep_dir: Path, invocation: str, job_num: int, run_dir: Path, outcome: str) -> None:
    """Write what this invocation did with one job, in a file of its own: jobs on other processes or nodes
    never write the same file, so no lock is needed on a shared file system."""
    folder = Path(sweep_dir) / INVOCATIONS_DIR / invocation
    folder.mkdir(parents=True, exist_ok=True)
    run = os.path.relpath(run_dir, sweep_dir)
    rundir.write_json_atomic(folder / f"job-{job_num}.json", {"run": run, "outcome": outcome})


def summary_line(sweep_dir: Path, outcomes: dict[str, list[Path]]) -> str:
    line = (f"Sweep {sweep_dir}: {len(outcomes['completed'])} completed, {len(outcomes['skipped'])} skipped, "
            f"{len(outcomes['failed'])} failed")
    if outcomes["failed"]:
        line += " (" + ", ".join(str(path.relative_to(sweep_dir)) for path in outcomes["failed"]) + ")"
    return line


COMPLETED, SKIPPED, FAILED = "completed", "skipped", "failed"  # what a job did, as its record says
INVOCATIONS_DIR = ".invocations"  # <sweep dir>/.invocations/<id>/job-<n>.json: what each job of an invocation did
LOCK_FILE = ".sweep.lock"
_held_locks: dict[Path, Any] = {}  # sweep dir -> its open lock file (module state: the callback gets pickled)


def lock_sweep(sweep_dir: Path) -> None:
    """Take an exclusive lock on the sweep directory, so that two invocations never run the same jobs at once.

    The OS drops it when this process ends, however it ends (a SIGKILLed sweep leaves no stale lock). Raises
    SystemExit(2) with one line when another invocation holds it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    handle = open(sweep_dir / LOCK_FILE, "a")  # noqa: SIM115 (kept open: closing it releases the lock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        print(f"error: another `python -m unlearn --multirun` is running in {sweep_dir}: wait for it to end, "
              "or give this sweep its own hydra.sweep.dir=...", file=sys.stderr)
        raise SystemExit(2) from None
    _held_locks[sweep_dir] = handle


def unlock_sweep(sweep_dir: Path) -> None:
    handle = _held_locks.pop(sweep_dir, None)
    if handle is not None:
        handle.close()


class JobFailed(CompactHydraException):
    """A sweep job's failure as Hydra reports it at the end of the sweep: one line, as the job has already printed
    its error (or, for a bug, its traceback) where it happened and recorded it in its manifest."""


def job_invocation() -> str | None:
    """The id of the multirun invocation running the current job (None outside a multirun)."""
    return _current_job["invocation"]


_current_job: dict[str, str | None] = {"invocation": None}  # set in the job's own process by on_job_start
_open_sweeps: dict[Path, str] = {}  # sweep dir -> the id of the invocation that started it and has not ended


def print_summary(sweep_dir: Path, invocation: str) -> None:
    outcomes = job_outcomes(sweep_dir, invocation)
    print(summary_line(sweep_dir, outcomes), flush=True)
    if outcomes["failed"]:
        print(f"{len(outcomes['failed'])} job(s) failed: each one's error is in its manifest.json; rerun the "
              f"same command with hydra.sweep.dir={sweep_dir} to redo only those", file=sys.stderr)


def summarize_unfinished() -> None:
    """Print the summary of a sweep whose on_multirun_end never came: Hydra's sweeper re-raises the first failed
    job (after running the others) and skips it, and so does an interrupt. The exit status stays Hydra's."""
    while _open_sweeps:
        sweep_dir, invocation = _open_sweeps.popitem()
        unlock_sweep(sweep_dir)
        print_summary(sweep_dir, invocation)


class SweepSummary(Callback):
    """Hydra callback: locks the sweep directory, gives this invocation an id and says how to resume it; records
    what each job did under that id; at the end prints the one-line summary of this invocation's jobs.

    The id lives on this object: Hydra pickles its callbacks with its context into every job's process (the
    basic launcher's own, a joblib worker, a SLURM node), so each job sees it however it was launched."""

    def __init__(self) -> None:
        self.invocation: str | None = None  # set for a multirun only; single runs fire the job hooks too

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        lock_sweep(sweep_dir)
        self.invocation = uuid.uuid4().hex
        _open_sweeps[sweep_dir] = self.invocation
        print(f"Sweep directory: {sweep_dir} (to resume it, run the same command with hydra.sweep.dir={sweep_dir})")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _current_job["invocation"] = self.invocation

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.invocation is None:
            return
        # A completed job returns what it did ("completed" or "skipped"); reading a failed one's return_value
        # would re-raise its error.
        outcome = job_return.return_value if job_return.status == JobStatus.COMPLETED else FAILED
        record_job(Path(config.hydra.sweep.dir), self.invocation, config.hydra.job.num,
                   Path(config.hydra.runtime.output_dir), outcome)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        _open_sweeps.pop(sweep_dir, None)
        unlock_sweep(sweep_dir)
        print_summary(sweep_dir, self.invocation)
