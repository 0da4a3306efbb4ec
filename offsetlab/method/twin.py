"""The shared-trunk twin: the reference and its offsets run their common layers once.

An offset trained on the top layers only (``TrainConfig.top_layers``) keeps everything
below them — the embeddings and the lower decoder layers — exactly as the reference has
them, and keeps the final norm and the output head too. Two things follow:

* one pass through the common lower layers (the *trunk*) feeds the reference's top
  layers and every offset's top layers: K offsets cost one trunk plus K + 1 tops;
* with one head ``W`` for all of them, a model's logits are ``W · norm(h)`` (``h``: the
  hidden state after its last layer), so

      offset_i − reference = W · (norm(h_i) − norm(h_ref))   (+ a constant per position)

  and the fused model needs one head matmul on the α-weighted sum of differences,

      fused = log_softmax( base + W · Σ_i α_i (norm(h_i) − norm(h_ref)) ),

  instead of a full-vocabulary head per model. Log-softmax subtracts a constant per
  position, and softmax ignores such a constant, so this is the distribution that
  ``fusion.fuse`` gives from the models' log-probs — exactly, up to float rounding.

Nothing here is trained and nothing is copied: the twin runs the models' own modules, in
the order their decoder's ``forward`` would, each column (reference, offset i) with its
own KV cache for its top layers; the trunk's cache is the reference's.

Supported: Llama-style decoders (``model_type`` "llama": the toy models, SmolLM2).
``shared_depth`` says how many layers can be shared, or why none can.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .sources import continued, normalise, positions_from_mask

SUPPORTED = ("llama",)


class NotShareable(ValueError):
    """The offsets differ from the reference outside their top layers (or the models are
    not of a supported kind): fuse them with full copies instead."""


def body(model):
    """The decoder (embeddings, layers, norm) of a causal LM, through a LoRA wrapper too."""
    model = model.get_base_model() if hasattr(model, "peft_config") else model
    return model.get_decoder()


def head(model):
    model = model.get_base_model() if hasattr(model, "peft_config") else model
    return model.get_output_embeddings()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same parameter names and values (a LoRA-wrapped layer has more names: not the same)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].data_ptr() == sb[k].data_ptr() or torch.equal(sa[k], sb[k]) for k in sa)


def shared_depth(reference, offsets: Sequence) -> int:
    """How many bottom decoder layers every offset has exactly as the reference.

    Raises ``NotShareable`` (saying what differs) when the models are not Llama-style,
    or when an offset changed its embeddings, final norm or output head — then no
    layer's output is shared and the head trick does not hold."""
    config = body(reference).config
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        raise NotShareable(f"A shared trunk needs a Llama-style decoder; the reference is {kind!r}.")
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        raise NotShareable("A shared trunk needs every layer to attend to the full prefix.")
    ref_body, ref_head = body(reference), head(reference)
    if getattr(ref_head, "bias", None) is not None or getattr(config, "final_logit_softcapping", None):
        raise NotShareable("A shared trunk needs a plain linear output head (no bias, no softcapping).")
    depth = len(ref_body.layers)
    for i, offset in enumerate(offsets):
        off_body = body(offset)
        for part in ("embed_tokens", "norm"):
            if not _same(getattr(off_body, part), getattr(ref_body, part)):
                raise NotShareable(f"Offset {i} changed the reference's {part}: only offsets that "
                                   "train top layers alone (TrainConfig.top_layers) share a trunk.")
        if not _same(head(offset), ref_head):
            raise NotShareable(f"Offset {i} changed the reference's output head: only offsets "
                               "that train top layers alone (TrainConfig.top_layers) share a trunk.")
        if len(off_body.layers) != len(ref_body.layers):
            raise NotShareable(f"Offset {i} has {len(off_body.layers)} layers, the reference "
                               f"{len(ref_body.layers)}.")
        same = 0
        while same < depth and _same(off_body.layers[same], ref_body.layers[same]):
            same += 1
        depth = same
    return depth


class SharedTrunk:
    """The small side of a fused model — reference and offsets — run as one twin.

    ``begin`` / ``advance`` / ``score`` mirror ``HFSource`` but return the final-normed
    hidden states of every column, ``(reference [B, (T,) H], [offset_i ...])``;
    ``shift`` turns them into ``W · Σ α_i (h_i − h_ref)``, and ``log_probs`` into each
    model's full log-probs (what a trace shows), at the cost of one head per model.
    """

    def __init__(self, reference, offsets: Sequence, vocab_size: int):
        self.depth = shared_depth(reference, offsets)
        self.body = body(reference).eval()
        self.head = head(reference)
        self.vocab_size = vocab_size
        self.tops = [list(self.body.layers[self.depth:])]
        self.tops += [list(body(o).eval().layers[self.depth:]) for o in offsets]
        self._caches: list | None = None
        self._mask: Tensor | None = None

    @property
    def trunk(self) -> list:
        return list(self.body.layers[: self.depth])

    def _run(self, ids: Tensor, mask: Tensor, positions: Tensor, caches) -> list[Tensor]:
        """One forward of every column: the trunk once, then each column's top layers."""
        from transformers.masking_utils import create_causal_mask

        b = self.body
        hidden = b.embed_tokens(ids)
        # Built before any layer writes this step's keys: the cache holds the past only.
        causal = create_causal_mask(config=b.config, inputs_embeds=hidden, attention_mask=mask,
                                    cache=caches[0] if caches else None, position_ids=positions)
        rope = b.rotary_emb(hidden, position_ids=positions)

        def through(layers, h, cache):
            for layer in layers:
                h = layer(h, attention_mask=causal, position_ids=positions, cache=cache,
                          use_cache=cache is not None, position_embeddings=rope)
            return h

        # The trunk writes its keys into the reference's cache (its layer numbers are the
        # reference's); each offset's top layers have a cache of their own.
        shared = through(self.trunk, hidden, caches[0] if caches else None)
        return [b.norm(through(top, shared, caches[i] if caches else None))
                for i, top in enumerate(self.tops)]

    @torch.no_grad()
    def begin(self, input_ids: Tensor, attention_mask: Tensor) -> list[Tensor]:
        from transformers import DynamicCache

        device = self.head.weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        self._caches = [DynamicCache() for _ in self.tops]
        self._mask = attention_mask
        states = self._run(input_ids, attention_mask, positions_from_mask(attention_mask), self._caches)
        return [s[:, -1] for s in states]

    @torch.no_grad()
    def advance(self, next_ids: Tensor) -> list[Tensor]:
        if self._mask is None:
            raise RuntimeError("advance() called before begin(): start a batch first.")
        next_ids = next_ids.to(self.head.weight.device).view(-1, 1)
        self._mask = torch.cat([self._mask, torch.ones_like(next_ids)], dim=1)
        position = self._mask.long().sum(-1, keepdim=True) - 1
        return [s[:, -1] for s in self._run(next_ids, self._mask, position, self._caches)]

    @torch.no_grad()
    def extend(self, input_ids: Tensor, attention_mask: Tensor, rows: Tensor) -> list[Tensor]:
        if self._mask is None:
            raise RuntimeError("extend() called before begin(): start a batch first.")
        device = self.head.weight.device
        input_ids, attention_mask, rows = input_ids.to(device), attention_mask.to(device), rows.to(device)
        for cache in self._caches:
            cache.reorder_cache(rows)
        self._mask, positions = continued(self._mask, attention_mask, rows)
        return self._run(input_ids, self._mask, positions, self._caches)

    @torch.no_grad()
    def score(self, input_ids: Tensor, attention_mask: Tensor) -> list[Tensor]:
        device = self.head.weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        return self._run(input_ids, attention_mask, positions_from_mask(attention_mask), None)

    def shift(self, states: list[Tensor], alphas: Sequence[float], rows: Tensor | None = None) -> Tensor:
        """``W · Σ α_i (h_i − h_ref)`` over the fused vocabulary — or only over the token
        ids ``rows`` (``[..., k]``), the head's k rows alone: what the offsets add to the
        base's log-probs, up to a constant per position (one head matmul for all of them)."""
        reference, offsets = states[0], states[1:]
        difference = sum(a * (h - reference) for h, a in zip(offsets, alphas, strict=True))
        weight = self.head.weight[: self.vocab_size]
        if rows is None:
            return torch.nn.functional.linear(difference, weight).float()
        return torch.einsum("...kh,...h->...k", weight[rows], difference).float()

    def log_probs(self, states: list[Tensor]) -> list[Tensor]:
        """Each column's own log-probs (reference first), as its model alone gives them."""
        return [normalise(self.head(h), self.vocab_size) for h in states]
