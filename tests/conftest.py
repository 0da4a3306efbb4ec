"""Shared fixtures: tiny random models and a tiny tokenizer, built from configs (no download)."""

from __future__ import annotations

import pytest
import torch

WORDS = (
    "the a of in is was born city river book wrote author writer year mother father "
    "Q: A: who where when what ? . , Alra Benn Cato Dema Erro Fenn Gora Hult Ivel "
    "one two three four five six seven eight nine ten red green blue"
).split()


def make_tokenizer(words=WORDS, extra: tuple[str, ...] = ()):
    """A word-level tokenizer over a fixed word list; ids follow the list order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words, *extra])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def make_model(vocab_size: int, seed: int, hidden: int = 32, layers: int = 2, pad_to: int = 0):
    """A tiny random Llama; ``pad_to`` pads the embedding past the tokenizer like real models."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=max(vocab_size, pad_to),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # A wide init gives peaked distributions, so greedy choices are not near-ties.
        initializer_range=0.3,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_trio(tokenizer):
    """(base, reference, offset): three different tiny random models sharing the tokenizer."""
    v = len(tokenizer)
    return make_model(v, 0, hidden=48), make_model(v, 1), make_model(v, 2)
