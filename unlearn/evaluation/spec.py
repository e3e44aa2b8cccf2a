"""The rules of the evaluation settings (`conf/eval/*.yaml`) that their schema can't state.

The schema (keys, types, required keys) is declared once in unlearn.schema and enforced by OmegaConf when Hydra
composes. What a type can't say (ranges, names from a list, keys that must agree) is checked here, once;
components get the plain values `eval_spec` returns, never the config. A part that is not used needs no
values: an evaluation that runs nothing (`eval=none`) is read only for its switches, and an attack's settings
only when `eval.attacks` lists it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, replace
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from unlearn.errors import UnlearnError
from unlearn.schema import ATTACKS, OPTIMISED_ATTACKS, AttackSpec, EvalSpec, ProbeSpec, RobustnessSpec


@dataclass
class _EvalSection:
    """Merging into this names OmegaConf's errors by their full key (eval.probes.max_length)."""

    eval: EvalSpec = MISSING


def eval_spec(cfg: DictConfig | dict[str, Any]) -> EvalSpec | None:
    """`cfg.eval` (a composed node or a plain dict) checked against the schema, then against the rules; None
    when it evaluates nothing. OmegaConf's errors pass through: the CLI's config_errors words them."""
    if OmegaConf.is_config(cfg):  # as plain values: `+eval.x=1` added a key the schema must see again
        cfg = OmegaConf.to_container(cfg, resolve=True)
    node = OmegaConf.merge(OmegaConf.structured(_EvalSection), {"eval": cfg}).eval
    attacks = _attack_names(node.attacks)
    if attacks and not node.forget_tasks:
        raise UnlearnError(
            f"eval.attacks={list(attacks)} needs forget tasks to measure what comes back: set "
            "eval.forget_tasks=[...] (and eval.retain_tasks), or eval.attacks=[]"
        )
    if not (node.tasks or node.robustness.enabled or node.probes.enabled):
        return None  # eval=none: nothing else is read
    _drop_unlisted_attacks(node, attacks)
    spec: EvalSpec = OmegaConf.to_object(node)
    _check_ranges(spec, "eval")
    return replace(spec, tasks=_names(spec.tasks),
                   forget_tasks=_subset(spec.forget_tasks, spec.tasks, "eval.forget_tasks"),
                   retain_tasks=_subset(spec.retain_tasks, spec.tasks, "eval.retain_tasks"),
                   include_paths=_names(spec.include_paths), batch_size=_batch_size(spec.batch_size),
                   limit=_limit(spec.limit), robustness=_robustness(spec.robustness), probes=_probes(spec.probes),
                   attacks=attacks, attack=_attack(spec.attack))


def _drop_unlisted_attacks(node: DictConfig, attacks: tuple[str, ...]) -> None:
    if not attacks:
        node.attack = None
        return
    for name in ATTACKS:
        if name not in attacks:
            node.attack[name] = None
    if not set(attacks) & set(OPTIMISED_ATTACKS):
        node.attack.split = None


def _robustness(spec: RobustnessSpec) -> RobustnessSpec:
    if spec.enabled and not spec.tasks:
        raise UnlearnError(
            "eval.robustness.enabled=true needs retain tasks to perturb: set eval.robustness.tasks=[...] "
            "or eval.robustness.enabled=false"
        )
    keywords = None if spec.keywords is None else {topic: _names(words) for topic, words in spec.keywords.items()}
    return replace(spec, tasks=_names(spec.tasks), keywords=keywords)


def _probes(spec: ProbeSpec) -> ProbeSpec:
    if spec.enabled and not (spec.forget_path and spec.retain_path):
        raise UnlearnError(
            "eval.probes.enabled=true needs held-out text: set eval.probes.forget_path=... and "
            "eval.probes.retain_path=... (JSONL or .txt), or eval.probes.enabled=false"
        )
    return spec


def _attack_names(value: Any) -> tuple[str, ...]:
    names = _names(value)
    for name in names:
        if name not in ATTACKS:
            close = difflib.get_close_matches(name, ATTACKS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UnlearnError(f"unknown attack '{name}' in eval.attacks: {hint}valid names: {', '.join(ATTACKS)}")
    return names


def _attack(spec: AttackSpec | None) -> AttackSpec | None:
    """The listed attacks' settings: a text file where the attack needs one, a known block choice."""
    if spec is None:
        return None
    for name, what in (("relearn", "text the run does not train on"), ("ablate", "forget-domain text")):
        settings = getattr(spec, name)
        if settings is not None and not settings.path:
            raise UnlearnError(
                f"eval.attack.{name}.path is required for the {name} attack: give {what} "
                f"(eval.attack.{name}.path=/path/to/text.jsonl), or leave {name} out of eval.attacks"
            )
    if spec.latent is not None and spec.latent.blocks is not None:
        if not spec.latent.blocks:
            raise UnlearnError("eval.attack.latent.blocks is empty: list block indices, or null for the unlearn "
                               "layer and two blocks either side")
        spec = replace(spec, latent=replace(spec.latent, blocks=_names(spec.latent.blocks)))
    if spec.prefix is not None and not spec.prefix.init:
        raise UnlearnError("eval.attack.prefix.init is empty: give the text of one token (e.g. '!')")
    if spec.relearn is not None and not isinstance(spec.relearn.lora_targets, str):
        spec = replace(spec, relearn=replace(spec.relearn, lora_targets=_names(spec.relearn.lora_targets)))
    return spec


# ---------------------------------------------------------------------------------------------------------
# Value checks the types can't state


def _check_ranges(spec: Any, where: str) -> None:
    """The floors declared beside the fields (unlearn.schema's `_at_least`, `_positive`), in this spec and the specs it holds."""
    for item in dataclasses.fields(spec):
        value, key = getattr(spec, item.name), f"{where}.{item.name}"
        if dataclasses.is_dataclass(value):
            _check_ranges(value, key)
        elif "min" in item.metadata and not item.metadata["min"] <= value <= item.metadata.get("max", math.inf):
            low, high = item.metadata["min"], item.metadata.get("max")
            bound = f">= {low}" if high is None else f"from {low} to {high}"
            raise UnlearnError(f"{key} must be an integer {bound} (got {value!r})")
        elif item.metadata.get("positive") and not (math.isfinite(value) and value > 0):
            raise UnlearnError(f"{key} must be a positive number (got {value!r})")


def _names(values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values or ()))  # drop repeats, keep order


def _subset(values: list[str], tasks: list[str], key: str) -> tuple[str, ...]:
    strays = [name for name in values if name not in tasks]
    if strays:
        raise UnlearnError(
            f"{key} lists {', '.join(strays)}, which eval.tasks does not run: add them to eval.tasks or remove them"
        )
    return _names(values)


def _batch_size(value: Any) -> int | str:
    if isinstance(value, str) and value.startswith("auto"):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnlearnError(f"eval.batch_size (or 'auto') must be an integer >= 1 (got {value!r})")
    return value


def _limit(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UnlearnError(
            f"eval.limit must be null (all documents), a count >= 1 or a fraction in (0, 1) (got {value!r})"
        )
    if isinstance(value, float) and value >= 1:
        if not value.is_integer():
            raise UnlearnError(f"eval.limit must be a whole count or a fraction below 1 (got {value!r})")
        return int(value)
    return value
