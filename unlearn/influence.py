"""Class-based influence functions (IFs-class) on a forget-vs-retain linear probe.

Nguyen-Duc, Thanh-Tung, Tran, Dang et al., "Class based Influence Functions for Error Detection" (ACL 2023,
arXiv 2305.01384). Influence scores between examples of different classes are noisy, between examples of the
same class they are stable; so compare a training example's gradient only with the gradients of clean
reference examples of each class, and take the worst class:

    s_k(z)   = sum over references z' of class k of sim(g(z'), g(z))
    score(z) = min_k s_k(z)                       (IFs-class; the lowest scores are the likely mislabelled)
    plain(z) = sum over all references z' of sim(g(z'), g(z))   (the baseline the paper compares with)

`g` is the gradient of the example's classification loss w.r.t. the classifier head only. Here the classifier
is a logistic-regression probe, forget = 1, retain = 0, on a document feature `x` (d,), so the head is the whole
probe and its gradient has a closed form (see `probe_gradients`). `sim` is the gradient dot product (GD) or
cosine (GC). Tensors in, tensors out: the audit CLI (`unlearn/audit.py`) builds them from the corpora.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FORGET, RETAIN = 1.0, 0.0  # the probe's labels
SIMILARITIES = ("gd", "gc")  # gradient dot product, gradient cosine


@dataclass
class Probe:
    """p(forget | x) = sigmoid(w . (x - mean) / scale + b); features are standardised with the training set's
    mean and standard deviation, so that a few huge residual-stream dimensions do not swamp the rest."""

    weight: torch.Tensor  # (d,)
    bias: torch.Tensor  # ()
    mean: torch.Tensor  # (d,)
    scale: torch.Tensor  # (d,)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.mean) / self.scale  # (n, d)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.standardise(features) @ self.weight + self.bias  # (n,)


def train_probe(features: torch.Tensor, labels: torch.Tensor, *, inverse_l2: float, max_iter: int) -> Probe:
    """Logistic regression by full-batch L-BFGS from zero, the objective of scikit-learn's LogisticRegression:
    `C * sum of binary cross-entropies + |w|^2 / 2` with C = `inverse_l2` (the bias is not penalised), here
    divided by n (same minimum, a loss of the usual scale).

    Deterministic (zero start, no sampling). The L2 term matters: with more feature dimensions than documents
    any labelling is linearly separable, and an unregularised probe would fit the mislabelled documents too,
    leaving them with gradients as small as everyone else's.
    """
    x = features.float()
    mean = x.mean(dim=0)
    scale = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / scale  # (n, d)
    y = labels.float()
    penalty = 0.5 / (inverse_l2 * len(y))
    weight = torch.zeros(z.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ weight + bias, y) + penalty * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return Probe(weight.detach(), bias.detach(), mean, scale)


def probe_gradients(probe: Probe, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-document gradient of the probe's loss w.r.t. (weight, bias), one row per document: (n, d + 1).

    Closed form for logistic regression. With z the standardised feature, p = sigmoid(w . z + b) and
    loss = -y log p - (1 - y) log(1 - p), the derivative of the loss w.r.t. the logit is p - y, so

        d loss / d w = (p - y) z,    d loss / d b = (p - y),    g = (p - y) [z, 1].

    The L2 term is a property of the whole training set, not of a document, and is left out (as the paper's
    per-example gradients leave out everything but the example's own loss). `tests/test_audit.py` checks this
    against autograd.
    """
    z = probe.standardise(features)  # (n, d)
    residual = torch.sigmoid(z @ probe.weight + probe.bias) - labels.float()  # (n,) = p - y
    return residual[:, None] * torch.cat([z, torch.ones(len(z), 1)], dim=1)  # (n, d + 1)


def class_scores(gradients: torch.Tensor, references: dict[str, torch.Tensor], similarity: str) -> torch.Tensor:
    """`s_k(z)` for every document and class: (n, K), columns in the order of `references` (class -> (m_k, d+1)).

    A sum of similarities is a similarity with the summed reference: `sum_z' g(z') . g(z) = (sum_z' g(z')) . g(z)`,
    so each class costs one matrix-vector product. GC normalises every gradient first (a zero gradient stays 0).
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    normalise = (lambda g: F.normalize(g, dim=1)) if similarity == "gc" else (lambda g: g)
    g = normalise(gradients)  # (n, d + 1)
    summed = torch.stack([normalise(ref).sum(dim=0) for ref in references.values()], dim=1)  # (d + 1, K)
    return g @ summed  # (n, K)


def ifs_class(per_class: torch.Tensor) -> torch.Tensor:
    """IFs-class: `min_k s_k(z)`, (n,)."""
    return per_class.min(dim=1).values


def plain(per_class: torch.Tensor) -> torch.Tensor:
    """The baseline: one sum over all references, whatever their class, (n,)."""
    return per_class.sum(dim=1)


def lowest(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """A boolean mask of the `round(fraction * n)` lowest scores (at least one); ties go to the earlier index."""
    count = max(1, round(fraction * len(scores)))
    order = torch.sort(scores, stable=True).indices
    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[order[:count]] = True
    return mask
