"""Shared fixtures. Every test runs offline: the hub is never asked for anything."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A fresh cache per test session: the embedded model is converted and the base model evaluated from scratch,
# so no test leans on what an earlier run left in ~/.cache/unlearn.
os.environ["UNLEARN_CACHE"] = tempfile.mkdtemp(prefix="unlearn-test-cache-")
atexit.register(shutil.rmtree, os.environ["UNLEARN_CACHE"], ignore_errors=True)  # ~0.5 GB: the converted model

REPO = Path(__file__).resolve().parent.parent
DEMO_TASKS = REPO / "unlearn/evaluation/tasks/demo"
EVAL_FIXTURES = REPO / "tests/fixtures/eval"  # the demo tasks' questions: 6 forget, 8 retain


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread while a module's tests run (`pytestmark = pytest.mark.usefixtures("one_thread")`): on the
    tiny models thread hand-offs cost more than the math, many times more on a busy machine (seen: 40 s vs 10 s
    for test_evaluation.py on 2 shared cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer) of tiny://llama, loaded once per test module."""
    from unlearn.models import load_model

    return load_model("tiny://llama")


@pytest.fixture
def corpus_files(tmp_path: Path) -> tuple[Path, Path]:
    """A small forget/retain JSONL pair: 40 documents each, of varied length."""
    paths = []
    for side, words in (("forget", "virus capsid genome host cell infection"), ("retain", "river mountain city music history art")):
        path = tmp_path / f"{side}.jsonl"
        with path.open("w") as file:
            for i in range(40):
                text = " ".join(words.split()[j % 6] for j in range(i, i + 5 + 3 * (i % 5)))
                file.write(json.dumps({"text": f"{side} document {i}: {text}."}) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def eval_preset(name: str, *overrides: str) -> dict:
    """conf/eval/<name>.yaml as Hydra composes it (over conf/eval/base.yaml), as plain values."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import unlearn.schema  # noqa: F401  (registers the config schemas)

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"eval={name}", *overrides])
    return OmegaConf.to_container(cfg.eval, resolve=True)


def demo_tasks_with_fixtures(folder: Path) -> Path:
    """`folder` with the packaged demo task files (the YAMLs and their custom_dataset loader) beside the fixture
    questions, which stand in for the packaged ones."""
    for path in [*DEMO_TASKS.glob("*yaml"), *DEMO_TASKS.glob("*.py"), *EVAL_FIXTURES.glob("*.jsonl")]:
        shutil.copy(path, folder)
    return folder


def one_line_error(monkeypatch, capsys, main, argv: list[str], out: Path) -> str:
    """Run a command-line `main` in-process with `argv`; the error must come from its pre-check: exit 2, one
    line starting "error: ", nothing written under `out`. Returns the line."""
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists() or not any(out.rglob("*"))
    return err[0]
