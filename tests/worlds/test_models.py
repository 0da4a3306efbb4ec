"""Model loading (folders, GGUF with the converted-copy cache, hub ids offline) and truncation."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import make_model

from offsetlab.method.sources import HFSource, LogProbSource
from offsetlab.worlds.models import (
    ModelLoadError,
    converted_path,
    load_causal_lm,
    make_base,
    truncate_model,
)


def write_tiny_gguf(path, vocab: int = 300, hidden: int = 32, layers: int = 2, ff: int = 64) -> None:
    """A random 2-layer Llama with a byte-level BPE tokenizer, in llama.cpp's GGUF format."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    heads, kv = 4, 2
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hidden // heads)
    tokens = ["<unk>", "<|end|>", *bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
    tokens += [f"<extra{i}>" for i in range(vocab - len(tokens))]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (vocab - 2))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_eos_token_id(1)
    w.add_unk_token_id(0)
    w.add_pad_token_id(1)
    w.add_add_bos_token(False)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", weight(vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        block = f"blk.{i}."
        w.add_tensor(block + "attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(block + "ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(block + "attn_q.weight", weight(hidden, hidden))
        w.add_tensor(block + "attn_k.weight", weight(kv * hidden // heads, hidden))
        w.add_tensor(block + "attn_v.weight", weight(kv * hidden // heads, hidden))
        w.add_tensor(block + "attn_output.weight", weight(hidden, hidden))
        w.add_tensor(block + "ffn_gate.weight", weight(ff, hidden))
        w.add_tensor(block + "ffn_up.weight", weight(ff, hidden))
        w.add_tensor(block + "ffn_down.weight", weight(hidden, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# -- truncation ----------------------------------------------------------------------------


def test_truncate_keeps_vocabulary_and_first_layers(tokenizer):
    base = make_model(len(tokenizer), seed=0, layers=4)
    small = truncate_model(base, 2)
    assert small.config.num_hidden_layers == 2 and len(small.model.layers) == 2
    assert base.config.num_hidden_layers == 4 and len(base.model.layers) == 4  # untouched
    assert small.get_output_embeddings().weight.shape == base.get_output_embeddings().weight.shape
    base_state, small_state = base.state_dict(), small.state_dict()
    assert set(small_state) == {k for k in base_state if not k.startswith(("model.layers.2.", "model.layers.3."))}
    for name, tensor in small_state.items():
        assert torch.equal(tensor, base_state[name]), name
    # The copy owns its weights: changing it leaves the base alone.
    with torch.no_grad():
        small.model.layers[0].self_attn.q_proj.weight.add_(1.0)
    assert not torch.equal(small.model.layers[0].self_attn.q_proj.weight,
                           base.model.layers[0].self_attn.q_proj.weight)
    # Same vocabulary: the pair fuses without complaint.
    from offsetlab.method.fusion import OffsetModel

    fused = OffsetModel(base, small, [(small, 1.0)], tokenizer=tokenizer)
    assert fused.vocab_size == base.config.vocab_size


def test_truncate_keeps_a_tied_head_tied(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    base = LlamaForCausalLM(config)
    small = truncate_model(base, 1)
    assert small.get_output_embeddings().weight is small.get_input_embeddings().weight
    assert small.get_input_embeddings().weight is not base.get_input_embeddings().weight


def test_truncate_rejects_bad_layer_counts(tokenizer):
    base = make_model(len(tokenizer), seed=0, layers=2)
    for n in (0, 3):
        with pytest.raises(ValueError, match="between 1 and 2"):
            truncate_model(base, n)


# -- loading -------------------------------------------------------------------------------


def test_local_folder_round_trip(tmp_path, tokenizer):
    model = make_model(len(tokenizer), seed=3)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_causal_lm(tmp_path)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    source = make_base(str(tmp_path))
    assert isinstance(source, LogProbSource) and isinstance(source, HFSource)


def test_gguf_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFSETLAB_CACHE", str(tmp_path / "cache"))
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path)
    target = converted_path(gguf_path)
    assert not target.exists()

    model, tokenizer = load_causal_lm(gguf_path)
    assert getattr(model, "hf_quantizer", None) is None  # plain weights, saveable
    assert (target / "model.safetensors").exists() and (target / "tokenizer.json").exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp dir left behind

    start = time.perf_counter()
    cached, cached_tokenizer = load_causal_lm(tmp_path, gguf_file="tiny.gguf")
    assert time.perf_counter() - start < 10
    assert str(target) in cached.config._name_or_path  # read from the converted copy
    assert cached_tokenizer.get_vocab() == tokenizer.get_vocab()
    for (name, a), b in zip(model.state_dict().items(), cached.state_dict().values()):
        assert torch.equal(a, b), name
    ids = torch.tensor([tokenizer("the the", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, cached(ids).logits)


def test_missing_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="offline") as err:
        load_causal_lm("offsetlab-test/no-such-model")
    assert "offsetlab-test/no-such-model" in str(err.value)
    assert time.perf_counter() - start < 30  # never hangs on the network


def test_missing_hub_id_without_the_offline_flag_fails_fast(monkeypatch):
    # Offline machines find out with a two-second reachability check; online ones get
    # the hub's "not found". Either way: a ModelLoadError, quickly.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="offsetlab-test/no-such-model"):
        load_causal_lm("offsetlab-test/no-such-model")
    assert time.perf_counter() - start < 30


def test_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="No such file"):
        load_causal_lm(tmp_path / "nothing.gguf")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_causal_lm(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_causal_lm(tmp_path / "notes.txt")
