"""Turn the composed Hydra config into plain, checked values, and reject bad ones with the fix in the message.

Everything here runs before any weights load: the model's block count comes from its config, which is cheap.
Components never see the config object; run.py hands them what this module returns.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from unlearn.corpora import CorpusSpec, check_corpus_file, is_local, resolve_path
from unlearn.errors import UnlearnError
from unlearn.methods import BASES, METHOD_KEYS, METHODS, PO_METHODS, MethodSpec
from unlearn.schema import DataSchema

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


@dataclass
class TopicSpec:
    name: str
    forget: CorpusSpec | None  # None only when nothing trains (train=false) and the path is unset
    retain: CorpusSpec | None
    keywords: list[str]


def positive_int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnlearnError(f"{key} must be a positive integer, got {value!r}: e.g. {key}=4")
    return value


def positive_float(cfg: DictConfig, key: str, example: str = "5e-5") -> float:
    value = OmegaConf.select(cfg, key)
    if not _finite(value) or value <= 0:
        raise UnlearnError(f"{key} must be a positive number, got {value!r}: e.g. {key}={example}")
    return float(value)


def non_negative(value, key: str) -> float:
    if not _finite(value) or value < 0:
        raise UnlearnError(f"{key} must be a non-negative number, got {value!r}")
    return float(value)


def _finite(value) -> bool:
    """A number that is neither a bool nor nan/inf (which OmegaConf takes for floats)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def seed(cfg: DictConfig) -> int:
    """`seed`, an integer in torch.manual_seed's range."""
    value = cfg.seed
    if isinstance(value, bool) or not isinstance(value, int) or not -2**63 <= value < 2**64:
        raise UnlearnError(f"seed must be an integer of at most 64 bits (torch.manual_seed's range), got {value!r}: "
                           "e.g. seed=42")
    return value


def per_topic(cfg: DictConfig, key: str, topic_names: list[str]) -> list[float]:
    """A scalar for every topic, or a list with one value per topic, in the order of data.topics."""
    value = OmegaConf.select(cfg, key)
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        values = list(value)
        if len(values) != len(topic_names):
            raise UnlearnError(
                f"{key} has {len(values)} values but there are {len(topic_names)} topics "
                f"({', '.join(topic_names)}): give one value per topic, or a single number for all"
            )
        return [non_negative(v, key) for v in values]
    return [non_negative(value, key)] * len(topic_names)


def unlearn_layers(cfg: DictConfig, n_blocks: int) -> tuple[int, list[int]]:
    """`layer` and the blocks that train (default l-2, l-1, l), checked against the model's block count."""
    layer = cfg.layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_blocks:
        raise UnlearnError(f"layer={layer!r} is outside this model's blocks: choose 0..{n_blocks - 1}")
    update = cfg.update_layers
    if update is None:
        update = [i for i in (layer - 2, layer - 1, layer) if i >= 0]
    elif isinstance(update, int) and not isinstance(update, bool):
        update = [update]
    update = list(update)
    for index in update:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise UnlearnError(f"update_layers must be block indices >= 0, got {index!r}")
        if index > layer:
            raise UnlearnError(
                f"update_layers contains {index}, above layer={layer}: a block above the unlearn layer cannot "
                f"change h_l; use blocks <= {layer}, e.g. update_layers=[{max(layer - 2, 0)},{layer}]"
            )
    if not update:
        raise UnlearnError("update_layers is empty: list at least one block <= layer, or null for l-2..l")
    return layer, sorted(set(update))


def topics(cfg: DictConfig, corpora_needed: bool = True) -> list[TopicSpec]:
    """The data config's topics (keys and types: unlearn.schema's DataSchema). `corpora_needed=False` (train=false:
    nothing trains) lets a corpus path stay unset (the gated WMDP bio corpus): that side is then None, and only the
    topic's name and keywords are used."""
    found = []
    for name, topic in checked_data(cfg).topics.items():
        if topic is None:  # a preset removed it (e.g. data=wmdp_cyber drops bio)
            continue
        forget, retain = (_corpus(topic, str(name), side, corpora_needed) for side in ("forget", "retain"))
        if forget is not None and retain is not None and _documents(forget) == _documents(retain):
            raise UnlearnError(f"topic '{name}': the forget and the retain corpus are the same ({forget.path}): the "
                               "retain corpus is what the model keeps, other documents than those it forgets")
        found.append(TopicSpec(str(name), forget, retain, list(topic.keywords)))
    if not found:
        raise UnlearnError("data.topics is empty: choose a data preset (data=demo) or add a topic")
    return found


def _documents(corpus: CorpusSpec) -> tuple:
    """What decides a corpus's documents (not its max_length): a local file by its resolved path."""
    where = str(resolve_path(corpus.path).resolve()) if is_local(corpus.path) else corpus.path
    return where, corpus.name, corpus.split, corpus.text_field, corpus.raw_lines


def checked_section(cfg: DictConfig, section: str, untyped: type | None = None) -> DictConfig:
    """`cfg[section]` merged into its preset's schema once more. Hydra adds a `+key=value` without asking the
    schema, so this is where an added key the schema lacks is refused by its full name (`+model.foo=1`,
    `+data.topics.demo.forget.bogus=1`). A preset of one's own without its schema line is merged into `untyped`
    (None: left as it is). The rest of the config comes along unchecked, for the interpolations into it."""
    schema = OmegaConf.get_type(cfg, section)
    if not dataclasses.is_dataclass(schema):
        schema = untyped
    if schema is None:
        return cfg[section]
    return OmegaConf.merge({section: OmegaConf.structured(schema)}, OmegaConf.to_container(cfg, resolve=False))[section]


def check_added_keys(cfg: DictConfig) -> None:
    """model and logger through their schemas again (data: checked_data, where topics() reads it; eval:
    unlearn.evaluation.spec; method's keys have their own rule, method())."""
    for section in ("model", "logger"):
        checked_section(cfg, section)


def checked_data(cfg: DictConfig) -> DictConfig:
    """`cfg.data` through its schema again: DataSchema, LocalDataSchema for data=local, DataSchema for a preset
    of one's own. Its own keys (not the topics', which topics() reads with their own messages) are set: a preset
    of one's own may leave out a key the schema requires."""
    data = checked_section(cfg, "data", untyped=DataSchema)
    for key in data:
        if key != "topics" and not str(key).endswith("_path") and OmegaConf.is_missing(data, key):
            raise UnlearnError(f"data.{key} is required but not set: give it in your data preset (the bundled "
                               f"data=demo lists every key, each commented) or as data.{key}=...")
    return data


def _corpus(topic: DictConfig, name: str, side: str, needed: bool) -> CorpusSpec | None:
    """A topic's forget or retain corpus, with the rules a type can't state: its path is set (None when it is not
    and nothing trains), a local file exists, max_length is positive."""
    try:
        OmegaConf.select(topic, f"{side}.path", throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError):
        if not needed:
            return None
        raise UnlearnError(_missing_path_message(name, side)) from None
    corpus = CorpusSpec(**OmegaConf.to_container(topic[side], resolve=True, throw_on_missing=True))
    if is_local(corpus.path):
        check_corpus_file(corpus.path, f"topic '{name}': {side} corpus file")
    if corpus.max_length <= 0:
        raise UnlearnError(f"topic '{name}' {side} max_length must be a positive integer, got {corpus.max_length!r}")
    return corpus


def _missing_path_message(topic: str, side: str) -> str:
    if topic == "local":
        return f"data=local needs data.{side}_path=<your {side} corpus .jsonl or .txt>"
    if topic == "bio" and side == "forget":
        return ("the WMDP bio forget corpus is gated: request access to cais/wmdp-bio-forget-corpus on the hub, "
                "download its JSONL, and pass data.topics.bio.forget.path=/path/to/bio-forget-corpus.jsonl "
                "(or use data=wmdp_cyber, which is public)")
    return f"data.topics.{topic}.{side}.path is required"


# Keys every method config may carry besides its own: its name, and the model preset's defaults it reads.
_PLUMBING_KEYS = ("name", "recipe", "bases")


def method_name_and_base(cfg: DictConfig) -> tuple[str, str]:
    """`method.name` and the method that computes the loss (RNA's `method.base`), checked first: the rest of
    the config's defaults depend on them."""
    name = cfg.method.name
    if name not in METHODS:
        raise UnlearnError(f"unknown method '{name}': choose one of {', '.join(METHODS)}")
    if name != "rna":
        return name, name
    base = cfg.method.base
    if base == "rna":
        raise UnlearnError("method.base=rna: RNA wraps a base method, not itself; choose one of " + ", ".join(BASES))
    if base not in BASES:
        raise UnlearnError(f"method.base={base!r} is not a method RNA can wrap: choose one of {', '.join(BASES)}")
    return name, base


def method(cfg: DictConfig, topic_names: list[str], overridden: list[str] = ()) -> MethodSpec:
    """The method's checked settings. `overridden`: the `method.*` keys the command line set, checked against
    the keys the method reads (RNA's config carries every base's keys; only its base's may be set)."""
    name, base = method_name_and_base(cfg)
    reads = (*METHOD_KEYS[base], *(("base", "nu") if name == "rna" else ()))
    _refuse_foreign_keys(f"{name} over {base}" if name == "rna" else name,
                         [k.removeprefix("method.") for k in overridden if k.removeprefix("method.") not in reads
                          and k.removeprefix("method.") not in _PLUMBING_KEYS], reads)
    spec = MethodSpec(name, base, per_topic(cfg, "method.alpha", topic_names), mask_padding=bool(cfg.mask_padding))
    if base == "rmu":
        spec.steering_coeffs = per_topic(cfg, "method.steering_coeff", topic_names)
    if base in ("adaptive_rmu", *PO_METHODS):
        spec.beta = cfg.method.beta
        if not _finite(spec.beta) or spec.beta <= 0:
            usual = "5 (the paper's adaptive scale)" if base == "adaptive_rmu" else "0.1 (the authors' inverse temperature)"
            raise UnlearnError(f"method.beta must be a positive number for {base}, got {spec.beta!r}: e.g. {usual}")
        spec.beta = float(spec.beta)
    if base in PO_METHODS:
        spec.retain_loss = str(cfg.method.retain_loss)  # a RetainLoss: the schema refuses any other value
    if name == "rna":
        spec.nu = non_negative(cfg.method.nu, "method.nu")
    spec.settings = {key: OmegaConf.to_container(cfg.method, resolve=True)[key] for key in ("name", *reads)}
    return spec


def _refuse_foreign_keys(method_label: str, foreign: list[str], reads: tuple[str, ...]) -> None:
    if foreign:
        raise UnlearnError(f"method.{foreign[0]} is not a setting of {method_label}, which reads "
                           f"{', '.join('method.' + k for k in reads)}: drop it, or choose the method it belongs to")


def device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", requested):
        raise UnlearnError(f"device={requested!r} is not a device: use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UnlearnError(f"device={requested} but no CUDA GPU is visible: use device=cpu (or device=auto)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UnlearnError("device=mps but this machine's torch has no MPS (Apple GPU) device: use device=cpu "
                           "(or device=auto)")
    return requested


def dtype(requested: str, device_name: str) -> torch.dtype:
    if requested == "auto":
        on_gpu = device_name.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_gpu else torch.float32
    if requested not in DTYPES:
        raise UnlearnError(f"dtype={requested!r} is not supported: use auto, bf16, fp16 or fp32")
    return DTYPES[requested]


def check_training(cfg: DictConfig) -> None:
    positive_int(cfg, "steps")
    positive_int(cfg, "batch_size")
    positive_float(cfg, "lr")
    seed(cfg)
    if cfg.max_length is not None:
        positive_int(cfg, "max_length")
