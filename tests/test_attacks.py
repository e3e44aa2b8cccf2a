"""Knowledge-recovery attacks (unlearn.evaluation.attacks) on the tiny random Llama: the settings and their bad
values, the recovered fraction, the projection and its hooks, relearning that leaves the model as it was, the
run directory a run with attacks leaves, and the report's attack columns."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import pytest
import torch

from tests.conftest import REPO, demo_tasks_with_fixtures, eval_preset
from tests.test_bad_input import precheck_error
from tests.test_cli import tiny_args, unlearn
from tests.test_report import BEFORE, evaluation, make_run
from unlearn import report
from unlearn.blocks import decoder_blocks
from unlearn.errors import UnlearnError
from unlearn.evaluation import eval_spec, evaluate
from unlearn.evaluation.attack_context import AttackTexts
from unlearn.evaluation.attacks import (
    _right_padded, mean_block_outputs, project_out, projected_out, recovered_fraction, relearned, run_attacks,
)
from unlearn.schema import EvalSpec

HELDOUT = REPO / "unlearn/data/demo/forget_heldout.jsonl"
TEXTS = [json.loads(line)["text"] for line in HELDOUT.read_text().splitlines()][:6]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> EvalSpec:
    """eval=demo_attacks on the fixture questions (6 forget, 8 retain), small relearn budget."""
    folder = demo_tasks_with_fixtures(tmp_path_factory.mktemp("tasks"))
    cfg = eval_preset("demo_attacks", "eval.attack.relearn.steps=3", "eval.attack.relearn.max_documents=6",
                        "eval.attack.relearn.max_length=64", "eval.attack.ablate.max_length=64")
    cfg["include_paths"] = [str(folder)]
    return eval_spec(cfg)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_unchanged(model, saved: dict[str, torch.Tensor], module_types: list[str]) -> None:
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[name], saved[name]) for name in saved)
    assert [type(m).__name__ for m in model.modules()] == module_types
    assert not any(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------------------
# Settings


def test_presets_turn_the_standard_set_on_and_the_defaults_leave_it_off():
    assert eval_spec(eval_preset("demo")).attacks == ()
    assert eval_spec(eval_preset("wmdp_mmlu")).attacks == ()
    attacked = eval_spec(eval_preset("demo_attacks"))
    assert attacked.attacks == ("relearn", "ablate", "fewshot", "prefix", "latent")
    assert attacked.tasks == ("demo_forget", "demo_retain") and attacked.attack.fewshot.num_fewshot == 5
    zephyr = eval_spec(eval_preset("wmdp_mmlu_attacks", "eval.attack.ablate.path=/x/bio.jsonl"))
    assert (zephyr.attack.relearn.lora_rank, zephyr.attack.relearn.lora_alpha, zephyr.attack.relearn.lr) == (128, 16, 2e-4)
    assert (zephyr.attack.relearn.steps, zephyr.attack.relearn.batch_size, zephyr.attack.relearn.max_documents) == (30, 1, 10)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["eval.attacks=[relearnn]"], "unknown attack 'relearnn' in eval.attacks: did you mean relearn\\? valid names: "
                                  "relearn, ablate, fewshot, prefix, latent"),
    (["eval.attacks=[jailbreak]"], "unknown attack 'jailbreak' in eval.attacks: valid names: relearn, ablate, fewshot, prefix, latent"),
    (["eval.attack.relearn.steps=0"], r"eval.attack.relearn.steps must be an integer >= 1 \(got 0\)"),
    (["eval.attack.relearn.steps=-3"], r"eval.attack.relearn.steps must be an integer >= 1 \(got -3\)"),
    (["eval.attack.relearn.lr=0"], "eval.attack.relearn.lr must be a positive number"),
    (["eval.attack.relearn.seed=99999999999999999999"], r"eval.attack.relearn.seed must be an integer from 0 to "
                                                         r"18446744073709551615 \(got 99999999999999999999\)"),
    (["eval.attack.relearn.lr=inf"], r"eval.attack.relearn.lr must be a positive number \(got inf\)"),
    (["eval.limit=nan"], r"eval.limit must be null \(all documents\), a count >= 1 or a fraction in \(0, 1\) \(got nan\)"),
    (["eval.attack.fewshot.num_fewshot=0"], "eval.attack.fewshot.num_fewshot must be an integer >= 1"),
    (["eval.forget_tasks=[]"], "needs forget tasks to measure what comes back"),
])
def test_bad_attack_settings_name_the_key(overrides, expected):
    with pytest.raises(UnlearnError, match=expected):
        eval_spec(eval_preset("demo_attacks", *overrides))


def test_the_zephyr_preset_asks_for_forget_text_to_ablate_on():
    with pytest.raises(UnlearnError, match="eval.attack.ablate.path is required for the ablate attack"):
        eval_spec(eval_preset("wmdp_mmlu_attacks"))


def test_recovered_fraction_by_hand():
    """Forget accuracy 60% before, 20% after unlearning: an attack that brings it to 40% recovers
    (40 - 20) / (60 - 20) = 0.5 of the gap; back to 60% is 1; 10% is -0.25. No gap (before == after) or no
    "before" evaluation: None."""
    assert recovered_fraction(0.6, 0.2, 0.4) == pytest.approx(0.5)
    assert recovered_fraction(0.6, 0.2, 0.6) == pytest.approx(1.0)
    assert recovered_fraction(0.6, 0.2, 0.1) == pytest.approx(-0.25)
    assert recovered_fraction(0.3, 0.3, 0.5) is None
    assert recovered_fraction(None, 0.2, 0.5) is None


# ---------------------------------------------------------------------------------------------------------
# Direction ablation


def test_projection_removes_the_direction_and_nothing_else():
    """u = (0.6, 0.8); h = (3, 4) + (4, -3) has (h . u) = 5, so h - 5u = (4, -3); a vector orthogonal to u,
    (4, -3), comes back bit for bit."""
    unit = torch.tensor([0.6, 0.8])
    assert torch.allclose(project_out(torch.tensor([[7.0, 1.0]]), unit), torch.tensor([[4.0, -3.0]]))
    orthogonal = torch.tensor([[[4.0, -3.0], [-8.0, 6.0]]])  # (B, T, d)
    assert torch.equal(project_out(orthogonal, unit), orthogonal)


def test_a_direction_the_block_outputs_lack_changes_nothing_and_the_hooks_go(tiny):
    """Embeddings and block outputs of the tiny Llama confined to the first 63 dimensions (its last embedding
    column zeroed, every block's output projected onto the first 63 by a hook of our own): projecting out e_63 at
    every block leaves the logits bit-identical; projecting out a direction they have changes them."""
    model, tokenizer = tiny
    batch = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    blocks = decoder_blocks(model)
    d = model.config.hidden_size
    last = torch.zeros(d)
    last[-1] = 1.0

    def confine(_module, _inputs, output):
        return output * (1 - last)

    handles = [block.register_forward_hook(confine) for block in blocks]
    try:
        reference = model(**batch).logits
        with projected_out(model, {i: last.clone() for i in range(len(blocks))}):
            assert torch.equal(model(**batch).logits, reference)
        with projected_out(model, {i: torch.ones(d) for i in range(len(blocks))}):
            assert not torch.allclose(model(**batch).logits, reference)
    finally:
        for handle in handles:
            handle.remove()
    assert all(not block._forward_hooks for block in blocks)


def test_hooks_are_removed_when_the_evaluation_fails(tiny):
    model, _ = tiny
    with pytest.raises(RuntimeError, match="boom"):
        with projected_out(model, {0: torch.ones(model.config.hidden_size)}):
            assert decoder_blocks(model)[0]._forward_hooks
            raise RuntimeError("boom")
    assert not decoder_blocks(model)[0]._forward_hooks


def test_ablating_an_unchanged_model_changes_nothing(tiny, spec):
    """Original and "unlearned" are the same weights: every difference of means is exactly 0, no block is
    ablated, and the accuracies are the unlearned model's to the last digit."""
    model, tokenizer = tiny
    only_ablate = replace(spec, attacks=("ablate",))
    means = mean_block_outputs(model, tokenizer, TEXTS, spec.attack.ablate)
    assert means.shape == (len(decoder_blocks(model)), model.config.hidden_size)
    after = evaluate(model, tokenizer, only_ablate, unlearn_layer=7, control_vectors={}, keywords={}, probe_texts=None)
    attacked = run_attacks(model, tokenizer, only_ablate, AttackTexts(relearn=None, ablate=TEXTS), means,
                           before=None, after=after, trained_blocks=[5, 6, 7], unlearn_layer=7,
                           control_vectors={"virology": torch.rand(model.config.hidden_size)})["ablate"]
    assert attacked["ablated_blocks"] == [] and set(attacked["direction_norm"].values()) == {0.0}
    assert attacked["tasks"] == after["tasks"]
    assert attacked["recovered_fraction"] is None  # no "before": no gap to measure against


# ---------------------------------------------------------------------------------------------------------
# Relearning


@pytest.mark.parametrize("lora", [True, False])
def test_relearning_is_deterministic_and_leaves_the_model_as_it_was(tiny, spec, lora):
    model, tokenizer = tiny
    settings = replace(spec.attack.relearn, lora=lora, lr=1e-2)
    saved, types = snapshot(model), [type(m).__name__ for m in model.modules()]
    runs = []
    for _ in range(2):
        with relearned(model, tokenizer, TEXTS, settings) as (attacked, losses, trainable):
            logits = attacked(**tokenizer(TEXTS[:1], return_tensors="pt")).logits.detach()
            runs.append((losses, logits))
            if lora:
                assert attacked is model and any("lora" in name for name in attacked.state_dict())
                assert trainable < sum(p.numel() for p in model.parameters())
            else:
                assert attacked is not model and trainable == sum(p.numel() for p in model.parameters())
        assert_unchanged(model, saved, types)
    (losses, logits), (losses_again, logits_again) = runs
    assert losses == losses_again and torch.equal(logits, logits_again)
    assert len(losses) == settings.steps and losses[-1] < losses[0]
    assert not torch.equal(logits, model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits)


# ---------------------------------------------------------------------------------------------------------
# A run with attacks


def test_bad_relearn_files_are_refused_before_anything_starts(monkeypatch, capsys, tmp_path, corpus_files):
    forget, _ = corpus_files
    base = [a.replace("eval=none", "eval=demo_attacks") for a in tiny_args(tmp_path, corpus_files)]
    missing = precheck_error(monkeypatch, capsys, tmp_path, *base, "eval.attack.relearn.path=/no/such/heldout.jsonl")
    assert missing == ("error: eval.attack.relearn.path: found nothing (no such file or directory) at "
                       "/no/such/heldout.jsonl, expected a JSONL or .txt file: point it at one, or leave relearn out "
                       "of eval.attacks")
    trained = precheck_error(monkeypatch, capsys, tmp_path, *base, f"eval.attack.relearn.path={forget}")
    assert f"eval.attack.relearn.path={forget} is one of the run's training corpora: relearning on trained-on " \
           "text is not an attack on held-out knowledge" in trained
    unknown = precheck_error(monkeypatch, capsys, tmp_path, *base, "eval.attacks=[relearn,ablation]")
    assert unknown == "error: unknown attack 'ablation' in eval.attacks: did you mean ablate? valid names: relearn, " \
                      "ablate, fewshot, prefix, latent"
    steps = precheck_error(monkeypatch, capsys, tmp_path, *base, "eval.attack.relearn.steps=0")
    assert steps == "error: eval.attack.relearn.steps must be an integer >= 1 (got 0)"


def test_a_copy_of_a_training_corpus_is_refused_before_weights_load(tmp_path, corpus_files):
    forget, _ = corpus_files
    copied = tmp_path / "copy.jsonl"
    shutil.copy(forget, copied)
    base = [a.replace("eval=none", "eval=demo_attacks") for a in tiny_args(tmp_path, corpus_files)]
    done = unlearn(*base, f"eval.attack.relearn.path={copied}", "eval.attack.relearn.max_documents=5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "5 of its 5 documents are in the run's training corpora" in done.stderr
    run = next((tmp_path / "out").glob("*/*"))
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    assert not (run / "metrics.jsonl").exists() and not (run / "results.json").exists()


def test_a_run_with_attacks_saves_the_same_model_and_reports_each_attack(tmp_path):
    """The same tiny run with the standard set and without any evaluation (which leaves training unchanged: the
    evaluations keep the global RNG): the saved weights are byte-identical; the attacks' numbers are in
    results.json, the printed table and the manifest, and the recovered fraction is the one computed from the
    accuracies they report."""
    common = ["model=tiny-random", "steps=4", "save_model=true"]
    plain = unlearn(*common, "eval=none", f"output_root={tmp_path / 'plain'}")
    attacked = unlearn(*common, "eval=demo_attacks", "eval.attacks=[relearn,ablate,fewshot]", "eval.limit=4",
                       "eval.robustness.enabled=false", "eval.probes.enabled=false", "eval.attack.relearn.steps=2", "eval.attack.relearn.max_length=64",
                       "eval.attack.ablate.max_length=64", f"output_root={tmp_path / 'attacked'}")
    assert plain.returncode == 0 and attacked.returncode == 0, attacked.stderr
    runs = [next((tmp_path / name).glob("*/*")) for name in ("plain", "attacked")]
    weights = [(run / "model" / "model.safetensors").read_bytes() for run in runs]
    assert weights[0] == weights[1]
    results = json.loads((runs[1] / "results.json").read_text())
    assert list(results["attacks"]) == ["relearn", "ablate", "fewshot"]
    before = results["before"]["tasks"]["demo_forget"]["acc"]
    after = results["after"]["tasks"]["demo_forget"]["acc"]
    assert (results["before"]["forget_acc"], results["after"]["forget_acc"]) == (before, after)  # stored once
    assert results["after"]["retain_acc"] == results["after"]["tasks"]["demo_retain"]["acc"]
    for name, entry in results["attacks"].items():
        assert entry["forget_acc"] == entry["tasks"]["demo_forget"]["acc"]
        assert entry["retain_acc"] == entry["tasks"]["demo_retain"]["acc"]
        assert (entry["forget_acc_before"], entry["forget_acc_after"]) == (before, after)
        assert entry["recovered_fraction"] == recovered_fraction(before, after, entry["forget_acc"])
    assert results["attacks"]["fewshot"]["num_fewshot"] == 5
    # lm-eval really put 5 examples in each prompt, although the tasks' YAML says 0 (it ignores a request then)
    assert {t["num_fewshot"] for t in results["attacks"]["fewshot"]["tasks"].values()} == {5}
    assert {t["num_fewshot"] for t in results["after"]["tasks"].values()} == {0}
    assert results["attacks"]["ablate"]["ablated_blocks"] == [5, 6, 7, 8, 9, 10, 11]  # blocks 0-4 did not train
    assert "knowledge recovery" in attacked.stdout and "attack relearn" in attacked.stdout
    manifest = json.loads((runs[1] / "manifest.json").read_text())
    assert manifest["attacks"]["relearn"]["steps"] == 2 and manifest["attacks"]["fewshot"] == {"num_fewshot": 5}
    assert "attacks" not in json.loads((runs[0] / "results.json").read_text())
    assert "attacks" not in json.loads((runs[0] / "manifest.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# Tracking and the sweep report


def attacks_entry(forget: float, retain: float, recovered: float | None) -> dict:
    return {"tasks": {}, "forget_acc": forget, "retain_acc": retain, "recovered_fraction": recovered}


def test_report_has_a_column_per_attack_and_the_recovered_fraction_plot(tmp_path):
    from PIL import Image

    sweep = tmp_path / "sweep"
    for method, recovered in (("rmu", 0.8), ("adaptive_rmu", 0.4)):
        run = make_run(sweep, f"method={method}", method=method, layer=5, coeff=5,
                       after=evaluation((0.3, 0.3), 0.55, 0.1, 80.0))
        results = json.loads((run / "results.json").read_text())
        results["attacks"] = {"relearn": attacks_entry(0.5, 0.5, recovered), "ablate": attacks_entry(0.3, 0.5, 0.0)}
        (run / "results.json").write_text(json.dumps(results))
    out = tmp_path / "report"
    assert report.main([str(sweep), "--output-dir", str(out)]) == 0
    with (out / "report.csv").open() as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert float(rows["method=rmu"]["relearn_recovered"]) == 0.8
    assert rows["method=rmu"]["fewshot_recovered"] == ""
    markdown = (out / "report.md").read_text()
    assert "relearn: forget % (recovered)" in markdown and "50.0 (80%)" in markdown and "fewshot:" not in markdown
    with Image.open(out / "attacks_recovered.png") as image:
        assert image.size[0] > 200


def test_tracking_flattens_the_attacks():
    from unlearn.tracking import flatten_results

    flat = flatten_results({"before": BEFORE, "attacks": {"relearn": attacks_entry(0.5, 0.4, 0.25)}})
    assert flat["eval/attacks/relearn/recovered_fraction"] == 0.25
    assert flat["eval/attacks/relearn/forget_acc"] == 0.5


def test_relearning_batches_are_padded_right(tiny):
    """Relearning pads on the right, whatever side the run's tokenizer pads on, so every document's positions
    start at 0 as in training without padding."""
    tokenizer = tiny[1]
    input_ids, attention_mask = _right_padded(tokenizer, ["ab", "abcdef", "abcdefghijkl"], max_length=8)
    # byte tokenizer: <s> + one token per byte, the last document cut to 8
    assert attention_mask.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1] * 7 + [0], [1] * 8]
    assert input_ids[0, 3:].tolist() == [tokenizer.pad_token_id] * 5
    assert tokenizer.decode(input_ids[1, :7], skip_special_tokens=True) == "abcdef"
    assert tokenizer.padding_side == "left"  # the run's own side is left as it was
