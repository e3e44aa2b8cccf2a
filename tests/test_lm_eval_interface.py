"""unlearn uses lm-eval only through its documented interface, and the bundled tasks are plain lm-eval tasks.

A private lm-eval module (`lm_eval.tasks._index`), an assignment to one of lm-eval's objects, a walk of
lm-eval's package folder or a dataset's private fingerprint would tie every run to one lm-eval release; these
tests fail if one comes back. The bundled demo tasks must run with lm-eval's own command line, from any
directory, on a model saved as a run saves it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from unlearn.errors import UnlearnError

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted((REPO / "unlearn").rglob("*.py")) + sorted((REPO / "scripts").glob("*.py"))
DEMO_TASKS = REPO / "unlearn/evaluation/tasks/demo"

PRIVATE = [
    (re.compile(r"\blm_eval(\.\w+)*\._[A-Za-z]\w*"), "a private lm-eval module or name (lm_eval.x._y)"),
    (re.compile(r"from\s+lm_eval[\w.]*\s+import\s+[^\n]*\b_\w+"), "a private name imported from lm-eval"),
    (re.compile(r"^\s*(lm_eval|HFLM|TaskManager|ConfigurableTask)\b[\w.\[\]\"']*\.\w+\s*=[^=]", re.M),
     "an assignment to one of lm-eval's objects"),
    (re.compile(r"\.task_index\b"), "lm-eval's raw task index"),
    (re.compile(r"lm_eval[\w.]*\.__file__"), "a walk of lm-eval's package folder"),
    (re.compile(r"\._fingerprint\b"), "a dataset's private fingerprint"),
]


@pytest.mark.parametrize("pattern,what", PRIVATE, ids=[what for _, what in PRIVATE])
def test_no_private_lm_eval_interface(pattern, what):
    hits = [f"{path.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}: {match.group(0).strip()}"
            for path in SOURCES for text in [path.read_text()] for match in pattern.finditer(text)]
    assert not hits, f"{what}: " + "; ".join(hits)


def test_the_private_interface_patterns_catch_what_they_name():
    """The patterns above are not vacuous: each catches the line it was written for."""
    samples = ["from lm_eval.tasks._index import Entry", "from lm_eval.tasks import _yaml_loader",
               "    TaskManager.load = patched", "manager.task_index[name] = entry",
               "os.walk(Path(lm_eval.tasks.__file__).parent)", 'tag = f"{dataset._fingerprint}"']
    for (pattern, what), sample in zip(PRIVATE, samples):
        assert pattern.search(sample), what


def test_an_lm_eval_that_moved_an_interface_fails_with_one_line(monkeypatch):
    from unlearn.evaluation import harness

    def simple_evaluate(model, tasks):  # a future release without task_manager= and friends
        raise AssertionError("never called")

    monkeypatch.setattr(harness, "simple_evaluate", simple_evaluate)
    with pytest.raises(UnlearnError) as error:
        harness.check_interfaces()
    message = str(error.value)
    assert "\n" not in message
    assert "simple_evaluate(model=, tasks=, task_manager=" in message
    assert f"tested with lm-eval {harness.LM_EVAL_TESTED[0]} to {harness.LM_EVAL_TESTED[1]}" in message


def test_bundled_demo_task_runs_with_lm_eval_own_cli_from_any_directory(tmp_path):
    """`lm_eval --model hf --model_args pretrained=<dir> --tasks demo_forget --include_path <package task dir>`
    on the tiny model saved to a directory, run from an unrelated working directory."""
    from unlearn.models import load_model

    model, tokenizer = load_model("tiny://llama")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lm_eval_cli = Path(sys.executable).with_name("lm_eval")
    command = [str(lm_eval_cli)] if lm_eval_cli.exists() else [sys.executable, "-m", "lm_eval"]
    done = subprocess.run(
        [*command, "--model", "hf", "--model_args", f"pretrained={tmp_path / 'model'}", "--tasks", "demo_forget",
         "--include_path", str(DEMO_TASKS), "--limit", "4", "--device", "cpu"],
        cwd=elsewhere, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("|demo_forget")]
    assert rows and "acc" in rows[0], done.stdout
