"""The fast engine computes the same losses and gradients as the reference approach (full forwards with a hook,
a full frozen copy or, for PO methods, two full models with gradients everywhere), over several training steps,
on tiny models of three architecture families."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearn.blocks import capture_block_outputs, decoder_blocks, rewrite_block_outputs, trained_parameters
from unlearn.corpora import BatchStream
from unlearn.engine import FastEngine, ReferenceEngine
from unlearn.methods import MethodSpec, build, control_vector
from unlearn.models import load_model
from unlearn.train import TopicStreams, train

FORGET = [f"the virus capsid protects the genome number {i} " * (1 + i % 3) for i in range(16)]
RETAIN = [f"the river flows past the old city walls {i} " * (1 + i % 4) for i in range(16)]


def _train_with(engine_kind: str, arch: str, pattern: str, layer: int, method: MethodSpec, steps: int = 4):
    model, tokenizer = load_model(f"tiny://{arch}", seed=0)
    update = [layer - 2, layer - 1, layer]
    params = trained_parameters(model, update, pattern)
    for weight in params.values():
        weight.requires_grad_(True)
    engine = FastEngine(model, layer, update[0]) if engine_kind == "fast" else ReferenceEngine(model, layer)
    streams = [TopicStreams("t", BatchStream(FORGET, tokenizer, 4, 32), BatchStream(RETAIN, tokenizer, 4, 32))]
    built = build(method, n_topics=1, hidden_size=model.config.get_text_config().hidden_size, device="cpu", seed=0)
    built.setup(engine, [streams[0].forget.batch(0)])
    records = []
    optimizer = "adamw" if method.base in ("npo", "simnpo") else "transformers_adamw"  # as the presets; both engines alike
    train(engine, built, streams, list(params.values()), steps=steps, lr=1e-2, optimizer=optimizer,
          on_step=records.append, progress=False)
    return records, {name: w.detach().clone() for name, w in params.items()}, model


@pytest.mark.parametrize("arch,pattern,layer", [
    ("llama", "mlp.down_proj", 7),
    ("gpt2", "mlp.c_proj", 4),
    ("gpt-neox", "mlp.dense_4h_to_h", 3),
])
@pytest.mark.parametrize("method", [
    MethodSpec("rmu", "rmu", [100.0], steering_coeffs=[6.5]),
    MethodSpec("adaptive_rmu", "adaptive_rmu", [100.0], beta=5.0),
    MethodSpec("rna", "rmu", [100.0], steering_coeffs=[6.5], nu=0.05),
    MethodSpec("npo", "npo", [1.0], beta=0.1, retain_loss="kl"),
    MethodSpec("simnpo", "simnpo", [1.0], beta=0.1, retain_loss="mse"),
    MethodSpec("rna", "npo", [1.0], beta=0.1, retain_loss="kl", nu=0.0),
], ids=["rmu", "adaptive_rmu", "rna", "npo_kl", "simnpo_mse", "rna_npo_nu0"])
def test_fast_engine_matches_reference(arch, pattern, layer, method):
    fast_records, fast_weights, _ = _train_with("fast", arch, pattern, layer, method)
    ref_records, ref_weights, _ = _train_with("reference", arch, pattern, layer, method)
    for fast, ref in zip(fast_records, ref_records):
        for key in ("loss", "forget_loss", "retain_loss"):
            assert fast[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), (fast["step"], key)
    for name in fast_weights:
        torch.testing.assert_close(fast_weights[name], ref_weights[name], rtol=1e-5, atol=1e-6)
    # the weights really moved: the comparison is not between two untouched models
    initial = trained_parameters(load_model(f"tiny://{arch}", seed=0)[0], [layer], pattern)
    name = next(iter(initial))
    assert not torch.allclose(initial[name], fast_weights[name])


def test_first_step_gradients_match():
    """One backward on identical weights: the trained weights' gradients agree to float rounding."""
    grads = {}
    for kind in ("fast", "reference"):
        model, tokenizer = load_model("tiny://llama", seed=0)
        params = trained_parameters(model, [5, 6, 7], "mlp.down_proj")
        for weight in params.values():
            weight.requires_grad_(True)
        engine = FastEngine(model, 7, 5) if kind == "fast" else ReferenceEngine(model, 7)
        batch = BatchStream(FORGET, tokenizer, 4, 32).batch(0)
        retain = BatchStream(RETAIN, tokenizer, 4, 32).batch(0)
        u = control_vector(64, torch.Generator().manual_seed(0))
        h_f = engine.updated(engine.prepare(batch))
        h_r = engine.updated(engine.prepare(retain))
        frozen = engine.frozen(engine.prepare(retain))
        loss = ((h_f - 20 * u) ** 2).mean() + 10 * ((h_r - (frozen + 0.1)) ** 2).mean()
        loss.backward()
        grads[kind] = {n: w.grad.clone() for n, w in params.items()}
    for name in grads["fast"]:
        torch.testing.assert_close(grads["fast"][name], grads["reference"][name], rtol=1e-5, atol=1e-7)


def test_fast_engine_trains_only_selected_weights_and_keeps_no_full_copy():
    model, _ = load_model("tiny://llama", seed=0)
    before = copy.deepcopy(model.state_dict())
    records, weights, trained_model = _train_with("fast", "llama", "mlp.down_proj", 7,
                                                  MethodSpec("rmu", "rmu", [100.0], steering_coeffs=[6.5]))
    after = trained_model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)}
    engine = FastEngine(model, 7, 5)
    assert len(engine.frozen_blocks) == 3
    assert all(not p.requires_grad for b in engine.frozen_blocks for p in b.parameters())
    assert engine.frozen_blocks[0] is not decoder_blocks(model)[5]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt-neox"])
@torch.no_grad()
def test_block_outputs_are_captured_and_rewritten_on_every_layout(arch):
    """What the hooks read is the block's hidden state, whether the block returns a tensor or a tuple, and
    what they write reaches the logits; both hooks are gone afterwards."""
    model, tokenizer = load_model(f"tiny://{arch}", seed=0)
    batch = tokenizer(["the virus capsid", "the river"], return_tensors="pt", padding=True)
    plain = model(**batch, output_hidden_states=True)
    hooks_before = [len(block._forward_hooks) for block in decoder_blocks(model)]  # transformers keeps its own
    with capture_block_outputs(model, [1, 2]) as captured:
        model(**batch)
    assert torch.equal(captured[1], plain.hidden_states[2]) and torch.equal(captured[2], plain.hidden_states[3])
    with rewrite_block_outputs(model, {1: torch.zeros_like}), capture_block_outputs(model, [1]) as captured:
        rewritten = model(**batch)
    assert not captured[1].any()  # the capture, hooked after the rewrite, sees its result
    assert not torch.allclose(rewritten.logits, plain.logits)
    assert [len(block._forward_hooks) for block in decoder_blocks(model)] == hooks_before
    assert torch.equal(model(**batch).logits, plain.logits)
