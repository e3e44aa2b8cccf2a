"""`train=false`: evaluate the configured model (a hub id, a local directory, a run's `model/`) with the same
suite as a training run, in the same kind of run directory, and train nothing.

results.json keeps the training run's layout so the report and the trackers read it unchanged: `after` holds
the evaluation of the configured model, `before` is null and there is no `training` part; manifest.json says
`"train": false`. The probes' cosine with the control vectors u needs a run's u:
`eval.probes.control_vectors=<run>/control_vectors.safetensors`; without it the cosines are skipped with a
notice (the norms and confidences need no u and are still measured).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from unlearn import rundir
from unlearn.corpora import describe, resolve_path
from unlearn.errors import UnlearnError

log = logging.getLogger(__name__)


def check(cfg: DictConfig, spec, topics: list, model_config) -> None:
    """Before any weights load: `train` is a boolean; with train=false there is something to evaluate, no attack
    is asked for, and the control vectors file, when given, holds a u of the model's width for every topic."""
    if not isinstance(cfg.train, bool):
        raise UnlearnError(f"train must be true or false (got {cfg.train!r})")
    if cfg.train:
        return
    if spec is None:
        raise UnlearnError("train=false with eval=none evaluates nothing: choose an evaluation (eval=demo, "
                           "eval=wmdp_mmlu)")
    if spec.attacks:  # they attack the unlearned model against the base model's controls, after training
        raise UnlearnError(f"train=false runs no knowledge-recovery attacks (eval.attacks={list(spec.attacks)}): they "
                           "run after training; drop them with eval.attacks=[] (or evaluate without train=false)")
    path = spec.probes.control_vectors
    if path is not None:
        read_control_vectors(path, [t.name for t in topics], model_config.get_text_config().hidden_size)


def read_control_vectors(path: str, topics: list[str], hidden_size: int) -> dict[str, torch.Tensor]:
    """`{topic: u}` from a run's control_vectors.safetensors (keys `<topic>.u`)."""
    from safetensors import SafetensorError, safe_open

    found = resolve_path(path)
    expected = f"expected a run's {rundir.CONTROL_VECTORS} (tensors <topic>.u)"
    if not found.is_file():
        raise UnlearnError(f"eval.probes.control_vectors: found {describe(found)} at {path}, {expected}")
    try:
        with safe_open(str(found), framework="pt") as tensors:
            keys = set(tensors.keys())
            missing = [topic for topic in topics if f"{topic}.u" not in keys]
            if missing:
                raise UnlearnError(
                    f"eval.probes.control_vectors: {path} has no u for topic(s) {', '.join(missing)} (it holds "
                    f"{', '.join(sorted(keys)) or 'nothing'}): use the control vectors of a run on the same data"
                )
            vectors = {topic: tensors.get_tensor(f"{topic}.u") for topic in topics}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnlearnError(f"eval.probes.control_vectors: {path} is not a safetensors file ({exc}), {expected}") from None
    for topic, u in vectors.items():
        if tuple(u.shape) != (hidden_size,):
            raise UnlearnError(f"eval.probes.control_vectors: {path}'s {topic}.u has shape {tuple(u.shape)}, but the "
                               f"model's hidden size is {hidden_size}: use the control vectors of a run on this model")
    return vectors


def run(cfg: DictConfig, p, run_dir: Path, manifest: rundir.Manifest, tracker, *, evaluate, probe_texts) -> dict:
    """Load the model, evaluate it once, write results.json. `evaluate(model, tokenizer, vectors, probe_texts,
    cache_key)` is the training run's own evaluation call."""
    from unlearn.evaluation import format_table
    from unlearn.evaluation.cache import model_identity
    from unlearn.models import load_model

    manifest.update(train=False, method=None, update_layers=None)
    names = [t.name for t in p.topics]
    vectors = None
    model, tokenizer = load_model(
        cfg.model.name_or_path, dtype=p.dtype, device=p.device, device_map=cfg.device_map,
        trust_remote_code=cfg.model.trust_remote_code, seed=cfg.seed,
    )
    if p.eval_spec.probes.control_vectors is not None:
        hidden_size = model.config.get_text_config().hidden_size
        vectors = read_control_vectors(p.eval_spec.probes.control_vectors, names, hidden_size)
    elif p.eval_spec.probes.enabled:
        log.warning("probes: cos(h_l, u) skipped, as nothing was trained and no control vectors were given: set "
                    "eval.probes.control_vectors=<run>/%s (the norms and confidences are measured)",
                    rundir.CONTROL_VECTORS)
    texts = probe_texts(p.eval_spec)
    evaluation = evaluate(model, tokenizer, [vectors[n] for n in names] if vectors else [], texts,
                          model_identity(cfg.model.name_or_path, seed=cfg.seed))
    results = {"before": None, "after": evaluation}
    log.info("%s", format_table(None, evaluation))
    rundir.write_json_atomic(run_dir / rundir.RESULTS, results)
    tracker.log_results(results)
    return results
