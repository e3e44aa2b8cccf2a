"""The optimised attacks (unlearn.evaluation.optimised) on the tiny random Llama: the seeded split and that the
held-out questions never enter the fit, the multiple-choice loss against lm-eval's own scoring, GCG's search,
the latent perturbation's bound and hooks, the base-model control and its cache, and the settings' bad values."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import json

from tests.conftest import demo_tasks_with_fixtures, eval_preset
from tests.test_bad_input import precheck_error
from tests.test_cli import tiny_args, unlearn
from tests.test_attacks import assert_unchanged, snapshot
from unlearn.errors import UnlearnError
from unlearn.evaluation import eval_spec, heldout, optimised
from unlearn.evaluation.attack_context import AttackTexts
from unlearn.evaluation.attacks import recovered_fraction, run_attacks, weights_swapped
from unlearn.evaluation.choice_loss import choice_losses, encode, mean_loss, row_scores
from unlearn.evaluation.heldout import forget_questions, score_heldout, split_questions
from unlearn.schema import EvalSpec


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> EvalSpec:
    """prefix and latent on the fixture questions (6 forget, 8 retain), 3 fitted on, tiny budgets."""
    folder = demo_tasks_with_fixtures(tmp_path_factory.mktemp("tasks"))
    cfg = eval_preset("demo", "eval.attacks=[prefix,latent]", "eval.attack.split.train_questions=3",
                        "eval.attack.prefix.steps=2", "eval.attack.prefix.search_width=8",
                        "eval.attack.latent.steps=3", "eval.robustness.enabled=false", "eval.probes.enabled=false")
    cfg["include_paths"] = [str(folder)]
    return eval_spec(cfg)


def test_the_split_is_seeded_disjoint_and_covers_every_question(spec):
    questions = forget_questions(spec)
    assert len(questions) == 6 and {len(q.continuations) for q in questions} == {4}
    split = split_questions(questions, spec.attack.split)
    again = split_questions(questions, spec.attack.split)
    other = split_questions(questions, replace(spec.attack.split, seed=1))
    train = {(q.task, q.index) for q in split.train}
    held = {(task, i) for task, indices in split.heldout.items() for i in indices}
    assert train == {(q.task, q.index) for q in again.train} != {(q.task, q.index) for q in other.train}
    assert not train & held and len(train | held) == 6 and split.sizes == {"train_questions": 3, "heldout_questions": 3}
    with pytest.raises(UnlearnError, match="train_questions=6 leaves no held-out question: the forget tasks have 6 "
                                           "questions; use at most 5"):
        split_questions(questions, replace(spec.attack.split, train_questions=6))


def test_held_out_questions_never_enter_the_fit(spec, tiny, monkeypatch):
    """Every question either fit (prefix, latent, and their base-model controls) encodes is a train question,
    and lm-eval scores exactly the held-out ones."""
    model, tokenizer = tiny
    split = split_questions(forget_questions(spec), spec.attack.split)
    train = {(q.task, q.index) for q in split.train}
    fitted = []
    real_encode = optimised.encode
    monkeypatch.setattr(optimised, "encode", lambda tok, questions, sep: (
        fitted.extend((q.task, q.index) for q in questions), real_encode(tok, questions, sep))[1])
    weight = model.model.layers[1].mlp.down_proj.weight
    results = run_attacks(model, tokenizer, spec, AttackTexts(None, None), None, before=None,
                          after={"forget_acc": 0.3, "retain_acc": 0.5}, trained_blocks=[1], unlearn_layer=1,
                          control_vectors={}, base_weights=lambda: weights_swapped({"w": (weight, weight + 0.05)}))
    assert len(fitted) == 4 * 3 and set(fitted) == train  # 2 attacks, each fitted on the unlearned and base model
    for name in ("prefix", "latent"):
        entry = results[name]
        assert entry["tasks"]["demo_forget__heldout"]["n"] == 3 and entry["heldout_questions"] == 3
        assert entry["tasks"]["demo_retain__attacked"]["n"] == 8  # the retain questions under the attack
        assert entry["forget_acc_after"] == entry["heldout"]["forget_acc_unlearned"]
        assert entry["heldout"]["base_forget_acc_attacked"] is not None and entry["control"]["losses"]
        assert len(entry["losses"]) == (3 if name == "prefix" else 4)  # the start and every step (latent: + final)


def test_the_loss_reads_the_choices_as_lm_eval_scores_them(spec, tiny):
    """With a prefix, the held-out questions whose correct choice our scores rank first are as many as lm-eval's
    accuracy on the held-out copy whose description is that prefix says; the loss is the cross-entropy of those
    scores."""
    model, tokenizer = tiny
    questions = forget_questions(spec)
    split = split_questions(questions, spec.attack.split)
    held = [q for q in questions if q.index in split.heldout[q.task]]
    prefix = torch.tensor(tokenizer("zq! ", add_special_tokens=False)["input_ids"])
    rows = encode(tokenizer, held, optimised.SEPARATOR)
    with torch.no_grad():
        scores = row_scores(model, rows, list(range(len(held))), prefix[None])[0].view(len(held), 4)
        losses = choice_losses(model, rows, list(range(len(held))), prefix[None])[0]
    answers = torch.tensor([q.answer for q in held])
    assert torch.allclose(losses, torch.nn.functional.cross_entropy(scores, answers, reduction="none"))
    lm_eval = score_heldout(model, tokenizer, spec, split, description="zq! " + optimised.SEPARATOR, retain=False)
    assert lm_eval["forget_acc"] == pytest.approx(float((scores.argmax(dim=1) == answers).float().mean()))


def test_gcg_keeps_the_best_prefix_and_it_round_trips(spec, tiny):
    model, tokenizer = tiny
    split = split_questions(forget_questions(spec), spec.attack.split)
    rows = encode(tokenizer, split.train, optimised.SEPARATOR)
    fitted = optimised.fit_prefix(model, tokenizer, rows, replace(spec.attack.prefix, steps=3, search_width=16))
    best = torch.tensor(fitted.details["prefix_ids"])
    assert fitted.details["loss_last"] == pytest.approx(min(fitted.details["losses"]), abs=1e-4)
    assert fitted.details["loss_last"] < fitted.details["losses"][0]
    assert float(mean_loss(model, rows, 64, best[None])[0]) == pytest.approx(fitted.details["loss_last"], rel=1e-4)
    assert optimised.round_trips(tokenizer, best) and fitted.description == fitted.details["prefix"] + "\n"


def test_candidates_change_one_position_each():
    prefix = torch.tensor([5, 5, 5, 5])
    top = torch.tensor([[1, 2], [3, 4], [6, 7], [8, 9]])
    candidates = optimised.sample_candidates(prefix, top, 32, torch.Generator().manual_seed(0))
    assert len({tuple(c.tolist()) for c in candidates}) == len(candidates) <= 8
    for candidate in candidates:
        changed = (candidate != prefix).nonzero().flatten().tolist()
        assert len(changed) == 1 and int(candidate[changed[0]]) in top[changed[0]].tolist()


def test_latent_vectors_respect_the_bound_and_their_hooks_go(spec, tiny):
    model, tokenizer = tiny
    saved, types = snapshot(model), [type(m).__name__ for m in model.modules()]
    split = split_questions(forget_questions(spec), spec.attack.split)
    rows = encode(tokenizer, split.train, optimised.SEPARATOR)
    settings = replace(spec.attack.latent, steps=4, lr=0.5, norm_bound=0.1)  # a large lr: the bound must bind
    places = optimised.latent_places(settings, unlearn_layer=1, n_blocks=4)
    assert places == ["embeddings", 0, 1, 2, 3]
    fitted = optimised.fit_latent(model, rows, settings, places)
    assert all(norm <= 0.1 + 1e-5 for norm in fitted.details["relative_norms"].values())
    assert max(fitted.details["relative_norms"].values()) > 0.09
    clean = float(mean_loss(model, rows, 64)[0])
    with fitted.hooks(model):
        assert float(mean_loss(model, rows, 64)[0]) == pytest.approx(fitted.details["loss_last"], rel=1e-5)
    assert float(mean_loss(model, rows, 64)[0]) == clean
    assert_unchanged(model, saved, types)


def test_the_base_control_is_cached_by_what_changes_it(spec, tiny, tmp_path):
    model, tokenizer = tiny
    weight = model.model.layers[1].mlp.down_proj.weight
    saved = weight.detach().clone()
    only_latent = replace(spec, attacks=("latent",))

    def attack(spec_used):
        return run_attacks(model, tokenizer, spec_used, AttackTexts(None, None), None, before=None,
                           after={"forget_acc": 0.3, "retain_acc": 0.5}, trained_blocks=[1], unlearn_layer=1,
                           control_vectors={}, base_weights=lambda: weights_swapped({"w": (weight, weight + 0.05)}),
                           base_identity={"name": "tiny"}, cache_dir=tmp_path)["latent"]

    first, second = attack(only_latent), attack(only_latent)
    assert not first["control_from_cache"] and second["control_from_cache"]
    assert second["heldout"] == first["heldout"] and torch.equal(weight, saved)
    changed = replace(only_latent, attack=replace(spec.attack, latent=replace(spec.attack.latent, steps=2)))
    assert not attack(changed)["control_from_cache"]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["eval.attack.split.train_questions=1"], r"eval.attack.split.train_questions must be an integer >= 2 \(got 1\)"),
    (["eval.attack.prefix.length=0"], r"eval.attack.prefix.length must be an integer >= 1 \(got 0\)"),
    (["eval.attack.prefix.steps=0"], r"eval.attack.prefix.steps must be an integer >= 1"),
    (["eval.attack.prefix.search_width=0"], r"eval.attack.prefix.search_width must be an integer >= 1"),
    (["eval.attack.latent.norm_bound=0"], "eval.attack.latent.norm_bound must be a positive number"),
    (["eval.attack.latent.steps=-1"], r"eval.attack.latent.steps must be an integer >= 1"),
    (["eval.attack.latent.blocks=[]"], "eval.attack.latent.blocks is empty"),
    (["eval.attacks=[prefx]"], "did you mean prefix"),
])
def test_bad_optimised_settings_name_the_key(overrides, expected):
    with pytest.raises(UnlearnError, match=expected):
        eval_spec(eval_preset("demo_attacks", *overrides))


def test_the_split_and_latent_blocks_are_checked_against_the_tasks_and_model(spec):
    optimised.check(spec, n_blocks=4)
    with pytest.raises(UnlearnError, match="eval.attack.latent.blocks lists block 9, which the model does not have "
                                           r"\(blocks 0..3\)"):
        optimised.check(replace(spec, attack=replace(spec.attack, latent=replace(spec.attack.latent, blocks=(1, 9)))), 4)
    with pytest.raises(UnlearnError, match="use at most 5"):
        optimised.check(replace(spec, attack=replace(spec.attack, split=replace(spec.attack.split, train_questions=7))), 4)


def test_a_task_without_choices_is_refused_by_name(spec, tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    demo_tasks_with_fixtures(folder)
    template = (folder / "_demo_cloze_template_yaml").read_text()
    (folder / "_demo_cloze_template_yaml").write_text(
        template.replace("output_type: multiple_choice", "output_type: generate_until")
        .replace('doc_to_choice: "{{choices}}"\n', "").replace("doc_to_target: answer", 'doc_to_target: "{{answer}}"'))
    broken = replace(spec, include_paths=(str(folder),))
    with pytest.raises(UnlearnError, match="cannot read the choices of forget task 'demo_forget': its output_type is "
                                           "generate_until, not multiple_choice"):
        heldout.forget_questions(broken)


def test_the_demo_preset_runs_both_with_controls_and_the_gpu_preset_has_the_published_settings():
    demo = eval_spec(eval_preset("demo_attacks"))
    assert demo.attacks[-2:] == ("prefix", "latent") and demo.attack.prefix.control and demo.attack.latent.control
    gpu = eval_spec(eval_preset("wmdp_mmlu_attacks", "eval.attack.ablate.path=/x/bio.jsonl"))
    assert (gpu.attack.prefix.length, gpu.attack.prefix.steps, gpu.attack.prefix.search_width) == (20, 20, 256)
    assert (gpu.attack.latent.steps, gpu.attack.latent.decay) == (64, 0.94)
    assert eval_spec(eval_preset("demo", "eval.attacks=[relearn]")).attack.split is None


def test_a_run_with_prefix_and_latent_reports_both_splits_and_the_controls(tmp_path):
    """The CLI on the tiny model: results.json holds both attacks with their held-out numbers, controls, split
    sizes and per-step losses; the printed table and the sweep report show them."""
    from unlearn import report

    done = unlearn("model=tiny-random", "steps=2", "eval=demo_attacks", "eval.attacks=[prefix,latent]", "eval.limit=4",
                   "eval.robustness.enabled=false", "eval.probes.enabled=false", "eval.attack.split.train_questions=4",
                   "eval.attack.prefix.steps=1", "eval.attack.prefix.search_width=4", "eval.attack.latent.steps=2",
                   f"output_root={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'out'}", "--multirun",
                   timeout=900)  # ten evaluations of a few questions: minutes on a busy 2-core machine
    assert done.returncode == 0, done.stderr
    run = next(p for p in (tmp_path / "out").rglob("results.json")).parent
    results = json.loads((run / "results.json").read_text())
    assert list(results["attacks"]) == ["prefix", "latent"]
    for name, entry in results["attacks"].items():
        assert (entry["train_questions"], entry["heldout_questions"]) == (4, 146)
        assert entry["tasks"]["demo_forget__heldout"]["n"] == 4  # eval.limit applies to the held-out questions
        held = entry["heldout"]
        assert entry["recovered_fraction"] == recovered_fraction(held["base_forget_acc_clean"],
                                                                 held["forget_acc_unlearned"], held["forget_acc_attacked"])
        assert held["base_forget_acc_attacked"] is not None and entry["losses"] and entry["control"]["losses"]
    assert "prefix: held-out forget, unlearned" in done.stdout and "(4 questions fitted on, 146 held out)" in done.stdout
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "out"), "--output-dir", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "prefix: forget % (recovered)" in markdown and "latent: base % clean -> attacked" in markdown


def test_tracking_and_the_printed_table_take_the_held_out_numbers():
    from unlearn.evaluation.table import format_attacks
    from unlearn.tracking import flatten_results

    held = {"forget_acc_unlearned": 0.2, "forget_acc_attacked": 0.3, "base_forget_acc_clean": 0.6,
            "base_forget_acc_attacked": 0.65, "base_gain": 0.05}
    entry = {"tasks": {}, "forget_acc": 0.3, "retain_acc": 0.5, "forget_acc_before": 0.6, "forget_acc_after": 0.2,
             "retain_acc_after": 0.55, "recovered_fraction": 0.25, "heldout": held, "train_questions": 8,
             "heldout_questions": 142, "losses": [1.2, 1.1]}
    flat = flatten_results({"attacks": {"prefix": entry}})
    assert flat["eval/attacks/prefix/heldout/base_forget_acc_attacked"] == 0.65
    assert flat["eval/attacks/prefix/recovered_fraction"] == 0.25 and flat["eval/attacks/prefix/losses"] == "1.2,1.1"
    table = format_attacks({"prefix": entry})
    assert "prefix: held-out forget, unlearned 20.0 -> attacked 30.0; base 60.0 -> 65.0 (8 questions fitted on, " \
           "142 held out)" in table and "25%" in table


def test_bad_optimised_input_is_refused_before_weights_load(monkeypatch, capsys, tmp_path, corpus_files):
    base = [a.replace("eval=none", "eval=demo_attacks") for a in tiny_args(tmp_path, corpus_files)]
    big = precheck_error(monkeypatch, capsys, tmp_path, *base, "eval.attack.split.train_questions=150")
    assert big == ("error: eval.attack.split.train_questions=150 leaves no held-out question: the forget tasks have "
                   "150 questions; use at most 149 (at least 2)")
    block = precheck_error(monkeypatch, capsys, tmp_path, *base, "eval.attack.latent.blocks=[3,12]")
    assert block.startswith("error: eval.attack.latent.blocks lists block 12, which the model does not have "
                            "(blocks 0..11)")
    small = precheck_error(monkeypatch, capsys, tmp_path, *base, "eval.attack.split.train_questions=1")
    assert small == "error: eval.attack.split.train_questions must be an integer >= 2 (got 1)"
    length = precheck_error(monkeypatch, capsys, tmp_path, *base, "eval.attack.prefix.length=0")
    assert length == "error: eval.attack.prefix.length must be an integer >= 1 (got 0)"

