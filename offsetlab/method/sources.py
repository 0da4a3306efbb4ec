"""Where next-token log-probabilities come from.

The base ("large") model is a black box: offsetlab only ever asks it for next-token
log-probabilities, through the small protocol below. Nothing else in the library knows
how the base model is reached, and nothing here writes its weights or gives it gradients.

Two kinds of source exist:

* ``HFSource`` — a local Hugging Face causal LM, stepped incrementally with its own
  KV cache (one cache per source, never shared between models);
* ``offsetlab.method.remote.OpenAISource`` — an OpenAI-compatible completions server that only
  returns the top-k log-probs of each step (llama.cpp, vLLM).

A source returns full-vocabulary tensors. A source that only knows the top-k candidates
puts ``-inf`` everywhere else, so fusion renormalises over the known candidates without
any special case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class LogProbSource(Protocol):
    """Next-token log-probabilities for a batch of token sequences.

    ``begin`` starts (or restarts) a batch from left-padded prompts and returns the
    log-probs of the token after each prompt, shape ``[batch, vocab]``. ``advance``
    appends one token per row and returns the log-probs of the following token.
    ``score`` returns log-probs at every position of right-padded sequences,
    ``[batch, time, vocab]``: row ``t`` predicts token ``t + 1``.

    A source may also offer ``extend(input_ids, attention_mask, rows)``: after ``begin``,
    continue prompt ``rows[i]`` with the right-padded tokens of row ``i`` (several rows may
    continue one prompt) and return the log-probs at each new position. Scoring uses it to
    read a prompt once for all its continuations; sources without it are scored whole.
    """

    vocab_size: int
    tokenizer: object | None

    def begin(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...

    def advance(self, next_ids: Tensor) -> Tensor: ...

    def score(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that ignore padding: 0, 1, 2, ... counted over real tokens only."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def continued(mask: Tensor, attention_mask: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """For ``extend``: the mask of cached prompt ``rows[i]`` followed by row ``i``'s new
    tokens, and those tokens' position ids (they go on from the prompt's real tokens)."""
    before = mask[rows]
    start = before.long().sum(-1, keepdim=True)
    return (torch.cat([before, attention_mask], dim=1),
            start + torch.arange(attention_mask.shape[1], device=mask.device))


def normalise(scores: Tensor, vocab_size: int) -> Tensor:
    """Log-probs over the first ``vocab_size`` ids from logits or wider log-probs.

    Embedding matrices are often padded past the tokenizer, and models that fuse must
    agree on one range: every model's scores are cut to it here, and only here.
    """
    return torch.log_softmax(scores[..., :vocab_size].float(), dim=-1)


class ContextTooLong(ValueError):
    """A prompt (with its answer, or with the tokens still to generate) does not fit in
    the models' context window. offsetlab refuses it rather than cutting it: a prompt cut
    from the left is another question, and scores on it would be measured on text
    nobody asked."""


def context_window(source) -> int | None:
    """How many positions a model (or a source wrapping one) reads at most: its config's
    ``max_position_embeddings`` (``n_positions`` for GPT-2-like models); ``None`` when
    unknown, e.g. a base behind a server, which refuses long prompts itself."""
    model = getattr(source, "model", source)
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    value = getattr(source, "context_window", None)
    return value if isinstance(value, int) and value > 0 else None


def shared_window(*sources) -> int | None:
    """The smallest context window among ``sources`` (``None`` when none is known)."""
    known = [w for w in map(context_window, sources) if w is not None]
    return min(known) if known else None


def refuse_too_long(needed: Sequence[int], window: int | None, describe: Callable[[int], str],
                    advice: str) -> None:
    """The one rule for every path that feeds models (decoding, scoring, training):
    ``needed[i]`` positions must fit in ``window``, else ``ContextTooLong`` names the
    ``i``-th input (``describe(i)``) and what to do (``advice``)."""
    if window is None:
        return
    for i, n in enumerate(needed):
        if n > window:
            raise ContextTooLong(f"{describe(i)} needs {n} positions, but the models read at "
                                 f"most {window} (their context window). {advice}")


def snippet(text: str, n: int = 40) -> str:
    """The start of ``text``, quoted, to name it in a message."""
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "…")


def model_vocab_size(model) -> int:
    """Rows of the output head (may exceed the tokenizer: embeddings are often padded)."""
    return int(model.get_output_embeddings().weight.shape[0])


class HFSource:
    """A local Hugging Face causal LM behind the source protocol.

    The model is put in eval mode and every call runs under ``torch.no_grad``, so a
    base model wrapped here can never be trained through offsetlab. ``vocab_size`` may
    be lowered to a common range shared with other models (see ``fusion.common_vocab``).
    """

    def __init__(self, model, tokenizer=None, vocab_size: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size or model_vocab_size(model)
        self._cache = None
        self._mask: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _log_probs(self, logits: Tensor) -> Tensor:
        return normalise(logits, self.vocab_size)

    @torch.no_grad()
    def begin(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        from transformers import DynamicCache

        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        self._cache = DynamicCache()
        self._mask = attention_mask
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position is needed: skips most of the head
        )
        return self._log_probs(out.logits[:, -1])

    @torch.no_grad()
    def advance(self, next_ids: Tensor) -> Tensor:
        if self._mask is None:
            raise RuntimeError("advance() called before begin(): start a batch first.")
        next_ids = next_ids.to(self.device).view(-1, 1)
        self._mask = torch.cat([self._mask, torch.ones_like(next_ids)], dim=1)
        # The new token's position is the number of real tokens before it.
        position = self._mask.long().sum(-1, keepdim=True) - 1
        # Only the last position is needed: keeping one skips most of the head.
        return self._continue(next_ids, position, keep=1)[:, -1]

    def _continue(self, input_ids: Tensor, positions: Tensor, keep: int) -> Tensor:
        """Run new tokens on top of the cache (``self._mask`` already covers them); the
        log-probs of the last ``keep`` positions (0: all)."""
        out = self.model(input_ids=input_ids, attention_mask=self._mask, position_ids=positions,
                         cache=self._cache, use_cache=True, logits_to_keep=keep)
        return self._log_probs(out.logits)

    @torch.no_grad()
    def extend(self, input_ids: Tensor, attention_mask: Tensor, rows: Tensor) -> Tensor:
        if self._mask is None:
            raise RuntimeError("extend() called before begin(): start a batch first.")
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        rows = rows.to(self.device)
        self._cache.reorder_cache(rows)  # one cached prompt per new row, repeated as needed
        self._mask, positions = continued(self._mask, attention_mask, rows)
        return self._continue(input_ids, positions, keep=0)

    @torch.no_grad()
    def score(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            use_cache=False,
        )
        return self._log_probs(out.logits)
