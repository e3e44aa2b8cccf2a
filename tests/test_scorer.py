"""SharedContextLM against lm-eval's HFLM: the same per-request log-likelihoods (within 1e-4, float32 on CPU), the
same greedy flags and the same accuracies, on requests built to hit each edge of HFLM's encoding and on whole
evaluations (demo tasks, their robustness variants, a WMDP-format letter task, a few-shot run); generation
falls back to HFLM; each context goes through the model once.
"""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM
from omegaconf import OmegaConf

from unlearn.evaluation import eval_spec, evaluate
from unlearn.evaluation.harness import run_tasks
from unlearn.evaluation.robustness import perturbed_task_config
from unlearn.evaluation.scorer import NAME, SharedContextLM
from unlearn.evaluation.tasks import build, find_tasks, task_config
from unlearn.models import load_model

from tests.conftest import eval_preset

REPO = Path(__file__).resolve().parent.parent
DEMO_TASKS = REPO / "unlearn/evaluation/tasks/demo"
FIXTURES = REPO / "tests/fixtures"
TOLERANCE = 1e-4

CONTEXTS = ["Question: What is the protein shell of a virus called?\nAnswer:",  # shared by several choices
            "Question: Which enzyme copies RNA into DNA?\nAnswer:",
            "Answer: cap",  # continuations that start mid-word
            "A context ending in a space ",  # the space moves to the continuation, as HFLM moves it
            "<s>A context that starts with the BOS text",
            "x" * 70]  # with max_length=48 below: left-truncated with its continuation
CHOICES = [" capsid", " reverse transcriptase", "sid", "s", " a much longer answer of several words"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("tiny://llama")
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """The packaged demo task YAMLs beside the fixture questions (6 forget, 8 retain)."""
    folder = tmp_path_factory.mktemp("tasks")
    for path in DEMO_TASKS.iterdir():
        if path.name.endswith(("yaml", ".py")):
            shutil.copy(path, folder)
    for path in (FIXTURES / "eval").glob("*.jsonl"):
        shutil.copy(path, folder)
    return folder


def requests() -> list[Instance]:
    pairs = [(context, choice) for context in CONTEXTS for choice in CHOICES]
    pairs += [("", " an empty context"), (CONTEXTS[0], " capsid")]  # BOS as the context; a repeated request
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def assert_same(reference, ours):
    assert len(ours) == len(reference)
    worst = max(abs(a - b) for (a, _), (b, _) in zip(reference, ours))
    assert worst < TOLERANCE, worst
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in reference]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt-neox"])
def test_each_request_scores_as_in_hflm(arch):
    model, tokenizer = load_model(f"tiny://{arch}")
    model.eval()
    for options in ({}, {"add_bos_token": False}, {"max_length": 48}):
        reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, **options)
        expected = reference.loglikelihood(requests(), disable_tqdm=True)
        for batch_size in (1, 3, 64):
            scorer = SharedContextLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **options)
            assert_same(expected, scorer.loglikelihood(requests(), disable_tqdm=True))


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_the_tokenizers_padding_side_changes_nothing(tiny, padding_side):
    model, tokenizer = tiny
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = padding_side
    expected = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4).loglikelihood(requests(), disable_tqdm=True)
    ours = SharedContextLM(pretrained=model, tokenizer=tokenizer, batch_size=5).loglikelihood(requests(),
                                                                                             disable_tqdm=True)
    assert_same(expected, ours)


def test_greedy_flags_agree_on_the_models_own_greedy_continuations(tiny):
    """A random model rarely predicts a text's next token; score (at the token level lm-eval's TemplateLM
    defines) continuations that are its own greedy choices, and the same with the last token changed."""
    model, tokenizer = tiny
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    scorer = SharedContextLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    token_requests = []
    for context_text in CONTEXTS[:3]:
        context = tokenizer.encode(context_text)
        greedy = []
        for _ in range(4):
            with torch.no_grad():
                greedy.append(int(model(torch.tensor([context + greedy])).logits[0, -1].argmax()))
        for length in (1, 2, 4):
            token_requests.append(((context_text, "greedy"), context, greedy[:length]))
            token_requests.append(((context_text, "changed"), context, greedy[: length - 1] + [(greedy[length - 1] + 1) % 256]))
    expected = reference._loglikelihood_tokens(token_requests, disable_tqdm=True)
    assert [greedy for _, greedy in expected] == [True, False] * 9
    assert_same(expected, scorer._loglikelihood_tokens(token_requests, disable_tqdm=True))


def test_requests_past_a_sliding_window_go_to_hflm():
    """A Mistral-type model attends over a sliding window; a request longer than it is scored by HFLM's own code
    (the packed row's mask has no window), shorter ones by the shared context: all as HFLM scores them."""
    from transformers import AutoModelForCausalLM, MistralConfig

    torch.manual_seed(0)
    _, tokenizer = load_model("tiny://llama")
    model = AutoModelForCausalLM.from_config(MistralConfig(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, sliding_window=40, bos_token_id=256, eos_token_id=257,
    )).eval()
    expected = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4).loglikelihood(requests(), disable_tqdm=True)
    assert_same(expected, SharedContextLM(pretrained=model, tokenizer=tokenizer, batch_size=4).loglikelihood(
        requests(), disable_tqdm=True))


def test_each_distinct_prefix_goes_through_the_model_once(tiny):
    """The sequences HFLM would run (32 requests over 7 contexts, one repeated) share prefixes: a row holds each
    of its sequences' prefixes once, a context and its continuations stay in one row, no row is wider than the
    widest context with its continuations, one forward pass takes them all (batch_size=64 rows), and the LM head
    runs only on the positions read."""
    model, tokenizer = tiny
    scorer = SharedContextLM(pretrained=model, tokenizer=tokenizer, batch_size=64)
    seen = []
    score = scorer._loglikelihood_tokens
    scorer._loglikelihood_tokens = lambda token_requests, **kwargs: seen.append(token_requests) or score(
        token_requests, **kwargs)
    inputs, head_positions = [], []
    hooks = [model.register_forward_pre_hook(lambda m, args, kwargs: inputs.append(kwargs["input_ids"].shape),
                                             with_kwargs=True),
             model.get_output_embeddings().register_forward_hook(
                 lambda m, args, output: head_positions.append(output.shape[1]))]
    try:
        scorer.loglikelihood(requests(), disable_tqdm=True)
    finally:
        for hook in hooks:
            hook.remove()
    [token_requests] = seen
    sequence = {index: (context + continuation)[:-1] for index, (_, context, continuation) in enumerate(token_requests)}
    context = {index: tuple(tokens) for index, (_, tokens, _) in enumerate(token_requests)}
    widest = max(len(c) + sum(len(sequence[i]) - len(c) for i in sequence if context[i] == c) for c in context.values())
    rows, _ = scorer._pack(token_requests)
    row_of = {index: r for r, row in enumerate(rows) for index, _, _ in row.reads}
    assert sorted(row_of) == list(range(len(token_requests)))
    for r, row in enumerate(rows):
        mine = [sequence[i] for i in row_of if row_of[i] == r]
        assert len(row.tokens) == len({tuple(s[:end]) for s in mine for end in range(1, len(s) + 1)}) <= widest
    assert len({(context[i], row_of[i]) for i in row_of}) == len(set(context.values()))
    assert sum(len(row.tokens) for row in rows) < sum(map(len, sequence.values()))
    assert inputs == [(len(rows), max(len(row.tokens) for row in rows))]
    assert head_positions == [max(len(row.read_nodes) for row in rows)]


def test_registered_with_lm_eval():
    assert get_model(NAME) is SharedContextLM


def test_an_unknown_scorer_is_refused_in_one_line_before_anything_loads(tmp_path):
    done = subprocess.run([sys.executable, "-m", "unlearn", "eval.scorer=fast", f"output_root={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: eval.scorer='fast' is not a valid choice: give one of shared_context, hflm "
                                   "(the same command with --cfg job lists every key with its value)")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------
# Whole evaluations


def letter_task(data_file: Path) -> dict:
    """The WMDP-format fixture task reading `data_file`."""
    config = OmegaConf.to_container(OmegaConf.load(FIXTURES / "wmdp/wmdp_letters.yaml"))
    config["dataset_kwargs"]["data_files"]["test"] = str(data_file)
    return config


def scored_samples(raw: dict) -> dict[str, list]:
    """task -> [(log-likelihood, greedy) of each choice of each document], in document order."""
    return {task: [tuple(response) for sample in sorted(samples, key=lambda s: s["doc_id"])
                   for [response] in sample["resps"]]
            for task, samples in raw["samples"].items()}


@pytest.mark.parametrize("num_fewshot", [0, 2])
def test_task_scores_match_hflm_request_by_request(tiny, task_dir, num_fewshot):
    """The demo tasks, a keyword-perturbed one and the WMDP-format letter task, 0- and 2-shot, through the
    production runner: every choice's score within 1e-4 of HFLM's, the greedy flags and accuracies identical."""
    model, tokenizer = tiny
    manager = find_tasks(("demo_forget", "demo_retain"), (task_dir,))
    [forget], [retain] = build(manager, "demo_forget"), build(manager, "demo_retain")
    specs = [task_config(forget), task_config(retain),
             perturbed_task_config(task_config(retain), task_name="demo_retain_kw", keyword="virus",
                                   field="question", position="random", insertions=1, seed=0),
             letter_task(FIXTURES / "eval/demo_forget.jsonl")]
    specs = [dict(spec, num_fewshot=num_fewshot) for spec in specs]  # as the suite runs a few-shot evaluation
    raws = {scorer: run_tasks(model, tokenizer, copy.deepcopy(specs), manager, batch_size=4, limit=None,
                              num_fewshot=num_fewshot, scorer=scorer, log_samples=True)
            for scorer in ("hflm", "shared_context")}
    reference, ours = (scored_samples(raws[s]) for s in ("hflm", "shared_context"))
    assert set(ours) == {"demo_forget", "demo_retain", "demo_retain_kw", "wmdp_letters"}
    for task in reference:
        assert_same(reference[task], ours[task])
    assert {task: raws["shared_context"]["results"][task] for task in reference} == \
        {task: raws["hflm"]["results"][task] for task in reference}
    assert set(raws["shared_context"]["n-shot"].values()) == {num_fewshot}


@pytest.mark.parametrize("num_fewshot", [0, 2])
def test_evaluation_results_identical_to_hflm(tiny, task_dir, num_fewshot):
    """What results.json gets: task accuracies and the robustness pass, from either scorer."""
    model, tokenizer = tiny
    results = {}
    for scorer in ("hflm", "shared_context"):
        cfg = eval_preset("demo")
        cfg.update(include_paths=[str(task_dir)], scorer=scorer, num_fewshot=num_fewshot, batch_size=8)
        done = evaluate(model, tokenizer, eval_spec(cfg), unlearn_layer=7, control_vectors={},
                        keywords={"virology": ["virus", "gain-of-function research"]}, probe_texts=None)
        results[scorer] = {key: done[key] for key in ("tasks", "robustness", "forget_acc", "retain_acc")}
    assert results["shared_context"] == results["hflm"]


def test_a_generation_task_falls_back_to_hflm_with_one_line(tiny, task_dir, caplog):
    model, tokenizer = tiny
    manager = find_tasks(("demo_retain",), (task_dir,))  # not lm-eval's whole index (seconds)
    generation = {"task": "demo_generate", "dataset_path": "json", "test_split": "test",
                  "dataset_kwargs": {"data_files": {"test": str(FIXTURES / "eval/demo_retain.jsonl")}},
                  "output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:",
                  "doc_to_target": "{{choices[answer]}}", "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4,
                                                                                "do_sample": False},
                  "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}
    outputs = {}
    for scorer in ("hflm", "shared_context"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="unlearn.evaluation.scorer"):
            raw = run_tasks(model, tokenizer, [dict(generation)], manager, batch_size=4, limit=3, num_fewshot=0,
                            scorer=scorer, log_samples=True)
        outputs[scorer] = [sample["resps"] for sample in raw["samples"]["demo_generate"]]
        lines = [record.getMessage() for record in caplog.records if record.name == "unlearn.evaluation.scorer"]
    assert lines == ["generation requests of demo_generate: scored by lm-eval's HFLM"]
    assert outputs["shared_context"] == outputs["hflm"]


# ---------------------------------------------------------------------------------------------------------
# The real model


@pytest.mark.slow
def test_smollm2_scores_match_hflm(task_dir):
    """SmolLM2-135M (the embedded model, its real tokenizer: no BOS, multi-token words split mid-word) on the
    fixture demo tasks, a perturbed copy and the WMDP-format letter task."""
    model, tokenizer = load_model("embedded://smollm2-135m-instruct")
    model.eval()
    manager = find_tasks(("demo_forget", "demo_retain"), (task_dir,))
    [retain] = build(manager, "demo_retain")
    specs = ["demo_forget", "demo_retain",
             perturbed_task_config(task_config(retain), task_name="demo_retain_kw", keyword="gain-of-function",
                                   field="question", position="random", insertions=1, seed=0),
             letter_task(FIXTURES / "eval/demo_retain.jsonl")]
    raws = {scorer: run_tasks(model, tokenizer, copy.deepcopy(specs), manager, batch_size=8, limit=None,
                              num_fewshot=0, scorer=scorer, log_samples=True)
            for scorer in ("hflm", "shared_context")}
    reference, ours = (scored_samples(raws[s]) for s in ("hflm", "shared_context"))
    for task in reference:
        assert_same(reference[task], ours[task])
    # the greedy flags, on continuations that are the model's own greedy choices (none of the tasks' answers is)
    prompts = ["The capital of France is", "Question: What is the protein shell of a virus called?\nAnswer:"]
    greedy_requests = []
    for prompt in prompts:
        tokens = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            generated = model.generate(tokens, max_new_tokens=3, do_sample=False)[0, tokens.shape[1]:]
        text = tokenizer.decode(generated)
        greedy_requests += [Instance("loglikelihood", {}, (prompt, text), 0),
                            Instance("loglikelihood", {}, (prompt, text + " and"), 0)]
    expected = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4).loglikelihood(greedy_requests,
                                                                                      disable_tqdm=True)
    assert [greedy for _, greedy in expected] == [True, False, True, False]
    assert_same(expected, SharedContextLM(pretrained=model, tokenizer=tokenizer, batch_size=4).loglikelihood(
        greedy_requests, disable_tqdm=True))
    assert {task: raws["shared_context"]["results"][task] for task in reference} == \
        {task: raws["hflm"]["results"][task] for task in reference}
