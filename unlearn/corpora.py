"""Forget and retain corpora, grouped into topics, and the batches the reference code feeds them in.

A corpus is a hub dataset (`path` = dataset id, with `name` and `split`), a local JSONL file (one object per
line, the document in `text_field`), a local .txt file (one document per line) or a file bundled in the package
(`pkg://unlearn/...`). Empty documents are dropped, as the reference does for wikitext.

`raw_lines` feeds a local file's lines as the published WMDP code's `get_data` reads its cyber corpus: each line
as Python's text mode yields it, trailing newline included, none dropped (it keeps lines longer than 0
characters, so a blank line is a document "\n"). From a hub dataset the records are not lines: each is written
back with `json.dumps` plus a newline, which matches the published file's bytes only where it was written that
way; for the exact bytes, point the path at the downloaded JSONL file.

Batching follows the reference by default: consecutive groups of `batch_size` documents in file order, each
document one sample truncated from the right at `max_length` tokens, padded on the left to the longest in the
batch. Shuffling, cycling and chunking are options, off by default.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearn import hub
from unlearn.errors import UnlearnError, first_line

PACKAGE_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CorpusSpec:
    path: str
    text_field: str = "text"
    max_length: int = 512
    name: str | None = None  # hub dataset config
    split: str = "train"
    raw_lines: bool = False  # feed each line as read, newline included (the published cyber run did)


@dataclass
class Topic:
    """One thing to forget: its forget corpus and the retain corpus it is paired with."""

    name: str
    forget: list[str]
    retain: list[str]
    forget_max_length: int
    retain_max_length: int


def resolve_path(path: str) -> Path:
    """`pkg://unlearn/x` is a file inside the installed package; anything else is a plain path."""
    if path.startswith("pkg://unlearn/"):
        return PACKAGE_ROOT / path[len("pkg://unlearn/") :]
    return Path(path).expanduser()


def describe(path: Path) -> str:
    """What is at `path`, for a message: "found <this>, expected ..."."""
    if not path.exists():
        return "nothing (no such file or directory)"
    if path.is_dir():
        return "a directory" if os.access(path, os.R_OK | os.X_OK) else "a directory that cannot be read"
    if not path.is_file():
        return "something that is not a regular file"
    if not os.access(path, os.R_OK):
        return "a file that cannot be read (permission denied)"
    return f"a {path.suffix} file" if path.suffix else "a file without an extension"


def is_local(path: str) -> bool:
    """A file path (or bundled file) rather than a hub dataset id or a dataset directory (both: `datasets`)."""
    if resolve_path(path).is_dir():
        return False
    if path.startswith(("pkg://", "/", "./", "../", "~")):
        return True
    return resolve_path(path).suffix in (".jsonl", ".json", ".txt") or resolve_path(path).is_file()


CORPUS_KINDS = (".jsonl", ".json", ".txt")


def check_corpus_file(path: str, what: str) -> None:
    """A local corpus path holds a readable .jsonl/.json/.txt file; else one line saying what is there instead."""
    found = resolve_path(path)
    if found.is_file() and os.access(found, os.R_OK) and found.suffix in CORPUS_KINDS:
        return
    there = describe(found)
    hint = ("check the path (data.forget_path / data.retain_path, or data.topics.<topic>.<side>.path)"
            if not found.exists() else "convert it, or point at a hub dataset id or a dataset directory instead")
    raise UnlearnError(f"{what} {found}: found {there}, expected a .jsonl or .json file (one JSON object per "
                       f"line) or a .txt file (one document per line): {hint}")


def read_texts(spec: CorpusSpec) -> list[str]:
    """The corpus's non-empty documents, in file order."""
    texts = _read_local(spec) if is_local(spec.path) else _read_hub(spec)
    if not spec.raw_lines:  # raw lines are kept as the published code keeps them, blank ones included
        texts = [text for text in texts if text.strip()]
    if not texts:
        raise UnlearnError(f"corpus {spec.path} has no non-empty documents: check the file and data.*.text_field")
    return texts


def _read_local(spec: CorpusSpec) -> list[str]:
    path = resolve_path(spec.path)
    if not path.is_file():
        raise UnlearnError(f"corpus file {path} does not exist: check the data.* path (or data.forget_path/retain_path)")
    try:
        text = path.read_text(encoding="utf-8")  # text mode: "\r\n" and "\r" read as "\n", as open(path) reads them
    except UnicodeDecodeError as exc:
        raise UnlearnError(f"corpus file {path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}): "
                           "expected JSON Lines (.jsonl) or plain text (.txt); is it compressed or binary?") from None
    lines = list(io.StringIO(text))  # split at "\n" only, each line keeping it, as iterating open(path) does
    if spec.raw_lines:
        return lines
    lines = [line.rstrip("\n") for line in lines]
    if path.suffix == ".txt":
        return [line for line in lines if line.strip()]
    if text.lstrip().startswith("["):  # a .json file holding one array: not one object per line
        raise UnlearnError(f"{path} is one JSON array; expected one JSON object per line (JSON Lines): convert it, "
                           f"e.g. jq -c '.[]' {path.name} > {path.stem}.jsonl")
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnlearnError(f"{path}:{number}: not valid JSON ({exc.msg}): fix or remove that line") from None
        if not isinstance(row, dict) or spec.text_field not in row:
            found = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise UnlearnError(
                f"{path}:{number}: no field '{spec.text_field}' (found: {found}): set the text field to the one that "
                "holds the text (data.text_field or the topic's text_field; an audit's reference files: "
                "audit.reference.text_field)"
            )
        if not isinstance(text := row[spec.text_field], str):
            raise UnlearnError(f"{path}:{number}: field '{spec.text_field}' holds {json.dumps(text)[:40]}, not a "
                               "string: each document's text must be one JSON string; fix or remove that line")
        texts.append(text)
    return texts


def _read_hub(spec: CorpusSpec) -> list[str]:
    """A hub dataset through `datasets`; fails at once when offline and not cached."""
    import datasets

    try:
        if not hub.offline() and not hub.reachable():
            raise ConnectionError("the Hugging Face hub is unreachable (set HF_DATASETS_OFFLINE=1 to read your local cache)")
        dataset = datasets.load_dataset(spec.path, spec.name, split=spec.split)
    except Exception as exc:  # datasets raises many types for "not reachable / not cached"
        reason = "offline mode is set and it is not in the local cache" if hub.offline() else first_line(exc)
        raise UnlearnError(
            f"could not load dataset {spec.path}" + (f" ({spec.name})" if spec.name else "")
            + f": {reason}: point the topic's path at a local JSONL of the same schema, or use data=demo"
        ) from None
    if spec.text_field not in dataset.column_names:
        raise UnlearnError(
            f"dataset {spec.path} has no column '{spec.text_field}' (columns: {', '.join(dataset.column_names)}): "
            "set the topic's text_field"
        )
    if spec.raw_lines:  # the published cyber run fed each record as its raw JSON line (written back: not its bytes)
        return [json.dumps(row) + "\n" for row in dataset]
    return list(dataset[spec.text_field])


def load_topic(name: str, forget: CorpusSpec, retain: CorpusSpec, max_length_cap: int | None) -> Topic:
    def capped(length: int) -> int:
        return min(length, max_length_cap) if max_length_cap else length

    return Topic(
        name=name,
        forget=read_texts(forget),
        retain=read_texts(retain),
        forget_max_length=capped(forget.max_length),
        retain_max_length=capped(retain.max_length),
    )


def batches_needed(steps: int, n_topics: int, topic_index: int) -> int:
    """Steps alternate topics (`topic = step % n_topics`, `batch = step // n_topics`)."""
    return len(range(topic_index, steps, n_topics))


def check_sizes(sizes: list[tuple[str, int, int]], steps: int, batch_size: int, cycle: bool, unit: str = "documents") -> None:
    """Fail before training when a corpus is too small for the run and reuse was not asked for.

    `sizes`: (topic name, forget samples, retain samples) per topic, in topic order.
    """
    if cycle:
        return
    for index, (name, n_forget, n_retain) in enumerate(sizes):
        needed = batches_needed(steps, len(sizes), index) * batch_size
        for side, available in (("forget", n_forget), ("retain", n_retain)):
            if available < needed:
                raise UnlearnError(
                    f"topic '{name}': the {side} corpus has {available} {unit} but steps={steps} with "
                    f"batch_size={batch_size} needs {needed}: lower steps or batch_size, or set data.cycle=true"
                )


class BatchStream:
    """The `index`-th batch of a list of documents, tokenized on demand (left padding, right truncation)."""

    def __init__(self, texts: list[str], tokenizer, batch_size: int, max_length: int, *,
                 shuffle_seed: int | None = None, chunk: bool = False):
        if shuffle_seed is not None:
            texts = list(texts)
            random.Random(shuffle_seed).shuffle(texts)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.samples: list[str] | list[list[int]] = _chunked(texts, tokenizer, max_length) if chunk else texts

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask`, both (B, T); the batch index wraps around the corpus."""
        start = (index * self.batch_size) % len(self.samples)
        group = [self.samples[(start + i) % len(self.samples)] for i in range(self.batch_size)]
        if isinstance(group[0], str):
            return self.tokenizer(group, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        return self.tokenizer.pad({"input_ids": group}, padding=True, return_tensors="pt")  # on the side models.py sets: left


def _chunked(texts: list[str], tokenizer, max_length: int) -> list[list[int]]:
    """Each document split into consecutive pieces of at most `max_length` tokens (nothing dropped)."""
    pieces = []
    for ids in tokenizer(texts)["input_ids"]:
        pieces.extend(ids[i : i + max_length] for i in range(0, len(ids), max_length))
    return pieces
