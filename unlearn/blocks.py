"""Find a model's parts by name: its decoder blocks, the hooks that read or rewrite a block's output, the final
norm and LM head, and the weights a method trains (also checked on a weightless copy before any weights load).

Found by attribute path for each supported architecture family, never by position in `parameters()`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from unlearn.errors import UnlearnError

# Where the decoder blocks live, by architecture family; checked in order.
BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Mixtral, Qwen2, Gemma, Phi3
    "model.language_model.layers",  # multimodal wrappers (Gemma3, Llama4)
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
)
# The norm applied after the last block, before the LM head, by the same families.
FINAL_NORM_PATHS = ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                    "model.decoder.final_layer_norm")


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    module = model
    for attr in path.split("."):
        module = getattr(module, attr, None)
        if module is None:
            return None
    return module


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order, found by attribute path (never by position in `parameters()`)."""
    for path in BLOCK_PATHS:
        module = _submodule(model, path)
        if isinstance(module, nn.ModuleList):
            return module
    raise UnlearnError(
        f"cannot find the decoder blocks of {type(model).__name__}: supported layouts are "
        + ", ".join(BLOCK_PATHS)
    )


def block_output(output) -> torch.Tensor:
    """The hidden state (B, T, d) in what a decoder block returns: a tensor (transformers >= 4.54 for most
    models) or a tuple led by it (older releases, some architectures)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def capture_block_outputs(model: nn.Module, layers: Iterable[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside, each forward pass leaves block `i`'s output h_i (B, T, d) in `captured[i]` for every `i` in
    `layers` (the latest pass's, with its graph when gradients are on); the hooks go on the way out."""
    captured: dict[int, torch.Tensor] = {}

    def keep(index: int):
        return lambda _module, _inputs, output: captured.__setitem__(index, block_output(output))

    with _block_hooks(model, {index: keep(index) for index in layers}):
        yield captured


@contextlib.contextmanager
def rewrite_block_outputs(model: nn.Module,
                          rewrites: dict[int, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Inside, block `i`'s output h (B, T, d) is replaced by `rewrites[i](h)`, cast back to h's dtype, for the
    blocks that follow it and the head; the hooks go on the way out."""
    def rewrite(change: Callable[[torch.Tensor], torch.Tensor]):
        def hook(_module, _inputs, output):
            hidden = block_output(output)
            changed = change(hidden).to(hidden.dtype)
            return (changed, *output[1:]) if isinstance(output, (tuple, list)) else changed
        return hook

    with _block_hooks(model, {index: rewrite(change) for index, change in rewrites.items()}):
        yield


@contextlib.contextmanager
def _block_hooks(model: nn.Module, hooks: dict[int, Callable]) -> Iterator[None]:
    blocks = decoder_blocks(model)
    handles = []
    try:
        for index, hook in hooks.items():
            handles.append(blocks[index].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def output_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The final norm and the LM head: what turns the last block's output into logits (PO methods read them)."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        raise UnlearnError(f"{type(model).__name__} rescales its logits after the head, which the fast engine does "
                           "not reproduce: PO methods (npo, simnpo) support Llama, Mistral, Qwen2, GPT-2 and "
                           "GPT-NeoX layouts; use an RM method (rmu, adaptive_rmu) with this model")
    head = model.get_output_embeddings()
    for path in FINAL_NORM_PATHS:
        norm = _submodule(model, path)
        if isinstance(norm, nn.Module) and head is not None:
            return norm, head
    raise UnlearnError(
        f"cannot find the final norm and LM head of {type(model).__name__} (PO methods read the logits): "
        "supported layouts are " + ", ".join(FINAL_NORM_PATHS) + "; use an RM method (rmu, adaptive_rmu)"
    )


def block_prefix(model: nn.Module) -> str:
    blocks = decoder_blocks(model)
    for name, module in model.named_modules():
        if module is blocks:
            return name
    raise AssertionError("decoder blocks are not a submodule of the model")


def trained_parameters(model: nn.Module, update_layers: list[int], param_pattern: str) -> dict[str, nn.Parameter]:
    """The `weight` of every module in the `update_layers` blocks whose path inside the block fully matches
    `param_pattern` (a regular expression, e.g. `mlp.down_proj`), keyed by full parameter name."""
    blocks = decoder_blocks(model)
    prefix = block_prefix(model)
    pattern = re.compile(param_pattern)
    selected = {}
    for index in update_layers:
        for module_name, module in blocks[index].named_modules():
            weight = getattr(module, "weight", None)
            if module_name and pattern.fullmatch(module_name) and isinstance(weight, nn.Parameter):
                selected[f"{prefix}.{index}.{module_name}.weight"] = weight
    if not selected:
        available = sorted(
            name for name, module in blocks[update_layers[0]].named_modules()
            if name and isinstance(getattr(module, "weight", None), nn.Parameter)
        )
        raise UnlearnError(
            f"param_pattern '{param_pattern}' matches no weight in blocks {update_layers}: "
            f"modules with weights in a block are {', '.join(available)}"
        )
    return selected


_skeletons: dict[tuple[str, bool], nn.Module | None] = {}  # (config as JSON, trust_remote_code) -> skeleton


def _meta_skeleton(config, trust_remote_code: bool) -> nn.Module | None:
    """The model built on the meta device (None when the architecture can't be), once per config: a sweep's
    pre-check checks every job's layers and pattern on it, and building it is the slow part (a quarter of a
    second even for the tiny model)."""
    from transformers import AutoModelForCausalLM

    key = (config.to_json_string(), trust_remote_code)
    if key not in _skeletons:
        try:
            with torch.device("meta"):
                _skeletons[key] = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        except Exception:
            _skeletons[key] = None
    return _skeletons[key]


def check_model_layout(config, update_layers: list[int], param_pattern: str, trust_remote_code: bool = False,
                       needs_head: bool = False) -> None:
    """`trained_parameters` (and, for a method that reads logits, `output_head`) on a weightless copy of the model
    (meta device): a bad pattern or an unsupported layout fails before loading."""
    try:
        re.compile(param_pattern)
    except re.error as exc:
        raise UnlearnError(f"param_pattern '{param_pattern}' is not a valid regular expression ({exc}): e.g. mlp.down_proj") from None
    skeleton = _meta_skeleton(config, trust_remote_code)
    if skeleton is None:  # an architecture that can't be built on meta: the check runs after loading instead
        return
    trained_parameters(skeleton, update_layers, param_pattern)
    if needs_head:
        output_head(skeleton)
