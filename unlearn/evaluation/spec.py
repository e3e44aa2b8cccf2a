"""The evaluation settings (`conf/eval/*.yaml`), validated once into plain frozen dataclasses.

Every key must be present in the preset (defaults live in `conf/eval/`, not here); a misspelt or missing key, or
a value out of range, is an `UnlearnError` that names the key and the fix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from unlearn.errors import UnlearnError

POSITIONS = ("start", "end", "random")
ATTACKS = ("relearn", "ablate", "fewshot")  # knowledge-recovery attacks (REFERENCE)
ABLATE_BLOCKS = ("all", "trained")


@dataclass(frozen=True)
class RobustnessSpec:
    """The forget-token test of the RNA paper: retain questions again, with a forget keyword inserted."""

    enabled: bool
    tasks: tuple[str, ...]  # retain tasks (lm-eval YAML tasks, not groups) to perturb
    position: str  # start | end | random (a random word boundary, seeded per question)
    insertions: int  # copies of the keyword inserted into each question
    seed: int  # seeds the random positions; question i gets the same positions for every keyword
    field: str  # the document field the keyword goes into
    keywords: dict[str, tuple[str, ...]] | None  # per topic; None = the data config's keywords


@dataclass(frozen=True)
class ProbeSpec:
    """Representation probes at the unlearn layer on held-out forget and retain text."""

    enabled: bool
    forget_path: str | None  # read by the pipeline (unlearn.corpora), passed to evaluate() as text
    retain_path: str | None
    text_field: str
    max_documents: int  # per text set
    max_length: int  # tokens per document
    batch_size: int
    control_vectors: str | None  # train=false: a run's control_vectors.safetensors, for cos(h_l, u)


@dataclass(frozen=True)
class RelearnSpec:
    """Fine-tune the unlearned model for a few steps on held-out text, then evaluate (Lucki et al. 2024)."""

    path: str  # a local JSONL/.txt file, a bundled file (pkg://) or a hub dataset; never a training corpus
    name: str | None  # hub dataset config
    split: str  # hub dataset split
    text_field: str
    max_documents: int  # the first documents of the file
    max_length: int  # tokens per document
    lora: bool  # True: LoRA adapters on the model (removed afterwards); False: full fine-tune of a copy
    lora_rank: int
    lora_alpha: float
    lora_targets: str | tuple[str, ...]  # peft's target_modules ("all-linear" or module names)
    lr: float
    steps: int  # optimizer steps; the documents are reused in order when steps need more
    batch_size: int
    seed: int  # seeds the LoRA initialisation


@dataclass(frozen=True)
class AblateSpec:
    """Project the difference-of-means direction out of the block outputs (Arditi & Chughtai 2024)."""

    path: str  # forget-domain text the means are taken over (a local or bundled file)
    text_field: str
    max_documents: int
    max_length: int
    batch_size: int
    skip_tokens: int  # the first tokens of each document left out of the means (besides special tokens)
    blocks: str  # all | trained


@dataclass(frozen=True)
class FewshotSpec:
    """The forget (and retain) tasks again with examples in the prompt (Doshi & Stickland 2024)."""

    num_fewshot: int


@dataclass(frozen=True)
class AttackSpec:
    relearn: RelearnSpec
    ablate: AblateSpec
    fewshot: FewshotSpec


@dataclass(frozen=True)
class EvalSpec:
    name: str
    tasks: tuple[str, ...]  # lm-eval tasks or groups, run before and after
    forget_tasks: tuple[str, ...]  # the subset of `tasks` in the forget domain (accuracy should fall)
    retain_tasks: tuple[str, ...]  # the subset of `tasks` in the retain domain (accuracy should hold)
    include_paths: tuple[str, ...]  # extra directories of lm-eval task YAMLs (`pkg://unlearn/...` allowed)
    before: bool  # also evaluate the model before training
    batch_size: int | str  # passed to lm-eval's HFLM itself; an int or "auto"
    limit: int | float | None  # documents per task (a fraction when < 1); None = all
    num_fewshot: int
    robustness: RobustnessSpec
    probes: ProbeSpec
    attacks: tuple[str, ...]  # knowledge-recovery attacks run after the evaluation, in order
    attack: AttackSpec  # their settings

    @property
    def enabled(self) -> bool:
        """Whether this spec evaluates anything at all (`eval=none` does not)."""
        return bool(self.tasks) or self.robustness.enabled or self.probes.enabled

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EvalSpec:
        """Build from the plain dict of `cfg.eval` (`OmegaConf.to_container(cfg.eval, resolve=True)`)."""
        _check_keys(cfg, _EVAL_KEYS, "eval")
        tasks = _names(cfg["tasks"], "eval.tasks")
        forget_tasks = _subset(cfg["forget_tasks"], tasks, "eval.forget_tasks")
        retain_tasks = _subset(cfg["retain_tasks"], tasks, "eval.retain_tasks")
        attacks = _attack_names(cfg["attacks"])
        if attacks and not forget_tasks:
            raise UnlearnError(
                f"eval.attacks={list(attacks)} needs forget tasks to measure what comes back: set "
                "eval.forget_tasks=[...] (and eval.retain_tasks), or eval.attacks=[]"
            )
        return cls(
            name=str(cfg["name"]),
            tasks=tasks,
            forget_tasks=forget_tasks,
            retain_tasks=retain_tasks,
            include_paths=_names(cfg["include_paths"], "eval.include_paths"),
            before=_boolean(cfg["before"], "eval.before"),
            batch_size=_batch_size(cfg["batch_size"]),
            limit=_limit(cfg["limit"]),
            num_fewshot=_count(cfg["num_fewshot"], "eval.num_fewshot", minimum=0),
            robustness=_robustness(cfg["robustness"]),
            probes=_probes(cfg["probes"]),
            attacks=attacks,
            attack=_attack(cfg["attack"], attacks),
        )


_EVAL_KEYS = ("name", "tasks", "forget_tasks", "retain_tasks", "include_paths", "before", "batch_size", "limit",
              "num_fewshot", "robustness", "probes", "attacks", "attack")
_ROBUSTNESS_KEYS = ("enabled", "tasks", "position", "insertions", "seed", "field", "keywords")
_PROBE_KEYS = ("enabled", "forget_path", "retain_path", "text_field", "max_documents", "max_length", "batch_size",
               "control_vectors")


def _robustness(cfg: Any) -> RobustnessSpec:
    _check_keys(cfg, _ROBUSTNESS_KEYS, "eval.robustness")
    position = cfg["position"]
    if position not in POSITIONS:
        raise UnlearnError(
            f"eval.robustness.position must be one of {', '.join(POSITIONS)} (got {position!r})"
        )
    spec = RobustnessSpec(
        enabled=_boolean(cfg["enabled"], "eval.robustness.enabled"),
        tasks=_names(cfg["tasks"], "eval.robustness.tasks"),
        position=position,
        insertions=_count(cfg["insertions"], "eval.robustness.insertions", minimum=1),
        seed=_count(cfg["seed"], "eval.robustness.seed", minimum=0),
        field=str(cfg["field"]),
        keywords=_keywords(cfg["keywords"]),
    )
    if spec.enabled and not spec.tasks:
        raise UnlearnError(
            "eval.robustness.enabled=true needs retain tasks to perturb: set eval.robustness.tasks=[...] "
            "or eval.robustness.enabled=false"
        )
    return spec


def _probes(cfg: Any) -> ProbeSpec:
    _check_keys(cfg, _PROBE_KEYS, "eval.probes")
    spec = ProbeSpec(
        enabled=_boolean(cfg["enabled"], "eval.probes.enabled"),
        forget_path=cfg["forget_path"],
        retain_path=cfg["retain_path"],
        text_field=str(cfg["text_field"]),
        max_documents=_count(cfg["max_documents"], "eval.probes.max_documents", minimum=1),
        max_length=_count(cfg["max_length"], "eval.probes.max_length", minimum=2),
        batch_size=_count(cfg["batch_size"], "eval.probes.batch_size", minimum=1),
        control_vectors=cfg["control_vectors"],
    )
    if spec.enabled and not (spec.forget_path and spec.retain_path):
        raise UnlearnError(
            "eval.probes.enabled=true needs held-out text: set eval.probes.forget_path=... and "
            "eval.probes.retain_path=... (JSONL or .txt), or eval.probes.enabled=false"
        )
    return spec


_ATTACK_KEYS = ATTACKS
_RELEARN_KEYS = ("path", "name", "split", "text_field", "max_documents", "max_length", "lora", "lora_rank",
                 "lora_alpha", "lora_targets", "lr", "steps", "batch_size", "seed")
_ABLATE_KEYS = ("path", "text_field", "max_documents", "max_length", "batch_size", "skip_tokens", "blocks")
_FEWSHOT_KEYS = ("num_fewshot",)


def _attack_names(value: Any) -> tuple[str, ...]:
    names = _names(value, "eval.attacks")
    for name in names:
        if name not in ATTACKS:
            close = difflib.get_close_matches(name, ATTACKS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UnlearnError(f"unknown attack '{name}' in eval.attacks: {hint}valid names: {', '.join(ATTACKS)}")
    return names


def _attack(cfg: Any, attacks: tuple[str, ...]) -> AttackSpec:
    """Every attack's settings are checked, listed or not: a preset that turns one on later must be valid."""
    _check_keys(cfg, _ATTACK_KEYS, "eval.attack")
    relearn, ablate, fewshot = cfg["relearn"], cfg["ablate"], cfg["fewshot"]
    _check_keys(relearn, _RELEARN_KEYS, "eval.attack.relearn")
    _check_keys(ablate, _ABLATE_KEYS, "eval.attack.ablate")
    _check_keys(fewshot, _FEWSHOT_KEYS, "eval.attack.fewshot")
    for name, settings, what in (("relearn", relearn, "text the run does not train on"),
                                 ("ablate", ablate, "forget-domain text")):
        if name in attacks and not _is_given(settings["path"]):
            raise UnlearnError(
                f"eval.attack.{name}.path is required for the {name} attack: give {what} "
                f"(eval.attack.{name}.path=/path/to/text.jsonl), or leave {name} out of eval.attacks"
            )
    if ablate["blocks"] not in ABLATE_BLOCKS:
        raise UnlearnError(f"eval.attack.ablate.blocks must be one of {', '.join(ABLATE_BLOCKS)} "
                           f"(got {ablate['blocks']!r})")
    targets = relearn["lora_targets"]
    return AttackSpec(
        relearn=RelearnSpec(
            path=str(relearn["path"]),
            name=relearn["name"],
            split=str(relearn["split"]),
            text_field=str(relearn["text_field"]),
            max_documents=_count(relearn["max_documents"], "eval.attack.relearn.max_documents", minimum=1),
            max_length=_count(relearn["max_length"], "eval.attack.relearn.max_length", minimum=2),
            lora=_boolean(relearn["lora"], "eval.attack.relearn.lora"),
            lora_rank=_count(relearn["lora_rank"], "eval.attack.relearn.lora_rank", minimum=1),
            lora_alpha=_positive(relearn["lora_alpha"], "eval.attack.relearn.lora_alpha"),
            lora_targets=targets if isinstance(targets, str) else _names(targets, "eval.attack.relearn.lora_targets"),
            lr=_positive(relearn["lr"], "eval.attack.relearn.lr"),
            steps=_count(relearn["steps"], "eval.attack.relearn.steps", minimum=1),
            batch_size=_count(relearn["batch_size"], "eval.attack.relearn.batch_size", minimum=1),
            seed=_count(relearn["seed"], "eval.attack.relearn.seed", minimum=0),
        ),
        ablate=AblateSpec(
            path=str(ablate["path"]),
            text_field=str(ablate["text_field"]),
            max_documents=_count(ablate["max_documents"], "eval.attack.ablate.max_documents", minimum=1),
            max_length=_count(ablate["max_length"], "eval.attack.ablate.max_length", minimum=2),
            batch_size=_count(ablate["batch_size"], "eval.attack.ablate.batch_size", minimum=1),
            skip_tokens=_count(ablate["skip_tokens"], "eval.attack.ablate.skip_tokens", minimum=0),
            blocks=ablate["blocks"],
        ),
        fewshot=FewshotSpec(
            num_fewshot=_count(fewshot["num_fewshot"], "eval.attack.fewshot.num_fewshot", minimum=1),
        ),
    )


def _is_given(path: Any) -> bool:
    return isinstance(path, str) and bool(path)


# ---------------------------------------------------------------------------------------------------------
# Value checks


def _check_keys(cfg: Any, expected: tuple[str, ...], where: str) -> None:
    if not isinstance(cfg, dict):
        raise UnlearnError(f"{where} must be a mapping with keys {', '.join(expected)} (got {cfg!r})")
    for key in cfg:
        if key not in expected:
            close = difflib.get_close_matches(str(key), expected, n=1)
            hint = f" (did you mean {where}.{close[0]}?)" if close else ""
            raise UnlearnError(f"unknown key {where}.{key}{hint}: the keys are {', '.join(expected)}")
    missing = [key for key in expected if key not in cfg]
    if missing:
        raise UnlearnError(
            f"{where} is missing {', '.join(missing)}: start your preset from conf/eval/demo.yaml, which sets "
            "every key"
        )


def _names(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise UnlearnError(f"{key} must be a list of names (got {value!r}), e.g. {key}=[a,b]")
    return tuple(dict.fromkeys(value))  # drop repeats, keep order


def _subset(value: Any, tasks: tuple[str, ...], key: str) -> tuple[str, ...]:
    names = _names(value, key)
    strays = [name for name in names if name not in tasks]
    if strays:
        raise UnlearnError(
            f"{key} lists {', '.join(strays)}, which eval.tasks does not run: add them to eval.tasks or remove them"
        )
    return names


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise UnlearnError(f"{key} must be true or false (got {value!r})")
    return value


def _count(value: Any, key: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UnlearnError(f"{key} must be an integer >= {minimum} (got {value!r})")
    return value


def _positive(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UnlearnError(f"{key} must be a positive number (got {value!r})")
    return float(value)


def _batch_size(value: Any) -> int | str:
    if isinstance(value, str) and value.startswith("auto"):
        return value
    return _count(value, "eval.batch_size (or 'auto')", minimum=1)


def _limit(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UnlearnError(
            f"eval.limit must be null (all documents), a count >= 1 or a fraction in (0, 1) (got {value!r})"
        )
    if isinstance(value, float) and value >= 1:
        if not value.is_integer():
            raise UnlearnError(f"eval.limit must be a whole count or a fraction below 1 (got {value!r})")
        return int(value)
    return value


def _keywords(value: Any) -> dict[str, tuple[str, ...]] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UnlearnError(
            f"eval.robustness.keywords must be null or a mapping topic -> [keywords] (got {value!r})"
        )
    return {str(topic): _names(words, f"eval.robustness.keywords.{topic}") for topic, words in value.items()}
