"""Experiment tracking beyond the run directory: Weights & Biases, or nothing (`logger=none`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


class NullTracker:
    """`logger=none`: the run directory's files are the whole record."""

    def log_step(self, record: dict) -> None:
        pass

    def log_results(self, results: dict) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


def start_tracker(cfg: DictConfig, run_dir: Path, multirun: bool):
    """The tracker `cfg.logger` asks for, started for this run."""
    if cfg.logger.name == "none":
        return NullTracker()
    raise NotImplementedError(f"logger={cfg.logger.name}")
