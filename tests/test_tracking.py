"""W&B tracking, offline: which mode credentials lead to, what an offline run holds (read back from its .wandb
file with W&B's own protobuf records), that no API key lands on disk, and that `disabled` writes nothing."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import REPO
from unlearn.cli import CONF_DIR
from unlearn.tracking import (NullTracker, WandbTracker, flatten_results, method_tags, start_tracker, sweep_group,
                              wandb_mode)

SECRET = "0123456789abcdef0123456789abcdef0123fake"  # a 40-character API-key look-alike


# ---------------------------------------------------------------------------------------------------------
# Reading an offline run back


def wandb_records(run_dir: Path, timeout_s: float = 30.0) -> list:
    """Every record of the run's .wandb file, once it holds the run's exit record: W&B's service process may
    still be flushing it when `finish()` returns in a process that goes on (a CLI run's exit waits for it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_wandb_file(run_dir)
        if "exit" in [r.WhichOneof("record_type") for r in records] or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_wandb_file(run_dir: Path) -> list:
    """A LevelDB-style log (32 KiB blocks, 7-byte chunk headers) of W&B's `Record` protobufs, after a 7-byte
    file header (":W&B", magic, version). Read here because wandb (0.31) ships no Python reader of it (its writer
    and reader are in the `wandb-core` binary) and an offline run writes nothing else that holds the logged
    values (no config.yaml, no wandb-summary.json); the records themselves are decoded by wandb's own protobuf."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    if len(data) < 7:  # not even the header flushed yet
        return []
    assert data[:4] == b":W&B"
    block, position, chunks, records = 32768, 7, [], []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if position + 7 + length > len(data):  # a chunk still being written
            break
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def logged(records: list) -> tuple[object, dict, list[dict], dict]:
    """(run record, config, history rows, final summary) of an offline run."""
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds, kinds
    run = records[kinds.index("run")].run
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    history, summary = [], {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update})
    return run, config, history, summary


def files_containing(root: Path, text: str) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and text.encode() in path.read_bytes()]


# ---------------------------------------------------------------------------------------------------------
# Mode


def auto_mode(monkeypatch, tmp_path: Path, **environ: str) -> tuple[str, str | None]:
    """`wandb_mode("auto")` in an environment of only `environ` (and a netrc file of tmp_path's), W&B's
    settings and session credentials read afresh: W&B reads them once per process."""
    import wandb

    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no settings file of the machine's
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    wandb.teardown()
    try:
        return wandb_mode("auto")
    finally:
        wandb.teardown()


def test_auto_mode_is_online_with_credentials_offline_without(tmp_path, monkeypatch):
    """W&B's own lookup decides: the key in the environment, or a netrc entry for the host W&B logs to
    (WANDB_BASE_URL, else W&B's default); WANDB_MODE as W&B reads it; explicit modes as given."""
    import wandb

    netrc = tmp_path / "netrc"
    mode, hint = auto_mode(monkeypatch, tmp_path)
    assert mode == "offline" and "no credentials" in hint and "wandb login" in hint
    assert auto_mode(monkeypatch, tmp_path, WANDB_API_KEY=SECRET) == ("online", None)
    default_host = urlparse(wandb.Settings().base_url).hostname
    netrc.write_text(f"machine {default_host}\n  login user\n  password {SECRET}\n")
    assert auto_mode(monkeypatch, tmp_path) == ("online", None)
    assert auto_mode(monkeypatch, tmp_path, WANDB_BASE_URL="https://wandb.example.org")[0] == "offline"
    netrc.write_text(f"machine github.com login me password {SECRET}\n")
    assert auto_mode(monkeypatch, tmp_path)[0] == "offline"
    assert auto_mode(monkeypatch, tmp_path, WANDB_MODE="disabled", WANDB_API_KEY=SECRET) == ("disabled", None)
    assert auto_mode(monkeypatch, tmp_path, WANDB_MODE="dryrun", WANDB_API_KEY=SECRET)[0] == "offline"
    assert wandb_mode("offline")[0] == "offline"
    assert wandb_mode("disabled") == ("disabled", None)
    assert files_containing(tmp_path, SECRET) == [netrc]  # W&B stored the key nowhere else


# ---------------------------------------------------------------------------------------------------------
# What an offline run holds


def tiny_cfg(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["model=tiny-random", "method=adaptive_rmu", "layer=5", "eval=none",
                                            "logger=wandb", *overrides])


RESULTS = {
    "training": {"steps": 3, "median_step_time_s": 0.1,
                 "topics": {"bio": {"steering_coeff": 42.0, "adaptive_norm": 8.4, "first": None, "last": None}}},
    "before": None,
    "after": {
        "lm_eval_version": "0.4.13",
        "domains": {"forget": ["demo_forget"], "retain": ["demo_retain"]},
        "tasks": {"demo_forget": {"acc": 0.25, "n": 40}, "demo_retain": {"acc": 0.75, "n": 40}},
        "forget_acc": 0.3, "retain_acc": 0.7,  # as evaluate() stored them (not the tasks' mean: read, not recomputed)
        "robustness": {"clean": 0.75, "perturbed": 0.5, "drop": 0.25, "keywords": {}, "tasks": {}},
        "probes": {"layer": 5, "forget": {"mean_norm": 40.0, "cosine": {"bio": 0.9}, "confidence": 0.1}},
    },
}


def test_offline_run_holds_config_steps_results_group_and_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)  # present, but logger.mode=offline must not send or store it
    run_dir = tmp_path / "sweep" / "layer=5,method=adaptive_rmu"
    run_dir.mkdir(parents=True)
    tracker = start_tracker(tiny_cfg("logger.mode=offline"), run_dir, multirun=True)
    assert isinstance(tracker, WandbTracker)
    for step in range(3):
        tracker.log_step({"step": step, "topic": "bio", "loss": 3.0 - step, "forget_loss": 2.0 - step,
                          "retain_loss": 1.0, "step_time_s": 0.1, "adaptive_coeff": 42.0})
    tracker.log_results(RESULTS)
    tracker.finish("completed")

    run, config, history, summary = logged(wandb_records(run_dir))
    assert run.run_group == sweep_group(tmp_path / "sweep") == f"{tmp_path.name}/sweep"
    assert run.display_name == "layer=5,method=adaptive_rmu"
    assert set(run.tags) == {"adaptive_rmu", "tiny-random", "layer=5"}
    assert config["layer"] == 5 and config["method"]["name"] == "adaptive_rmu" and config["method"]["beta"] == 5
    assert [row["train/loss"] for row in history] == [3.0, 2.0, 1.0]
    assert all(row["train/adaptive_coeff"] == 42.0 and "train/step_time_s" in row for row in history)
    assert history[0]["train/bio/forget_loss"] == 2.0
    assert summary["eval/after/tasks/demo_forget/acc"] == 0.25
    assert summary["eval/after/forget_acc"] == 0.3 and summary["eval/after/retain_acc"] == 0.7
    assert summary["eval/after/robustness/drop"] == 0.25
    assert summary["eval/after/probes/forget/mean_norm"] == 40.0
    assert summary["training/topics/bio/adaptive_norm"] == 8.4
    assert summary["status"] == "completed"
    assert files_containing(tmp_path, SECRET) == []


def test_flatten_skips_missing_sections():
    flat = flatten_results({"training": {"steps": 2}, "before": None, "after": None})
    assert flat == {"training/steps": 2}


def test_disabled_and_none_start_nothing(tmp_path):
    assert isinstance(start_tracker(tiny_cfg("logger.mode=disabled"), tmp_path, multirun=False), NullTracker)
    assert isinstance(start_tracker(tiny_cfg("logger=none"), tmp_path, multirun=False), NullTracker)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# Through the command line


def unlearn(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "WANDB_API_KEY": SECRET}
    env.pop("WANDB_MODE", None)
    return subprocess.run([sys.executable, "-m", "unlearn", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_cli_multirun_logs_offline_or_nothing(tmp_path, corpus_files, mode):
    forget, retain = corpus_files
    sweep = tmp_path / "sweep"
    done = unlearn("--multirun", "model=tiny-random", "data=local", f"data.forget_path={forget}",
                   f"data.retain_path={retain}", "eval=none", "steps=2", "layer=3", "logger=wandb",
                   f"logger.mode={mode}", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr
    (manifest,) = sweep.glob("*/manifest.json")
    run_dir = manifest.parent
    assert json.loads(manifest.read_text())["status"] == "completed"
    if mode == "disabled":
        assert not (run_dir / "wandb").exists()
        return
    assert "wandb sync" in done.stdout
    run, config, history, summary = logged(wandb_records(run_dir))
    assert run.run_group == sweep_group(sweep) and run.display_name == run_dir.name
    assert config["layer"] == 3 and len(history) == 2 and summary["status"] == "completed"
    assert "training/median_step_time_s" in summary
    assert files_containing(tmp_path, SECRET) == []


@pytest.mark.parametrize(("method", "tags"), [
    ({"name": "rmu"}, ["rmu"]),
    ({"name": "npo", "retain_loss": "kl"}, ["npo", "npo+kl"]),
    ({"name": "rna", "base": "simnpo", "retain_loss": "mse"}, ["rna", "rna/simnpo+mse"]),
    ({"name": "rna", "base": "adaptive_rmu", "retain_loss": "kl"}, ["rna", "rna/adaptive_rmu"]),
])
def test_method_tags_name_the_variant_as_the_report_does(method, tags):
    """W&B runs are tagged with the method and, where it tells runs apart, the report's variant name."""
    from omegaconf import OmegaConf

    assert method_tags(OmegaConf.create(method)) == tags
