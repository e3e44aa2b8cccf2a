"""The config's schemas, declared once and registered in Hydra's ConfigStore: OmegaConf enforces them when Hydra
composes (an unknown key, a value of the wrong type), for the CLI and for every `compose`.

Each YAML file extends its schema through its defaults list (`conf/config.yaml`: `unlearn_schema`;
`conf/method/rmu.yaml`: `rmu_schema`; `conf/model/*.yaml`: `model_schema`; `conf/logger/wandb.yaml`:
`wandb_schema`; ...), as Hydra documents for structured configs. The fields carry no defaults (but the data
corpora's, below): every value, with its comment, lives in `conf/`. Hydra adds a `+key=value` without asking the
schema, so each section is merged into its schema again when it is read (unlearn.config.check_added_keys,
checked_data; unlearn.evaluation.spec). What a type can't say (a positive number, a layer
below the model's depth, one value per topic) is checked in `unlearn.config` and `unlearn.evaluation.spec`.
Per-topic settings (`method.alpha`, `method.steering_coeff`) are `Any`: a number or a list of numbers, a union
OmegaConf 2.3 cannot type.

The data group (`conf/data/*.yaml`, extending `data_schema`): `data.topics` maps a topic's name to its forget and
retain corpora, keywords and audit reference, or to None (a preset that removes a topic: `data=wmdp_cyber`). Four
corpus and reference keys only apply to some corpora, so presets leave them out, and their schema defaults are the
values that mean "not used", equal to `unlearn.corpora.CorpusSpec`'s (tests/test_config.py checks):
`name: null` and `split: train` (only a hub dataset reads them), `raw_lines: false` (only a JSONL file), and a
topic's `reference: {forget: null, retain: null, text_field: text}` (no clean reference files: the audit holds a
part of each corpus out). The reference is always there rather than Optional so that the command line can set one
file of it (`data.topics.local.reference.forget=f.jsonl`): OmegaConf 2.3 cannot add a key below a None node.
Every other data key is required, its value written in each preset. `data.exclude` is the same for every preset: its value lives in
`conf/config.yaml`. `data=local` has keys of its own (forget_path, retain_path, text_field, max_length, which its
topic interpolates): a subclass, `LocalDataSchema` (`local_data_schema`), so that no other preset accepts them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


ATTACKS = ("relearn", "ablate", "fewshot", "prefix", "latent")  # knowledge-recovery attacks (REFERENCE), in AttackSpec's order
OPTIMISED_ATTACKS = ("prefix", "latent")  # fitted on the train split of the forget questions, scored on the rest


class Choice(str, Enum):
    """A closed choice of the config: OmegaConf refuses any other value by the field's type (the CLI words it:
    "key='x' is not a valid choice: give one of ..."); it compares, formats and serialises as its value."""

    def __str__(self) -> str:
        return self.value


class Optimizer(Choice):
    """The update rule (unlearn.optim): the old transformers.AdamW, or torch.optim.AdamW."""

    transformers_adamw = "transformers_adamw"
    adamw = "adamw"


class Scorer(Choice):
    """How lm-eval's log-likelihood requests are computed (unlearn.evaluation.scorer)."""

    shared_context = "shared_context"  # each distinct prefix run once, LM head only where read; HFLM's numbers
    hflm = "hflm"  # lm-eval's HFLM itself, one sequence per request: the reference


class RetainLoss(Choice):
    """NPO's and SimNPO's retain term (unlearn.methods.losses)."""

    kl = "kl"  # KL divergence to the frozen reference model's next-token distribution
    mse = "mse"  # MSE of log-probabilities


class Position(Choice):
    """Where the robustness test inserts a forget keyword."""

    start = "start"
    end = "end"
    random = "random"  # a random word boundary, seeded per question


class AblateBlocks(Choice):
    all = "all"  # every block's output
    trained = "trained"  # only the blocks whose weights trained


class WandbMode(Choice):
    auto = "auto"  # W&B's own settings decide (unlearn.tracking)
    online = "online"
    offline = "offline"
    disabled = "disabled"


class Similarity(Choice):
    """The audit's similarity of per-document probe gradients (unlearn.influence)."""

    gc = "gc"  # gradient cosine
    gd = "gd"  # gradient dot product


def _at_least(minimum: int) -> Any:
    """A required integer with a floor the type can't state (unlearn.evaluation.spec checks it)."""
    return dataclasses.field(default=MISSING, metadata={"min": minimum})


def _seed() -> Any:
    """A required seed: an integer in torch.manual_seed's range from 0 (unlearn.evaluation.spec checks it)."""
    return dataclasses.field(default=MISSING, metadata={"min": 0, "max": 2**64 - 1})


def _positive() -> Any:
    """A required number > 0 (unlearn.evaluation.spec checks it)."""
    return dataclasses.field(default=MISSING, metadata={"positive": True})


@dataclass
class RobustnessSpec:
    """The forget-token test of the RNA paper: retain questions again, with a forget keyword inserted."""

    enabled: bool = MISSING
    tasks: List[str] = MISSING  # retain tasks (lm-eval YAML tasks, not groups) to perturb
    position: Position = MISSING
    insertions: int = _at_least(1)  # copies of the keyword inserted into each question
    seed: int = _seed()  # seeds the random positions; question i gets the same positions for every keyword
    field: str = MISSING  # the document field the keyword goes into
    keywords: Optional[Dict[str, List[str]]] = MISSING  # per topic; None = the data config's keywords


@dataclass
class ProbeSpec:
    """Representation probes at the unlearn layer on held-out forget and retain text."""

    enabled: bool = MISSING
    forget_path: Optional[str] = MISSING  # read by the pipeline (unlearn.corpora), passed to evaluate() as text
    retain_path: Optional[str] = MISSING
    text_field: str = MISSING
    max_documents: int = _at_least(1)  # per text set
    max_length: int = _at_least(2)  # tokens per document
    batch_size: int = _at_least(1)
    control_vectors: Optional[str] = MISSING  # train=false: a run's control_vectors.safetensors, for cos(h_l, u)


@dataclass
class RelearnSpec:
    """Fine-tune the unlearned model for a few steps on held-out text, then evaluate (Lucki et al. 2024)."""

    path: Optional[str] = MISSING  # a local JSONL/.txt file, a bundled file (pkg://) or a hub dataset; never a training corpus
    name: Optional[str] = MISSING  # hub dataset config
    split: str = MISSING  # hub dataset split
    text_field: str = MISSING
    max_documents: int = _at_least(1)  # the first documents of the file
    max_length: int = _at_least(2)  # tokens per document
    lora: bool = MISSING  # True: LoRA adapters on the model (removed afterwards); False: full fine-tune of a copy
    lora_rank: int = _at_least(1)
    lora_alpha: float = _positive()
    lora_targets: Any = MISSING  # peft's target_modules: "all-linear" or a list of module names
    lr: float = _positive()
    steps: int = _at_least(1)  # optimizer steps; the documents are reused in order when steps need more
    batch_size: int = _at_least(1)
    seed: int = _seed()  # seeds the LoRA initialisation


@dataclass
class AblateSpec:
    """Project the difference-of-means direction out of the block outputs (Arditi & Chughtai 2024)."""

    path: Optional[str] = MISSING  # forget-domain text the means are taken over (a local or bundled file)
    text_field: str = MISSING
    max_documents: int = _at_least(1)
    max_length: int = _at_least(2)
    batch_size: int = _at_least(1)
    skip_tokens: int = _at_least(0)  # the first tokens of each document left out of the means (besides special tokens)
    blocks: AblateBlocks = MISSING


@dataclass
class FewshotSpec:
    """The forget (and retain) tasks again with examples in the prompt (Doshi & Stickland 2024)."""

    num_fewshot: int = _at_least(1)


@dataclass
class SplitSpec:
    """The seeded train / held-out split of the forget tasks' questions that the optimised attacks share."""

    train_questions: int = _at_least(2)  # questions the attacks are fitted on (over all forget tasks); the rest are scored
    seed: int = _seed()  # seeds which questions go to the train split


@dataclass
class PrefixSpec:
    """A universal adversarial prefix found by greedy coordinate gradient search (Zou et al. 2023)."""

    length: int = _at_least(1)  # prefix tokens
    init: str = MISSING  # the text one prefix token starts as (one token), repeated `length` times
    steps: int = _at_least(1)  # GCG steps
    top_k: int = _at_least(1)  # candidate substitutions per position (largest negative gradients)
    search_width: int = _at_least(1)  # candidates scored per step, one position changed in each
    batch_size: int = _at_least(1)  # sequences per forward pass when scoring candidates
    seed: int = _seed()  # seeds the candidate sampling
    control: bool = MISSING  # also fit and score the same attack on the base model


@dataclass
class LatentSpec:
    """Universal additive perturbations of block outputs and embeddings, fitted by AdamW (Casper et al. 2024)."""

    blocks: Optional[List[int]] = MISSING  # block outputs perturbed; None = the unlearn layer and 2 blocks either side
    embeddings: bool = MISSING  # also perturb the token embeddings
    norm_bound: float = _positive()  # each vector's norm <= norm_bound x the mean token norm at its place
    lr: float = _positive()  # AdamW learning rate
    decay: float = _positive()  # exponential learning-rate decay per step (1 = constant)
    steps: int = _at_least(1)  # AdamW steps, each over the whole train split
    batch_size: int = _at_least(1)  # sequences per forward pass
    seed: int = _seed()  # seeds the vectors' initialisation
    control: bool = MISSING  # also fit and score the same attack on the base model


@dataclass
class AttackSpec:
    """Each attack's settings; None for an attack `eval.attacks` does not list (its settings are not read)."""

    relearn: Optional[RelearnSpec] = MISSING
    ablate: Optional[AblateSpec] = MISSING
    fewshot: Optional[FewshotSpec] = MISSING
    prefix: Optional[PrefixSpec] = MISSING
    latent: Optional[LatentSpec] = MISSING
    split: Optional[SplitSpec] = MISSING  # None unless an optimised attack (prefix, latent) is listed


@dataclass
class EvalSpec:
    name: str = MISSING
    tasks: List[str] = MISSING  # lm-eval tasks or groups, run before and after
    forget_tasks: List[str] = MISSING  # the subset of `tasks` in the forget domain (accuracy should fall)
    retain_tasks: List[str] = MISSING  # the subset of `tasks` in the retain domain (accuracy should hold)
    include_paths: List[str] = MISSING  # extra directories of lm-eval task YAMLs (`pkg://unlearn/...` allowed)
    before: bool = MISSING  # also evaluate the model before training
    batch_size: Any = MISSING  # passed to lm-eval's HFLM itself; an int or "auto"
    scorer: Scorer = MISSING  # shared_context | hflm
    limit: Any = MISSING  # documents per task (a fraction when < 1); None = all
    num_fewshot: int = _at_least(0)
    robustness: RobustnessSpec = MISSING
    probes: ProbeSpec = MISSING
    attacks: List[str] = MISSING  # knowledge-recovery attacks run after the evaluation, in order
    attack: Optional[AttackSpec] = MISSING  # their settings; None when no attack is listed


@dataclass
class RMUConfig:
    name: str = MISSING
    recipe: Any = MISSING  # the model preset's defaults for the method
    steering_coeff: Any = MISSING
    alpha: Any = MISSING


@dataclass
class AdaptiveRMUConfig:
    name: str = MISSING
    recipe: Any = MISSING
    beta: float = MISSING
    alpha: Any = MISSING


@dataclass
class POConfig:
    """NPO and SimNPO."""

    name: str = MISSING
    recipe: Any = MISSING
    beta: float = MISSING
    retain_loss: RetainLoss = MISSING
    alpha: Any = MISSING


@dataclass
class RNABaseDefaults:
    recipe: Any = MISSING
    beta: Optional[float] = MISSING


@dataclass
class RNAConfig:
    """Every base's keys: which of them may be set depends on `base` (a rule in unlearn.config)."""

    name: str = MISSING
    base: str = MISSING
    nu: float = MISSING
    bases: Dict[str, RNABaseDefaults] = MISSING
    recipe: Any = MISSING
    steering_coeff: Any = MISSING
    beta: Optional[float] = MISSING
    retain_loss: RetainLoss = MISSING
    alpha: Any = MISSING


@dataclass
class CorpusSchema:
    """One corpus (unlearn.corpora.CorpusSpec): a hub dataset id, a dataset directory, or a local JSONL/.txt file."""

    path: str = MISSING  # ??? is allowed: the gated WMDP bio corpus, never read when train=false
    text_field: str = MISSING
    max_length: int = MISSING  # tokens per document; > 0 (unlearn.config checks)
    name: Optional[str] = None  # a hub dataset's config; not used by a file
    split: str = "train"  # a hub dataset's split; not used by a file
    raw_lines: bool = False  # feed each line as read, newline included (the published cyber run did)


@dataclass
class ReferenceSchema:
    """python -m unlearn.audit's clean reference documents of each class (unlearn.audit checks both are given)."""

    forget: Optional[str] = None  # None, with retain None: the audit holds a part of each corpus out instead
    retain: Optional[str] = None
    text_field: str = "text"


@dataclass
class TopicSchema:
    forget: CorpusSchema = MISSING
    retain: CorpusSchema = MISSING
    keywords: List[str] = MISSING  # forget keywords for the robustness test
    reference: ReferenceSchema = dataclasses.field(default_factory=ReferenceSchema)  # files: data.topics.<t>.reference.forget=...


@dataclass
class DataSchema:
    name: str = MISSING
    cycle: bool = MISSING
    shuffle: bool = MISSING
    chunk: bool = MISSING
    exclude: Optional[str] = MISSING  # its value: conf/config.yaml
    topics: Dict[str, Optional[TopicSchema]] = MISSING  # None: a preset removed the topic


@dataclass
class LocalDataSchema(DataSchema):
    """data=local: one topic whose corpora come from these keys."""

    forget_path: str = MISSING
    retain_path: str = MISSING
    text_field: str = MISSING
    max_length: int = MISSING


@dataclass
class RMRecipe:
    """A model preset's defaults for the representation-misdirection methods (`model.recipe`)."""

    layer: int = MISSING
    steps: int = MISSING
    lr: float = MISSING
    steering_coeff: Any = MISSING  # a number, or one per topic
    alpha: Any = MISSING
    optimizer: Optimizer = MISSING


@dataclass
class PORecipe:
    """A model preset's defaults for NPO or SimNPO (`model.npo_recipe`, `model.simnpo_recipe`)."""

    steps: int = MISSING
    lr: float = MISSING
    alpha: Any = MISSING
    optimizer: Optimizer = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    name_or_path: str = MISSING  # a hub id, a local directory, embedded://... or tiny://...
    trust_remote_code: bool = MISSING
    recipe: RMRecipe = MISSING
    npo_recipe: PORecipe = MISSING
    simnpo_recipe: PORecipe = MISSING


@dataclass
class NoLogger:
    name: str = MISSING


@dataclass
class WandbLogger:
    name: str = MISSING
    mode: WandbMode = MISSING
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING
    tags: List[str] = MISSING


@dataclass
class SweepConfig:
    force: bool = MISSING
    ignore_keys: List[str] = MISSING


@dataclass
class UnlearnConfig:
    """The top-level keys of conf/config.yaml; the groups' own schemas type model, method, data, eval, logger."""

    model: Any = MISSING  # typed by the model preset's schema (model_schema), as method and data by theirs
    method: Any = MISSING
    data: Any = MISSING  # typed by the data preset's schema (data_schema, local_data_schema), as method by its own
    eval: EvalSpec = MISSING
    logger: Any = MISSING  # typed by the logger preset's schema (none_schema, wandb_schema)
    train: bool = MISSING
    layer: int = MISSING
    update_layers: Any = MISSING  # null, one block index, or a list of them
    param_pattern: str = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    optimizer: Optimizer = MISSING
    seed: int = MISSING
    max_length: Optional[int] = MISSING
    mask_padding: bool = MISSING
    device: str = MISSING
    dtype: str = MISSING
    device_map: Optional[str] = MISSING
    save_model: Optional[bool] = MISSING
    output_root: str = MISSING
    sweep: SweepConfig = MISSING


@dataclass
class AuditReference:
    forget_path: Optional[str] = MISSING  # a clean forget-class file for every topic; give both or neither
    retain_path: Optional[str] = MISSING
    text_field: str = MISSING
    heldout_fraction: float = MISSING  # in (0, 1): with no reference file, this share of each corpus is held out


@dataclass
class AuditProbe:
    inverse_l2: float = MISSING  # > 0
    max_iter: int = MISSING  # > 0


@dataclass
class AuditSchema:
    """conf/audit.yaml's `audit:` section (ranges: unlearn.audit.plan)."""

    similarity: Similarity = MISSING
    flag_fraction: float = MISSING  # in (0, 1)
    reference: AuditReference = MISSING
    probe: AuditProbe = MISSING
    batch_size: int = MISSING  # > 0, and the three below
    excerpt_chars: int = MISSING
    top: int = MISSING


@dataclass
class AuditRunConfig(UnlearnConfig):
    """conf/audit.yaml: the training config plus the audit's own keys."""

    audit: AuditSchema = MISSING


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="unlearn_schema", node=UnlearnConfig)
    store.store(name="audit_schema", node=AuditRunConfig)
    for name, node in (("rmu", RMUConfig), ("adaptive_rmu", AdaptiveRMUConfig), ("npo", POConfig),
                       ("simnpo", POConfig), ("rna", RNAConfig)):
        store.store(group="method", name=f"{name}_schema", node=node)
    store.store(group="data", name="data_schema", node=DataSchema)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="logger", name="none_schema", node=NoLogger)
    store.store(group="logger", name="wandb_schema", node=WandbLogger)
    store.store(group="data", name="local_data_schema", node=LocalDataSchema)


register()
