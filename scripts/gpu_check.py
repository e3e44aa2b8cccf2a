#!/usr/bin/env python
"""One command for a machine with one H100/H200: the figures that matter at 7B scale, in one JSON file.

    python scripts/gpu_check.py --out gpu_check.json          # on the GPU: Mistral-7B shape, a few minutes
    python scripts/gpu_check.py --tiny --out /tmp/check.json  # the same steps on the CPU with a tiny model (a test)

What it measures (random weights, nothing downloaded):
- `rmu`: the RMU recipe's 150 steps on the fast engine on the Mistral-7B shape (bf16, layer 7, batch 4,
  512 tokens): wall time, median step, peak GPU memory (scripts/bench_engine.py, its own process);
- `npo`: NPO + KL's peak memory on the fast engine against the plain approach (a deep-copied reference model,
  full forwards, gradients everywhere), same shape, a few steps each, each in its own process;
- `eval`: evaluation throughput (questions per second) of the shared-context scorer against lm-eval's HFLM at
  batch 32, on the bundled 300 questions (WMDP's schema) in WMDP's letter format (tests/fixtures/wmdp) and in the
  demo tasks' cloze format, with both scorers' accuracies (they must be equal).
Each part is written to the JSON as soon as it is measured, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
BENCH_ENGINE = REPO / "scripts/bench_engine.py"
LETTER_TASK = REPO / "tests/fixtures/wmdp/wmdp_letters.yaml"
DEMO_TASKS = REPO / "unlearn/evaluation/tasks/demo"
SCORERS = ("hflm", "shared_context")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file written")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU, a few steps (a test)")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    return parser.parse_args()


def settings(tiny: bool) -> dict:
    if tiny:
        return {"model": "tiny-random", "device": "cpu", "rmu_steps": 3, "npo_steps": 3, "limit": 6, "warm_up": False}
    return {"model": "mistral-7b-shape", "device": "cuda", "rmu_steps": 150, "npo_steps": 6, "limit": None,
            "warm_up": True}


def engine_run(setting: dict, *, method: str, engine: str, steps: int) -> dict:
    """scripts/bench_engine.py measuring one engine in a fresh process (its peak memory is its own)."""
    command = [sys.executable, str(BENCH_ENGINE), "--engine", engine, "--method", method, "--model",
               setting["model"], "--device", setting["device"], "--steps", str(steps), "--warmup", "1"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} on the {engine} engine failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"steps": steps, "total_s": round(result["total_s"], 2), "median_step_s": round(result["median_step_s"], 4),
            "peak_gib": round(result["peak_bytes"] / 2**30, 2)}


def eval_model(setting: dict):
    """The benchmarked model: bench_engine's own builder (Mistral-7B shape in bf16, or the tiny Llama)."""
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH_ENGINE)
    bench_engine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_engine)
    model, tokenizer = bench_engine.build_model(setting["model"], setting["device"])
    return model.eval(), tokenizer


def question_tasks() -> dict[str, list[dict]]:
    """The bundled 300 questions as task configs: WMDP's letter format and the demo cloze format."""
    from omegaconf import OmegaConf

    from unlearn.evaluation.tasks import build, find_tasks, task_config

    letters = []
    for name in ("demo_forget", "demo_retain"):
        config = OmegaConf.to_container(OmegaConf.load(LETTER_TASK))
        config["task"] = f"{name}_letters"
        config["dataset_kwargs"]["data_files"]["test"] = str(DEMO_TASKS / f"{name}.jsonl")
        letters.append(config)
    manager = find_tasks(("demo_forget", "demo_retain"), (DEMO_TASKS,))
    cloze = [task_config(task) for name in ("demo_forget", "demo_retain") for task in build(manager, name)]
    return {"letters": letters, "cloze": cloze}, manager


def throughput(model, tokenizer, tasks: list[dict], manager, *, batch_size: int, limit, warm_up: bool) -> dict:
    """Questions per second of each scorer on `tasks` (after a warm-up of each), and their accuracies."""
    import torch

    from unlearn.evaluation.harness import run_tasks

    def run(scorer: str, run_limit):
        return run_tasks(model, tokenizer, copy.deepcopy(tasks), manager, batch_size=batch_size, limit=run_limit,
                         num_fewshot=0, scorer=scorer)

    figures = {}
    for scorer in SCORERS:
        if warm_up:
            run(scorer, 2)  # datasets built, kernels chosen
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        raw = run(scorer, limit)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        questions = sum(int(entry["effective"]) for entry in raw["n-samples"].values())
        figures[scorer] = {"questions": questions, "seconds": round(seconds, 2),
                           "questions_per_s": round(questions / seconds, 1),
                           "acc": {name: raw["results"][name]["acc,none"] for name in raw["n-samples"]}}
    figures["speed_up"] = round(figures["hflm"]["seconds"] / figures["shared_context"]["seconds"], 2)
    figures["same_accuracies"] = figures["hflm"]["acc"] == figures["shared_context"]["acc"]
    return figures


def main() -> int:
    args = parse_args()
    import torch

    setting = settings(args.tiny)
    if setting["device"] == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a machine with one H100/H200, or pass --tiny for the CPU check")
        return 2
    began = time.perf_counter()
    figures = {"setting": setting, "device": torch.cuda.get_device_name() if setting["device"] == "cuda" else "cpu",
               "torch": torch.__version__, "shape": "Mistral-7B (32 blocks, d=4096), random bf16 weights, layer 7, "
               "batch 4, 512 tokens" if not args.tiny else "tiny random Llama, batch 4, 256 tokens"}

    def write(part: str, value) -> None:
        figures[part] = value
        figures["wall_s"] = round(time.perf_counter() - began, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_suffix(".part")
        partial.write_text(json.dumps(figures, indent=1))
        partial.replace(args.out)
        print(f"{part}: {json.dumps(value)}", flush=True)

    write("rmu", {"fast": engine_run(setting, method="rmu", engine="fast", steps=setting["rmu_steps"])})
    npo = {engine: engine_run(setting, method="npo", engine=engine, steps=setting["npo_steps"])
           for engine in ("fast", "reference")}
    npo["peak_ratio_fast_over_plain"] = round(npo["fast"]["peak_gib"] / npo["reference"]["peak_gib"], 3)
    write("npo", npo)
    model, tokenizer = eval_model(setting)
    tasks, manager = question_tasks()
    write("eval", {"batch_size": args.eval_batch_size, **{
        form: throughput(model, tokenizer, configs, manager, batch_size=args.eval_batch_size, limit=setting["limit"],
                              warm_up=setting["warm_up"])
        for form, configs in tasks.items()}})
    print(f"wrote {args.out} ({figures['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
