"""One run, top to bottom: check the config, load, evaluate before, train, evaluate after, save.

`plan(cfg)` does every check that needs no weights (the CLI calls it before Hydra starts a job, so a typo costs
a second); `run(cfg, run_dir)` carries the plan out and leaves the run directory described in the README.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save as safetensors_bytes

from unlearn import config, evaluate_only, exclusions, rundir
from unlearn.blocks import check_model_layout, trained_parameters
from unlearn.config import TopicSpec
from unlearn.corpora import BatchStream, CorpusSpec, check_sizes, load_topic, read_texts
from unlearn.engine import FastEngine
from unlearn.methods import MethodSpec, build as build_method, variant
from unlearn.evaluation import attacks, check_tasks, eval_spec, evaluate, format_attacks, format_table
from unlearn.evaluation.cache import model_identity
from unlearn.models import cache_root, load_model, load_model_config, num_blocks
from unlearn.schema import EvalSpec
from unlearn.tracking import NullTracker, start_tracker
from unlearn.train import TopicStreams, train

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Everything the config decides, checked, as plain values."""

    topics: list[TopicSpec]
    method: MethodSpec
    layer: int
    update_layers: list[int]
    device: str
    dtype: torch.dtype
    eval_spec: EvalSpec | None  # None: eval=none


def plan(cfg: DictConfig, overridden_method_keys: list[str] = ()) -> Plan:
    config.method_name_and_base(cfg)  # first: the method's defaults (steps, lr, ...) depend on it
    config.check_training(cfg)
    config.check_added_keys(cfg)
    topics = config.topics(cfg, corpora_needed=cfg.train is not False)
    method = config.method(cfg, [t.name for t in topics], overridden_method_keys)
    device = config.device(cfg.device)
    dtype = config.dtype(cfg.dtype, device)
    model_config = load_model_config(cfg.model.name_or_path, cfg.model.trust_remote_code)
    layer, update_layers = config.unlearn_layers(cfg, num_blocks(model_config))
    check_model_layout(model_config, update_layers, cfg.param_pattern, cfg.model.trust_remote_code,
                       needs_head=method.reads_logits)
    if cfg.data.exclude:
        exclusions.read(cfg.data.exclude)  # its format; whether it matches the corpora is checked once they are read
    eval_spec = _eval_spec(cfg)
    evaluate_only.check(cfg, eval_spec, topics, model_config)
    if eval_spec is not None:
        attacks.check_attack_files(eval_spec, [c for t in topics for c in (t.forget, t.retain) if c is not None])
        attacks.check_optimised(eval_spec, num_blocks(model_config))
    return Plan(topics, method, layer, update_layers, device, dtype, eval_spec)


def _eval_spec(cfg: DictConfig):
    spec = eval_spec(cfg.eval)
    if spec is None:  # eval=none
        return None
    check_tasks(spec)
    return spec


def run(cfg: DictConfig, run_dir: Path, save_model: bool, multirun: bool = False,
        sweep_invocation: str | None = None) -> dict:
    """Carry out one run in `run_dir`; returns results.json's content. The manifest records how it ended and,
    in a sweep, the id of the invocation that ran it."""
    run_dir = Path(run_dir)
    rundir.write_text_atomic(run_dir / rundir.CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    manifest = rundir.Manifest(run_dir, seed=cfg.seed, device=None, dtype=None, batch_size=cfg.batch_size,
                               sweep_invocation=sweep_invocation)
    metrics = rundir.MetricsLog(run_dir)
    tracker = NullTracker()

    def close(status: str) -> None:
        metrics.close()
        tracker.finish(status)

    with rundir.outcome_recorded(manifest, "lower batch_size or max_length, or use dtype=bf16", on_end=close):
        tracker = start_tracker(cfg, run_dir, multirun)
        return _pipeline(cfg, run_dir, save_model, manifest, metrics, tracker)


def _pipeline(cfg: DictConfig, run_dir: Path, save_model: bool, manifest: rundir.Manifest,
              metrics: rundir.MetricsLog, tracker) -> dict:
    p = plan(cfg)
    manifest.update(device=p.device, dtype=str(p.dtype).removeprefix("torch."), layer=p.layer,
                    update_layers=p.update_layers, method=p.method.name, model=cfg.model.name_or_path)
    if not cfg.train:  # evaluate the configured model only
        return evaluate_only.run(cfg, p, run_dir, manifest, tracker, probe_texts=_probe_texts, evaluate=(
            lambda model, tokenizer, vectors, texts, key: _evaluate(
                model, tokenizer, p, vectors, {t.name: t.keywords for t in p.topics}, texts, cache_key=key)))

    # Corpora first: a bad file fails before any weights load.
    topics = [load_topic(t.name, t.forget, t.retain, cfg.max_length) for t in p.topics]
    if cfg.data.exclude:
        topics, excluded = exclusions.apply(topics, cfg.data.exclude)
        manifest.update(excluded=excluded)
    if not cfg.data.chunk:  # chunking can only add samples: checked again once tokenized
        check_sizes([(t.name, len(t.forget), len(t.retain)) for t in topics], cfg.steps, cfg.batch_size, cfg.data.cycle)
    attack_spec = p.eval_spec if p.eval_spec is not None and p.eval_spec.attacks else None
    if attack_spec is not None:
        attack_texts = attacks.load_attack_texts(attack_spec, topics)
        manifest.update(attacks=attacks.attack_settings(attack_spec))

    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(
        cfg.model.name_or_path, dtype=p.dtype, device=p.device, device_map=cfg.device_map,
        trust_remote_code=cfg.model.trust_remote_code, seed=cfg.seed,
    )
    params = trained_parameters(model, p.update_layers, cfg.param_pattern)
    # the base model's values of the trained weights (a few matrices): the optimised attacks' base-model reference
    originals = {name: w.detach().clone() for name, w in params.items()} if attack_spec is not None else {}
    for weight in params.values():
        weight.requires_grad_(True)

    streams = [_streams(topic, tokenizer, cfg) for topic in topics]
    if cfg.data.chunk:
        check_sizes([(s.name, len(s.forget), len(s.retain)) for s in streams], cfg.steps, cfg.batch_size,
                    cfg.data.cycle, unit="chunks")
    hidden_size = model.config.get_text_config().hidden_size
    activation_device = next(iter(params.values())).device
    method = build_method(p.method, n_topics=len(streams), hidden_size=hidden_size, device=activation_device,
                          seed=cfg.seed)
    vectors = method.steering.control_vectors if method.steering is not None else []

    probe_texts = _probe_texts(p.eval_spec) if p.eval_spec is not None else None
    keywords = {t.name: t.keywords for t in p.topics}
    before = None
    if p.eval_spec is not None and p.eval_spec.before:
        base_model = model_identity(cfg.model.name_or_path, seed=cfg.seed)  # the weights: see evaluation.cache
        before = _evaluate(model, tokenizer, p, vectors, keywords, probe_texts, cache_key=base_model)
    original_means = None  # the ablation's reference: the base model's block outputs, only known before training
    if attack_spec is not None and "ablate" in attack_spec.attacks:
        original_means = attacks.mean_block_outputs(model, tokenizer, attack_texts.ablate, attack_spec.attack.ablate)

    engine = FastEngine(model, p.layer, p.update_layers[0])
    method.setup(engine, [s.forget.batch(0) for s in streams])
    manifest.update(method_settings=p.method.settings, trained_parameters=list(params))
    coefficients, norms = [None] * len(streams), [None] * len(streams)
    described = variant(p.method.name, p.method.base, p.method.retain_loss)
    if method.steering is not None:  # RM methods: their control vectors and coefficients, before training
        coefficients, norms = method.steering.coefficients, method.steering.adaptive_norms
        _save_control_vectors(run_dir, streams, vectors, coefficients)
        manifest.update(steering_coeffs=coefficients, adaptive_norms=norms)
        described += f", coefficients {[round(c, 3) for c in coefficients]}"
    log.info(f"Training {sum(w.numel() for w in params.values()):,} weights ({len(params)} tensors) "
             f"with {described} at layer {p.layer}")
    losses: list[dict] = []
    train(engine, method, streams, list(params.values()), steps=cfg.steps, lr=cfg.lr, optimizer=cfg.optimizer.value,
          on_step=lambda record: (metrics.write(record), tracker.log_step(record), losses.append(record)))
    del engine  # frees the frozen copies before evaluation
    model.requires_grad_(False)

    results = {
        "training": _training_summary(losses, streams, coefficients, norms),
        "before": before,
        "after": None,
    }
    if p.eval_spec is not None:
        results["after"] = _evaluate(model, tokenizer, p, vectors, keywords, probe_texts, cache_key=None)
        log.info("%s", format_table(before, results["after"]))
    rundir.write_json_atomic(run_dir / rundir.RESULTS, results)
    if save_model:
        rundir.save_model_atomic(model, tokenizer, run_dir / rundir.MODEL_DIR)
    if attack_spec is not None:  # each on its own copy or view: the model above is left as saved
        results["attacks"] = attacks.run_attacks(
            model, tokenizer, attack_spec, attack_texts, original_means, before=before, after=results["after"],
            trained_blocks=p.update_layers, unlearn_layer=p.layer,
            control_vectors={t.name: v.detach().cpu() for t, v in zip(p.topics, vectors)},
            base_weights=lambda: attacks.weights_swapped({n: (params[n], originals[n]) for n in params}),
            base_identity=model_identity(cfg.model.name_or_path, seed=cfg.seed), cache_dir=cache_root() / "attacks")
        log.info("%s", format_attacks(results["attacks"]))
        rundir.write_json_atomic(run_dir / rundir.RESULTS, results)
    tracker.log_results(results)
    return results


def _streams(topic, tokenizer, cfg: DictConfig) -> TopicStreams:
    shuffle_seed = cfg.seed if cfg.data.shuffle else None

    def stream(texts, max_length):
        return BatchStream(texts, tokenizer, cfg.batch_size, max_length, shuffle_seed=shuffle_seed, chunk=cfg.data.chunk)

    return TopicStreams(topic.name, stream(topic.forget, topic.forget_max_length), stream(topic.retain, topic.retain_max_length))


def _evaluate(model, tokenizer, p: Plan, vectors, keywords, probe_texts, cache_key):
    names = [t.name for t in p.topics]
    return evaluate(model, tokenizer, p.eval_spec, unlearn_layer=p.layer,
                    control_vectors=dict(zip(names, [v.detach().cpu() for v in vectors])),
                    keywords=keywords, probe_texts=probe_texts, cache_key=cache_key, cache_dir=cache_root() / "eval")


def _probe_texts(spec) -> dict[str, list[str]] | None:
    """Held-out forget and retain text for the probes (never the training batches)."""
    probes = spec.probes
    if not probes.enabled:
        return None
    paths = {"forget": probes.forget_path, "retain": probes.retain_path}
    return {side: read_texts(CorpusSpec(path, text_field=probes.text_field))[: probes.max_documents]
            for side, path in paths.items()}


def _save_control_vectors(run_dir: Path, streams: list[TopicStreams], vectors, coefficients) -> None:
    tensors = {}
    for topic, u, coeff in zip(streams, vectors, coefficients):
        tensors[f"{topic.name}.u"] = u.detach().float().cpu().contiguous()
        tensors[f"{topic.name}.coeff"] = torch.tensor([coeff], dtype=torch.float32)
    rundir.write_bytes_atomic(run_dir / rundir.CONTROL_VECTORS, safetensors_bytes(tensors))


def _training_summary(losses: list[dict], streams: list[TopicStreams], coefficients, norms) -> dict:
    summary = {"steps": len(losses), "topics": {}}
    for topic, coeff, norm in zip(streams, coefficients, norms):
        mine = [r for r in losses if r["topic"] == topic.name]
        summary["topics"][topic.name] = {
            "steering_coeff": coeff,
            "adaptive_norm": norm,
            "first": {k: mine[0][k] for k in ("loss", "forget_loss", "retain_loss")} if mine else None,
            "last": {k: mine[-1][k] for k in ("loss", "forget_loss", "retain_loss")} if mine else None,
        }
    times = sorted(r["step_time_s"] for r in losses)
    summary["median_step_time_s"] = times[len(times) // 2] if times else None
    return summary
