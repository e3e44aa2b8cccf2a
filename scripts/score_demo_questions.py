#!/usr/bin/env python
"""Score multiple-choice question files with SmolLM2-135M-Instruct, exactly as a run's evaluation scores them.

Each file becomes a copy of the bundled demo task (cloze format: "Question: ...\\nAnswer:" and each choice as the
continuation " {choice}"), and lm-eval scores it through unlearn's own runner (`unlearn.evaluation.harness`):
acc (summed log-likelihood) and acc_norm (divided by the choice's length). Nothing is re-implemented here.

Usage::

    python scripts/score_demo_questions.py                 # both bundled demo sets
    python scripts/score_demo_questions.py FILE.jsonl ...  # any files of the same schema
    python scripts/score_demo_questions.py --verbose       # list misses with per-choice log-likelihoods

For a model of your own, `python -m unlearn train=false model.name_or_path=<dir or hub id>` evaluates it with
the whole suite into a run directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
DEMO_TASKS = REPO / "unlearn/evaluation/tasks/demo"
DEFAULT_FILES = [DEMO_TASKS / "demo_forget.jsonl", DEMO_TASKS / "demo_retain.jsonl"]


def task_dir(files: list[Path], scratch: Path) -> list[str]:
    """One task per file, beside the demo template and its data loader; returns the task names."""
    shutil.copy(DEMO_TASKS / "_demo_cloze_template_yaml", scratch)
    shutil.copy(DEMO_TASKS / "demo_data.py", scratch)
    names = []
    for number, path in enumerate(files):
        name = f"score_{number}_{path.stem}"
        shutil.copy(path, scratch / f"{name}.jsonl")
        (scratch / f"{name}.yaml").write_text(
            f"task: {name}\ninclude: _demo_cloze_template_yaml\ndataset_kwargs:\n  data_files:\n    test: {name}.jsonl\n")
        names.append(name)
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="question .jsonl files (question, choices, answer)")
    parser.add_argument("--verbose", "-v", action="store_true", help="list missed questions")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct", help="unlearn.models name_or_path")
    args = parser.parse_args(argv)
    files = args.files or DEFAULT_FILES
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        print(f"error: no such question file: {', '.join(missing)}", file=sys.stderr)
        return 2

    from lm_eval.tasks import TaskManager

    from unlearn.evaluation.harness import run_tasks, task_metrics
    from unlearn.models import load_model

    model, tokenizer = load_model(args.model)
    with tempfile.TemporaryDirectory() as scratch:
        names = task_dir(files, Path(scratch))
        manager = TaskManager(include_path=scratch, include_defaults=False)
        raw = run_tasks(model, tokenizer, names, manager, batch_size=args.batch_size, limit=None, num_fewshot=0,
                        scorer="shared_context", log_samples=args.verbose)
    for name, path in zip(names, files):
        metrics = task_metrics(raw, name)
        print(f"{path}: {metrics['n']} questions  acc={metrics['acc']:.3f}  acc_norm={metrics['acc_norm']:.3f}")
        for sample in raw.get("samples", {}).get(name, []) if args.verbose else []:
            scores = [response[0] for response in sample["filtered_resps"]]
            guess = max(range(len(scores)), key=scores.__getitem__)
            if guess != sample["doc"]["answer"]:
                print(f"  MISS: {sample['doc']['question']}")
                for index, (choice, score) in enumerate(zip(sample["doc"]["choices"], scores)):
                    mark = "*" if index == sample["doc"]["answer"] else "x" if index == guess else " "
                    print(f"     {mark} {score:8.3f}  {choice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
