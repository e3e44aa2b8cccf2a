"""unlearn.evaluation on the tiny random Llama, offline: lm-eval in memory, robustness, probes, cache, errors.

The demo task YAMLs shipped in the package are copied beside small fixture question sets
(tests/fixtures/eval), so these tests run whether or not the bundled question data exists.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F

from unlearn.cli import config_errors
from unlearn.errors import UnlearnError
from unlearn.evaluation import check_tasks, eval_spec, evaluate, format_table, suite
from unlearn.evaluation.probes import probe_statistics, probe_sums
from unlearn.evaluation.robustness import insert_keyword, perturbed_task_config
from unlearn.evaluation.tasks import build, find_tasks, task_config
from unlearn.schema import EvalSpec

from tests.conftest import DEMO_TASKS, demo_tasks_with_fixtures, eval_preset
from tests.test_cli import only_run_dir, tiny_args, unlearn

FORGET_DOCS, RETAIN_DOCS = 6, 8  # rows in the fixture question sets
KEYWORDS = {"virology": ["virus", "gain-of-function research"]}

GROUP_YAML = """\
group: demo_all
task: [demo_forget, demo_retain]
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """The packaged demo task YAMLs with the fixture questions, plus a group of both tasks."""
    folder = demo_tasks_with_fixtures(tmp_path_factory.mktemp("tasks"))
    (folder / "demo_all.yaml").write_text(GROUP_YAML)
    return folder


def demo_config(task_dir: Path, **overrides) -> dict:
    """eval=demo reading tasks from `task_dir`; overrides as key=value or section__key=value."""
    cfg = eval_preset("demo")
    cfg["include_paths"] = [str(task_dir)]
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            cfg[section][leaf] = value
        else:
            cfg[key] = value
    return cfg


def run(model, tokenizer, spec, **kwargs):
    kwargs.setdefault("keywords", KEYWORDS)
    kwargs.setdefault("probe_texts", None)
    return evaluate(model, tokenizer, spec, unlearn_layer=7, control_vectors={}, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("preset", ["demo", "wmdp_mmlu", "none"])
def test_every_preset_validates(preset):
    spec = eval_spec(eval_preset(preset))
    if preset == "none":  # evaluates nothing: no spec, and none of the settings it leaves unset are read
        assert spec is None
        return
    assert spec.name == preset and spec.tasks
    assert set(spec.forget_tasks) | set(spec.retain_tasks) <= set(spec.tasks)


def test_wmdp_mmlu_names_are_lm_eval_tasks():
    spec = eval_spec(eval_preset("wmdp_mmlu"))
    manager = find_tasks(spec.tasks + spec.robustness.tasks, ())
    assert "mmlu" in manager.all_groups
    assert {"wmdp_bio", "wmdp_cyber", "mmlu_virology", "mmlu_computer_security"} <= set(manager.all_tasks)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"batch_size": 0}, "eval.batch_size"),
        ({"robustness__position": "middle"}, "eval.robustness.position='middle' is not a valid choice: give one of start, end, random"),
        ({"forget_tasks": ["demo_elsewhere"]}, "eval.tasks does not run"),
        ({"limit": 2.5}, "eval.limit"),
        ({"probes__forget_path": None}, "eval.probes.forget_path"),
    ],
)
def test_bad_settings_name_the_key(overrides, expected, task_dir):
    with pytest.raises(UnlearnError, match=expected):
        with config_errors():  # the schema's own refusals (a closed choice), worded as the CLI words them
            eval_spec(demo_config(task_dir, **overrides))


def test_misspelt_key_suggests_the_right_one(task_dir):
    cfg = demo_config(task_dir)
    cfg["batch_sise"] = cfg.pop("batch_size")
    with pytest.raises(UnlearnError, match="eval.batch_sise is not a key of eval: did you mean eval.batch_size"):
        with config_errors():  # OmegaConf's error, worded as the CLI words it
            eval_spec(cfg)


# ---------------------------------------------------------------------------------------------------------
# lm-eval in memory


def test_demo_tasks_run_in_memory_at_the_configured_batch_size(tiny, task_dir, tmp_path, monkeypatch):
    """Tasks, a group holding them and robustness in one lm-eval run, from an unrelated working directory."""
    model, tokenizer = tiny
    batch_rows = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: batch_rows.append((args[0] if args else kwargs["input_ids"]).shape[0]),
        with_kwargs=True)
    monkeypatch.chdir(tmp_path)  # the tasks' custom_dataset reads the files beside the YAML, from anywhere
    spec = eval_spec(demo_config(task_dir, tasks=["demo_all", "demo_forget", "demo_retain"], batch_size=8))
    model.train()  # evaluation must leave the caller's mode alone
    torch.manual_seed(7)
    expected_draw = torch.rand(3)
    torch.manual_seed(7)

    try:
        results = run(model, tokenizer, spec)
    finally:
        hook.remove()

    json.dumps(results)  # goes into results.json as it is
    assert torch.equal(torch.rand(3), expected_draw)  # simple_evaluate's reseeding does not leak out
    assert model.training
    model.eval()
    tasks = results["tasks"]
    assert set(tasks) == {"demo_all", "demo_forget", "demo_retain"}
    assert (tasks["demo_forget"]["n"], tasks["demo_retain"]["n"], tasks["demo_all"]["n"]) == (6, 8, 14)
    for metrics in tasks.values():
        assert 0.0 <= metrics["acc"] <= 1.0
    assert 0.0 <= tasks["demo_forget"]["acc_norm"] <= 1.0
    assert results["lm_eval_version"] == __import__("lm_eval").__version__
    assert results["domains"] == {"forget": ["demo_forget"], "retain": ["demo_retain"]}
    assert (results["forget_acc"], results["retain_acc"]) == (tasks["demo_forget"]["acc"], tasks["demo_retain"]["acc"])
    # 14 clean + 2 keywords x 8 perturbed questions, each question's context once, 8 contexts at a time
    assert max(batch_rows) == 8
    assert len(batch_rows) <= (14 + 16) // 8 + 4

    robustness = results["robustness"]
    assert robustness["clean"] == pytest.approx(tasks["demo_retain"]["acc"])
    assert set(robustness["keywords"]) == set(KEYWORDS["virology"])
    for entry in robustness["keywords"].values():
        assert entry["topic"] == "virology"
        assert entry["drop"] == pytest.approx(robustness["clean"] - entry["perturbed"])
    assert robustness["drop"] == pytest.approx(robustness["clean"] - robustness["perturbed"])
    assert robustness["tasks"]["demo_retain"]["n"] == RETAIN_DOCS


def test_num_fewshot_reaches_tasks_whose_yaml_says_zero(tiny, task_dir):
    """The demo tasks' YAML says `num_fewshot: 0`, and lm-eval leaves a requested num_fewshot unapplied then; the
    evaluation runs copies of their configs instead, so 2 examples really go in each prompt (lm-eval's own
    n-shot record), and a group's accuracy is its tasks' size-weighted mean (6 and 8 questions)."""
    spec = eval_spec(demo_config(task_dir, tasks=["demo_all"], forget_tasks=[], retain_tasks=[],
                                            num_fewshot=2, robustness__enabled=False))
    tasks = run(*tiny, spec)["tasks"]
    assert {name: metrics["num_fewshot"] for name, metrics in tasks.items() if name != "demo_all"} == \
        {"demo_forget": 2, "demo_retain": 2}
    forget, retain = tasks["demo_forget"], tasks["demo_retain"]
    assert tasks["demo_all"]["n"] == 14
    assert tasks["demo_all"]["acc"] == pytest.approx((6 * forget["acc"] + 8 * retain["acc"]) / 14)


def test_limit_caps_documents(tiny, task_dir):
    spec = eval_spec(demo_config(task_dir, limit=3, robustness__enabled=False))
    results = run(*tiny, spec)
    assert [m["n"] for m in results["tasks"].values()] == [3, 3]
    assert results["robustness"] is None and results["probes"] is None


# ---------------------------------------------------------------------------------------------------------
# Robustness


def test_insert_keyword_positions():
    question = "Which planet is closest to the Sun?"
    rng = random.Random(0)
    assert insert_keyword(question, "SARS-CoV-2", position="start", insertions=1, rng=rng) == \
        "SARS-CoV-2 Which planet is closest to the Sun?"
    assert insert_keyword(question, "SARS-CoV-2", position="end", insertions=2, rng=rng) == \
        "Which planet is closest to the Sun? SARS-CoV-2 SARS-CoV-2"
    perturbed = insert_keyword(question, "reverse genetics", position="random", insertions=1, rng=random.Random(1))
    assert perturbed.replace("reverse genetics ", "", 1).replace(" reverse genetics", "", 1) == question
    assert perturbed == insert_keyword(question, "reverse genetics", position="random", insertions=1,
                                       rng=random.Random(1))  # seeded


@pytest.mark.parametrize("position", ["start", "end", "random"])
def test_perturbed_task_prompts_hold_the_keyword(position, task_dir):
    spec = eval_spec(demo_config(task_dir))
    manager = find_tasks(("demo_retain",), (task_dir,))
    [clean] = build(manager, "demo_retain")
    perturbed_cfg = perturbed_task_config(
        task_config(clean), task_name="demo_retain_kw", keyword="virus", field="question", position=position,
        insertions=1, seed=spec.robustness.seed,
    )
    [perturbed] = manager.load([perturbed_cfg])["tasks"].values()  # as simple_evaluate builds it
    clean_docs, perturbed_docs = list(clean.eval_docs), list(perturbed.eval_docs)
    assert len(perturbed_docs) == len(clean_docs) == RETAIN_DOCS
    insertion_points = set()
    for clean_doc, doc in zip(clean_docs, perturbed_docs):
        prompt = perturbed.doc_to_text(doc)
        question = clean_doc["question"]
        assert perturbed.doc_to_choice(doc) == clean.doc_to_choice(clean_doc)  # scored exactly like the clean task
        assert perturbed.doc_to_target(doc) == clean.doc_to_target(clean_doc)
        if position == "start":
            assert prompt == f"Question: virus {question}\nAnswer:"
        elif position == "end":
            assert prompt == f"Question: {question} virus\nAnswer:"
        else:
            words = doc["question"].split(" ")
            assert words.count("virus") == 1 and len(words) == len(question.split(" ")) + 1
            assert [w for w in words if w != "virus"] == question.split(" ")
            insertion_points.add(words.index("virus"))
            assert prompt == f"Question: {doc['question']}\nAnswer:"
    if position == "random":
        assert len(insertion_points) > 1  # not one fixed place


# ---------------------------------------------------------------------------------------------------------
# Probes


def test_probes_match_a_direct_computation(tiny):
    """Batched with left padding (and the hook) == one document at a time via output_hidden_states.

    For each document alone: h = hidden_states[l + 1] (the output of block l), positions without BOS;
    norm = mean |h_t|, cosine = mean cos(h_t, u), confidence = mean max softmax(logits_t).
    """
    model, tokenizer = tiny
    layer = 7
    texts = {
        "forget": ["A virus is a tiny infectious agent.", "Phages infect bacteria.", "Capsids protect genomes."],
        "retain": ["Paris is the capital of France, on the Seine."],
    }
    u = {"virology": F.normalize(torch.randn(64, generator=torch.Generator().manual_seed(0)), dim=0)}
    sums = probe_sums(model, tokenizer, texts, unlearn_layer=layer, max_documents=10, max_length=64, batch_size=2)
    got = probe_statistics(json.loads(json.dumps(sums)), unlearn_layer=layer, control_vectors=u)  # as cached

    for name, documents in texts.items():
        norms, cosines, confidences = [], [], []
        for text in documents:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                out = model(input_ids=ids, output_hidden_states=True)
            h = out.hidden_states[layer + 1][0, 1:]  # drop the BOS position
            norms += h.norm(dim=-1).tolist()
            cosines += F.cosine_similarity(h, u["virology"][None], dim=-1).tolist()
            confidences += out.logits[0, 1:].softmax(-1).max(-1).values.tolist()
        stats = got[name]
        assert stats["tokens"] == len(norms)
        assert stats["mean_norm"] == pytest.approx(sum(norms) / len(norms), rel=1e-4)
        assert stats["cosine"]["virology"] == pytest.approx(sum(cosines) / len(cosines), abs=1e-5)
        assert stats["confidence"] == pytest.approx(sum(confidences) / len(confidences), rel=1e-4)
    assert got["layer"] == layer


def test_probes_run_inside_evaluate(tiny, task_dir):
    spec = eval_spec(demo_config(task_dir, tasks=[], forget_tasks=[], retain_tasks=[],
                                            robustness__enabled=False))
    u = {"virology": F.normalize(torch.ones(64), dim=0)}
    results = evaluate(*tiny, spec, unlearn_layer=3, control_vectors=u, keywords={},
                       probe_texts={"forget": ["virus"] * 30, "retain": ["river"]})
    assert results["tasks"] == {}
    assert results["probes"]["forget"]["documents"] == spec.probes.max_documents
    assert set(results["probes"]["retain"]["cosine"]) == {"virology"}


# ---------------------------------------------------------------------------------------------------------
# Before-cache


def test_the_base_models_probe_sums_are_cached_and_serve_any_control_vector(tiny, task_dir, tmp_path, monkeypatch):
    """The probes' model work for the base model is done once; another run's control vector (another seed) gets
    its cosines from the same sums, equal to a fresh computation; the trained model (no cache key) is always
    probed."""
    calls = []
    real = suite.probe_sums
    monkeypatch.setattr(suite, "probe_sums", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = eval_spec(demo_config(task_dir, tasks=[], forget_tasks=[], retain_tasks=[], robustness__enabled=False))
    texts = {"forget": ["A virus is a tiny infectious agent.", "Phages infect bacteria."], "retain": ["Paris."]}
    probes = {}
    for seed in (0, 1):
        u = {"virology": F.normalize(torch.randn(64, generator=torch.Generator().manual_seed(seed)), dim=0)}
        probes[seed] = evaluate(*tiny, spec, unlearn_layer=3, control_vectors=u, keywords={}, probe_texts=texts,
                                cache_key="tiny://llama", cache_dir=tmp_path)["probes"]
        fresh = evaluate(*tiny, spec, unlearn_layer=3, control_vectors=u, keywords={}, probe_texts=texts)["probes"]
        assert probes[seed] == fresh  # JSON keeps a float exactly
    assert len(calls) == 3  # the base model once, the uncached evaluation twice
    assert probes[0]["forget"]["cosine"] != probes[1]["forget"]["cosine"]
    assert probes[0]["forget"]["mean_norm"] == probes[1]["forget"]["mean_norm"]
    evaluate(*tiny, spec, unlearn_layer=4, control_vectors={}, keywords={}, probe_texts=texts,
             cache_key="tiny://llama", cache_dir=tmp_path)  # another layer: probed again
    assert len(calls) == 4



def test_base_model_results_are_cached(tiny, task_dir, tmp_path, monkeypatch):
    calls = []
    real = suite.run_tasks
    monkeypatch.setattr(suite, "run_tasks", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = eval_spec(demo_config(task_dir, limit=1))

    first = run(*tiny, spec, cache_key="tiny://llama", cache_dir=tmp_path)
    second = run(*tiny, spec, cache_key="tiny://llama", cache_dir=tmp_path)
    assert len(calls) == 1
    assert (first["from_cache"], second["from_cache"]) == (False, True)
    assert second["tasks"] == first["tasks"] and second["robustness"] == first["robustness"]
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]  # no temporary file left behind

    run(*tiny, spec, cache_key="tiny://llama", cache_dir=tmp_path, keywords={"virology": ["pathogen"]})
    run(*tiny, eval_spec(demo_config(task_dir, limit=2)), cache_key="tiny://llama", cache_dir=tmp_path)
    run(*tiny, eval_spec(demo_config(task_dir, limit=1, scorer="hflm")),  # numbers of another scorer
        cache_key="tiny://llama", cache_dir=tmp_path)
    run(*tiny, spec)  # no cache key: the trained model, always evaluated
    assert len(calls) == 5


def test_the_cache_is_keyed_on_what_the_tasks_say_not_where_their_files_are(tiny, task_dir, tmp_path, monkeypatch):
    """The same task files in another folder (another checkout, another install) read the base model's results
    cached from the first; an edited question does not."""
    calls = []
    real = suite.run_tasks
    monkeypatch.setattr(suite, "run_tasks", lambda *a, **k: calls.append(1) or real(*a, **k))
    moved = shutil.copytree(task_dir, tmp_path / "elsewhere" / "tasks")
    cache_dir = tmp_path / "cache"
    run(*tiny, eval_spec(demo_config(task_dir, limit=1)), cache_key="tiny://llama", cache_dir=cache_dir)
    assert run(*tiny, eval_spec(demo_config(moved, limit=1)), cache_key="tiny://llama", cache_dir=cache_dir)["from_cache"]
    assert len(calls) == 1

    questions = moved / "demo_forget.jsonl"
    first, *rest = questions.read_text().splitlines()
    edited = {**json.loads(first), "question": json.loads(first)["question"] + " (edited)"}
    questions.write_text("\n".join([json.dumps(edited), *rest]) + "\n")
    assert not run(*tiny, eval_spec(demo_config(moved, limit=1)), cache_key="tiny://llama", cache_dir=cache_dir)["from_cache"]
    assert len(calls) == 2


def test_a_cache_write_cut_short_keeps_the_old_file(tmp_path, monkeypatch):
    from unlearn.evaluation import cache

    path = tmp_path / "entry.json"
    cache.write(path, {"model": "a"}, {"acc": 0.5})

    def killed(*_args):
        raise KeyboardInterrupt  # as if the job were stopped between writing and renaming

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.write(path, {"model": "a"}, {"acc": 0.9})
    assert cache.read(path, {"model": "a"}) == {"acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["entry.json"]  # the temporary file is gone too


# ---------------------------------------------------------------------------------------------------------
# Offline and bad input


def test_offline_hub_task_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)  # older datasets: HF_DATASETS_OFFLINE (set by conftest)
    spec = eval_spec(eval_preset("wmdp_mmlu"))
    with pytest.raises(UnlearnError) as error:
        check_tasks(spec)
    message = str(error.value)
    assert "\n" not in message
    assert "wmdp_bio" in message and "cais/wmdp" in message
    assert "eval=demo" in message and "HF_DATASETS_OFFLINE" in message


def test_offline_hub_task_fails_in_evaluate_before_any_scoring(tiny, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)  # older datasets: HF_DATASETS_OFFLINE (set by conftest)
    monkeypatch.setattr(suite, "run_tasks", lambda *a, **k: pytest.fail("lm-eval should not run"))
    spec = eval_spec(eval_preset("wmdp_mmlu"))
    with pytest.raises(UnlearnError, match="cais/wmdp"):
        run(*tiny, spec)


def test_unknown_task_suggests_the_close_match():
    cfg = eval_preset("wmdp_mmlu")
    cfg.update(tasks=["mmlu_virolgy"], forget_tasks=[], retain_tasks=[])
    cfg["robustness"]["enabled"] = False
    with pytest.raises(UnlearnError, match=r"unknown lm-eval task 'mmlu_virolgy' \(did you mean mmlu_virology"):
        check_tasks(eval_spec(cfg))


def test_invalid_task_yaml_is_named(tmp_path):
    (tmp_path / "good.yaml").write_text("task: fine\ndataset_path: json\n")
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    spec = eval_spec(demo_config(tmp_path, tasks=["fine"], forget_tasks=[], retain_tasks=[],
                                            robustness__enabled=False))
    with pytest.raises(UnlearnError, match=r"broken\.yaml is not valid lm-eval task YAML"):
        check_tasks(spec)
    (tmp_path / "broken.yaml").write_text("dataset_path: json\n")
    with pytest.raises(UnlearnError, match=r"broken\.yaml defines no task"):
        check_tasks(spec)


def test_tasks_are_built_once_per_process_and_again_when_a_file_changes(tmp_path, monkeypatch):
    """The pre-check, the job's plan, each evaluation and each attack share the built tasks; an edited task or
    data file in an include directory is read again."""
    demo_tasks_with_fixtures(tmp_path)
    built = []
    real_build = suite.build
    monkeypatch.setattr(suite, "build", lambda manager, name: built.append(name) or real_build(manager, name))
    spec = eval_spec(demo_config(tmp_path))
    check_tasks(spec)
    check_tasks(spec)
    leaves = suite.forget_leaves(spec)
    assert sorted(built) == ["demo_forget", "demo_retain"]
    questions = (tmp_path / "demo_forget.jsonl").read_text().splitlines(keepends=True)
    assert len(leaves[0].eval_docs) == len(questions) > 3
    (tmp_path / "demo_forget.jsonl").write_text("".join(questions[:3]))
    assert len(suite.forget_leaves(spec)[0].eval_docs) == 3
    assert sorted(built) == ["demo_forget", "demo_forget", "demo_retain", "demo_retain"]


def _lonely_task(tmp_path: Path, data_file: str, builder: str = "json") -> EvalSpec:
    (tmp_path / "lonely.yaml").write_text(
        f"task: lonely\ndataset_path: {builder}\ndataset_kwargs: {{data_files: {{test: {data_file}}}}}\n"
    )
    return eval_spec(demo_config(tmp_path, tasks=["lonely"], forget_tasks=[], retain_tasks=[],
                                            robustness__enabled=False))


def test_missing_data_file_is_named(tmp_path, monkeypatch):
    """Relative data_files are read from the working directory, as lm-eval reads them, and the message says so."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnlearnError, match=r"reads lonely\.jsonl \(relative paths are read from the working "
                                           r"directory .*\): found nothing \(no such file or directory\), "
                                           r"expected a \.json or \.jsonl file"):
        check_tasks(_lonely_task(tmp_path, "lonely.jsonl"))


def test_data_file_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "questions.jsonl").mkdir()
    with pytest.raises(UnlearnError, match=r"questions\.jsonl: found a directory, expected a \.json or \.jsonl"):
        check_tasks(_lonely_task(tmp_path, str(tmp_path / "questions.jsonl")))


def test_data_file_of_another_format_says_which(tmp_path):
    (tmp_path / "questions.parquet").write_bytes(b"PAR1")
    with pytest.raises(UnlearnError, match=r"with dataset_path: json: found a \.parquet file, expected a "
                                           r"\.json or \.jsonl file \(or set dataset_path"):
        check_tasks(_lonely_task(tmp_path, str(tmp_path / "questions.parquet")))


def test_include_path_that_is_a_file_says_so(tmp_path):
    task_file = tmp_path / "demo_forget.yaml"
    task_file.write_text("task: demo_forget\n")
    cfg = demo_config(tmp_path)
    cfg["include_paths"] = [str(task_file)]
    with pytest.raises(UnlearnError, match=r"eval.include_paths: found a \.yaml file at .*demo_forget\.yaml, "
                                           r"expected a directory of lm-eval task YAML files"):
        check_tasks(eval_spec(cfg))


def test_include_of_a_missing_template_is_named(tmp_path):
    (tmp_path / "child.yaml").write_text("task: child\ninclude: _missing_template_yaml\n")
    spec = eval_spec(demo_config(tmp_path, tasks=["child"], forget_tasks=[], retain_tasks=[],
                                            robustness__enabled=False))
    with pytest.raises(UnlearnError, match=r"includes _missing_template_yaml: found nothing"):
        check_tasks(spec)


def test_missing_probe_text_is_named(task_dir):
    spec = eval_spec(demo_config(task_dir, probes__forget_path="pkg://unlearn/data/demo/nothing.jsonl"))
    with pytest.raises(UnlearnError, match=r"eval.probes.forget_path: found nothing \(no such file or directory\) at "
                                          r"pkg://unlearn/data/demo/nothing.jsonl, expected a held-out JSONL"):
        check_tasks(spec)


def test_robustness_needs_a_yaml_task(task_dir):
    spec = eval_spec(demo_config(task_dir, robustness__tasks=["demo_all"]))
    with pytest.raises(UnlearnError, match="'demo_all' is a group"):
        check_tasks(spec)


# ---------------------------------------------------------------------------------------------------------
# Console table


def test_format_table_shows_before_after_and_change():
    before = {"tasks": {"demo_forget": {"acc": 0.5}, "demo_retain": {"acc": 0.75}},
              "domains": {"forget": ["demo_forget"], "retain": ["demo_retain"]}}
    after = {"tasks": {"demo_forget": {"acc": 0.25}, "demo_retain": {"acc": 0.7}},
             "domains": {"forget": ["demo_forget"], "retain": ["demo_retain"]},
             "robustness": {"clean": 0.7, "perturbed": 0.6, "drop": 0.1},
             "probes": {"layer": 7, "forget": {"mean_norm": 6.2, "cosine": {"virology": 0.9}, "confidence": 0.1}}}
    table = format_table(before, after).splitlines()
    assert table[0].split() == ["task", "before", "after", "change"]
    assert table[1].split() == ["demo_forget", "(forget)", "50.0", "25.0", "-25.0"]
    assert table[2].split() == ["demo_retain", "(retain)", "75.0", "70.0", "-5.0"]
    assert any(line.split()[:3] == ["robustness", "drop", "-"] for line in table)
    assert any("cos u[virology]" in line for line in table)
    assert format_table(None, {"tasks": {}}) == "(nothing evaluated)"


@pytest.mark.skipif(not (DEMO_TASKS / "demo_forget.jsonl").exists() or not (DEMO_TASKS / "demo_retain.jsonl").exists(),
                    reason="the bundled demo questions are not written yet")
def test_bundled_demo_preset_runs_from_any_directory(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = eval_preset("demo")
    cfg["limit"] = 2
    cfg["probes"]["enabled"] = False  # its held-out texts are another test's business
    spec = eval_spec(cfg)
    check_tasks(spec)
    results = run(*tiny, spec)
    assert [m["n"] for m in results["tasks"].values()] == [2, 2]


BENCHMARK_PRESET = """\
defaults: [base, _self_]
name: my_bench
include_paths: [{tasks}]
tasks: [demo_forget, demo_retain]
forget_tasks: [demo_forget]
retain_tasks: [demo_retain]
robustness: {{tasks: [demo_retain]}}
limit: 3
"""


def test_a_benchmark_preset_of_ten_lines_extends_the_base(tmp_path, corpus_files, task_dir):
    """A preset of one's own names its tasks; every other setting comes from conf/eval/base.yaml."""
    (tmp_path / "my_conf/eval").mkdir(parents=True)
    (tmp_path / "my_conf/eval/my_bench.yaml").write_text(BENCHMARK_PRESET.format(tasks=task_dir))
    done = unlearn("--config-dir", str(tmp_path / "my_conf"),
                   *tiny_args(tmp_path, corpus_files, "eval=my_bench", "eval.before=false", "steps=1",
                              "data.topics.local.keywords=[virus]"))
    assert done.returncode == 0, done.stderr
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    assert results["after"]["settings"] == {"limit": 3, "num_fewshot": 0, "batch_size": 32}  # limit: the preset's; the rest: the base's
    assert set(results["after"]["tasks"]) == {"demo_forget", "demo_retain"}
    assert results["after"]["robustness"]["position"] == "random"  # the base's robustness settings
    assert results["after"]["probes"] is None  # off in the base: a benchmark ships no held-out text
