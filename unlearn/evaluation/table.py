"""A compact before/after table of an evaluation, for the console."""

from __future__ import annotations

from typing import Any

Row = tuple[str, float | None, float | None, str]  # label, before, after, number format


def format_table(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """Columns task, before, after, change. Accuracies in percent (change in points); probes as measured."""
    rows = _task_rows(before, after) + _robustness_rows(before, after) + _probe_rows(before, after)
    if not rows:
        return "(nothing evaluated)"
    width = max(len("task"), *(len(label) for label, *_ in rows))
    lines = [f"{'task':<{width}}  {'before':>8}  {'after':>8}  {'change':>8}"]
    for label, old, new, number in rows:
        change = f"{new - old:+{number}}" if old is not None and new is not None else "-"
        lines.append(f"{label:<{width}}  {_cell(old, number):>8}  {_cell(new, number):>8}  {change:>8}")
    return "\n".join(lines)


def _cell(value: float | None, number: str) -> str:
    return "-" if value is None else f"{value:{number}}"


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _task_rows(before, after) -> list[Row]:
    domains = after.get("domains") or {}
    tag = {task: f" ({domain})" for domain, tasks in domains.items() for task in tasks}
    rows = []
    for task, metrics in (after.get("tasks") or {}).items():
        old = ((before or {}).get("tasks") or {}).get(task, {}).get("acc")
        rows.append((task + tag.get(task, ""), _percent(old), _percent(metrics.get("acc")), ".1f"))
    return rows


def _robustness_rows(before, after) -> list[Row]:
    new = after.get("robustness") or {}
    old = (before or {}).get("robustness") or {}
    if "clean" not in new:
        return []
    return [
        (f"robustness {what}", _percent(old.get(what)), _percent(new[what]), ".1f")
        for what in ("clean", "perturbed", "drop")
    ]


def _probe_rows(before, after) -> list[Row]:
    new = after.get("probes") or {}
    old = (before or {}).get("probes") or {}
    rows = []
    for text_set, stats in new.items():
        if not isinstance(stats, dict):  # the "layer" entry
            continue
        previous = old.get(text_set) or {}
        label = f"probe {text_set} h_l"
        rows.append((f"{label} norm", previous.get("mean_norm"), stats["mean_norm"], ".4g"))
        for topic, cosine in stats["cosine"].items():
            rows.append((f"{label} cos u[{topic}]", (previous.get("cosine") or {}).get(topic), cosine, ".3f"))
        rows.append((f"probe {text_set} confidence", previous.get("confidence"), stats["confidence"], ".3f"))
    return rows


def format_attacks(attacks: dict[str, Any]) -> str:
    """The knowledge-recovery attacks under the before/after table: forget and retain accuracy (%) after each
    attack, beside the unlearned model's, and the recovered fraction of the forget gap."""
    if not attacks:
        return ""
    first = next((entry for entry in attacks.values() if "heldout" not in entry), next(iter(attacks.values())))
    rows = [("unlearned (after)", _percent(first.get("forget_acc_after")), _percent(first.get("retain_acc_after")), None)]
    rows += [(f"attack {name}", _percent(entry.get("forget_acc")), _percent(entry.get("retain_acc")),
              entry.get("recovered_fraction")) for name, entry in attacks.items()]
    width = max(len(label) for label, *_ in rows)
    lines = [f"{'knowledge recovery':<{width}}  {'forget':>8}  {'retain':>8}  {'recovered':>9}"]
    for label, forget, retain, recovered in rows:
        lines.append(f"{label:<{width}}  {_cell(forget, '.1f'):>8}  {_cell(retain, '.1f'):>8}  "
                     f"{_cell(recovered, '.0%') if label != rows[0][0] else '':>9}")
    lines.append("recovered = (forget attacked - after) / (before - after): the share of the forget gap that came back")
    for name, entry in attacks.items():
        held = entry.get("heldout")
        if held:  # fitted on a train split: every forget number is on the held-out questions
            base = (f"base {_cell(_percent(held['base_forget_acc_clean']), '.1f')} -> "
                    f"{_cell(_percent(held['base_forget_acc_attacked']), '.1f')}")
            lines.append(f"{name}: held-out forget, unlearned {_cell(_percent(held['forget_acc_unlearned']), '.1f')} -> "
                         f"attacked {_cell(_percent(held['forget_acc_attacked']), '.1f')}; {base} "
                         f"({entry['train_questions']} questions fitted on, {entry['heldout_questions']} held out)")
    return "\n".join(lines)
