#!/usr/bin/env python
"""Time the demo evaluation with the shared-context scorer against lm-eval's HFLM, side by side in one run.

    python scripts/bench_eval.py                       # embedded SmolLM2-135M: 300 questions + 600 perturbed
    python scripts/bench_eval.py --limit 20 --batch-size 32
    python scripts/bench_eval.py --model tiny://llama --limit 4

Both runs are `unlearn.evaluation.evaluate` with conf/eval/demo.yaml (the bundled forget and retain tasks and the
robustness pass over the demo data's four forget keywords; probes off, nothing cached), on the same model object
in this process, at the same batch size, differing only in `eval.scorer`. A short warm-up run of each first
keeps dataset loading out of both timings. It prints each run's time, the ratio of the fastest runs and the largest
accuracy difference, and the work each run gave the model, counted by hooks on it: token positions through the
transformer (padding included) and positions through the LM head. Those counts do not move with the machine's load:
on a shared machine they say what the ratio of times would be on a quiet one, give or take the fixed costs. On a shared machine, `--repeats 2` or more (interleaved) keeps a burst of load from
landing on one side only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SCORERS = ("hflm", "shared_context")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct", help="unlearn.models name_or_path")
    parser.add_argument("--limit", type=int, default=None, help="questions per task (default: all, 150)")
    parser.add_argument("--batch-size", type=int, default=16, help="eval.batch_size of both runs (default 16, demo's)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each scorer, interleaved; the fastest of each counts (default 1)")
    return parser.parse_args()


def demo_spec(*, scorer: str, batch_size: int, limit: int | None):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import unlearn.schema  # noqa: F401  (registers the config schemas)
    from unlearn.evaluation import eval_spec

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):  # eval=demo over conf/eval/base.yaml
        cfg = OmegaConf.to_container(compose("config", overrides=["eval=demo"]).eval, resolve=True)
    cfg.update(scorer=scorer, batch_size=batch_size, limit=limit)
    cfg["probes"]["enabled"] = False
    return eval_spec(cfg)


def demo_keywords() -> dict[str, list[str]]:
    from omegaconf import OmegaConf

    topics = OmegaConf.load(REPO / "conf/data/demo.yaml").topics
    return {name: list(topic.keywords) for name, topic in topics.items()}


def timed_run(model, tokenizer, keywords, *, scorer: str, batch_size: int, limit: int | None):
    from unlearn.evaluation import evaluate

    spec = demo_spec(scorer=scorer, batch_size=batch_size, limit=limit)
    work.update(body=0, head=0)
    start = time.perf_counter()
    results = evaluate(model, tokenizer, spec, unlearn_layer=0, control_vectors={}, keywords=keywords,
                       probe_texts=None)
    return time.perf_counter() - start, results


work = {"body": 0, "head": 0}  # positions the last run sent through the transformer and through the LM head


def count_work(model) -> None:
    """Hooks adding each forward's positions (padding included) to `work`."""
    def body(_module, args, kwargs):
        work["body"] += (kwargs["input_ids"] if args == () else args[0]).numel()

    def head(_module, args):
        work["head"] += args[0].shape[:-1].numel()

    model.register_forward_pre_hook(body, with_kwargs=True)
    model.get_output_embeddings().register_forward_pre_hook(head)


def accuracies(results) -> dict[str, float]:
    """Every accuracy the run reports: each task's, and each keyword's perturbed one."""
    found = {name: metrics["acc"] for name, metrics in results["tasks"].items()}
    found.update({f"+{keyword}": entry["perturbed"] for keyword, entry in results["robustness"]["keywords"].items()})
    return found


def main() -> int:
    args = parse_args()
    import torch

    from unlearn.models import load_model

    model, tokenizer = load_model(args.model)
    keywords = demo_keywords()
    count_work(model)
    print(f"model {args.model}, {torch.get_num_threads()} CPU threads, batch size {args.batch_size}, "
          f"{args.limit or 'all'} questions per task, robustness keywords {sum(keywords.values(), [])}", flush=True)
    for scorer in SCORERS:  # warm-up: datasets built and cached, code paths loaded, for both alike
        timed_run(model, tokenizer, keywords, scorer=scorer, batch_size=args.batch_size, limit=2)
    seconds, results, counted = {scorer: [] for scorer in SCORERS}, {}, {}
    for repeat in range(args.repeats):
        for scorer in SCORERS if repeat % 2 == 0 else SCORERS[::-1]:  # alternate who runs first
            took, results[scorer] = timed_run(model, tokenizer, keywords, scorer=scorer,
                                              batch_size=args.batch_size, limit=args.limit)
            seconds[scorer].append(took)
            counted[scorer] = dict(work)
            found = accuracies(results[scorer])
            questions = sum(m["n"] for m in results[scorer]["tasks"].values())
            perturbed = sum(task["n"] * len(task["keywords"]) for task in results[scorer]["robustness"]["tasks"].values())
            print(f"{scorer:<15} {took:7.1f} s   {questions} questions + {perturbed} perturbed   "
                  f"{work['body']} positions through the model, {work['head']} through the LM head   "
                  + "  ".join(f"{name} {100 * acc:.1f}%" for name, acc in found.items()), flush=True)
    fastest = {scorer: min(times) for scorer, times in seconds.items()}
    reference, ours = accuracies(results["hflm"]), accuracies(results["shared_context"])
    print(f"speed-up: {fastest['hflm'] / fastest['shared_context']:.2f}x, {fastest['hflm']:.1f} s vs "
          f"{fastest['shared_context']:.1f} s  (accuracy difference "
          f"{max(abs(reference[name] - ours[name]) for name in reference) * 100:.2f} points at most)")
    print(f"work: {counted['hflm']['body'] / counted['shared_context']['body']:.2f}x fewer positions through the "
          f"model, {counted['hflm']['head'] / counted['shared_context']['head']:.2f}x fewer through the LM head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
