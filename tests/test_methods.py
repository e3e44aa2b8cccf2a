"""The losses against hand-worked values. Each docstring shows the working."""

from __future__ import annotations

import pytest
import torch

from unlearn.methods import MethodSpec, build, control_vector
from unlearn.methods.adaptive_rmu import AdaptiveRMU
from unlearn.methods.losses import kl_retain, mse, mse_retain, nll
from unlearn.methods.npo import npo_forget_loss
from unlearn.methods.rmu import rmu_loss
from unlearn.methods.rna import noisy as noisy_retain_target
from unlearn.methods.simnpo import simnpo_forget_loss

U = torch.tensor([0.6, 0.8])  # a unit vector, d = 2


def test_forget_mse_by_hand():
    """h = [(1,2), (3,4)] (one sample, two tokens), target c*u = 5*(0.6,0.8) = (3,4).
    Squared differences: (4,4) and (0,0); mean over 1 x 2 x 2 = 8/4 = 2."""
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert mse(h, 5 * U).item() == pytest.approx(2.0)


def test_padding_mask_leaves_pad_tokens_out():
    """Same h; mask (1, 0) keeps the first token only: 8 / (1 token x 2 dims) = 4. Mask (0, 1): 0."""
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert mse(h, 5 * U, torch.tensor([[1, 0]])).item() == pytest.approx(4.0)
    assert mse(h, 5 * U, torch.tensor([[0, 1]])).item() == pytest.approx(0.0)


def test_rmu_loss_by_hand():
    """forget: 2 (above). retain: h_r = [(1,1),(1,1)], frozen = [(1,1),(1,3)]: squared (0,0,0,4), mean 1,
    times alpha = 10 -> 10. Total 12."""
    h_f = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    h_r = torch.ones(1, 2, 2)
    frozen = torch.tensor([[[1.0, 1.0], [1.0, 3.0]]])
    parts = rmu_loss(h_f, h_r, frozen, U, steering_coeff=5.0, alpha=10.0)
    assert parts.forget_loss.item() == pytest.approx(2.0)
    assert parts.retain_loss.item() == pytest.approx(10.0)
    assert parts.loss.item() == pytest.approx(12.0)


def test_losses_are_float32_for_half_precision_inputs():
    """fp16 overflows on the squared differences of large activations: (300 - 0)^2 * 2 tokens... in fp16 the
    square 90000 is above fp16's max (65504); the loss must still be finite because it is computed in fp32."""
    h = torch.full((1, 2, 2), 300.0, dtype=torch.float16)
    loss = mse(h, torch.zeros(2))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(90000.0)


def test_adaptive_coefficient_by_hand():
    """Sample 1 tokens (3,4), (0,0): norms 5, 0 -> mean 2.5. Sample 2 tokens (6,8), (0,0): norms 10, 0 -> 5.
    Batch mean N = 3.75 (padding included); beta = 5 -> coefficient 18.75. A second topic's batch (0,2): N = 2,
    coefficient 10. Read from what `setup` sets, through an engine whose frozen model returns the batch itself."""
    class Engine:
        prepare = staticmethod(lambda batch: batch)
        frozen = staticmethod(lambda h: h)

    first = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[6.0, 8.0], [0.0, 0.0]]])
    second = torch.tensor([[[0.0, 2.0]]])
    method = AdaptiveRMU([U, U], beta=5.0, alphas=[1.0, 1.0])
    method.setup(Engine(), [first, second])
    assert method.steering.adaptive_norms == pytest.approx([3.75, 2.0])
    assert method.steering.coefficients == pytest.approx([18.75, 10.0])


def test_control_vector_is_uniform_positive_unit_and_seeded():
    u = control_vector(4096, torch.Generator().manual_seed(42))
    assert u.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert (u > 0).all()  # uniform on [0, 1), not Gaussian
    # before normalisation the entries are uniform: mean 0.5 -> after dividing by the norm sqrt(d/3)
    assert (u * (4096 / 3) ** 0.5).mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(u, control_vector(4096, torch.Generator().manual_seed(42)))
    assert not torch.equal(u, control_vector(4096, torch.Generator().manual_seed(43)))


def test_rna_noise_is_fresh_absolute_gaussian():
    frozen = torch.full((4, 64, 256), 100.0)
    generator = torch.Generator().manual_seed(0)
    first = noisy_retain_target(frozen, nu=0.05, generator=generator)
    second = noisy_retain_target(frozen, nu=0.05, generator=generator)
    noise = first - frozen
    assert noise.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert noise.std().item() == pytest.approx(0.05, rel=0.02)  # absolute, not relative to the activations' 100
    assert not torch.equal(first, second)  # fresh at every step
    assert torch.equal(noisy_retain_target(frozen, 0.0, generator), frozen)


def test_npo_and_simnpo_forget_terms_by_hand():
    """beta = 0.1. NPO with NLL_theta = 2, NLL_ref = 1: -(2/0.1) logsigmoid(0.1 * 1) = -20 log(0.524979) = 12.88794.
    SimNPO with NLL_theta = 2: -20 logsigmoid(0.2) = -20 log(0.549834) = 11.96278. At the first step NPO's
    log-ratio is 0: -20 log(0.5) = 13.86294, whatever the NLL."""
    assert npo_forget_loss(torch.tensor(2.0), torch.tensor(1.0), 0.1).item() == pytest.approx(12.88794, rel=1e-5)
    assert npo_forget_loss(torch.tensor(5.3), torch.tensor(5.3), 0.1).item() == pytest.approx(13.86294, rel=1e-5)
    assert simnpo_forget_loss(torch.tensor(2.0), 0.1).item() == pytest.approx(11.96278, rel=1e-5)


def test_nll_leaves_padding_out_by_hand():
    """V = 2, one left-padded sequence: ids (0, 1, 1), mask (0, 1, 1), so labels (-100, 1, 1). Position 0 (the pad)
    predicts token 1 with logits (0, 0): CE = ln 2 = 0.693147; position 1 predicts token 1 with logits (0, ln 3):
    p = 3/4, CE = ln(4/3) = 0.287682; position 2 predicts nothing. Mean = 0.490415."""
    logits = torch.tensor([[[0.0, 0.0], [0.0, torch.log(torch.tensor(3.0)).item()], [5.0, -5.0]]])
    value = nll(logits, torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 1]]))
    assert value.item() == pytest.approx(0.490415, rel=1e-5)


def test_nll_is_hugging_faces_causal_lm_loss_with_padding_ignored():
    from unlearn.models import load_model

    model, tokenizer = load_model("tiny://llama", seed=0)
    batch = tokenizer(["a short one", "a much longer document than the other"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    output = model(**batch, labels=labels)
    assert nll(output.logits, batch["attention_mask"], batch["input_ids"]).item() == pytest.approx(output.loss.item(), rel=1e-5)


def test_retain_terms_by_hand():
    """Two positions, V = 2. Position 1: theta logits (ln 3, 0) -> p = (3/4, 1/4); reference logits (0, 0) -> (1/2, 1/2).
    KL(ref || theta) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.143841; position 2 identical in both: 0.
    KL averaged over the B*T = 2 positions: 0.071921. MSE of log-softmax: differences (ln .75 - ln .5, ln .25 - ln .5)
    = (0.405465, -0.693147), squares summing to 0.644855, over B*T*V = 4 values: 0.161214. With the second
    position masked out, KL = 0.143841 and MSE = 0.644855 / 2 = 0.322428."""
    ln3 = torch.log(torch.tensor(3.0)).item()
    theta = torch.tensor([[[ln3, 0.0], [1.0, 2.0]]])
    reference = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]])
    assert kl_retain(theta, reference).item() == pytest.approx(0.071921, rel=1e-4)
    assert mse_retain(theta, reference).item() == pytest.approx(0.161214, rel=1e-4)
    mask = torch.tensor([[1, 0]])
    assert kl_retain(theta, reference, mask).item() == pytest.approx(0.143841, rel=1e-4)
    assert mse_retain(theta, reference, mask).item() == pytest.approx(0.322428, rel=1e-4)


def test_rna_over_po_perturbs_the_reference_retain_logits_only():
    """Over NPO, RNA's noise enters the reference's h_l in the retain forward and reaches its logits; the
    forget term (clean reference) and the updated model are untouched, and nu = 0 is plain NPO."""
    from unlearn.corpora import BatchStream
    from unlearn.engine import FastEngine
    from unlearn.models import load_model

    model, tokenizer = load_model("tiny://llama", seed=0)
    engine = FastEngine(model, 7, 5)
    forget = BatchStream(["the virus capsid"] * 4, tokenizer, 4, 16).batch(0)
    retain = BatchStream(["the river flows"] * 4, tokenizer, 4, 16).batch(0)
    parts = {}
    for label, nu in (("npo", None), ("rna0", 0.0), ("rna", 0.5)):
        spec = MethodSpec("rna" if nu is not None else "npo", "npo", [1.0], beta=0.1, retain_loss="kl", nu=nu)
        parts[label] = build(spec, n_topics=1, hidden_size=64, device="cpu", seed=0).loss(engine, 0, forget, retain)
    assert parts["rna0"].loss.item() == parts["npo"].loss.item()
    assert parts["rna"].forget_loss.item() == parts["npo"].forget_loss.item()
    assert parts["npo"].retain_loss.item() == pytest.approx(0.0, abs=1e-9)  # untrained: theta = reference
    assert parts["rna"].retain_loss.item() > 1e-4  # the noise propagated to the reference's logits
