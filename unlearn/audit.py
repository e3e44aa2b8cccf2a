"""`python -m unlearn.audit [overrides]`: find the documents on the wrong side of the forget/retain split.

Class-based influence functions (REFERENCE, last method section; the math is in `unlearn/influence.py`), with
the same config as `python -m unlearn` (model, data, layer) plus `audit.*` (conf/audit.yaml):

1. features: one no-grad forward per document through blocks 0..l only (the fast engine's truncated forward),
   batched, h_l mean-pooled over the document's real tokens;
2. a logistic-regression probe, forget = 1 vs retain = 0, trained on each topic's corpora as labelled;
3. per-document probe gradients; the IFs-class score against clean reference documents of each class, and the
   plain score (one sum over all references), by gradient dot product (GD) and cosine (GC);
4. the lowest `audit.flag_fraction` of each topic's documents by IFs-class (`audit.similarity`) are flagged.

The run directory holds config.yaml, manifest.json, audit.csv (one row per document; `data.exclude=` takes it),
audit.md (the most suspicious documents of each side) and audit_scores.png (the score histograms).
"""

from __future__ import annotations

import io
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from unlearn import config, exclusions, influence, rundir, sweep
from unlearn.cli import CONF_DIR, ConfigSearch, check_jobs, run
from unlearn.config import TopicSpec
from unlearn.corpora import CORPUS_KINDS, CorpusSpec, describe, read_texts, resolve_path
from unlearn.errors import UnlearnError
from unlearn.engine import FastEngine
from unlearn.models import load_model, load_model_config, num_blocks

log = logging.getLogger("unlearn.audit")  # also when run as __main__
AUDIT_CSV, AUDIT_MD, AUDIT_PNG = "audit.csv", "audit.md", "audit_scores.png"
SCORE_COLUMNS = ("ifs_class_gd", "ifs_class_gc", "plain_gd", "plain_gc")


@dataclass
class AuditPlan:
    """What the config decides, checked, as plain values."""

    topics: list[TopicSpec]
    references: dict[str, dict[str, CorpusSpec] | None]  # topic -> class -> clean file; None: held out of the corpus
    layer: int
    device: str
    dtype: torch.dtype
    similarity: str
    flag_fraction: float
    heldout_fraction: float


def plan(cfg: DictConfig) -> AuditPlan:
    """Every check that needs no weights (the pre-check runs it before Hydra starts the job)."""
    topics = config.topics(cfg)
    config.seed(cfg)
    device = config.device(cfg.device)
    dtype = config.dtype(cfg.dtype, device)
    layer, _ = config.unlearn_layers(cfg, num_blocks(load_model_config(cfg.model.name_or_path, cfg.model.trust_remote_code)))
    similarity = str(cfg.audit.similarity)  # a Similarity: the schema refuses any other value
    for key in ("audit.batch_size", "audit.probe.max_iter", "audit.excerpt_chars", "audit.top"):
        config.positive_int(cfg, key)
    config.positive_float(cfg, "audit.probe.inverse_l2", example="1.0")
    return AuditPlan(topics, _references(cfg, topics), layer, device, dtype, similarity,
                     _fraction(cfg, "audit.flag_fraction"), _fraction(cfg, "audit.reference.heldout_fraction"))


def _fraction(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UnlearnError(f"{key} must be a number strictly between 0 and 1, got {value!r}: e.g. {key}=0.1")
    return float(value)


def _references(cfg: DictConfig, topics: list[TopicSpec]) -> dict[str, dict[str, CorpusSpec] | None]:
    """Per topic, a clean reference file for each class: `audit.reference.*_path` for every topic, else the data
    preset's `reference` for that topic, else None (a seeded held-out part of each corpus is the reference)."""
    given = {side: cfg.audit.reference[f"{side}_path"] for side in exclusions.SIDES}
    if any(given.values()):
        specs = {side: _reference_spec(side, f"audit.reference.{side}_path", path, cfg.audit.reference.text_field)
                 for side, path in given.items()}
        return {topic.name: specs for topic in topics}
    found, data = {}, config.checked_data(cfg)  # the schema's defaults also for a preset without its schema line
    for topic in topics:
        preset = data.topics[topic.name].reference
        found[topic.name] = None if not (preset.forget or preset.retain) else {
            side: _reference_spec(side, f"data.topics.{topic.name}.reference.{side}", preset[side], preset.text_field)
            for side in exclusions.SIDES
        }
    return found


def _reference_spec(side: str, key: str, path: str | None, text_field: str) -> CorpusSpec:
    """A reference file that exists and has documents (read now: reference sets are small local files)."""
    if not path:
        other = "retain" if side == "forget" else "forget"
        raise UnlearnError(f"{key} is missing but the {other} class has a reference file: each class needs clean "
                           f"reference documents; give both files, or neither (a held-out part of each corpus)")
    spec = CorpusSpec(str(path), text_field=text_field)
    found = resolve_path(spec.path)
    if not found.is_file() or found.suffix not in CORPUS_KINDS:
        there = "does not exist" if not found.exists() else f"is {describe(found)}"
        raise UnlearnError(f"{key}={path}: {found} {there}: give a local JSONL or .txt file of clean documents of "
                           "that class")
    try:
        read_texts(spec)
    except UnlearnError as exc:
        raise UnlearnError(f"{key}: {exc}; each class needs at least one clean reference document") from None
    return spec


# ---------------------------------------------------------------------------------------------------------
# Features: mean-pooled h_l through blocks 0..l only


@torch.no_grad()
def document_features(engine: FastEngine, tokenizer, texts: list[str], *, max_length: int, batch_size: int,
                      label: str = "documents") -> torch.Tensor:
    """h_l (the output of the engine's unlearn block) averaged over each document's real tokens: (n, d) float32.

    The forward is the fast engine's truncated one: the model runs up to block l's input and stops there
    (`prepare`), then block l runs (`updated`); nothing above block l, no LM head, no gradient. Padding and
    special tokens (the BOS the tokenizer adds, an attention sink whose h_l is the same for every text and many
    times larger) are left out of the mean, as in the probes. Documents go through in order of length, so a
    batch carries little padding.
    """
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pooled = torch.empty(len(texts), engine.model.config.get_text_config().hidden_size)
    for start in tqdm(range(0, len(order), batch_size), desc=f"{label} ({len(texts)})", unit="batch", file=sys.stderr):
        rows = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length, return_special_tokens_mask=True)
        hidden = engine.updated(engine.prepare(batch)).float()  # (B, T, d)
        keep = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
        keep = torch.where(keep.any(dim=1, keepdim=True), keep, batch["attention_mask"].bool())  # all-special text
        weights = keep.to(hidden.device, torch.float32)[..., None]  # (B, T, 1)
        pooled[rows] = ((hidden * weights).sum(dim=1) / weights.sum(dim=1)).cpu()  # (B, d)
    return pooled


def feature_engine(model, layer: int) -> FastEngine:
    """The fast engine with block l as its only "trained" block: `prepare` runs blocks 0..l-1 once, `updated`
    runs block l. (Its one frozen copy, of block l, goes unused: 1/32 of a 7B model, freed with the engine.)"""
    return FastEngine(model, layer, first_trained_layer=layer)


# ---------------------------------------------------------------------------------------------------------
# The audit of one topic


@dataclass
class Side:
    """One corpus of a topic: its documents and which of them are the held-out reference (not scored)."""

    name: str  # forget | retain
    texts: list[str]
    features: torch.Tensor  # (n, d)
    is_reference: torch.Tensor  # (n,) bool


def split_heldout(n: int, fraction: float, seed: int | str) -> torch.Tensor:
    """A seeded `fraction` of n documents (at least one, never all) as the reference: a (n,) bool mask."""
    count = min(max(1, round(fraction * n)), n - 1)
    chosen = random.Random(seed).sample(range(n), count) if n > 1 else []  # a str seed is stable across runs
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return mask


def score_topic(sides: dict[str, Side], references: dict[str, torch.Tensor], *, inverse_l2: float, max_iter: int):
    """Probe, gradients and the four scores for one topic.

    `references`: class -> features of clean reference documents not in the corpus (empty (0, d) when the
    reference is held out of the corpus, marked in `Side.is_reference`). Returns (table columns per side, probe
    training accuracy).
    """
    labels = {"forget": influence.FORGET, "retain": influence.RETAIN}
    scored = {name: side.features[~side.is_reference] for name, side in sides.items()}
    features = torch.cat([scored["forget"], scored["retain"]])
    y = torch.cat([torch.full((len(scored[n]),), labels[n]) for n in ("forget", "retain")])
    probe = influence.train_probe(features, y, inverse_l2=inverse_l2, max_iter=max_iter)
    accuracy = ((probe.logits(features) > 0).float() == y).float().mean().item()

    ref_grads = {}
    for name, side in sides.items():
        ref = torch.cat([references[name], side.features[side.is_reference]])  # (m_k, d)
        ref_grads[name] = influence.probe_gradients(probe, ref, torch.full((len(ref),), labels[name]))
    columns = {}
    for name, side in sides.items():
        grads = influence.probe_gradients(probe, side.features, torch.full((len(side.texts),), labels[name]))
        cols = {"p_forget": torch.sigmoid(probe.logits(side.features))}
        for sim in influence.SIMILARITIES:
            per_class = influence.class_scores(grads, ref_grads, sim)  # (n, 2)
            cols[f"ifs_class_{sim}"] = influence.ifs_class(per_class)
            cols[f"plain_{sim}"] = influence.plain(per_class)
        columns[name] = {key: value.masked_fill(side.is_reference, float("nan")) if key in SCORE_COLUMNS else value
                         for key, value in cols.items()}
    return columns, accuracy


def topic_table(topic: str, sides: dict[str, Side], columns, *, similarity: str, flag_fraction: float,
                excerpt_chars: int):
    """audit.csv's rows for one topic: ranked by the chosen IFs-class score, the lowest flagged."""
    import pandas as pd

    frames = []
    for name, side in sides.items():
        frames.append(pd.DataFrame({
            "topic": topic,
            "side": name,
            "index": range(len(side.texts)),
            "role": ["reference" if r else "scored" for r in side.is_reference.tolist()],
            **{key: value.tolist() for key, value in columns[name].items()},
            "digest": [exclusions.digest(t) for t in side.texts],
            "excerpt": [_excerpt(t, excerpt_chars) for t in side.texts],
        }))
    table = pd.concat(frames, ignore_index=True)
    key = f"ifs_class_{similarity}"
    scored = table["role"] == "scored"
    flagged = influence.lowest(torch.tensor(table.loc[scored, key].to_numpy()), flag_fraction)
    table["flagged"] = False
    table.loc[scored, "flagged"] = flagged.numpy()
    table["rank"] = table.loc[scored, key].rank(method="first").astype("Int64")  # 1 = most suspicious
    return table


def _excerpt(text: str, chars: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 3].rstrip() + "..."


# ---------------------------------------------------------------------------------------------------------
# The run


def audit(cfg: DictConfig, run_dir: Path):
    """Carry out the audit in `run_dir`; returns the audit.csv table. The manifest records how it ended."""
    run_dir = Path(run_dir)
    rundir.write_text_atomic(run_dir / rundir.CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    manifest = rundir.Manifest(run_dir, command="audit", seed=cfg.seed, device=None, dtype=None)
    with rundir.outcome_recorded(manifest, "lower audit.batch_size or max_length, or use dtype=bf16"):
        return _pipeline(cfg, run_dir, manifest)


def _pipeline(cfg: DictConfig, run_dir: Path, manifest: rundir.Manifest):
    import pandas as pd

    p = plan(cfg)
    manifest.update(device=p.device, dtype=str(p.dtype).removeprefix("torch."), layer=p.layer,
                    model=cfg.model.name_or_path, similarity=p.similarity, flag_fraction=p.flag_fraction)
    if cfg.data.exclude:
        log.warning("data.exclude=%s is a training setting: the audit reads the whole corpora", cfg.data.exclude)

    # Corpora and references first: a bad file, or a held-out split with nothing in it, fails before weights load.
    corpora = {t.name: {side: read_texts(getattr(t, side)) for side in exclusions.SIDES} for t in p.topics}
    heldout = {}
    for topic in p.topics:
        if p.references[topic.name] is None:
            heldout[topic.name] = {side: _heldout(topic.name, side, texts, p.heldout_fraction, cfg.seed)
                                   for side, texts in corpora[topic.name].items()}
    reference_texts = {name: {side: read_texts(spec) for side, spec in refs.items()}
                       for name, refs in p.references.items() if refs is not None}

    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model.name_or_path, dtype=p.dtype, device=p.device, device_map=cfg.device_map,
                                  trust_remote_code=cfg.model.trust_remote_code, seed=cfg.seed)
    engine = feature_engine(model, p.layer)
    tables, summary = [], {}
    for topic in p.topics:
        lengths = {side: _capped(getattr(topic, side).max_length, cfg.max_length) for side in exclusions.SIDES}

        def features(texts, side, label):
            return document_features(engine, tokenizer, texts, max_length=lengths[side],
                                     batch_size=cfg.audit.batch_size, label=f"h_{p.layer} of {topic.name} {label}")

        started = time.perf_counter()
        sides = {}
        for side, texts in corpora[topic.name].items():
            mask = heldout[topic.name][side] if topic.name in heldout else torch.zeros(len(texts), dtype=torch.bool)
            sides[side] = Side(side, texts, features(texts, side, f"{side} documents"), mask)
        hidden_size = sides["forget"].features.shape[1]
        references = {side: features(reference_texts[topic.name][side], side, f"{side} references")
                      if topic.name in reference_texts else torch.empty(0, hidden_size) for side in exclusions.SIDES}
        feature_seconds = time.perf_counter() - started
        columns, accuracy = score_topic(sides, references, inverse_l2=cfg.audit.probe.inverse_l2,
                                        max_iter=cfg.audit.probe.max_iter)
        table = topic_table(topic.name, sides, columns, similarity=p.similarity, flag_fraction=p.flag_fraction,
                            excerpt_chars=cfg.audit.excerpt_chars)
        tables.append(table)
        summary[topic.name] = _topic_summary(table, sides, references, accuracy, p.references[topic.name])
        summary[topic.name]["feature_seconds"] = round(feature_seconds, 2)  # every forward of the topic
        log.info("topic '%s': probe training accuracy %.3f; flagged %d forget and %d retain documents", topic.name,
                 accuracy, summary[topic.name]["flagged"]["forget"], summary[topic.name]["flagged"]["retain"])

    table = pd.concat(tables, ignore_index=True)
    write_outputs(run_dir, table, summary, similarity=p.similarity, flag_fraction=p.flag_fraction, layer=p.layer,
                  model=cfg.model.name_or_path, top=cfg.audit.top)
    manifest.update(topics=summary)
    return table


def _capped(length: int, cap: int | None) -> int:
    return min(length, cap) if cap else length


def _heldout(topic: str, side: str, texts: list[str], fraction: float, seed: int) -> torch.Tensor:
    if len(texts) < 2:
        raise UnlearnError(f"topic '{topic}': the {side} corpus has {len(texts)} document, too few to hold a "
                           "reference out of it: give audit.reference.forget_path and retain_path")
    return split_heldout(len(texts), fraction, f"{seed}:{topic}:{side}")  # a draw of its own per corpus


def _topic_summary(table, sides: dict[str, Side], references, accuracy: float, files) -> dict:
    mine = {side: table[table["side"] == side] for side in sides}
    return {
        "probe_train_accuracy": accuracy,
        "documents": {side: len(sides[side].texts) for side in sides},
        "scored": {side: int((mine[side]["role"] == "scored").sum()) for side in sides},
        "references": {side: len(references[side]) + int(sides[side].is_reference.sum()) for side in sides},
        "reference_source": {side: (files[side].path if files else "held out of the corpus") for side in sides},
        "flagged": {side: int(mine[side]["flagged"].sum()) for side in sides},
    }


# ---------------------------------------------------------------------------------------------------------
# audit.csv, audit.md, audit_scores.png


def write_outputs(run_dir: Path, table, summary: dict, *, similarity: str, flag_fraction: float, layer: int,
                  model: str, top: int) -> None:
    columns = ["topic", "side", "index", "role", "rank", "flagged", *SCORE_COLUMNS, "p_forget", "digest", "excerpt"]
    rundir.write_text_atomic(run_dir / AUDIT_CSV, table[columns].to_csv(index=False))
    rundir.write_text_atomic(run_dir / AUDIT_MD, summary_markdown(table, summary, similarity=similarity,
                                                                  flag_fraction=flag_fraction, layer=layer,
                                                                  model=model, top=top, run_dir=run_dir))
    rundir.write_bytes_atomic(run_dir / AUDIT_PNG, histogram_png(table, similarity))


def summary_markdown(table, summary: dict, *, similarity: str, flag_fraction: float, layer: int, model: str,
                     top: int, run_dir: Path) -> str:
    key = f"ifs_class_{similarity}"
    name = {"gc": "gradient cosine", "gd": "gradient dot product"}[similarity]
    lines = [
        "# Corpus audit (class-based influence functions)", "",
        f"Model `{model}`, features h_{layer} mean-pooled; a forget-vs-retain logistic probe; IFs-class score "
        f"`min_k sum_(z' in ref_k) sim(g(z'), g(z))` with sim = {name} ({similarity.upper()}). The lowest "
        f"{flag_fraction:.0%} of each topic's scored documents are flagged; the lower the score, the more the "
        "document's probe gradient opposes the clean documents of every class: likely on the wrong side.", "",
        f"Train without them: `python -m unlearn <same data overrides> data.exclude={run_dir / AUDIT_CSV}`", "",
    ]
    for topic, info in summary.items():
        lines += [f"## Topic `{topic}`", "",
                  f"Probe training accuracy {info['probe_train_accuracy']:.3f}.", "",
                  "| side | documents | scored | references | reference from | flagged |", "|---|---|---|---|---|---|"]
        lines += [f"| {side} | {info['documents'][side]} | {info['scored'][side]} | {info['references'][side]} | "
                  f"{info['reference_source'][side]} | {info['flagged'][side]} |" for side in exclusions.SIDES]
        for side in exclusions.SIDES:
            rows = table[(table["topic"] == topic) & (table["side"] == side) & (table["role"] == "scored")]
            rows = rows.sort_values(key).head(top)
            lines += ["", f"### Most suspicious {side} documents", "",
                      f"| index | {key} | plain_{similarity} | p(forget) | flagged | excerpt |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['index']} | {r[key]:.4g} | {r[f'plain_{similarity}']:.4g} | {r['p_forget']:.3f} | "
                      f"{'yes' if r['flagged'] else 'no'} | {_cell(r['excerpt'])} |" for _, r in rows.iterrows()]
        lines.append("")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def histogram_png(table, similarity: str) -> bytes:
    """IFs-class and plain scores per side, the flag threshold marked: one row of panels per topic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topics = list(dict.fromkeys(table["topic"]))
    fig, axes = plt.subplots(len(topics), 2, figsize=(10, 3.2 * len(topics)), squeeze=False)
    for row, topic in enumerate(topics):
        mine = table[(table["topic"] == topic) & (table["role"] == "scored")]
        for col, score in enumerate((f"ifs_class_{similarity}", f"plain_{similarity}")):
            ax = axes[row][col]
            for side, colour in (("forget", "tab:red"), ("retain", "tab:blue")):
                ax.hist(mine.loc[mine["side"] == side, score], bins=40, alpha=0.6, color=colour, label=side)
            if col == 0 and mine["flagged"].any():
                ax.axvline(mine.loc[mine["flagged"], score].max(), color="black", linestyle="--", label="flag threshold")
            ax.set_title(f"{topic}: {score}")
            ax.set_xlabel("score (low = suspicious)")
            ax.set_ylabel("documents")
            ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Command line


def precheck(overrides: list[str], multirun: bool = False, search: ConfigSearch | None = None) -> None:
    """Compose the audit config of every job as Hydra will and run the checks that need no weights."""
    check_jobs(overrides, multirun, search or ConfigSearch("audit"), lambda cfg, job: plan(cfg))


@hydra.main(config_path=str(CONF_DIR), config_name="audit", version_base="1.3")
def hydra_main(cfg: DictConfig) -> str:
    """One audit; returns what it did (`completed`, or in a sweep `skipped`) for the sweep's records. As in a
    training sweep, a job already completed with this config is skipped, and a failure is raised to Hydra, which
    records the job as failed and runs the others."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if multirun and sweep.already_completed(cfg, run_dir):
        log.info(f"Skipping {run_dir}: already completed with this config (sweep.force=true redoes it)")
        return sweep.SKIPPED
    try:
        audit(cfg, run_dir)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if not multirun:
            sys.exit(1)
        raise sweep.JobFailed(f"{run_dir} failed: its manifest.json has the error") from exc
    except KeyboardInterrupt:
        print(f"interrupted: {run_dir} keeps the failure record", file=sys.stderr)
        sys.exit(130)
    log.info("Audit directory: %s", run_dir)
    return sweep.COMPLETED


def main() -> None:
    try:
        run(hydra_main, precheck, "audit")
    finally:
        sweep.summarize_unfinished()  # a sweep that ended on a failed job still gets its summary


if __name__ == "__main__":
    main()
