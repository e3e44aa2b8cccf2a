"""Forget and retain accuracy: the unweighted mean `acc` of an evaluation's forget (retain) tasks.

Computed once, where an evaluation arises (`unlearn.evaluation.evaluate`, so before, after and after each
attack), and stored with it in results.json as `forget_acc` and `retain_acc`; the report and the tracker read
the stored numbers.
"""

from __future__ import annotations

from typing import Any

DOMAINS = ("forget", "retain")


def domain_accuracy(tasks: dict[str, dict] | None, names: list[str]) -> float | None:
    """Unweighted mean `acc` over those of `names` that `tasks` holds; None when it holds none."""
    found = [((tasks or {}).get(name) or {}).get("acc") for name in names]
    found = [value for value in found if isinstance(value, (int, float))]
    return sum(found) / len(found) if found else None


def domain_accuracies(evaluation: dict[str, Any]) -> dict[str, float | None]:
    """`{"forget_acc": ..., "retain_acc": ...}` of an evaluation, over the tasks its `domains` name."""
    domains = evaluation.get("domains") or {}
    return {f"{domain}_acc": domain_accuracy(evaluation.get("tasks"), list(domains.get(domain) or []))
            for domain in DOMAINS}
