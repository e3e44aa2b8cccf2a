#!/usr/bin/env python
"""Time in-memory lm-eval on the demo tasks: batch size handed to HFLM vs lm-eval's default for a pre-built model.

    python scripts/bench_eval.py                       # embedded SmolLM2-135M, bundled demo questions
    python scripts/bench_eval.py --limit 20 --batch-size 32
    python scripts/bench_eval.py --data-dir tests/fixtures/eval   # other demo_{forget,retain}.jsonl files

The baseline is what a pre-built model gets when the batch size goes to `simple_evaluate` instead of `HFLM`:
lm-eval ignores it and scores one request at a time. Both runs use the same model object, in this process, on
the same tasks and documents; a short warm-up run first keeps dataset loading out of both timings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
DEMO_TASKS = REPO / "unlearn/evaluation/tasks/demo"
TASKS = ("demo_forget", "demo_retain")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct", help="unlearn.models name_or_path")
    parser.add_argument("--limit", type=int, default=50, help="questions per task (default 50)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size handed to HFLM (default 16)")
    parser.add_argument("--data-dir", type=Path, default=DEMO_TASKS,
                        help="directory holding demo_forget.jsonl and demo_retain.jsonl (default: the bundled ones)")
    return parser.parse_args()


def task_dir(data_dir: Path, scratch: Path) -> Path:
    """The packaged demo task YAMLs beside the chosen question files."""
    if data_dir.resolve() == DEMO_TASKS.resolve():
        return DEMO_TASKS
    for path in DEMO_TASKS.iterdir():
        if path.name.endswith("yaml"):
            shutil.copy(path, scratch)
    for name in TASKS:
        shutil.copy(data_dir / f"{name}.jsonl", scratch)
    return scratch


def timed_run(label: str, model, tokenizer, tasks, manager, limit: int, *, batch_size: int, via_hflm: bool):
    """Wall time and accuracies of one lm-eval run over freshly built tasks."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from unlearn.evaluation.harness import run_tasks, task_metrics

    start = time.perf_counter()
    if via_hflm:
        raw = run_tasks(model, tokenizer, tasks, manager, batch_size=batch_size, limit=limit, num_fewshot=0)
        used = batch_size
    else:  # the common mistake: batch_size given to simple_evaluate, which a pre-built HFLM never sees
        lm = HFLM(pretrained=model, tokenizer=tokenizer)
        raw = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, batch_size=batch_size, limit=limit,
                              num_fewshot=0, log_samples=False)
        used = lm.batch_size
    seconds = time.perf_counter() - start
    accuracies = {name: task_metrics(raw, name)["acc"] for name in TASKS}
    print(f"{label:<44} HFLM batch size {used:>3}: {seconds:7.1f} s   "
          + "  ".join(f"{name} {100 * acc:.1f}%" for name, acc in accuracies.items()), flush=True)
    return seconds, accuracies


def main() -> int:
    args = parse_args()
    missing = [name for name in TASKS if not (args.data_dir / f"{name}.jsonl").exists()]
    if missing:
        print(f"no {', '.join(missing)}.jsonl in {args.data_dir}: pass --data-dir (e.g. tests/fixtures/eval)")
        return 2
    import torch

    from unlearn.evaluation.tasks import build, find_tasks
    from unlearn.models import load_model

    model, tokenizer = load_model(args.model)
    print(f"model {args.model}, {torch.get_num_threads()} CPU threads, limit {args.limit} questions per task, "
          f"data {args.data_dir}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = task_dir(args.data_dir, Path(scratch))
        manager = find_tasks(TASKS, (folder,))

        def tasks():
            return [task for name in TASKS for task in build(manager, name)]

        timed_run("warm-up (2 questions per task)", model, tokenizer, tasks(), manager, 2,
                  batch_size=args.batch_size, via_hflm=True)
        baseline, base_acc = timed_run("batch_size to simple_evaluate (ignored)", model, tokenizer, tasks(), manager,
                                       args.limit, batch_size=args.batch_size, via_hflm=False)
        ours, our_acc = timed_run("batch_size to HFLM (unlearn.evaluation)", model, tokenizer, tasks(), manager,
                                  args.limit, batch_size=args.batch_size, via_hflm=True)
    print(f"speed-up: {baseline / ours:.2f}x  (accuracy difference "
          f"{max(abs(base_acc[n] - our_acc[n]) for n in TASKS) * 100:.1f} points at most)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
