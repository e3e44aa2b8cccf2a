"""Corpora and batches: the reference's batching by default, the options when asked, clear errors otherwise."""

from __future__ import annotations

import json

import pytest
import torch

from unlearn.corpora import BatchStream, CorpusSpec, batches_needed, check_sizes, read_texts
from unlearn.errors import UnlearnError
from unlearn.models import load_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny://llama")[1]


def test_batches_are_consecutive_truncated_right_padded_left(tokenizer):
    texts = ["abc", "abcdefgh", "ab", "abcdefghijkl", "xyz"]
    stream = BatchStream(texts, tokenizer, batch_size=2, max_length=6)
    first = stream.batch(0)
    # byte tokenizer: <s> + one token per byte; "abcdefgh" is cut to <s>abcde (6 tokens)
    assert first["input_ids"].shape == (2, 6)
    assert first["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert tokenizer.decode(first["input_ids"][1], skip_special_tokens=True) == "abcde"
    assert first["input_ids"][0, 0].item() == tokenizer.pad_token_id == tokenizer.eos_token_id
    second = stream.batch(1)
    assert tokenizer.decode(second["input_ids"][0], skip_special_tokens=True) == "ab"


def test_topics_alternate_and_batches_counted_per_topic():
    assert [batches_needed(5, 2, t) for t in (0, 1)] == [3, 2]  # steps 0,2,4 -> topic 0; 1,3 -> topic 1
    check_sizes([("bio", 12, 12), ("cyber", 8, 8)], steps=5, batch_size=4, cycle=False)
    with pytest.raises(UnlearnError, match="topic 'cyber': the retain corpus has 7 documents .* needs 8"):
        check_sizes([("bio", 12, 12), ("cyber", 8, 7)], steps=5, batch_size=4, cycle=False)
    check_sizes([("bio", 1, 1)], steps=5, batch_size=4, cycle=True)


def test_chunking_keeps_every_token(tokenizer):
    stream = BatchStream(["a" * 10], tokenizer, batch_size=1, max_length=4, chunk=True)
    assert len(stream) == 3  # <s> + 10 bytes = 11 tokens -> 4 + 4 + 3
    assert [int(stream.batch(i)["attention_mask"].sum()) for i in range(3)] == [4, 4, 3]



def test_chunks_are_padded_left_like_documents(tokenizer):
    stream = BatchStream(["a" * 10], tokenizer, batch_size=3, max_length=4, chunk=True)
    batch = stream.batch(0)  # chunks of 4, 4 and 3 tokens
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]
    assert batch["input_ids"][2, 0].item() == tokenizer.pad_token_id
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long

def test_shuffle_is_seeded_and_off_by_default(tokenizer):
    texts = [f"doc {i}" for i in range(20)]
    assert BatchStream(texts, tokenizer, 4, 16).samples == texts
    shuffled = BatchStream(texts, tokenizer, 4, 16, shuffle_seed=42).samples
    assert shuffled != texts and sorted(shuffled) == sorted(texts)
    assert shuffled == BatchStream(texts, tokenizer, 4, 16, shuffle_seed=42).samples


def test_local_jsonl_txt_and_raw_lines(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "first"}\n\n{"text": "  "}\n{"text": "second", "id": 2}\n')
    assert read_texts(CorpusSpec(str(jsonl))) == ["first", "second"]  # empty documents dropped
    assert read_texts(CorpusSpec(str(jsonl), raw_lines=True)) == [
        '{"text": "first"}\n', "\n", '{"text": "  "}\n', '{"text": "second", "id": 2}\n']
    txt = tmp_path / "c.txt"
    txt.write_text("one document\nanother\n")
    assert read_texts(CorpusSpec(str(txt))) == ["one document", "another"]
    assert len(read_texts(CorpusSpec("pkg://unlearn/data/demo/forget.jsonl"))) == 170


def test_raw_lines_are_the_published_codes_lines_byte_for_byte(tmp_path, tokenizer):
    """The WMDP RMU code's get_data reads the cyber corpus as `for line in open(path)`, keeping every line longer
    than min_len = 0 characters (its command line's default) as it is, newline included, in batches of 4 that it
    tokenizes with padding and truncation at 768. A JSONL of the corpus's schema, with what could go wrong:
    escapes, non-ASCII text, a raw U+2028 inside a string (a line separator to str.splitlines, not to a file), a
    CRLF line ending, a blank line, and no newline at the end."""
    rows = [{"text": 'a "quoted" word and a \\ backslash'}, {"text": "caf\u00e9 \u2028 next"}, {"text": "x" * 900}]
    corpus = tmp_path / "cyber-forget-corpus.jsonl"
    corpus.write_bytes((json.dumps(rows[0]) + "\n" + json.dumps(rows[1], ensure_ascii=False) + "\r\n\n"
                        + json.dumps(rows[2]) + "\n" + json.dumps({"text": "last"})).encode("utf-8"))
    with open(corpus) as file:  # the published reading
        published = [str(line) for line in file if len(line) > 0]
    ours = read_texts(CorpusSpec(str(corpus), raw_lines=True, max_length=768))
    assert [text.encode("utf-8") for text in ours] == [text.encode("utf-8") for text in published]
    assert len(ours) == 5 and ours[1].endswith("next\"}\n") and ours[2] == "\n" and ours[4] == '{"text": "last"}'
    stream = BatchStream(ours, tokenizer, batch_size=4, max_length=768)
    expected = tokenizer(published[:4], return_tensors="pt", padding=True, truncation=True, max_length=768)
    assert torch.equal(stream.batch(0)["input_ids"], expected["input_ids"])
    assert torch.equal(stream.batch(0)["attention_mask"], expected["attention_mask"])
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    assert stream.batch(0)["input_ids"][0, -1].item() == newline  # the newline reaches the model


def test_hub_code_path_with_a_local_dataset_of_the_same_schema(tmp_path):
    """`datasets.load_dataset` on a directory of JSONL files: the path a hub id takes, without the hub."""
    folder = tmp_path / "wmdp-corpora"
    folder.mkdir()
    rows = [{"text": f"cyber document {i}"} for i in range(6)] + [{"text": ""}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = read_texts(CorpusSpec(str(folder), split="train"))
    assert texts == [f"cyber document {i}" for i in range(6)]
    raw = read_texts(CorpusSpec(str(folder), split="train", raw_lines=True))
    assert raw[0] == '{"text": "cyber document 0"}\n'  # the record written back, not the file's bytes
    with pytest.raises(UnlearnError, match="has no column 'body'"):
        read_texts(CorpusSpec(str(folder), split="train", text_field="body"))


def test_unreachable_hub_dataset_fails_fast_and_clearly():
    with pytest.raises(UnlearnError, match="could not load dataset cais/wmdp-corpora .*: offline mode is set"):
        read_texts(CorpusSpec("cais/wmdp-corpora", name="cyber-forget-corpus"))
