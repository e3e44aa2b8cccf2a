"""The embedded model's conversion from its GGUF file."""

from __future__ import annotations

import pytest
import torch

from unlearn import models


@pytest.mark.slow
def test_the_embedded_checkpoint_holds_what_transformers_reads_from_the_gguf_file():
    """The converted checkpoint (read and dequantized by the gguf package, renamed and reordered here) holds
    exactly the tensors and vocabulary of transformers' own GGUF loading, and its tokenizer has the special tokens
    the file names and adds no BOS token, as the file says (transformers before 5 gets both wrong)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = models.load_model(models.EMBEDDED_PREFIX + models.SMOLLM2)
    folder, gguf_file = models._smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    their_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    text = "Bacteriophages inject their genome, then hijack the host's ribosomes."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == their_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.get_vocab() == their_tokenizer.get_vocab()
    assert tokenizer(text)["input_ids"] == ids  # the file's tokenizer.ggml.add_bos_token is false
    special = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token)
    assert special == ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")  # the file's ids 1, 2, 2, 0
