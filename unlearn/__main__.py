"""`python -m unlearn [overrides]`: the pre-check (unlearn.cli), then one Hydra job per run.

Errors in the arguments are one line on stderr and exit status 2, before any weights load.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from unlearn import cli, sweep
from unlearn.cli import CONF_DIR
from unlearn.errors import UnlearnError

log = logging.getLogger(__name__)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> str:
    """One job; returns what it did (`completed`, or in a sweep `skipped`), which the sweep's records keep.

    In a sweep a failure is raised to Hydra, which records the job as failed, runs the others and then exits
    non-zero; the job prints its own error first (one line, or a bug's traceback)."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    save_model = cfg.save_model if cfg.save_model is not None else not multirun
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if multirun and sweep.already_completed(cfg, run_dir):
        log.info(f"Skipping {run_dir}: already completed with this config (sweep.force=true redoes it)")
        return sweep.SKIPPED
    from unlearn.run import run  # after the skip check: a skipped job (a fresh worker process) needs no torch

    try:
        run(cfg, run_dir, save_model=bool(save_model), multirun=multirun,
            sweep_invocation=sweep.job_invocation() if multirun else None)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if not multirun:
            sys.exit(1)
        raise sweep.JobFailed(f"{run_dir} failed: its manifest.json has the error") from exc
    except KeyboardInterrupt:
        print(f"interrupted: the run directory {run_dir} keeps the metrics so far", file=sys.stderr)
        if multirun and "SUBMITIT_FOLDER" in os.environ:  # a cluster job cancelled, preempted or out of time
            # raised to Hydra as a failed job, whose record submitit hands back to the sweep (an exit would leave
            # none: a cluster without accounting would then wait for it forever)
            raise sweep.JobFailed(f"{run_dir} was interrupted: its manifest.json says so") from None
        sys.exit(130)
    except Exception as exc:
        if not multirun:
            raise
        traceback.print_exc()  # a bug, not a bad config: shown here, as Hydra reports only a sweep's first failure
        raise sweep.JobFailed(f"{run_dir} failed: its manifest.json has the error") from exc
    log.info(f"Run directory: {run_dir}")
    return sweep.COMPLETED


def main() -> None:
    try:
        cli.run(hydra_main, cli.precheck, "config")
    finally:
        sweep.summarize_unfinished()  # a sweep that ended on a failed job or an interrupt still gets its summary


if __name__ == "__main__":
    main()
