"""Every bad input gets one clear line naming the problem and the fix, a non-zero exit, no traceback, and
nothing written (errors found before the job starts) or only the failure record (errors found inside it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import one_line_error
from tests.test_cli import tiny_args, unlearn
from unlearn.__main__ import main
from unlearn.cli import normalize_argument


def precheck_error(monkeypatch, capsys, tmp_path, *args: str) -> str:
    """Run the CLI in-process; the error must come from the pre-check (exit 2, one line, nothing written)."""
    return one_line_error(monkeypatch, capsys, main, ["unlearn", *args], tmp_path / "out")


def tiny(tmp_path, corpus_files, *extra):
    return tiny_args(tmp_path, corpus_files, *extra)


@pytest.mark.parametrize("argument,expected", [
    ("method=rmuu", "unknown method 'rmuu': did you mean method=rmu? valid names: adaptive_rmu, npo, rmu, rna, simnpo"),
    ("model=smolm2-135m", "did you mean model=smollm2-135m?"),
    ("data=wmdpp", "did you mean data=wmdp?"),
    ("eval=dem", "did you mean eval=demo?"),
    ("method=rnж", "contains non-ASCII character(s) 'ж' (U+0436)"),
    ("layer=40", "layer=40 is outside this model's blocks: choose 0..11"),
    ("layer=-1", "layer=-1 is outside this model's blocks"),
    ("layer=null", "layer=null is not an integer: give an integer, e.g. layer=..."),
    ("update_layers=[5,9]", "update_layers contains 9, above layer=7"),
    ("param_pattern=mlp.nothing", "param_pattern 'mlp.nothing' matches no weight in blocks [5, 6, 7]: modules with weights in a block are"),
    ("steps=0", "steps must be a positive integer, got 0"),
    ("steps=abc", "steps='abc' is not an integer: give an integer"),
    ("batch_size=-4", "batch_size must be a positive integer"),
    ("lr=0", "lr must be a positive number"),
    ("lr=nan", "lr must be a positive number, got nan"),
    ("lr=inf", "lr must be a positive number, got inf"),
    ("method.steering_coeff=inf", "method.steering_coeff must be a non-negative number, got inf"),
    ("method=rna method.nu=nan", "method.nu must be a non-negative number, got nan"),
    ("method=npo method.beta=nan", "method.beta must be a positive number for npo, got nan"),
    ("seed=99999999999999999999", "seed must be an integer of at most 64 bits (torch.manual_seed's range), got "
                                  "99999999999999999999: e.g. seed=42"),
    ("device=mps", "device=mps but this machine's torch has no MPS (Apple GPU) device: use device=cpu"),
    ("device=cuda:abc", "device='cuda:abc' is not a device: use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps"),
    ("optimizer=adam", "optimizer='adam' is not a valid choice: give one of transformers_adamw, adamw"),
    ("method.steering_coeff=-1", "method.steering_coeff must be a non-negative number, got -1"),
    ("method.alpha=-5", "method.alpha must be a non-negative number"),
    ("method.steering_coeff=[1,2]", "method.steering_coeff has 2 values but there are 1 topics (local)"),
    ("model.name_or_path=/no/such/model", "model path /no/such/model does not exist"),
    ("model=zephyr-7b-beta", "could not load model 'HuggingFaceH4/zephyr-7b-beta'"),
    ("device=cuda", "device=cuda but no CUDA GPU is visible: use device=cpu"),
    ("dtype=fp8", "dtype='fp8' is not supported"),
    ("foo=1", "Could not override 'foo'"),
    ("method=rna method.base=dpo", "method.base='dpo' is not a method RNA can wrap: choose one of rmu, adaptive_rmu, npo, simnpo"),
    ("method=rna method.base=rna", "method.base=rna: RNA wraps a base method, not itself"),
    ("method=npo method.retain_loss=foo", "method.retain_loss='foo' is not a valid choice: give one of kl, mse"),
    ("eval.robustness.position=middle", "eval.robustness.position='middle' is not a valid choice: give one of start, end, random"),
    ("eval.attack.ablate.blocks=some", "eval.attack.ablate.blocks='some' is not a valid choice: give one of all, trained"),
    ("logger=wandb logger.mode=maybe", "logger.mode='maybe' is not a valid choice: give one of auto, online, offline, disabled"),
    ("method=npo method.beta=0", "method.beta must be a positive number for npo, got 0.0: e.g. 0.1"),
    ("method=simnpo method.beta=-1", "method.beta must be a positive number for simnpo, got -1.0"),
    ("method=adaptive_rmu method.beta=0", "method.beta must be a positive number for adaptive_rmu, got 0.0: e.g. 5"),
    ("method=npo method.steering_coeff=5", "Could not override 'method.steering_coeff'"),
    ("method=npo +method.steering_coeff=5", "method.steering_coeff is not a setting of npo, which reads method.beta, method.alpha, method.retain_loss"),
    ("method=rna method.base=npo method.steering_coeff=5", "method.steering_coeff is not a setting of rna over npo"),
    ("method=rna method.retain_loss=mse", "method.retain_loss is not a setting of rna over rmu"),
    ("data.forget_path=/no/such/forget.jsonl", "forget corpus file /no/such/forget.jsonl: found nothing (no such file or directory), expected a .jsonl"),
    ("data.max_length=0", "topic 'local' forget max_length must be a positive integer, got 0"),
    ("+model.revision=main", "model.revision is not a key of model: the keys there are name, name_or_path, "
                             "trust_remote_code, recipe, npo_recipe, simnpo_recipe"),
    ("+model.recipe.layers=3", "model.recipe.layers is not a key of model.recipe: did you mean model.recipe.layer?"),
    ("+data.topics.extra={keywords:[]}", "cannot add extra as a whole from the command line (OmegaConf 2.3 assigns "
                                         "no mapping to a typed node): write it in a preset of your own"),
])
def test_precheck_rejects(monkeypatch, capsys, tmp_path, corpus_files, argument, expected):
    if argument.startswith("model=zephyr"):
        args = [a for a in tiny(tmp_path, corpus_files) if not a.startswith("model=")] + [argument]
    else:
        args = tiny(tmp_path, corpus_files, *argument.split())
    if argument == "device=mps":
        import torch
        if torch.backends.mps.is_available():
            pytest.skip("an MPS device is visible")
    if argument == "device=cuda":
        pytest.importorskip("torch")
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is visible")
    assert expected in precheck_error(monkeypatch, capsys, tmp_path, *args)


@pytest.mark.parametrize("flags,expected", [
    (["--multirun", "layer=3,5", "--cfg", "job"], "--multirun and --cfg can't be given together: Hydra does one of "
     "--run, --multirun, --cfg, --info, --shell-completion at a time; drop all but one (one job of a sweep: its "
     "overrides with one value each and --cfg job)"),
    (["-m", "-c", "job"], "--multirun and --cfg can't be given together"),
    (["--info=all", "-m"], "--multirun and --info can't be given together"),
    (["--cfg", "job", "--info", "defaults"], "--cfg and --info can't be given together: Hydra does one of --run, "
     "--multirun, --cfg, --info, --shell-completion at a time; drop all but one"),
])
def test_two_of_hydras_modes_are_one_line(monkeypatch, capsys, tmp_path, corpus_files, flags, expected):
    """Hydra itself raises a ValueError, traceback and all, before its own error handling."""
    line = precheck_error(monkeypatch, capsys, tmp_path, *tiny(tmp_path, corpus_files, *flags))
    assert line.startswith(f"error: {expected}")


@pytest.mark.parametrize("method,argument,expected", [
    ("adaptive_rmu", "method.beta=-1", "method.beta must be a positive number for adaptive_rmu, got -1.0"),
    ("rna", "method.nu=-0.1", "method.nu must be a non-negative number"),
    ("rna", "method.base=dpo", "is not a method RNA can wrap"),
])
def test_precheck_rejects_method_settings(monkeypatch, capsys, tmp_path, corpus_files, method, argument, expected):
    line = precheck_error(monkeypatch, capsys, tmp_path, *tiny(tmp_path, corpus_files, f"method={method}", argument))
    assert expected in line


def test_the_same_corpus_to_forget_and_retain_is_refused(monkeypatch, capsys, tmp_path, corpus_files):
    forget, _ = corpus_files
    line = precheck_error(monkeypatch, capsys, tmp_path, *tiny(tmp_path, (forget, forget)))
    assert f"topic 'local': the forget and the retain corpus are the same ({forget}): the retain corpus is what the " \
           "model keeps, other documents than those it forgets" in line


def test_local_data_without_paths(monkeypatch, capsys, tmp_path):
    line = precheck_error(monkeypatch, capsys, tmp_path, "model=tiny-random", "data=local", "eval=none",
                          f"output_root={tmp_path / 'out'}")
    assert "data=local needs data.forget_path=" in line


def test_corpus_of_another_format_says_what_was_found(monkeypatch, capsys, tmp_path, corpus_files):
    table = tmp_path / "forget.csv"
    table.write_text("text\nsome document\n")
    line = precheck_error(monkeypatch, capsys, tmp_path, *tiny(tmp_path, corpus_files, f"data.forget_path={table}"))
    assert f"forget corpus file {table}: found a .csv file, expected a .jsonl or .json file" in line


@pytest.mark.parametrize("argument,expected", [
    ("eval.include_paths=[/no/such/tasks]", "eval.include_paths: found nothing (no such file or directory) at "
                                            "/no/such/tasks, expected a directory of lm-eval task YAML files"),
    ("eval.probes.forget_path=/no/such/heldout.jsonl", "eval.probes.forget_path: found nothing (no such file or "
                                                       "directory) at /no/such/heldout.jsonl, expected a held-out"),
])
def test_precheck_rejects_eval_paths(monkeypatch, capsys, tmp_path, corpus_files, argument, expected):
    line = precheck_error(monkeypatch, capsys, tmp_path, *tiny(tmp_path, corpus_files, "eval=demo", argument))
    assert expected in line


def test_task_directory_that_is_a_file_says_so(monkeypatch, capsys, tmp_path, corpus_files):
    task_file = tmp_path / "my_task.yaml"
    task_file.write_text("task: my_task\n")
    line = precheck_error(monkeypatch, capsys, tmp_path, *tiny(tmp_path, corpus_files, "eval=demo",
                                                                f"eval.include_paths=[{task_file}]"))
    assert f"eval.include_paths: found a .yaml file at {task_file}, expected a directory" in line


def test_unwritable_output_directory(monkeypatch, capsys, tmp_path, corpus_files):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = precheck_error(monkeypatch, capsys, tmp_path, *tiny(tmp_path, corpus_files), f"output_root={blocker}/runs")
    assert "cannot write the output directory" in line and "output_root=" in line


@pytest.mark.parametrize("swept", ["save_model=true,false", "logger.mode=offline,disabled"])
def test_sweeping_a_key_left_out_of_run_names(monkeypatch, capsys, tmp_path, corpus_files, swept):
    sweep_dir = tmp_path / "out" / "sweep"
    line = precheck_error(monkeypatch, capsys, tmp_path, "--multirun", *tiny(tmp_path, corpus_files), swept,
                          f"hydra.sweep.dir={sweep_dir}")
    assert f"cannot sweep {swept.split('=')[0]}: it is left out of run-directory names" in line
    assert "run one multirun per value" in line


def test_lookalike_letters_are_replaced_with_a_warning(capsys):
    assert normalize_argument("method=rn\u0430") == "method=rna"  # Cyrillic a
    warning = capsys.readouterr().err
    assert "'\u0430' (U+0430)" in warning and "running method=rna" in warning


@pytest.mark.parametrize("argument,replaced", [
    ("method=rm\u03c5", "'\u03c5' (U+03C5)"),  # Greek upsilon
    ("method=\uff52mu", "'\uff52' (U+FF52)"),  # fullwidth r
])
def test_lookalikes_from_unicode_data_are_replaced(capsys, argument, replaced):
    assert normalize_argument(argument) == "method=rmu"
    warning = capsys.readouterr().err
    assert replaced in warning and "running method=rmu" in warning


def test_lookalike_argument_runs_end_to_end(tmp_path, corpus_files):
    done = unlearn(*tiny(tmp_path, corpus_files, "method=rn\u0430", "steps=2"))
    assert done.returncode == 0, done.stderr
    assert "U+0430" in done.stderr
    manifest = json.loads(next((tmp_path / "out").glob("*/*/manifest.json")).read_text())
    assert manifest["method"] == "rna" and manifest["status"] == "completed"


def _in_job_failure(tmp_path: Path, done, expected: str, training_started: bool = False) -> dict:
    """Found inside the job: exit 1, one error line, and only the failure record in the run directory (plus
    what training had written, when it had started)."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], done.stderr
    run = next(p for p in (tmp_path / "out").glob("*/*") if p.is_dir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and expected in manifest["error"]
    record = {"manifest.json", "config.yaml", ".hydra", "__main__.log"}
    if training_started:
        record |= {"control_vectors.safetensors", "metrics.jsonl"}
    assert {p.name for p in run.iterdir()} <= record
    return manifest


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_corrupt_jsonl_line_names_file_and_line(tmp_path, corpus_files):
    forget, retain = corpus_files
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({"text": f"doc {i}"}) for i in range(5)] + ['{"text": oops'])
    done = unlearn(*tiny(tmp_path, (bad, retain)))
    _in_job_failure(tmp_path, done, f"{bad}:6: not valid JSON")


def test_missing_text_field(tmp_path, corpus_files):
    _, retain = corpus_files
    bad = write_lines(tmp_path / "f.jsonl", [json.dumps({"body": "x"})] * 20)
    done = unlearn(*tiny(tmp_path, (bad, retain)))
    _in_job_failure(tmp_path, done, "no field 'text' (found: body): set the text field to the one that holds the text")


def test_binary_corpus_says_it_is_not_text(tmp_path, corpus_files):
    _, retain = corpus_files
    packed = tmp_path / "forget.jsonl"
    packed.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(128, 256)))  # a gzip file under a .jsonl name
    done = unlearn(*tiny(tmp_path, (packed, retain)))
    _in_job_failure(tmp_path, done, f"corpus file {packed} is not UTF-8 text")


def test_empty_corpus(tmp_path, corpus_files):
    _, retain = corpus_files
    empty = write_lines(tmp_path / "empty.jsonl", [json.dumps({"text": "  "})])
    done = unlearn(*tiny(tmp_path, (empty, retain)))
    _in_job_failure(tmp_path, done, "has no non-empty documents")


def test_a_json_array_is_told_to_be_json_lines(tmp_path, corpus_files):
    _, retain = corpus_files
    array = tmp_path / "forget.json"
    array.write_text(json.dumps([{"text": f"doc {i}"} for i in range(20)], indent=2))
    done = unlearn(*tiny(tmp_path, (array, retain)))
    _in_job_failure(tmp_path, done, f"{array} is one JSON array; expected one JSON object per line (JSON Lines): "
                                    "convert it, e.g. jq -c '.[]' forget.json > forget.jsonl")


@pytest.mark.parametrize("value,shown", [(None, "null"), (["a", "b"], '["a", "b"]'), (3, "3")])
def test_a_text_that_is_not_a_string_names_file_and_line(tmp_path, corpus_files, value, shown):
    """Not trained on as the document "None" or "['a', 'b']"."""
    _, retain = corpus_files
    bad = write_lines(tmp_path / "f.jsonl", [json.dumps({"text": f"doc {i}"}) for i in range(19)] + [json.dumps({"text": value})])
    done = unlearn(*tiny(tmp_path, (bad, retain)))
    _in_job_failure(tmp_path, done, f"{bad}:20: field 'text' holds {shown}, not a string")


def test_corpus_too_small_for_the_steps(tmp_path, corpus_files):
    done = unlearn(*tiny(tmp_path, corpus_files, "steps=50"))
    _in_job_failure(tmp_path, done, "the forget corpus has 40 documents but steps=50 with batch_size=4 needs 200: "
                                    "lower steps or batch_size, or set data.cycle=true")


def test_non_finite_loss_names_the_step(tmp_path, corpus_files):
    # c = 1e30: (c*u)^2 overflows float32 at the first step, as fp16 activations do on real models
    done = unlearn(*tiny(tmp_path, corpus_files, "method.steering_coeff=1e30"))
    manifest = _in_job_failure(tmp_path, done, "the loss became inf at step 0 (topic 'local')", training_started=True)
    assert "lower lr or the method's coefficients" in manifest["error"]
    assert "fp16" not in manifest["error"]  # a float32 run: no dtype advice


def test_out_of_memory_suggests_smaller_batches(tmp_path, corpus_files, monkeypatch):
    import torch
    from hydra import compose, initialize_config_dir

    import unlearn.run as run_module
    from unlearn.cli import CONF_DIR
    from unlearn.errors import UnlearnError

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(run_module, "train", out_of_memory)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=tiny(tmp_path, corpus_files))
    (tmp_path / "run").mkdir()
    with pytest.raises(UnlearnError, match="out of memory: lower batch_size or max_length"):
        run_module.run(cfg, tmp_path / "run", save_model=False)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"


def test_tokenizer_without_pad_token_pads_with_eos():
    from unlearn.models import byte_tokenizer, load_model

    assert byte_tokenizer().pad_token is None
    _, tokenizer = load_model("tiny://llama")
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"


@pytest.mark.parametrize("argument,expected", [
    ("+eval.batch_sise=4", "error: eval.batch_sise is not a key of eval: did you mean eval.batch_size? the keys there "
                           "are name, tasks, forget_tasks"),
    ("eval.num_fewshot=abc", "error: eval.num_fewshot='abc' is not an integer: give an integer, e.g. eval.num_fewshot=..."),
    ("eval.probes.max_length=???", "error: eval.probes.max_length is required but not set: give "
                                   "eval.probes.max_length=..."),
    ("method.beta=high", "error: method.beta='high' is not a number"),
    ("+data.topics.local.forget.bogus=1", "error: data.topics.local.forget.bogus is not a key of data.topics.local."
                                          "forget: the keys there are path, text_field, max_length, name, split, raw_lines"),
    ("+data.topics.local.keyword=[x]", "error: data.topics.local.keyword is not a key of data.topics.local: did you "
                                       "mean data.topics.local.keywords?"),
    ("+data.chunks=true", "error: data.chunks is not a key of data: did you mean data.chunk? the keys there are name, "
                          "cycle, shuffle, chunk, exclude, topics, forget_path, retain_path, text_field, max_length"),
    ("data.topics.local.forget.max_length=abc", "error: data.topics.local.forget.max_length='abc' is not an integer: "
                                                "give an integer, e.g. data.topics.local.forget.max_length=..."),
    ("data.max_length=abc", "error: data.max_length='abc' is not an integer"),
    ("model.trust_remote_code=maybe", "error: model.trust_remote_code='maybe' is not true or false: give true or false"),
    ("model.recipe.lr=fast", "error: model.recipe.lr='fast' is not a number"),
    ("data.topics.local.retain.text_field=???", "error: data.topics.local.retain.text_field is required but not set"),
])
def test_the_schema_rejects_through_the_cli(tmp_path, corpus_files, argument, expected):
    """OmegaConf enforces the schemas (unlearn/schema.py): an unknown key, a wrong type, a required key left
    unset are each one line with the fix, exit 2, before anything is written. A key added with `+` below
    data is checked too (Hydra adds it unchecked; unlearn.config merges data into its schema again)."""
    args = [a for a in tiny(tmp_path, corpus_files) if not a.startswith("eval=")]
    method = ["method=adaptive_rmu"] if argument.startswith("method.") else []
    done = unlearn(*args, "eval=demo", *method, argument)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), done.stderr
    assert "the same command with --cfg job lists every key" in lines[0]
    assert not (tmp_path / "out").exists()
