#!/usr/bin/env python
"""Time `python -m unlearn`'s pre-check of a 12-job sweep over eval=wmdp_mmlu, one checkout after another.

    python scripts/bench_precheck.py                          # this checkout
    python scripts/bench_precheck.py /path/to/other/checkout . # two checkouts side by side, in one run

The pre-check composes every job of the sweep and runs every check that needs no weights, the evaluation's
tasks included. The hub's WMDP and MMLU stand in here as local tasks of the same names and format (a task YAML
in the format of lm-eval's wmdp_bio, with the test fixtures' questions; a `mmlu` group of 57 subjects), so it
runs offline. Each checkout runs in its own process (PYTHONPATH=<checkout>), `--repeats` times;
the fastest time is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests/fixtures"
SWEEP = ["layer=3,5,7", "method.steering_coeff=5,10,20,40"]  # 3 x 4 = 12 jobs

PRECHECK = """
import sys
try:
    from unlearn.cli import precheck
except ImportError:  # a checkout from before unlearn.cli
    from unlearn.__main__ import precheck
precheck(sys.argv[1:], multirun=True)
"""


def stand_in_tasks(folder: Path) -> None:
    """wmdp_bio, wmdp_cyber and a `mmlu` group of 57 subjects (the four eval=wmdp_mmlu names, 53 more), as local
    tasks."""
    template = yaml.safe_load((FIXTURES / "wmdp/wmdp_letters.yaml").read_text())
    named = ["mmlu_college_biology", "mmlu_virology", "mmlu_college_computer_science", "mmlu_computer_security"]
    subjects = named + [f"mmlu_subject_{i}" for i in range(57 - len(named))]
    questions = {"forget": FIXTURES / "eval/demo_forget.jsonl", "retain": FIXTURES / "eval/demo_retain.jsonl"}
    for name, side in [("wmdp_bio", "forget"), ("wmdp_cyber", "forget"), *((s, "retain") for s in subjects)]:
        task = dict(template, task=name, dataset_kwargs={"data_files": {"test": str(questions[side])}})
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    group = {"group": "mmlu", "task": subjects, "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}]}
    (folder / "mmlu_group.yaml").write_text(yaml.safe_dump(group, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", default=[str(REPO)], help="checkouts to time (default: this one)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per checkout; the fastest is printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "tasks").mkdir()
        stand_in_tasks(tmp / "tasks")
        for side in ("forget", "retain"):
            (tmp / f"{side}.jsonl").write_text("".join(json.dumps({"text": f"{side} text {i}"}) + "\n" for i in range(8)))
        overrides = ["model=tiny-random", "data=local", f"data.forget_path={tmp / 'forget.jsonl'}",
                     f"data.retain_path={tmp / 'retain.jsonl'}", "eval=wmdp_mmlu",
                     f"eval.include_paths=[{tmp / 'tasks'}]", f"hydra.sweep.dir={tmp / 'sweep'}", *SWEEP]
        print(f"pre-check of a 12-job sweep: python -m unlearn --multirun {' '.join(SWEEP)} eval=wmdp_mmlu "
              f"(59 stand-in tasks); load {os.getloadavg()[0]:.2f}")
        for checkout in args.checkouts:
            env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve()), "HF_HUB_OFFLINE": "1",
                   "HF_DATASETS_OFFLINE": "1"}
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", PRECHECK, *overrides], env=env, cwd=tmp,
                                      capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if done.returncode != 0:
                    sys.exit(f"{checkout}: the pre-check failed: {done.stderr.strip().splitlines()[-1:]}")
            print(f"{checkout}: {min(times):.1f} s (runs: {', '.join(f'{t:.1f}' for t in times)})")


if __name__ == "__main__":
    main()
