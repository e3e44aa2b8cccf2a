"""`data.exclude=<audit dir>/audit.csv`: train without the documents a corpus audit flagged.

audit.csv (written by `python -m unlearn.audit`) has one row per document of every audited corpus, keyed by
topic, side (forget / retain) and index (0-based, in the order `corpora.read_texts` returns the documents),
with a digest of the document's text. An exclude file is only applied to the corpora it describes: the same
topics, the same number of documents on each side, the same text at every index. Anything else is refused,
so a stale audit can never drop the wrong documents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

from unlearn.corpora import Topic, resolve_path
from unlearn.errors import UnlearnError, first_line

log = logging.getLogger(__name__)
SIDES = ("forget", "retain")
KEY_COLUMNS = ("topic", "side", "index", "digest", "flagged")
RERUN = "rerun python -m unlearn.audit with this data config, or drop data.exclude"


def digest(text: str) -> str:
    """The first 16 hex digits of the text's SHA-256: enough to tell two documents apart."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read(path: str):
    """The exclude file as a DataFrame, its format checked (no corpus needed: the pre-check calls this)."""
    import pandas as pd

    file = resolve_path(path)
    if file.is_dir():
        raise UnlearnError(f"data.exclude={path} is a directory: point it at the audit.csv inside it "
                           f"(data.exclude={Path(path) / 'audit.csv'})")
    if not file.is_file():
        raise UnlearnError(f"data.exclude={path}: {file} does not exist: point it at an audit's audit.csv "
                           "(python -m unlearn.audit writes one)")
    try:
        table = pd.read_csv(file, dtype={"topic": str, "side": str, "digest": str})
    except Exception as exc:  # pandas raises several parser and decoding error types
        raise UnlearnError(f"data.exclude={path}: not a readable CSV ({first_line(exc)}): point it at an audit's "
                           "audit.csv") from None
    missing = [c for c in KEY_COLUMNS if c not in table.columns]
    if missing:
        raise UnlearnError(f"data.exclude={path}: no column {', '.join(missing)}: point it at an audit's audit.csv "
                           "(python -m unlearn.audit writes one)")
    if table.empty:
        raise UnlearnError(f"data.exclude={path} has no rows: {RERUN}")
    if table["flagged"].dtype != bool or not table["side"].isin(SIDES).all():
        raise UnlearnError(f"data.exclude={path}: 'flagged' must be True/False and 'side' forget/retain in every "
                           f"row: {RERUN}")
    return table


def apply(topics: list[Topic], path: str) -> tuple[list[Topic], dict]:
    """The topics without their flagged documents, and what was left out (for the manifest).

    Refuses an exclude file that does not describe exactly these corpora.
    """
    table = read(path)
    extra = sorted(set(table["topic"]) - {t.name for t in topics})
    if extra:
        raise UnlearnError(f"data.exclude={path} audits topic(s) {', '.join(extra)}, which this data config does "
                           f"not have: {RERUN}")
    kept, record = [], {"file": str(Path(resolve_path(path)).absolute()), "topics": {}}
    for topic in topics:
        texts = {}
        record["topics"][topic.name] = {}
        for side in SIDES:
            documents = getattr(topic, side)
            rows = table[(table["topic"] == topic.name) & (table["side"] == side)].sort_values("index")
            _check_matches(rows, documents, f"topic '{topic.name}' {side} corpus", path)
            flagged = set(rows.loc[rows["flagged"], "index"].astype(int))
            if len(flagged) == len(documents):
                raise UnlearnError(f"data.exclude={path} flags every document of the topic '{topic.name}' {side} "
                                   f"corpus ({len(documents)}): nothing would be left to train on; rerun the audit "
                                   "with a lower audit.flag_fraction, or drop data.exclude")
            texts[side] = [text for i, text in enumerate(documents) if i not in flagged]
            record["topics"][topic.name][side] = {"documents": len(documents), "excluded": len(flagged),
                                                  "excluded_indices": sorted(flagged)}
        kept.append(dataclasses.replace(topic, forget=texts["forget"], retain=texts["retain"]))
        counts = record["topics"][topic.name]
        log.info("data.exclude: topic '%s' trains without %d forget and %d retain documents flagged in %s",
                 topic.name, counts["forget"]["excluded"], counts["retain"]["excluded"], path)
    return kept, record


def _check_matches(rows, documents: list[str], what: str, path: str) -> None:
    if len(rows) != len(documents):
        raise UnlearnError(f"data.exclude={path} does not match the {what}: the audit saw {len(rows)} documents, "
                           f"the corpus has {len(documents)}: {RERUN}")
    if list(rows["index"]) != list(range(len(documents))):
        raise UnlearnError(f"data.exclude={path}: the {what} rows are not indices 0..{len(documents) - 1}: {RERUN}")
    for index, expected in zip(rows["index"], rows["digest"]):
        if digest(documents[index]) != expected:
            raise UnlearnError(f"data.exclude={path} does not match the {what}: document {index} has different "
                               f"text than the audit saw: {RERUN}")
