"""Evaluation: lm-eval in memory, bundled local tasks, forget-token robustness, probes at the unlearn layer.

    from unlearn.evaluation import check_tasks, eval_spec, evaluate, format_table
    spec = eval_spec(cfg.eval)                          # an unlearn.schema.EvalSpec; None for eval=none
    check_tasks(spec)                                   # before any weights load
    before = evaluate(model, tokenizer, spec, unlearn_layer=..., control_vectors=..., keywords=...,
                      probe_texts=..., cache_key="<model id>")
    ...
    print(format_table(before, after))
    # knowledge-recovery attacks: unlearn.evaluation.attacks (run.py runs them after the "after" evaluation)
"""

from unlearn.evaluation.spec import eval_spec
from unlearn.evaluation.suite import check_tasks, evaluate
from unlearn.evaluation.table import format_attacks, format_table

__all__ = ["check_tasks", "eval_spec", "evaluate", "format_attacks", "format_table"]
