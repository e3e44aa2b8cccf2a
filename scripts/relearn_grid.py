"""Choose the relearn attack's defaults by measurement: relearn an unlearned model with several settings and
report what each recovers.

    python -m unlearn eval=none save_model=true output_root=outputs/rmu     # an unlearned model (the default run)
    python scripts/relearn_grid.py outputs/rmu/<date>/<time>/model --lr 3e-4,1e-3,3e-3 --steps 6,12,24

The base model (`--base`, default the embedded SmolLM2) and the unlearned one are evaluated on the demo
forget/retain tasks first (0-shot); each setting then fine-tunes the unlearned model (the attack code of
`unlearn.evaluation.attacks`, eval=demo_attacks's settings with the overrides below) and is evaluated the same
way. Prints one Markdown row per setting: forget / retain accuracy, recovered fraction, first/last loss, time.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from unlearn.cli import CONF_DIR
from unlearn.corpora import CorpusSpec, read_texts
from unlearn.evaluation import eval_spec
from unlearn.evaluation.attacks import evaluate_tasks, recovered_fraction, relearned
from unlearn.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the unlearned model's directory (a run's model/)")
    parser.add_argument("--base", default="embedded://smollm2-135m-instruct", help="the model before unlearning")
    parser.add_argument("--lr", default="1e-3", help="comma-separated learning rates")
    parser.add_argument("--steps", default="12", help="comma-separated step counts")
    parser.add_argument("--rank", default=None, help="comma-separated LoRA ranks (default: the preset's)")
    parser.add_argument("--path", default=None, help="comma-separated relearn texts (default: the preset's)")
    parser.add_argument("--limit", type=int, default=None, help="questions per task (default: all)")
    args = parser.parse_args()

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["eval=demo_attacks", f"eval.limit={args.limit or 'null'}"])
    spec = eval_spec(OmegaConf.to_container(cfg.eval, resolve=True))
    settings = spec.attack.relearn

    def accuracies(model, tokenizer) -> tuple[float, float]:
        evaluation = evaluate_tasks(model, tokenizer, spec, spec.num_fewshot)
        return evaluation["forget_acc"], evaluation["retain_acc"]

    base = load_model(args.base)
    forget_before, retain_before = accuracies(*base)
    del base
    model, tokenizer = load_model(args.model)
    forget_after, retain_after = accuracies(model, tokenizer)
    print(f"before: forget {100 * forget_before:.1f}, retain {100 * retain_before:.1f}; "
          f"after: forget {100 * forget_after:.1f}, retain {100 * retain_after:.1f}")
    print("| text | rank | lr | steps | forget % | retain % | recovered | loss first -> last | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    paths = args.path.split(",") if args.path else [settings.path]
    ranks = [int(r) for r in args.rank.split(",")] if args.rank else [settings.lora_rank]
    for path, rank, lr, steps in itertools.product(paths, ranks, [float(x) for x in args.lr.split(",")],
                                                    [int(x) for x in args.steps.split(",")]):
        setting = replace(settings, path=path, lora_rank=rank, lora_alpha=float(rank), lr=lr, steps=steps)
        texts = read_texts(CorpusSpec(path, text_field=setting.text_field))[: setting.max_documents]
        start = time.perf_counter()
        with relearned(model, tokenizer, texts, setting) as (attacked, losses, _):
            forget, retain = accuracies(attacked, tokenizer)
        recovered = recovered_fraction(forget_before, forget_after, forget)
        print(f"| {path.rsplit('/', 1)[-1]} | {rank} | {lr:g} | {steps} | {100 * forget:.1f} | {100 * retain:.1f} | "
              f"{recovered:.2f} | {losses[0]:.3f} -> {losses[-1]:.3f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
