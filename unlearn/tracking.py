"""Experiment tracking beyond the run directory: Weights & Biases, or nothing (`logger=none`).

`logger=wandb` logs the resolved config, every step's losses and step time (and the adaptive coefficient), and
results.json flattened into `eval/...` (the attacks' under `eval/attacks/...`) and `training/...` summary keys. The W&B files go inside the run
directory (`<run dir>/wandb/`). `logger.mode=auto` leaves the choice to W&B's own settings and credential lookup:
online when W&B finds credentials, else offline, and `wandb sync` uploads the run later.
A multirun is one W&B group. The API key stays where W&B keeps it (WANDB_API_KEY or ~/.netrc): it never enters
the config, the manifest or the logged config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unlearn.errors import UnlearnError
from unlearn.methods import variant


log = logging.getLogger(__name__)


class NullTracker:
    """`logger=none` (or `logger.mode=disabled`): the run directory's files are the whole record."""

    def log_step(self, record: dict) -> None:
        pass

    def log_results(self, results: dict) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


class WandbTracker:
    """One W&B run per job. Tracking problems are reported and never fail the run: its files are the record."""

    def __init__(self, run):
        self.run = run

    def log_step(self, record: dict) -> None:
        self.run.log(step_metrics(record), step=record["step"])

    def log_results(self, results: dict) -> None:
        self.run.summary.update(flatten_results(results))

    def finish(self, status: str) -> None:
        try:
            self.run.summary["status"] = status
            self.run.finish(exit_code=0 if status == "completed" else 1)
        except Exception as exc:  # the pipeline calls this in a finally: never hide the run's own error
            log.warning(f"warning: W&B could not close the run cleanly ({type(exc).__name__}: {exc})")


def check_logger(cfg: DictConfig) -> None:
    """Reject a bad logger setting at start-up, with the fix."""
    name = cfg.logger.name
    if name not in ("none", "wandb"):
        raise UnlearnError(f"logger={name!r} is not a logger: use logger=wandb or logger=none")


def start_tracker(cfg: DictConfig, run_dir: Path, multirun: bool):
    """The tracker `cfg.logger` asks for, started for this run."""
    check_logger(cfg)
    if cfg.logger.name == "none":
        return NullTracker()
    mode, hint = wandb_mode(cfg.logger.mode)
    if mode == "disabled":
        return NullTracker()
    run_dir = Path(run_dir)
    return start_wandb(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or (sweep_group(_sweep_dir(run_dir)) if multirun else None),
        name=_run_name(run_dir),
        tags=[*method_tags(cfg.method), str(cfg.model.name), f"layer={cfg.layer}", *cfg.logger.tags],
        config=OmegaConf.to_container(cfg, resolve=True),
        run_dir=run_dir,
        mode=mode,
        hint=hint,
    )


def method_tags(method: DictConfig) -> list[str]:
    """The method's name, and what tells its runs apart (RNA's base, a PO method's retain term) as the report
    names them: `rna`, `rna/rmu`; `npo`, `npo+kl`."""
    name = str(method.name)
    label = variant(name, method.get("base"), method.get("retain_loss"))
    return [name] if label == name else [name, label]


def start_wandb(*, project: str, entity: str | None, group: str | None, name: str | None, tags: list[str],
                config: dict, run_dir: Path, mode: str, hint: str | None):
    """A started WandbTracker; offline if online fails to start; a NullTracker if W&B cannot start at all."""
    import wandb

    def init(init_mode: str):
        return wandb.init(project=project, entity=entity, group=group, name=name, tags=tags, config=config,
                          dir=str(run_dir), mode=init_mode, job_type="unlearn", reinit="finish_previous",
                          settings=wandb.Settings(silent=True))  # our one-line hint says where it went

    try:
        run = init(mode)
    except Exception as exc:
        if mode != "online":
            log.warning(f"warning: W&B did not start ({type(exc).__name__}: {exc}); the run directory is the record")
            return NullTracker()
        log.warning(f"warning: W&B online did not start ({type(exc).__name__}: {exc}); logging offline instead")
        mode, hint = "offline", "W&B logging offline"
        try:
            run = init(mode)
        except Exception as retry_exc:
            log.warning(f"warning: W&B did not start ({type(retry_exc).__name__}); the run directory is the record")
            return NullTracker()
    if mode == "offline":
        log.info(f"{hint}: upload later with `wandb sync {run.settings.sync_dir}`")
    return WandbTracker(run)


def wandb_mode(requested: str) -> tuple[str, str | None]:
    """The W&B mode to use and, when it is offline, why.

    `online`, `offline` and `disabled` are W&B's own modes, used as they are. `auto` asks W&B: its `mode` setting
    (WANDB_MODE, or W&B's settings files) when that says offline or disabled; otherwise online when W&B finds
    credentials for its host (WANDB_API_KEY, the netrc entry `wandb login` writes, W&B's settings), offline
    without. Finding them prompts for nothing and contacts no server."""
    if requested != "auto":
        return requested, "W&B logging offline (logger.mode=offline)" if requested == "offline" else None
    import wandb

    try:
        settings = wandb.setup(wandb.Settings(silent=True)).settings  # silent: no login banner, no username query
        if settings.mode == "disabled":
            return "disabled", None
        if settings.mode in ("offline", "dryrun"):
            return "offline", f"W&B logging offline (W&B's mode setting, e.g. WANDB_MODE={settings.mode})"
        if wandb.login(verify=False, prompt=False):
            return "online", None
    except Exception as exc:  # unreadable W&B settings or credentials: tracking never fails the run
        return "offline", f"W&B could not read its settings ({type(exc).__name__}: {exc}), logging offline"
    return "offline", (f"W&B: no credentials for {settings.base_url} (set WANDB_API_KEY or run `wandb login`), "
                       "logging offline")


def _sweep_dir(run_dir: Path) -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir) if HydraConfig.initialized() else run_dir.parent


def sweep_group(sweep_dir: Path) -> str:
    """The sweep directory's last two parts, e.g. `2026-11-22/10-00-00-123456` (the default layout's date and
    time) or `multirun/rmu_layers`: one W&B group per sweep."""
    parts = Path(sweep_dir).absolute().parts
    return "/".join(parts[-2:])


def _run_name(run_dir: Path) -> str:
    """The run's overrides, named like a multirun's run directory (e.g. `layer=5,method.steering_coeff=10`)."""
    from hydra.core.hydra_config import HydraConfig

    from unlearn.sweep import run_name

    if not HydraConfig.initialized():
        return run_dir.name
    hydra_cfg = HydraConfig.get()
    return run_name(list(hydra_cfg.overrides.task), list(hydra_cfg.job.config.override_dirname.exclude_keys))


def step_metrics(record: dict) -> dict[str, float]:
    """`train/<field>` for every number in a step record, and `train/<topic>/<field>` (topics alternate steps,
    so per-topic curves are the readable ones)."""
    metrics = {}
    topic = record.get("topic")
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metrics[f"train/{key}"] = value
        if topic is not None:
            metrics[f"train/{topic}/{key}"] = value
    return metrics


def flatten_results(results: dict) -> dict[str, Any]:
    """results.json as flat summary keys: `eval/before/...`, `eval/after/...` (tasks, robustness, probes and the
    stored `forget_acc` and `retain_acc`), `eval/attacks/<attack>/...` (forget_acc, retain_acc,
    recovered_fraction, per-task metrics) and `training/...`."""
    flat: dict[str, Any] = {}
    for section in ("before", "after"):
        _flatten(results.get(section), f"eval/{section}", flat)
    _flatten(results.get("attacks"), "eval/attacks", flat)
    _flatten(results.get("training"), "training", flat)
    return flat


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}/{key}", out)
    elif isinstance(value, (list, tuple)):
        if all(isinstance(item, (str, int, float)) for item in value):
            out[prefix] = ",".join(str(item) for item in value)
    elif value is not None:
        out[prefix] = value
