#!/usr/bin/env python
"""Time the optimised attacks (prefix, latent) with eval=demo's settings, and how much stronger GCG gets with steps.

    python scripts/bench_attacks.py                                  # embedded SmolLM2-135M, both attacks, the curve
    python scripts/bench_attacks.py --model outputs/rmu/<date>/<time>/model --curve-steps 0,5,10,20
    python scripts/bench_attacks.py --no-curve

Each attack runs as a run runs it (unlearn.evaluation.attacks.run_attacks): its held-out reference evaluation,
the fit on the train split, the held-out and retain evaluation under the attack, and the base-model control
(here the model itself stands in for the base model: a second fit and two more held-out evaluations, as a run
pays them when the control is not cached). The wall time of each, and of its fit alone, is printed.

The curve: one GCG search of max(--curve-steps) steps (eval=demo's other prefix settings), the best prefix so far
kept after each listed step and scored by lm-eval on the held-out forget questions, with its train loss.
Numbers on a machine shared with other jobs are upper bounds.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct", help="unlearn.models name_or_path")
    parser.add_argument("--unlearn-layer", type=int, default=7, help="latent's default blocks centre on it (default 7)")
    parser.add_argument("--curve-steps", default="0,5,10,20", help="GCG steps after which the prefix is scored")
    parser.add_argument("--no-curve", action="store_true", help="time the attacks only")
    parser.add_argument("--no-timing", action="store_true", help="the curve only")
    parser.add_argument("overrides", nargs="*", help="eval overrides, e.g. eval.attack.prefix.search_width=16")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from unlearn.evaluation import eval_spec
    from unlearn.evaluation.attack_context import AttackTexts
    from unlearn.evaluation.attacks import run_attacks, weights_swapped
    from unlearn.evaluation.choice_loss import encode
    from unlearn.evaluation.heldout import forget_questions, score_heldout, split_questions
    from unlearn.evaluation.optimised import SEPARATOR, fit_prefix
    from unlearn.models import load_model

    conf = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf")
    with initialize_config_dir(os.path.abspath(conf), version_base="1.3"):
        cfg = compose("config", overrides=["eval=demo", "eval.attacks=[prefix,latent]", "eval.robustness.enabled=false",
                                           "eval.probes.enabled=false", *args.overrides])
    spec = eval_spec(OmegaConf.to_container(cfg.eval, resolve=True))
    model, tokenizer = load_model(args.model)
    split = split_questions(forget_questions(spec), spec.attack.split)
    print(f"model {args.model}; {split.sizes['train_questions']} train / {split.sizes['heldout_questions']} held-out "
          f"questions; torch threads {__import__('torch').get_num_threads()}")

    if not args.no_timing:
        results = run_attacks(model, tokenizer, spec, AttackTexts(None, None), None, before=None,
                              after={"forget_acc": None, "retain_acc": None}, trained_blocks=[],
                              unlearn_layer=args.unlearn_layer, control_vectors={},
                              base_weights=lambda: weights_swapped({}))
        print("\n| attack | settings | fit s | control fit s | whole attack s (with control and evaluations) |")
        print("|---|---|---|---|---|")
        for name, entry in results.items():
            settings = getattr(spec.attack, name)
            shown = ({k: getattr(settings, k) for k in ("length", "steps", "top_k", "search_width")} if name == "prefix"
                     else {k: getattr(settings, k) for k in ("steps", "norm_bound", "lr")})
            print(f"| {name} | {shown} | {entry['fit_seconds']} | {entry['control']['fit_seconds']} | {entry['seconds']} |")
            print(f"  held-out forget acc: clean {entry['heldout']['forget_acc_unlearned']:.3f} -> attacked "
                  f"{entry['heldout']['forget_acc_attacked']:.3f}; retain under attack {entry['retain_acc']:.3f}; "
                  f"train loss {entry['loss_first']:.4f} -> {entry['loss_last']:.4f}")

    if not args.no_curve:
        checkpoints = tuple(sorted({int(s) for s in args.curve_steps.split(",")}))
        settings = replace(spec.attack.prefix, steps=max(checkpoints))
        start = time.perf_counter()
        fitted = fit_prefix(model, tokenizer, encode(tokenizer, split.train, SEPARATOR), settings, snapshots=checkpoints)
        fit_seconds = time.perf_counter() - start
        print(f"\nGCG strength vs steps ({max(checkpoints)} steps in {fit_seconds:.0f} s; "
              f"width {settings.search_width}, top-k {settings.top_k}, length {settings.length})")
        print("| steps | train loss | held-out forget acc | prefix |")
        print("|---|---|---|---|")
        for step in checkpoints:
            text = fitted.details["snapshots"][step]
            scored = score_heldout(model, tokenizer, spec, split, description=text + SEPARATOR, retain=False)
            best = min(fitted.details["losses"][: step + 1])
            print(f"| {step} | {best:.4f} | {scored['forget_acc']:.3f} | {text!r} |")


if __name__ == "__main__":
    main()
