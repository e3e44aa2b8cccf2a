"""scripts/gpu_check.py, the one command for an H100/H200, run end to end on the CPU with its tiny shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts/gpu_check.py"


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900,
                          cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})


@pytest.mark.slow  # three engine runs and four evaluations, each engine in its own process: 2.5 min when shared
def test_tiny_check_writes_every_figure(tmp_path):
    out = tmp_path / "figures" / "check.json"
    done = run_check("--tiny", "--out", str(out), "--eval-batch-size", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["wall_s"] > 0
    rmu = figures["rmu"]["fast"]
    assert rmu["steps"] == 3 and rmu["total_s"] > 0 and rmu["median_step_s"] > 0 and rmu["peak_gib"] > 0
    npo = figures["npo"]
    assert {"fast", "reference"} <= npo.keys()
    assert npo["peak_ratio_fast_over_plain"] == pytest.approx(npo["fast"]["peak_gib"] / npo["reference"]["peak_gib"],
                                                              abs=0.01)
    evaluation = figures["eval"]
    assert evaluation["batch_size"] == 4
    for form in ("letters", "cloze"):
        both = evaluation[form]
        for scorer in ("hflm", "shared_context"):
            assert both[scorer]["questions"] == 12  # 6 forget + 6 retain questions (--tiny's limit)
            assert both[scorer]["questions_per_s"] > 0
        assert both["same_accuracies"] is True
        assert set(both["shared_context"]["acc"]) == {"demo_forget_letters", "demo_retain_letters"} \
            if form == "letters" else {"demo_forget", "demo_retain"}
    assert not list(out.parent.glob("*.part"))  # written by rename, never half a file


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the full check would run")
def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    out = tmp_path / "check.json"
    done = run_check("--out", str(out))
    assert done.returncode == 2
    assert done.stdout.strip().count("\n") == 0 and "--tiny" in done.stdout and "H100/H200" in done.stdout
    assert "Traceback" not in done.stderr and not out.exists()
