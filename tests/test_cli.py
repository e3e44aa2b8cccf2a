"""The command line as a user meets it: real subprocesses on the tiny model, and the run directory they leave."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO

RUN_FILES = {"config.yaml", "manifest.json", "metrics.jsonl", "control_vectors.safetensors", "results.json", "model"}


def unlearn(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "unlearn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tiny_args(tmp_path: Path, corpus_files, *extra: str) -> list[str]:
    forget, retain = corpus_files
    return ["model=tiny-random", "data=local", f"data.forget_path={forget}", f"data.retain_path={retain}",
            "eval=none", "steps=4", f"output_root={tmp_path / 'out'}", *extra]


def only_run_dir(tmp_path: Path) -> Path:
    runs = [p for p in (tmp_path / "out").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize("method", ["rmu", "adaptive_rmu", "rna", "npo", "simnpo", "rna_simnpo"])
def test_each_method_runs_and_leaves_the_run_directory(tmp_path, corpus_files, method):
    chosen = ["method=rna", "method.base=simnpo"] if method == "rna_simnpo" else [f"method={method}"]
    done = unlearn(*tiny_args(tmp_path, corpus_files, *chosen, "layer=5"))
    assert done.returncode == 0, done.stderr
    run = only_run_dir(tmp_path)
    steers = method in ("rmu", "adaptive_rmu", "rna")  # PO methods have no control vectors
    noisy = method.startswith("rna")
    written = {p.name for p in run.iterdir()}
    assert RUN_FILES - {"control_vectors.safetensors"} <= written
    assert ("control_vectors.safetensors" in written) == steers
    method = method.removesuffix("_simnpo")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["layer"] == 5 and manifest["update_layers"] == [3, 4, 5] and manifest["method"] == method
    assert manifest["versions"]["torch"] == torch.__version__
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    assert {"loss", "forget_loss", "retain_loss", "step_time_s", "topic"} <= lines[0].keys()
    assert ("adaptive_coeff" in lines[0]) == (method == "adaptive_rmu")
    assert manifest["method_settings"]["name"] == method
    if steers:
        vectors = load_file(run / "control_vectors.safetensors")
        assert vectors["local.u"].shape == (64,) and vectors["local.u"].norm().item() == pytest.approx(1.0, abs=1e-5)
    else:
        assert "forget_nll" in lines[0]
        # step 0: the updated model is the reference, so the retain term is 0 unless RNA perturbs the reference
        assert (lines[0]["retain_loss"] > 1e-6) == noisy
    modes = {name: (run / name).stat().st_mode & 0o777 for name in RUN_FILES - {"model"} if (run / name).exists()}
    assert len(set(modes.values())) == 1, modes  # every run file readable alike (umask), none left private
    resolved = (run / "config.yaml").read_text()
    assert "${" not in resolved  # fully resolved


def test_saved_model_loads_and_differs_only_in_trained_weights(tmp_path, corpus_files):
    from transformers import AutoModelForCausalLM

    from unlearn.models import load_model

    done = unlearn(*tiny_args(tmp_path, corpus_files, "steps=6", "lr=1e-2"))
    assert done.returncode == 0, done.stderr
    saved = AutoModelForCausalLM.from_pretrained(only_run_dir(tmp_path) / "model")
    original, _ = load_model("tiny://llama", seed=42)
    changed = {name for name, w in saved.state_dict().items() if not torch.equal(w, original.state_dict()[name])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)}


def test_identical_runs_are_identical(tmp_path, corpus_files):
    """Same config and seed on CPU: identical losses and identical weights."""
    runs = []
    for name in ("a", "b"):
        done = unlearn(*tiny_args(tmp_path / name, corpus_files, "method=rna", "steps=6"))
        assert done.returncode == 0, done.stderr
        runs.append(only_run_dir(tmp_path / name))
    losses = [[(r["loss"], r["forget_loss"], r["retain_loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] for run in runs]
    assert losses[0] == losses[1]
    weights = [load_file(run / "model" / "model.safetensors") for run in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_bad_argument_is_one_line_and_writes_nothing(tmp_path, corpus_files):
    done = unlearn(*tiny_args(tmp_path, corpus_files, "layer=40"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: layer=40 is outside this model's blocks: choose 0..11"]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["unlearn", "unlearn.audit"])
def test_help_starts_with_what_to_type_and_writes_nothing(tmp_path, module):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"python -m {module}: ")
    examples = [line.split("  ")[1] for line in lines if line.startswith(f"  python -m {module}")]
    assert f"python -m {module}" in examples
    assert "== Configuration groups ==" in lines and "method: adaptive_rmu, adaptive_rmu_schema, npo, npo_schema, " \
        "rmu, rmu_schema, rna, rna_schema, simnpo, simnpo_schema" in lines
    assert not list(tmp_path.iterdir())


def _start_and_wait_for_steps(args: list[str], tmp_path: Path, steps: int = 3,
                              sigint_ignored: bool = False) -> tuple[subprocess.Popen, Path]:
    """Start the CLI; `sigint_ignored`: as a background job of a non-interactive shell starts it (SIGINT ignored,
    so Python installs no KeyboardInterrupt handler). Otherwise SIGINT is at its default, however the suite was
    started."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    sigint = signal.SIG_IGN if sigint_ignored else signal.SIG_DFL
    process = subprocess.Popen([sys.executable, "-m", "unlearn", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list(tmp_path.rglob("metrics.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= steps:
            return process, found[0].parent
        time.sleep(0.1)
    process.kill()
    raise AssertionError("the run never started training")


def _consistent(run: Path) -> dict:
    """Every file a kill can leave is whole: the manifest parses, every metrics line parses, in step order."""
    manifest = json.loads((run / "manifest.json").read_text())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(len(lines)))
    assert not (run / "model").exists() and not list(run.glob(".*.tmp*"))
    return manifest


@pytest.mark.parametrize("signum,sigint_ignored", [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["sigint", "sigint-from-a-background-job", "sigterm"])
def test_sigint_and_sigterm_leave_an_interrupted_run_with_its_metrics(tmp_path, corpus_files, signum, sigint_ignored):
    process, run = _start_and_wait_for_steps(tiny_args(tmp_path, corpus_files, "steps=100000", "data.cycle=true"),
                                             tmp_path, sigint_ignored=sigint_ignored)
    process.send_signal(signum)
    process.communicate(timeout=60)
    assert process.returncode == 130
    manifest = _consistent(run)
    assert manifest["status"] == "interrupted" and manifest["ended"]


def test_sigkill_mid_sweep_loses_nothing_finished_and_the_rerun_completes(tmp_path, corpus_files):
    """Job 1 of a two-job sweep finishes, job 2 is SIGKILLed mid-training; the same command then redoes job 2
    only, and job 1's results are untouched."""
    sweep = tmp_path / "sweep"
    args = ["--multirun", *tiny_args(tmp_path, corpus_files, "steps=60", "data.cycle=true", "layer=3,5"),
            f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "unlearn", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    second = None
    while time.time() < deadline and second is None:
        runs = sorted(p for p in sweep.glob("*layer=5*") if (p / "metrics.jsonl").exists())
        if runs and len((runs[0] / "metrics.jsonl").read_text().splitlines()) >= 3:
            second = runs[0]
        time.sleep(0.1)
    assert second is not None, "the second job never started training"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    first = next(sweep.glob("*layer=3*"))
    finished = (first / "results.json").read_text(), json.loads((first / "manifest.json").read_text())
    assert finished[1]["status"] == "completed"
    assert _consistent(second)["status"] == "running"  # killed: nothing could record it

    rerun = unlearn(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert (first / "results.json").read_text() == finished[0]
    assert json.loads((first / "manifest.json").read_text())["started"] == finished[1]["started"]
    redone = json.loads((second / "manifest.json").read_text())
    assert redone["status"] == "completed"
    assert len((second / "metrics.jsonl").read_text().splitlines()) == 60
