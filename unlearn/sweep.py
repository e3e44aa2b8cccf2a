"""Sweep bookkeeping: which jobs of a multirun are already done."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def already_completed(cfg: DictConfig, run_dir: Path) -> bool:
    """True when `run_dir` holds a completed run of this exact config (and the sweep was not forced)."""
    return False
