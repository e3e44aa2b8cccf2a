"""Every config composes, and the presets carry the values they claim."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from unlearn import config
from unlearn.evaluation import eval_spec
from unlearn.schema import Optimizer
from unlearn.cli import CONF_DIR, group_options


def composed(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("group", ["model", "method", "data", "eval", "logger"])
def test_every_option_composes_and_resolves(group):
    options = group_options(group)
    assert options
    for option in options:
        extra = ["data.forget_path=f.jsonl", "data.retain_path=r.jsonl"] if option == "local" else []
        if option == "wmdp" or option == "wmdp_bio":
            extra = ["data.topics.bio.forget.path=bio.jsonl"]
        if (group, option) == ("eval", "base"):  # every setting but the tasks, which a preset (or the command line) names
            extra = ["eval.tasks=[a,b]", "eval.forget_tasks=[a]", "eval.retain_tasks=[b]", "eval.robustness.tasks=[b]"]
        cfg = composed(f"{group}={option}", *extra)
        if (group, option) == ("eval", "none"):  # an evaluation that runs nothing leaves its settings unset
            assert eval_spec(cfg.eval) is None
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=(group, option) != ("eval", "none"))
        assert resolved["eval"]["robustness"]["enabled"] in (True, False)


def test_experiment_presets_compose():
    for option in group_options("experiment"):
        cfg = composed(f"experiment={option}")
        assert cfg.method.name in config.METHODS


@pytest.fixture
def bio_file(tmp_path):
    path = tmp_path / "bio.jsonl"
    path.write_text('{"text": "a"}\n')
    return path


def test_zephyr_wmdp_defaults_are_the_published_recipe(bio_file):
    cfg = composed("model=zephyr-7b-beta", "data=wmdp", f"data.topics.bio.forget.path={bio_file}")
    topics = config.topics(cfg)
    method = config.method(cfg, [t.name for t in topics])
    assert [t.name for t in topics] == ["bio", "cyber"]
    assert method.steering_coeffs == [6.5, 6.5] and method.alphas == [1200.0, 1200.0]
    assert (cfg.layer, cfg.lr, cfg.steps, cfg.batch_size, cfg.seed) == (7, 5e-5, 150, 4, 42)
    assert config.unlearn_layers(cfg, 32) == (7, [5, 6, 7])
    assert cfg.param_pattern == "mlp.down_proj"
    assert [t.forget.max_length for t in topics] == [512, 768]
    assert [t.retain.max_length for t in topics] == [512, 512]
    assert topics[1].forget.path == "cais/wmdp-corpora" and topics[1].forget.name == "cyber-forget-corpus"
    assert (topics[0].retain.path, topics[0].retain.name, topics[0].retain.split) == ("wikitext", "wikitext-2-raw-v1", "test")


def test_per_topic_lists_follow_topic_order():
    cfg = composed("model=zephyr-7b-beta", "data=wmdp", "data.topics.bio.forget.path=b.jsonl",
                   "method.steering_coeff=[6.5,8]", "method.alpha=[1200,1000]")
    method = config.method(cfg, ["bio", "cyber"])
    assert method.steering_coeffs == [6.5, 8.0] and method.alphas == [1200.0, 1000.0]


def test_rna_wraps_every_base_method():
    rna = config.method(composed("method=rna"), ["t"])
    assert rna.base == "rmu" and rna.nu == 0.01 and rna.steering_coeffs == [300.0]
    over_adaptive = config.method(composed("method=rna", "method.base=adaptive_rmu"), ["t"])
    assert over_adaptive.base == "adaptive_rmu" and over_adaptive.beta == 5 and over_adaptive.steering_coeffs is None
    over_npo = config.method(composed("method=rna", "method.base=npo", "method.retain_loss=mse"), ["t"])
    assert (over_npo.base, over_npo.beta, over_npo.retain_loss, over_npo.reads_logits) == ("npo", 0.1, "mse", True)


@pytest.mark.parametrize("base", ["rmu", "adaptive_rmu", "npo", "simnpo"])
def test_rna_over_a_base_has_the_base_methods_defaults(base):
    """RNA's config carries each base's defaults (conf/method/rna.yaml `bases`): they must be the base file's."""
    plain, wrapped = composed(f"method={base}"), composed("method=rna", f"method.base={base}")
    assert (wrapped.steps, wrapped.lr, wrapped.optimizer) == (plain.steps, plain.lr, plain.optimizer)
    for key in config.METHOD_KEYS[base]:
        assert wrapped.method[key] == plain.method[key], key


def test_po_methods_read_their_own_recipe():
    """The run's steps and lr come from the model preset's entry for the method: zephyr's NPO and SimNPO
    settings are the RNA authors' (lr 2e-5; 150 and 50 steps), its RMU the published recipe."""
    npo = composed("model=zephyr-7b-beta", "method=npo")
    simnpo = composed("model=zephyr-7b-beta", "method=simnpo")
    rmu = composed("model=zephyr-7b-beta")
    assert (npo.lr, npo.steps, npo.method.alpha, npo.method.beta) == (2e-5, 150, 50, 0.1)
    assert (simnpo.lr, simnpo.steps) == (2e-5, 50)
    assert (rmu.lr, rmu.steps) == (5e-5, 150)


@pytest.mark.parametrize("model", ["zephyr-7b-beta", "mistral-7b", "llama3-8b"])
def test_published_rm_recipes_run_the_old_transformers_adamw(model):
    """The WMDP RMU code and the Adaptive RMU authors' code import transformers.AdamW: the 7B presets' RM methods,
    and RNA over them, run its update; NPO and SimNPO (whose released code is not public) run torch's."""
    for method in (["method=rmu"], ["method=adaptive_rmu"], ["method=rna"], ["method=rna", "method.base=adaptive_rmu"]):
        assert composed(f"model={model}", *method).optimizer == Optimizer.transformers_adamw, method
    for method in (["method=npo"], ["method=simnpo"], ["method=rna", "method.base=npo"],
                   ["method=rna", "method.base=simnpo"]):
        assert composed(f"model={model}", *method).optimizer == Optimizer.adamw, method
    assert composed(f"model={model}", "optimizer=adamw").optimizer == Optimizer.adamw


def test_update_layers_default_and_explicit():
    assert config.unlearn_layers(composed("layer=1"), 12) == (1, [0, 1])
    assert config.unlearn_layers(composed("layer=7", "update_layers=[7]"), 12) == (7, [7])


def test_single_topic_presets_drop_the_other_topic(bio_file):
    assert [t.name for t in config.topics(composed("data=wmdp_cyber"))] == ["cyber"]
    assert [t.name for t in config.topics(composed("data=wmdp_bio", f"data.topics.bio.forget.path={bio_file}"))] == ["bio"]


def test_corpus_keys_a_preset_leaves_out_default_to_corpus_spec_defaults():
    """The schema's defaults for the keys that only some corpora read are CorpusSpec's, so a corpus reads the
    same whether it comes from a preset or from code (the audit's reference files)."""
    from dataclasses import fields

    from unlearn.corpora import CorpusSpec
    from unlearn.schema import CorpusSchema

    spec_defaults = {f.name: f.default for f in fields(CorpusSpec)}
    for key in ("name", "split", "raw_lines"):
        assert next(f.default for f in fields(CorpusSchema) if f.name == key) == spec_defaults[key], key
    cyber = config.topics(composed("data=wmdp_cyber"))[0]
    assert (cyber.retain.name, cyber.retain.split, cyber.retain.raw_lines) == ("wikitext-2-raw-v1", "test", False)
    demo = config.topics(composed("data=demo"))[0]
    assert (demo.forget.name, demo.forget.split, demo.forget.raw_lines) == (None, "train", False)


def test_data_presets_are_typed_by_their_schema():
    """Each data preset extends its schema, so a wrong type fails as Hydra composes, naming the full key."""
    from omegaconf.errors import ValidationError

    from unlearn.schema import DataSchema, LocalDataSchema

    assert OmegaConf.get_type(composed("data=demo").data) is DataSchema
    assert OmegaConf.get_type(composed("data=wmdp_cyber").data) is DataSchema
    assert OmegaConf.get_type(composed("data=local").data) is LocalDataSchema
    with pytest.raises(Exception) as raised:
        composed("data.topics.virology.forget.max_length=abc")
    cause = raised.value.__cause__ or raised.value
    assert isinstance(cause, ValidationError) and cause.full_key == "data.topics.virology.forget.max_length"


def test_train_false_leaves_an_unset_corpus_path_unread():
    """The gated bio corpus (path ???) is None when nothing trains, and refused with how to get it when it does."""
    from unlearn.errors import UnlearnError

    bio = config.topics(composed("data=wmdp_bio"), corpora_needed=False)[0]
    assert (bio.name, bio.forget, bio.retain.path) == ("bio", None, "wikitext")
    with pytest.raises(UnlearnError, match="the WMDP bio forget corpus is gated"):
        config.topics(composed("data=wmdp_bio"))


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.mem_gb) == ("gpu", 1, 120, 64)


def test_paper_sweep_presets():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        layers = compose("config", overrides=["experiment=rmu_layer_sweep"], return_hydra_config=True)
        rna = compose("config", overrides=["experiment=rna_nu_sweep"], return_hydra_config=True)
    assert layers.hydra.sweeper.params.layer == "range(3,32,2)"  # 3, 5, ..., 31
    assert layers.update_layers is None and layers.model.name == "zephyr-7b-beta"
    assert rna.hydra.sweeper.params["method.nu"] == "0,0.01,0.02,0.05,0.1" and rna.method.name == "rna"


@pytest.mark.parametrize("preset,method,retain_loss,alphas,steps", [
    ("zephyr_npo_kl", "npo", "kl", [50.0, 50.0], 150),
    ("zephyr_npo_mse", "npo", "mse", [5.0, 20.0], 150),
    ("zephyr_simnpo_kl", "simnpo", "kl", [20.0, 50.0], 50),
    ("zephyr_simnpo_mse", "simnpo", "mse", [10.0, 5.0], 50),
])
def test_zephyr_po_presets_are_the_authors_settings(bio_file, preset, method, retain_loss, alphas, steps):
    """REFERENCE's table (lr 2e-5, batch 4, layer 7), alone and with RNA over it."""
    for extra in ([], ["method=rna", f"method.base={method}"]):
        cfg = composed(f"experiment={preset}", f"data.topics.bio.forget.path={bio_file}", *extra)
        spec = config.method(cfg, ["bio", "cyber"])
        assert (spec.base, spec.retain_loss, spec.alphas, spec.beta) == (method, retain_loss, alphas, 0.1)
        assert (cfg.lr, cfg.steps, cfg.batch_size, cfg.layer, cfg.model.name) == (2e-5, steps, 4, 7, "zephyr-7b-beta")
        assert spec.nu == (0.01 if extra else None)
