"""Sweep bookkeeping: each job's run-directory name, which jobs are already done, and the sweep's summary.

A multirun puts every job in `<hydra.sweep.dir>/<name from its overrides>`, e.g.
`multirun/2026-11-22/10-00-00-123456/layer=5,method.steering_coeff=10`. Re-running the same command with the
same `hydra.sweep.dir=` skips every job whose directory holds a completed run of the same resolved config, so
a sweep killed halfway (even by SIGKILL) finishes on the next invocation without redoing finished jobs.

Hydra resolves each job's directory name in the job's own process (a joblib worker, a SLURM node); the
`SweepSummary` callback that `conf/config.yaml` installs is pickled into those processes along with Hydra's
context, so importing this module there registers the name resolver before Hydra needs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from unlearn import rundir

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
        print(f"Redoing {run_dir}: its previous attempt is {manifest.get('status')}")
        return False
    if cfg.sweep.force:
        print(f"Redoing {run_dir}: sweep.force=true")
        return False
    ignore = list(cfg.sweep.ignore_keys)
    previous = _saved_config(run_dir / rundir.CONFIG)
    current = _without(OmegaConf.to_container(cfg, resolve=True), ignore)
    if previous is None:
        print(f"Redoing {run_dir}: its config.yaml is missing or unreadable")
        return False
    previous = _without(previous, ignore)
    if _canonical(previous) != _canonical(current):
        changed = sorted(set(_differences(previous, current)))
        print(f"Redoing {run_dir}: its completed run had a different config ({', '.join(changed[:5])})")
        return False
    return True


def _saved_config(path: Path) -> dict | None:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # missing, half-written by an old version, or not YAML: the job is simply redone
        return None


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
    # YAML text, not dict equality: a NaN in the config then compares equal to itself.
    return OmegaConf.to_yaml(OmegaConf.create(config), sort_keys=True)


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


def job_outcomes(sweep_dir: Path) -> dict[str, list[Path]]:
    """The jobs of the sweep's latest invocation by outcome: completed (ran now), skipped (completed before),
    failed (anything else, with a failed, interrupted or "running" manifest, or none).

    The latest invocation's jobs are those whose `.hydra/overrides.yaml` (which Hydra rewrites for every job it
    launches) is not older than `multirun.yaml` (which Hydra rewrites before launching any); a completed job
    whose manifest is older than that was skipped. Both times come from the same file system's clock.
    """
    sweep_dir = Path(sweep_dir)
    marker = sweep_dir / "multirun.yaml"
    started = marker.stat().st_mtime_ns if marker.exists() else None
    outcomes: dict[str, list[Path]] = {"completed": [], "skipped": [], "failed": []}
    for run_dir in find_run_dirs(sweep_dir):
        job_record = run_dir / ".hydra" / "overrides.yaml"
        if started is not None and job_record.exists() and job_record.stat().st_mtime_ns < started:
            continue  # a job of an earlier invocation that this one did not ask for
        manifest = rundir.read_json(run_dir / rundir.MANIFEST) or {}
        if manifest.get("status") != "completed":
            outcomes["failed"].append(run_dir)
        elif started is not None and (run_dir / rundir.MANIFEST).stat().st_mtime_ns < started:
            outcomes["skipped"].append(run_dir)
        else:
            outcomes["completed"].append(run_dir)
    return outcomes


def summary_line(sweep_dir: Path, outcomes: dict[str, list[Path]]) -> str:
    line = (f"Sweep {sweep_dir}: {len(outcomes['completed'])} completed, {len(outcomes['skipped'])} skipped, "
            f"{len(outcomes['failed'])} failed")
    if outcomes["failed"]:
        line += " (" + ", ".join(str(path.relative_to(sweep_dir)) for path in outcomes["failed"]) + ")"
    return line


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


class SweepSummary(Callback):
    """Hydra callback: locks the sweep directory and says how to resume it; at the end prints the one-line
    summary and exits non-zero when a job failed (Hydra itself discards the jobs' outcomes and exits 0)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        lock_sweep(Path(sweep_dir))
        print(f"Sweep directory: {sweep_dir} (to resume it, run the same command with hydra.sweep.dir={sweep_dir})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        unlock_sweep(sweep_dir)
        outcomes = job_outcomes(sweep_dir)
        print(summary_line(sweep_dir, outcomes), flush=True)
        if outcomes["failed"]:
            print(f"{len(outcomes['failed'])} job(s) failed: each one's error is in its manifest.json; rerun the "
                  f"same command with hydra.sweep.dir={sweep_dir} to redo only those", file=sys.stderr)
            raise SystemExit(1)
