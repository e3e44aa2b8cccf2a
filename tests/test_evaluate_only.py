"""`train=false`: evaluate a saved model with the run's suite, train nothing; and the base-model cache, which
must never serve the numbers of other weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.test_cli import only_run_dir, unlearn
from tests.test_evaluation import demo_config, run, task_dir  # noqa: F401  (task_dir: a fixture)
from unlearn.evaluation import eval_spec, suite
from unlearn.evaluation.cache import model_identity
from unlearn.models import load_model


def save_tiny(folder, seed: int) -> None:
    model, tokenizer = load_model("tiny://llama", seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture
def saved_model(tmp_path):
    """A run's `model/` and `control_vectors.safetensors`, as a training run of the tiny model leaves them."""
    save_tiny(tmp_path / "model", seed=0)
    u = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(0)), dim=0)
    save_file({"virology.u": u, "virology.coeff": torch.tensor([6.5])}, tmp_path / "control_vectors.safetensors")
    return tmp_path


def test_train_false_evaluates_a_saved_model_into_a_run_directory(saved_model, tmp_path):
    done = unlearn("model=tiny-random", f"model.name_or_path={saved_model / 'model'}", "train=false",
                   "eval.limit=4", f"eval.probes.control_vectors={saved_model / 'control_vectors.safetensors'}",
                   f"output_root={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    run_dir = only_run_dir(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["train"] is False and manifest["status"] == "completed"
    assert "training" not in results and results["before"] is None
    evaluation = results["after"]
    assert {name: m["n"] for name, m in evaluation["tasks"].items()} == {"demo_forget": 4, "demo_retain": 4}
    assert evaluation["robustness"]["tasks"]["demo_retain"]["n"] == 4
    assert set(evaluation["probes"]["forget"]["cosine"]) == {"virology"}  # u from the given file
    assert not (run_dir / "model").exists() and not (run_dir / "metrics.jsonl").exists()  # nothing trained
    assert "demo_forget (forget)" in done.stdout


def test_train_false_without_control_vectors_skips_the_cosines_with_a_notice(saved_model, tmp_path):
    done = unlearn("model=tiny-random", f"model.name_or_path={saved_model / 'model'}", "train=false",
                   "eval.limit=2", "eval.robustness.enabled=false", f"output_root={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    assert "eval.probes.control_vectors=<run>/control_vectors.safetensors" in done.stderr + done.stdout
    probes = json.loads((only_run_dir(tmp_path) / "results.json").read_text())["after"]["probes"]
    assert probes["forget"]["cosine"] == {} and probes["forget"]["mean_norm"] > 0


@pytest.mark.parametrize("content,expected", [
    (None, "eval.probes.control_vectors: found nothing (no such file or directory) at"),
    (b"not a safetensors file", "is not a safetensors file"),
    ({"bio.u": torch.zeros(64)}, "has no u for topic(s) virology (it holds bio.u)"),
    ({"virology.u": torch.zeros(32)}, "virology.u has shape (32,), but the model's hidden size is 64"),
])
def test_bad_control_vectors_fail_before_any_weights_load(tmp_path, monkeypatch, capsys, content, expected):
    from tests.test_bad_input import precheck_error

    path = tmp_path / "control_vectors.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        save_file(content, path)
    line = precheck_error(monkeypatch, capsys, tmp_path, "model=tiny-random", "train=false",
                          f"eval.probes.control_vectors={path}", f"output_root={tmp_path / 'out'}")
    assert expected in line


def test_train_false_with_attacks_is_refused_rather_than_skipped(tmp_path, monkeypatch, capsys):
    from tests.test_bad_input import precheck_error

    line = precheck_error(monkeypatch, capsys, tmp_path, "model=tiny-random", "train=false", "eval=demo_attacks",
                          f"output_root={tmp_path / 'out'}")
    assert "train=false runs no knowledge-recovery attacks (eval.attacks=['relearn', 'ablate', 'fewshot', 'prefix', " \
           "'latent']): they run after training; drop them with eval.attacks=[]" in line


@pytest.mark.parametrize("damage,expected", [
    ("a file", "model.name_or_path={path} is a file, not a model directory: point model.name_or_path at a "
               "directory written by save_pretrained"),
    ("a run directory", "model directory {path} has no config.json (a run directory? its model is in its model/ "
                        "folder)"),
    ("no weights", "model directory {path} has a config.json but no weights (model.safetensors, "
                   "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json)"),
    ("a config that is not JSON", "could not load the model in {path} ("),
])
def test_a_local_model_that_is_not_a_checkpoint_is_refused_before_the_job(saved_model, tmp_path, monkeypatch, capsys,
                                                                         damage, expected):
    from tests.test_bad_input import precheck_error

    path = saved_model / "model"
    if damage == "a file":
        path = path / "config.json"
    elif damage == "a run directory":
        path = saved_model
    elif damage == "no weights":
        (path / "model.safetensors").unlink()
    else:
        (path / "config.json").write_text("{not json")
    line = precheck_error(monkeypatch, capsys, tmp_path, "model=tiny-random", "train=false",
                          f"model.name_or_path={path}", f"output_root={tmp_path / 'out'}")
    assert expected.format(path=path) in line
    assert "huggingface-cli" not in line  # a local folder gets no advice about the hub


def test_a_truncated_weights_file_fails_its_job_in_one_line(saved_model, tmp_path):
    weights = saved_model / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    done = unlearn("model=tiny-random", f"model.name_or_path={saved_model / 'model'}", "train=false",
                   f"output_root={tmp_path / 'out'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"could not load the model in {saved_model / 'model'} (" in errors[0], done.stderr
    assert json.loads((only_run_dir(tmp_path) / "manifest.json").read_text())["status"] == "failed"


def test_a_model_rewritten_in_place_is_evaluated_again(task_dir, tmp_path, monkeypatch):  # noqa: F811
    """The cache key of a directory is its files' names, sizes and modification times: the same directory
    with other weights written into it is another model."""
    calls = []
    real = suite.run_tasks
    monkeypatch.setattr(suite, "run_tasks", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = eval_spec(demo_config(task_dir, limit=2, robustness__enabled=False))
    folder = tmp_path / "model"

    def evaluate_folder():
        model, tokenizer = load_model(str(folder))
        return run(model, tokenizer, spec, cache_key=model_identity(str(folder), seed=0), cache_dir=tmp_path / "c")

    save_tiny(folder, seed=0)
    first, again = evaluate_folder(), evaluate_folder()
    assert (first["from_cache"], again["from_cache"], len(calls)) == (False, True, 1)
    save_tiny(folder, seed=1)  # other weights, same directory, same file names
    rewritten = evaluate_folder()
    assert rewritten["from_cache"] is False and len(calls) == 2


def test_cache_key_holds_what_changes_results(task_dir, tmp_path, monkeypatch):  # noqa: F811
    """Batch size and dtype are part of the key (padding and precision move the sums); so are the versions."""
    calls = []
    real = suite.run_tasks
    monkeypatch.setattr(suite, "run_tasks", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, tokenizer = load_model("tiny://llama")
    identity = model_identity("tiny://llama", seed=0)
    for batch_size in (4, 4, 2):
        spec = eval_spec(demo_config(task_dir, limit=1, batch_size=batch_size, robustness__enabled=False))
        run(model, tokenizer, spec, cache_key=identity, cache_dir=tmp_path)
    assert len(calls) == 2
    run(model.to(torch.bfloat16), tokenizer, spec, cache_key=identity, cache_dir=tmp_path)
    assert len(calls) == 3
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())["key"]
    assert {"dtype", "device_type", "batch_size", "task_definitions"} <= set(stored)
    assert set(stored["versions"]) >= {"lm_eval", "transformers", "torch"}


def test_train_false_needs_no_training_corpus(monkeypatch, capsys, tmp_path):
    """Evaluating a released checkpoint on WMDP's data config must not ask for the gated bio forget corpus:
    nothing trains. Training with the same config still does."""
    from tests.test_bad_input import precheck_error
    from unlearn.cli import precheck

    args = ["model=tiny-random", "data=wmdp", "eval=demo", f"output_root={tmp_path / 'out'}"]
    precheck([*args, "train=false"])  # passes: no corpus is read
    assert "WMDP bio forget corpus is gated" in precheck_error(monkeypatch, capsys, tmp_path, *args)
