"""The fused model: a black-box base steered by the difference of two small models.

    fused = log_softmax( log p_base + Σ_i α_i · (log p_offset_i − log p_reference) )

``reference`` is a frozen small model; each offset starts as an exact copy of it, so at
the start the bracket is zero and the fused model *is* the base model. Training moves
only the offsets. Softmax ignores a constant added to every logit of a position, so
fusing log-probabilities gives the same distribution as fusing raw logits — and works
with servers that only hand out log-probs.

Every model keeps its own KV cache (one ``HFSource`` each): a decoding step costs one
incremental forward per model, never a recomputation of the prefix. Offsets that trained
only their top layers share the rest with the reference: then the small side runs as one
shared-trunk twin (``twin.py``), the same distribution for less work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import fingerprints
from .prompts import QA, PromptFormat
from .sources import (
    HFSource,
    LogProbSource,
    model_vocab_size,
    normalise,
    refuse_too_long,
    shared_window,
    snippet,
)
from .trace import Trace, entropy, kl_divergence, make_step
from .twin import NotShareable, SharedTrunk


def steering(reference: Tensor, offsets: Sequence[Tensor], alphas: Sequence[float]) -> Tensor:
    """What the offsets add to the base's log-probs: ``Σ α_i (offset_i − reference)``."""
    shift = torch.zeros_like(reference)
    for offset, alpha in zip(offsets, alphas, strict=True):
        shift = shift + alpha * (offset - reference)
    return shift


def fuse(base: Tensor, reference: Tensor, offsets: Sequence[Tensor], alphas: Sequence[float]) -> Tensor:
    """Fused log-probs from the parts (any shape ending in the vocabulary axis)."""
    return torch.log_softmax(base + steering(reference, offsets, alphas), dim=-1)


def quiet(base: Tensor, fused: Tensor, dead_zone: float) -> Tensor:
    """``fused`` where it differs from ``base`` by KL(fused ‖ base) ≥ ``dead_zone`` nats at
    a position, the base's (normalised) log-probs elsewhere (``OffsetModel(dead_zone=)``)."""
    base = torch.log_softmax(base, dim=-1)
    # tokens a top-k source leaves out are -inf in both: they add nothing
    moved = kl_divergence(fused, base).unsqueeze(-1)
    return torch.where(moved < dead_zone, base, fused)


class VocabularyMismatch(ValueError):
    """The base and the small models do not share a tokenizer."""


def check_vocabularies(tokenizers: dict[str, object], sizes: dict[str, int]) -> int:
    """Return the vocabulary size common to all models, or raise ``VocabularyMismatch``.

    Embedding matrices are often padded past the tokenizer (to a multiple of 64, say);
    the padded rows are not tokens, so fusion uses the range shared by every model.
    Tokenizers must agree on every id in that range.
    """
    common = min(sizes.values())
    named = {name: tok.get_vocab() for name, tok in tokenizers.items() if tok is not None}
    for name, vocab in named.items():
        if len(vocab) > common:
            raise VocabularyMismatch(
                f"The {name} tokenizer has {len(vocab)} tokens but the smallest model output "
                f"has {common} rows ({sizes}). Use models trained with the same tokenizer."
            )
    if len(named) < 2:
        return common
    (first, first_vocab), *others = named.items()
    first_by_id = {i: t for t, i in first_vocab.items()}
    for name, vocab in others:
        by_id = {i: t for t, i in vocab.items()}
        diffs = [i for i in sorted(set(first_by_id) | set(by_id)) if first_by_id.get(i) != by_id.get(i)]
        if diffs:
            shown = ", ".join(f"id {i}: {first_by_id.get(i)!r} vs {by_id.get(i)!r}" for i in diffs[:5])
            raise VocabularyMismatch(
                f"The {first} and {name} tokenizers disagree on {len(diffs)} token ids "
                f"(first: {shown}). Fusion adds scores token by token, so every model must "
                f"share one vocabulary: pick a small model of the same family as the base "
                f"(e.g. a truncated copy of it, see offsetlab.worlds.models)."
            )
    return common


class FusedParts:
    """Log-probs of one position (or of a batch of sequences), model by model.

    ``reference`` and ``offsets`` may be given as ``small``, a function that computes them
    when first read: a shared-trunk twin fuses without them and pays for their heads only
    when someone looks (a trace, a notebook).
    """

    def __init__(self, base: Tensor, reference: Tensor | None, offsets: list[Tensor] | None,
                 fused: Tensor, small: Callable[[], list[Tensor]] | None = None):
        self.base, self.fused = base, fused
        self._small = None if small is not None else [reference, *offsets]
        self._later = small

    def _models(self) -> list[Tensor]:
        if self._small is None:
            self._small = self._later()
        return self._small

    @property
    def reference(self) -> Tensor:
        return self._models()[0]

    @property
    def offsets(self) -> list[Tensor]:
        return self._models()[1:]


class OffsetModel:
    """A base model (any ``LogProbSource``) plus α-weighted offsets of a small pair.

    ``base`` may be a Hugging Face model (wrapped in an ``HFSource``) or any source;
    ``reference`` and the offsets are Hugging Face models sharing ``tokenizer``.
    ``offsets`` is a list of ``(model, alpha)`` pairs; an empty list gives the base.
    ``prompt_format`` is how the world this model belongs to turns questions into prompts
    (see ``prompts.py``): whoever asks this model a question uses it.
    ``shared_trunk``: run reference and offsets as one shared-trunk twin (``twin.py``) —
    ``None`` (default) when the offsets allow it (they trained only top layers), ``True``
    to insist (``NotShareable`` says why not), ``False`` for one full model each. Either
    way the fused log-probs are the same.
    ``candidates``: 0 (default) fuses over the whole vocabulary; ``k`` only over the base's
    ``k`` most likely tokens at each position: the offsets re-rank what the base finds
    plausible among themselves, while the mass the base gives those k together, and every
    other token's log-prob, stay the base's (so an offset that does nothing gives the base,
    greedy decoding never leaves the top k, and every answer keeps a finite score). A
    shared-trunk twin then needs its head on ``k`` rows only. An approximation of full
    fusion (``benchmarks/run_all.py`` measures how often they pick the same token).
    ``dead_zone``: 0 (default) fuses everywhere; ``τ > 0`` (nats) gives the base's own
    distribution at every position where the offsets move it by less than τ
    (KL(fused ‖ base) < τ, ``quiet``): an offset speaks only where it has something to
    say. Trained to move a few facts a long way, an offset also drifts a little on
    everything else, and on a real model a little is enough to flip an answer the base was
    unsure of; the dead zone removes that drift and leaves the large moves whole.
    """

    def __init__(
        self,
        base,
        reference,
        offsets: Sequence[tuple[object, float]] = (),
        tokenizer=None,
        offset_names: Sequence[str] | None = None,
        prompt_format: PromptFormat = QA,
        shared_trunk: bool | None = None,
        candidates: int = 0,
        dead_zone: float = 0.0,
    ):
        if isinstance(dead_zone, bool) or not isinstance(dead_zone, (int, float)) or not dead_zone >= 0:
            raise ValueError(f"dead_zone must be a number of nats ≥ 0 (0 = fuse everywhere), got {dead_zone!r}.")
        self.dead_zone = float(dead_zone)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 0:
            raise ValueError(f"candidates must be a whole number ≥ 0 (0 = every token), got {candidates!r}.")
        self.candidates = candidates
        self.prompt_format = prompt_format
        self.base = base if isinstance(base, LogProbSource) else HFSource(base, tokenizer)
        self.tokenizer = tokenizer if tokenizer is not None else self.base.tokenizer
        if self.tokenizer is None:
            raise ValueError("OffsetModel needs the small models' tokenizer (tokenizer=...).")
        if reference is None and offsets:
            raise ValueError("Offsets need the reference model they were trained against.")
        # Without offsets the reference is not needed: the fused model is the base alone.
        self.reference = HFSource(reference, self.tokenizer) if reference is not None else None
        self.offsets = [HFSource(m, self.tokenizer) for m, _ in offsets]
        self.alphas = [float(a) for _, a in offsets]
        self.offset_names = list(offset_names or [f"offset{i}" for i in range(len(offsets))])
        sizes = {"base": self.base.vocab_size}
        if reference is not None:
            sizes["reference"] = model_vocab_size(reference)
        sizes.update({n: model_vocab_size(m) for n, (m, _) in zip(self.offset_names, offsets)})
        self.vocab_size = check_vocabularies(
            {"base": self.base.tokenizer, "reference": self.tokenizer}, sizes
        )
        for source in (self.base, *self._small):
            source.vocab_size = self.vocab_size
        self.twin: SharedTrunk | None = None
        if offsets and shared_trunk is not False:
            try:
                self.twin = SharedTrunk(reference, [m for m, _ in offsets], self.vocab_size)
            except NotShareable:
                if shared_trunk:
                    raise
        # Positions every model can read (None: no model says, e.g. a base behind a
        # server alone); longer inputs are refused, never cut (see ``sources.ContextTooLong``).
        self.context_window = shared_window(self.base, *self._small)

    # -- helpers -------------------------------------------------------------------

    @property
    def _small(self) -> list[HFSource]:
        return [self.reference, *self.offsets] if self.offsets else []

    def _parts(self, base: Tensor, small: list[Tensor]) -> FusedParts:
        if not small:  # no offsets: the reference would cancel out, so it is not run
            return FusedParts(base, base, [], base)
        top = self._candidates(base)
        fused = self._fuse_shift(base, self._shift(small, self.alphas, top), top)
        if self.twin is not None:  # ``small`` holds hidden states; the models' heads wait
            return FusedParts(base, None, None, fused, small=lambda: self.twin.log_probs(small))
        return FusedParts(base, small[0], small[1:], fused)

    # The one fusion formula, ``fuse``, in three steps: which tokens take part (all, or the
    # base's top candidates), the offsets' shift on them, and the renormalisation.

    def _candidates(self, base: Tensor) -> Tensor | None:
        if not self.candidates:
            return None
        return base.topk(min(self.candidates, base.shape[-1]), dim=-1).indices

    def _shift(self, small: list[Tensor], alphas: Sequence[float], rows: Tensor | None) -> Tensor:
        """``Σ α_i (offset_i − reference)`` over the vocabulary, or over the ids ``rows``,
        from the small side's log-probs — or a twin's hidden states, one head for all."""
        if self.twin is not None:
            return self.twin.shift(small, alphas, rows)
        shift = steering(small[0], small[1:], alphas)
        return shift if rows is None else shift.gather(-1, rows)

    def _fuse_shift(self, base: Tensor, shift: Tensor, rows: Tensor | None) -> Tensor:
        if rows is None:
            fused = torch.log_softmax(base + shift, dim=-1)
        else:
            # The offsets re-rank the base's top k among themselves; the probability the
            # base gives them together, and every other token's, stay the base's.
            base = torch.log_softmax(base, dim=-1)
            top = base.gather(-1, rows)
            inside = torch.log_softmax(top + shift, dim=-1) + top.logsumexp(-1, keepdim=True)
            fused = base.scatter(-1, rows, inside)
        return quiet(base, fused, self.dead_zone) if self.dead_zone else fused

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]

    def _refuse_too_long(self, needed: Sequence[int], texts: Sequence[str], what: str,
                         advice: str, plus: str = "") -> None:
        refuse_too_long(needed, self.context_window,
                        lambda i: f"The {what} {snippet(texts[i])} ({i + 1} of {len(texts)}){plus}",
                        advice)

    def _pad(self, rows: list[list[int]], left: bool) -> tuple[Tensor, Tensor]:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span] = torch.tensor(r, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask

    def _small_side(self, method: str, *args) -> list[Tensor]:
        if self.twin is not None:
            return getattr(self.twin, method)(*args)
        return [getattr(s, method)(*args) for s in self._small]

    def _begin(self, ids: Tensor, mask: Tensor) -> FusedParts:
        return self._parts(self.base.begin(ids, mask), self._small_side("begin", ids, mask))

    def _advance(self, next_ids: Tensor) -> FusedParts:
        return self._parts(self.base.advance(next_ids), self._small_side("advance", next_ids))

    def _score(self, ids: Tensor, mask: Tensor) -> FusedParts:
        """Log-probs at every position of right-padded rows, ``[batch, time, vocab]`` per model."""
        return self._parts(self.base.score(ids, mask), self._small_side("score", ids, mask))

    def as_source(self) -> FusedSource:
        """This fused model as a ``LogProbSource``: a black box to fuse or train against.

        A deployed model is the base plus the offsets already active; the next forget
        request's offset can be trained against that, so that it learns only what is left
        to do: ``train_offset(lab.model(["A"]).as_source(), lab.reference, ...)`` — or, the
        same objective, ``lab.train(..., on_top_of=["A"])``.
        """
        return FusedSource(self)

    # -- (a) one step --------------------------------------------------------------

    def step(self, prompts: str | Sequence[str] | Sequence[Sequence[int]]) -> FusedParts:
        """Next-token log-probs after each prompt, ``[batch, vocab]`` per model.

        Prompts are texts, or token-id lists (e.g. a prompt plus the tokens another model
        generated, to ask what this one would choose next on the same prefix).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [list(map(int, p)) if not isinstance(p, str) else None for p in prompts]
        if any(r is None for r in rows):
            if not all(r is None for r in rows):
                raise TypeError("step() takes texts or token-id lists, not a mix of both.")
            rows = self.encode(prompts)
        texts = [p if isinstance(p, str) else f"{len(p)} token ids" for p in prompts]
        self._refuse_too_long([len(r) for r in rows], texts, "prompt", "Shorten the prompt.")
        return self._begin(*self._pad(rows, left=True))

    # -- (b) scoring ---------------------------------------------------------------

    def score(
        self, prompts: Sequence[str], continuations: Sequence[str], parts: bool = False
    ) -> list[Tensor] | list[FusedParts]:
        """Per-token fused log-probs of each continuation given its prompt.

        Returns one 1-D tensor per pair (the log-prob of each continuation token), or,
        with ``parts=True``, a ``FusedParts`` per pair holding ``[tokens, vocab]`` tensors
        for every model (what training caches).
        """
        base, small, spans, targets = self._read(prompts, continuations)
        all_parts = self._parts(base, small)
        if parts:
            return [FusedParts(all_parts.base[i, span], all_parts.reference[i, span],
                               [o[i, span] for o in all_parts.offsets], all_parts.fused[i, span])
                    for i, span in enumerate(spans)]
        return _gather(all_parts.fused, spans, targets)

    @torch.no_grad()
    def score_alphas(self, prompts: Sequence[str], continuations: Sequence[str],
                     alphas: Sequence[float]) -> list[list[Tensor]]:
        """``score`` with the last offset at each strength of ``alphas`` (the others stay
        at theirs), for about the price of one: every model runs once, and only the last
        log-softmax is redone per α. Returns one list of per-pair tensors per α."""
        if not self.offsets:
            raise ValueError("score_alphas needs an offset whose strength to vary.")
        base, small, spans, targets = self._read(prompts, continuations)
        top = self._candidates(base)
        # The shift is linear in the α's: the others' part and the last offset's, once.
        others = [*self.alphas[:-1], 0.0]
        fixed = self._shift(small, others, top)
        last = self._shift(small, [0.0] * (len(others) - 1) + [1.0], top)
        return [_gather(self._fuse_shift(base, fixed + alpha * last, top), spans, targets)
                for alpha in alphas]

    def _read(self, prompts: Sequence[str], continuations: Sequence[str]):
        """Every model's log-probs (a twin's hidden states) over the positions that predict
        the continuations, ``[batch, time, ...]``; per row the span of those positions and
        the continuation's token ids.

        Rows that share a prompt (a true answer and its perturbed versions) read it once
        when every source can ``extend`` a prompt; otherwise each row is read whole."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations.")
        prompt_ids = self.encode(prompts)
        cont_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        self._refuse_too_long([len(p) + len(c) for p, c in zip(prompt_ids, cont_ids)],
                              [p + c for p, c in zip(prompts, continuations)],
                              "prompt and continuation", "Shorten them.")
        targets = [torch.tensor(c, dtype=torch.long) for c in cont_ids]
        sources = [self.base, *([self.twin] if self.twin is not None else self._small)]
        if (len({tuple(p) for p in prompt_ids}) < len(prompt_ids) and all(cont_ids)
                and all(callable(getattr(src, "extend", None)) for src in sources)):
            base, small = self._read_sharing_prompts(prompt_ids, cont_ids)
            # Position t of a row now predicts its continuation's token t.
            return base, small, [slice(0, len(c)) for c in cont_ids], targets
        ids, mask = self._pad([p + c for p, c in zip(prompt_ids, cont_ids)], left=False)
        base, small = self.base.score(ids, mask), self._small_side("score", ids, mask)
        # Position t predicts token t+1: the continuation is predicted from len(p)-1 on.
        return base, small, [slice(len(p) - 1, len(p) - 1 + len(c)) for p, c in zip(prompt_ids, cont_ids)], targets

    def _read_sharing_prompts(self, prompt_ids: list[list[int]], cont_ids: list[list[int]]):
        """``_read``'s outputs with each distinct prompt read once (``begin``), then every
        row continued from its prompt's cache (``extend``)."""
        group: dict[tuple[int, ...], int] = {}
        rows = torch.tensor([group.setdefault(tuple(p), len(group)) for p in prompt_ids])
        heads = self._pad([list(p) for p in group], left=True)
        tails = self._pad(cont_ids, left=False)
        base = _extended(self.base, heads, tails, rows)
        if self.twin is not None:
            return base, _extended(self.twin, heads, tails, rows)
        return base, [_extended(src, heads, tails, rows) for src in self._small]

    # -- (c) generation ------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: str | Sequence[str],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        trace: bool = False,
        trace_top_k: int = 5,
        use_cache: bool = True,
        ignore_eos: bool = False,
    ) -> str | Trace | list[str] | list[Trace]:
        """Decode from the fused model, greedily or by sampling.

        One prompt gives one answer; a list gives a list (batched, left-padded). With
        ``trace=True`` each answer is a ``Trace`` of per-step log-probs of every model.
        ``use_cache=False`` recomputes every prefix from scratch (slow; for checking).
        ``ignore_eos=True`` decodes ``max_new_tokens`` whatever is chosen (for timing).
        """
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        if not prompts:
            return []
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1.")
        if do_sample and not temperature > 0:
            raise ValueError("temperature must be > 0 when sampling (use do_sample=False for greedy).")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a whole number ≥ 0 (0 = off), got {top_k!r}.")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}.")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None

        def pick(fused: Tensor) -> Tensor:
            return sample(fused, temperature, top_k, top_p, generator) if do_sample else fused.argmax(-1)

        traces = [Trace(p, "", list(self.alphas), list(self.offset_names)) for p in prompts]

        def record(step: int, tokens: Tensor, parts: FusedParts, live: Tensor) -> None:
            for i in live.nonzero().flatten().tolist():
                traces[i].steps.append(make_step(
                    step, int(tokens[i]), self._decode_one,
                    parts.base[i], parts.reference[i], [o[i] for o in parts.offsets],
                    parts.fused[i], self.alphas, trace_top_k,
                ))

        texts = self._decode(prompts, max_new_tokens, pick, record if trace else None,
                             use_cache=use_cache, ignore_eos=ignore_eos)
        if trace:
            for tr, text in zip(traces, texts):
                tr.text = text
            results: list = traces
        else:
            results = texts
        return results[0] if single else results

    def answer(self, prompts: Sequence[str], max_new_tokens: int = 32) -> tuple[list[str], list[float]]:
        """Greedy answers and, for each, the fused model's mean next-token entropy (nats)
        over its decoded steps: what ``generate(trace=True)`` reports as ``entropy_fused``,
        computed for the whole batch at once instead of one traced row at a time."""
        prompts = list(prompts)
        if not prompts:
            return [], []
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1.")
        totals = torch.zeros(len(prompts), dtype=torch.float64)
        counts = torch.zeros(len(prompts), dtype=torch.float64)

        def record(step: int, tokens: Tensor, parts: FusedParts, live: Tensor) -> None:
            totals.add_(torch.where(live, entropy(parts.fused).double(), 0.0))
            counts.add_(live.double())

        texts = self._decode(prompts, max_new_tokens, lambda fused: fused.argmax(-1), record)
        return texts, (totals / counts).tolist()

    def _decode(self, prompts: list[str], max_new_tokens: int, pick, on_step=None,
                use_cache: bool = True, ignore_eos: bool = False) -> list[str]:
        """The decoding loop: ``pick`` chooses each step's tokens from the fused log-probs;
        ``on_step(step, tokens, parts, live)`` sees every step (``live``: rows still
        decoding, the token of this step included)."""
        eos = self.tokenizer.eos_token_id
        prompt_rows = self.encode(prompts)
        # The last new token is never fed back: a prompt of n tokens reads n + m - 1.
        self._refuse_too_long([len(r) + max_new_tokens - 1 for r in prompt_rows], prompts,
                              "prompt", "Shorten the prompt or lower max_new_tokens.",
                              plus=f" with max_new_tokens={max_new_tokens}")
        ids, mask = self._pad(prompt_rows, left=True)
        parts = self._begin(ids, mask)
        new_tokens: list[list[int]] = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool)

        for step in range(max_new_tokens):
            next_ids = pick(parts.fused)
            live = ~done
            if on_step is not None:
                on_step(step, next_ids, parts, live)
            for i in live.nonzero().flatten().tolist():
                new_tokens[i].append(int(next_ids[i]))
            if not ignore_eos and eos is not None:
                done = done | (live & (next_ids == eos))
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            # Finished rows keep being fed (their tokens are ignored) so the batch stays aligned.
            next_ids = torch.where(done, torch.full_like(next_ids, eos if eos is not None else 0), next_ids)
            if use_cache:
                parts = self._advance(next_ids)
            else:
                rows = self._rows_so_far(prompt_rows, new_tokens)
                parts = self._begin(*self._pad(rows, left=True))

        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in new_tokens]

    def _rows_so_far(self, prompt_rows, new_tokens) -> list[list[int]]:
        # Without a cache every model re-reads the whole prefix; finished rows are padded
        # with EOS exactly as the cached path feeds them, so both paths see the same text.
        width = max(len(t) for t in new_tokens)
        eos = self.tokenizer.eos_token_id
        return [p + t + [eos] * (width - len(t)) for p, t in zip(prompt_rows, new_tokens)]

    def _decode_one(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


class FusedSource:
    """An ``OffsetModel`` behind the ``LogProbSource`` protocol (see ``as_source``).

    Its fingerprint names the base and every offset with its α, so an offset trained
    against it records which stack it was trained on top of.
    """

    def __init__(self, model: OffsetModel):
        self.model = model
        self.tokenizer = model.tokenizer
        self.vocab_size = model.vocab_size
        self.context_window = model.context_window

    # A trainer may lower vocab_size to a range it shares with other models.
    def begin(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return normalise(self.model._begin(input_ids, attention_mask).fused, self.vocab_size)

    def advance(self, next_ids: Tensor) -> Tensor:
        return normalise(self.model._advance(next_ids).fused, self.vocab_size)

    @torch.no_grad()
    def score(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return normalise(self.model._score(input_ids, attention_mask).fused, self.vocab_size)

    def fingerprint(self) -> fingerprints.Fingerprint:
        m = self.model
        return fingerprints.of_stack(
            fingerprints.of_source(m.base),
            [(fingerprints.of_model(o.model), a) for o, a in zip(m.offsets, m.alphas)])


def _extended(source, heads: tuple[Tensor, Tensor], tails: tuple[Tensor, Tensor], rows: Tensor):
    """A source's outputs at the positions that predict each tail's tokens: the last
    position of prompt ``rows[i]`` (read once per distinct prompt), then tail ``i``'s own
    positions but its last. A twin's outputs are lists (one per column), as ``begin`` gives."""
    first, rest = source.begin(*heads), source.extend(*tails, rows)

    def join(f: Tensor, r: Tensor) -> Tensor:
        return torch.cat([f[rows.to(f.device)].unsqueeze(1), r[:, :-1]], dim=1)

    if isinstance(first, Tensor):
        return join(first, rest)
    return [join(f, r) for f, r in zip(first, rest, strict=True)]


def _gather(logprobs: Tensor, spans: list[slice], targets: list[Tensor]) -> list[Tensor]:
    """Per row, the log-prob of each target token over its span: ``[batch, time, vocab]``
    → one 1-D tensor per row."""
    return [logprobs[i, span].gather(-1, t[:, None]).squeeze(-1)
            for i, (span, t) in enumerate(zip(spans, targets))]


def sample(
    logprobs: Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> Tensor:
    """Draw one token per row after temperature, top-k and nucleus (top-p) filtering."""
    logits = logprobs / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already cover top_p (keep at least one).
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
