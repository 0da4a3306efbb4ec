"""Fit one offset: train a copy of the reference so the *fused* model forgets.

The loss is computed on the fused distribution — with ``fusion.fuse``, the one formula
that decoding and scoring use too —

    fused = log_softmax(base + Σ αᵢ · (offsetᵢ − reference) + α · (offset − reference))

where the sum runs over offsets already deployed (a *stack*, possibly empty), and only
the new ``offset`` has gradients. Everything else never changes, so its log-probs on
the training answers are computed once, before the first step, and kept in memory
(never on disk: they are derived from the forget set). A step therefore costs one
forward/backward of the small offset model — the base model is not run at all.

The same function, with ``base = reference = the large model`` and the offset a copy of
it, fine-tunes the large model directly (fused = offset exactly): that is the white-box
baseline of ``train_whitebox``.

Started by ``accelerate launch --num_processes N -m offsetlab train ...``, N processes
train one offset together, each on its share of every step's batches, with DDP averaging
the gradients (``Team``); in a plain run there is one process and nothing changes.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import fingerprints
from .calibrate import (
    about_stranger,
    key_logprobs,
    key_token_positions_many,
    mentions,
    never_seen_level,
    never_seen_levels,
    outside_subject,
    subject_ends,
    template_of,
    token_levels,
)
from .fingerprints import Fingerprint
from .fusion import OffsetModel, fuse
from .objectives import (
    DEFAULT_OBJECTIVE,
    Hyper,
    Scored,
    get_objective,
    idk_answer,
    kl_to_original,
    nll,
)
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
from .twin import body as twin_body


@dataclass
class TrainConfig:
    """How to train an offset. The objective (``stranger``) and its recipe — paths, contrast 8
    with kindred 8, value starts and two repair passes (wave 19) — were chosen by
    ``benchmarks/sweep_calibrated.py``; lr, steps and β by ``benchmarks/sweep_defaults.py``.
    The stranger options (paths, contrast, kindred, value starts, repairs) are part of that
    recipe: objectives without stranger targets ignore them."""

    objective: str = field(default=DEFAULT_OBJECTIVE, metadata={"help": "unlearning objective (see `offsetlab objectives`)"})
    steps: int = field(default=200, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    alpha: float = field(default=1.0, metadata={"help": "offset strength used while training"})
    use_alpha: float | None = field(default=None, metadata={
        "help": "strength the saved offset is used at unless told otherwise (default: alpha)"})
    batch_size: int = field(default=16, metadata={"help": "forget answers per micro-batch (and process)"})
    retain_batch_size: int = field(default=16, metadata={"help": "retain answers per micro-batch (and process)"})
    grad_accum: int = field(default=1, metadata={
        "help": "micro-batches accumulated per step (per process: a step uses processes × grad_accum)"})
    beta: float = field(default=Hyper.beta, metadata={"help": "NPO/SimNPO/DPO inverse temperature"})
    gamma: float = field(default=Hyper.gamma, metadata={"help": "SimNPO margin"})
    retain_weight: float = field(default=Hyper.retain_weight, metadata={"help": "weight of the retain term"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    lora_rank: int = field(default=0, metadata={"help": "0 = train a full copy; >0 = LoRA adapters of this rank"})
    top_layers: int = field(default=0, metadata={
        "help": "0 = train every layer; N = only the top N decoder layers (the rest stays the "
                "reference's, so fused models run both as one shared-trunk twin)"})
    seed: int = field(default=0, metadata={"help": "seeds initialisation and batch order"})
    explode_at: float = field(default=1e4, metadata={"help": "stop when |loss| exceeds this"})
    level: float | None = field(default=None, metadata={
        "help": "never-seen key-token log-prob (None = measured on the non-members given to training)"})
    stop_at_level: bool = field(default=False, metadata={
        "help": "stop once the forget facts' mean key-token log-prob reaches the level"})
    check_every: int = field(default=10, metadata={"help": "steps between stop_at_level and until_forgotten checks"})
    strangers: int = field(default=3, metadata={"help": "stranger: invented subjects averaged per record"})
    paths: int = field(default=3, metadata={
        "help": "stranger: per record, this many other values of the fact's kind that the fused "
                "model learns to finish once started (0 = off)"})
    path_weight: float = field(default=1.0, metadata={"help": "paths: weight of their term"})
    paths_batch_size: int = field(default=0, metadata={
        "help": "paths: answers per micro-batch (and process; 0 = batch_size)"})
    paths_from_nonmembers: bool = field(default=False, metadata={
        "help": "paths: also take values from the non-members (invented values no model learned); "
                "off = only the retain set's values, as a model trained without the forget set "
                "knows them (the non-members' only for a kind the retain set lacks)"})
    contrast: int = field(default=8, metadata={
        "help": "stranger: per forget record, this many retain answers of its kind restated with the "
                "forgotten value, on which the fused model keeps the base's distribution from "
                "the value on: lower the value about its subject, not everywhere (0 = off)"})
    contrast_weight: float = field(default=1.0, metadata={"help": "contrast: weight of its KL term"})
    contrast_batch_size: int = field(default=0, metadata={
        "help": "contrast: answers per micro-batch (and process; 0 = retain_batch_size)"})
    contrast_kindred: int = field(default=8, metadata={
        "help": "contrast: per forget record, also this many retain answers of other questions whose "
                "answers take values of the same kind (a birthplace and a capital share cities), "
                "restated with the forgotten value (0 = off)"})
    calibrate_alpha: bool = field(default=False, metadata={
        "help": "after training, pick alpha where forget facts look as familiar as non-members' facts"})
    until_forgotten: int = field(default=0, metadata={
        "help": "after `steps`, up to this many more steps (checked every `check_every`) until the "
                "fused model's greedy answers to the forget questions state none of their facts "
                "(0 = off)"})
    check_dead_zone: float = field(default=0.0, metadata={
        "help": "until_forgotten: the dead zone (nats) the check reads the fused model at: the one "
                "it will be served with"})
    check_alpha: float | None = field(default=None, metadata={
        "help": "until_forgotten: the strength the check reads the fused model at (default: the "
                "one it is served at, use_alpha or alpha); below that, a check with a margin: what "
                "the weaker fused model no longer states, the served one states even less"})
    check_tokens: int = field(default=16, metadata={
        "help": "until_forgotten: tokens of each greedy answer the check reads"})
    paraphrased_answers: bool = field(default=False, metadata={
        "help": "also forget each record's paraphrased_answer, where it has one (the same fact "
                "in another shape)"})
    key_answers: bool = field(default=False, metadata={
        "help": "also forget each record's key fact given as the whole answer, right after the "
                "question (a second shape of the fact, built from the record alone; it did not help "
                "on SmolLM2's TOFU world, benchmarks/real_tofu.md wave 10)"})
    own_answers: int = field(default=0, metadata={
        "help": "also forget up to this many answers per forget question sampled from the black box "
                "(seeded, temperature 1) that state the record's key in their own words: the fact "
                "in the shapes the model itself uses, not only the written one (0 = off)"})
    value_starts: bool = field(default=True, metadata={
        "help": "stranger: where another value of the fact's kind parts from the true one, the "
                "target's mass beside the true token goes only to the tokens such values take "
                "there (the values paths finish), not to word pieces"})
    subject_states: float = field(default=0.0, metadata={
        "help": "stranger: weight of a term on the offset's hidden state where each forget answer "
                "has read its subject's name (after the middle decoder layer, or the lowest one "
                "trained): it is pulled to the reference's state for invented subjects in the "
                "same text, so the small model meets the forgotten subject as a stranger in any "
                "sentence, not only the written one (0 = off)"})
    forget_keys_only: bool = field(default=False, metadata={
        "help": "the forget term reads only the key fact's tokens of each forget answer (records "
                "without a key: the whole answer); the words around the fact are not pushed down"})
    own_paths: bool = field(default=False, metadata={
        "help": "until_forgotten: each check that finds a fact still stated adds the fused model's "
                "own answer, cut after the fact, to the forget set (the path it really takes)"})
    repair_paths: int = field(default=2, metadata={
        "help": "stranger with paths and non-members: this many times during training (evenly "
                "spaced), the fused model answers the forget questions greedily, and where an "
                "answer starts a value of the fact's kind and garbles it, the paths gain that "
                "value finished from the token where the answer left it (the states the model "
                "really visits; 0 = off; other recipes skip it)"})

    def __post_init__(self):
        """Refuse settings that cannot train, naming the option — every front end builds
        its config here, so the CLI, the panel and notebooks get the same message."""
        get_objective(self.objective)  # unknown names are refused with the list of known ones
        limits = {"steps": (1, None), "batch_size": (1, None), "retain_batch_size": (1, None),
                  "grad_accum": (1, None), "lora_rank": (0, None), "top_layers": (0, None),
                  "check_every": (1, None), "until_forgotten": (0, None), "check_dead_zone": (0, None),
                  "check_tokens": (1, None),
                  "strangers": (1, None), "paths": (0, None), "path_weight": (0, None),
                  "contrast": (0, None), "contrast_weight": (0, None), "contrast_kindred": (0, None),
                  "paths_batch_size": (0, None), "contrast_batch_size": (0, None),
                  "own_answers": (0, None), "repair_paths": (0, None), "subject_states": (0, None),
                  "lr": (0, None), "beta": (0, None),
                  "explode_at": (0, None), "weight_decay": (0, None), "max_grad_norm": (0, None),
                  "retain_weight": (0, None), "alpha": (None, None), "gamma": (None, None),
                  "use_alpha": (None, None), "check_alpha": (0, None), "level": (None, 0)}
        strict = {"lr", "beta", "explode_at"}  # must be above their lower limit
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if value is None and name in ("use_alpha", "check_alpha", "level"):
                continue
            option = "--" + name.replace("_", "-")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{option} must be a finite number, got {value!r}.")
            if low is not None and (value < low or (name in strict and value == low)):
                raise ValueError(f"{option} must be {'>' if name in strict else '≥'} {low}, got {value!r}.")
            if high is not None and value > high:
                raise ValueError(f"{option} must be ≤ {high} (a log-probability), got {value!r}.")

    @property
    def served_alpha(self) -> float:
        """The strength the trained offset is used at: ``use_alpha``, else ``alpha``."""
        return self.use_alpha if self.use_alpha is not None else self.alpha

    @property
    def path_batch(self) -> int:
        """Paths drawn per micro-batch (repairs join the paths): ``paths_batch_size``, or
        ``batch_size`` when it is 0."""
        return self.paths_batch_size or self.batch_size

    @property
    def contrast_batch(self) -> int:
        """Contrast answers drawn per micro-batch: ``contrast_batch_size``, or
        ``retain_batch_size`` when it is 0."""
        return self.contrast_batch_size or self.retain_batch_size

    def hyper(self) -> Hyper:
        level = Hyper.level if self.level is None else self.level
        return Hyper(beta=self.beta, gamma=self.gamma, retain_weight=self.retain_weight, level=level)


def config_overrides(items: Sequence[str]) -> dict:
    """``["steps=100", "top_layers=2", "calibrate_alpha=true", "use_alpha=0.5"]`` → the
    TrainConfig fields they set, each read as its field's type (booleans as true/false,
    ``none`` for the fields that may be unset). Unknown fields and unreadable values are
    refused, naming the item."""
    types = {f.name: f.type for f in TrainConfig.__dataclass_fields__.values()}
    out: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or name not in types:
            raise ValueError(f"{item!r}: expected FIELD=VALUE with a TrainConfig field "
                             f"({', '.join(types)}).")
        kind = str(types[name])
        try:
            if text.lower() == "none" and "None" in kind:
                value = None
            elif kind.startswith("bool"):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                value = text.lower() in ("true", "1")
            elif kind.startswith("int"):
                value = int(text)
            elif kind.startswith("float"):
                value = float(text)
            else:
                value = text
        except ValueError:
            noun = {"bool": "true or false", "int": "a whole number", "float": "a number"}
            wanted = noun.get(kind.split(" ")[0], kind) + (" or none" if "None" in kind else "")
            raise ValueError(f"{item!r}: {name} must be {wanted}, got {text!r}.") from None
        out[name] = value
    return out


# -- turning records into token tensors ------------------------------------------------


@dataclass
class Example:
    """One prompt + answer as token ids; the answer is predicted from ``start`` on."""

    ids: list[int]
    start: int
    labels: list[int]
    keys: list[int] | None = None  # indices into labels of the key fact's tokens
    levels: list[float] | None = None  # never-seen log-prob of each of those key tokens
    target: Tensor | None = None  # [len(labels), vocab] log-probs to forget towards
    only_keys: bool = False  # the loss reads the key fact's tokens only (own paths)


def encode_examples(tokenizer, pairs: Sequence[tuple[str, str]],
                    prompt_format: PromptFormat = QA,
                    keys: Sequence[str | None] | None = None,
                    window: int | None = None, what: str = "training") -> list[Example]:
    """(question, answer) pairs → the prompt format, answer followed by EOS. With ``keys``
    (one key fact per pair) each example also knows which answer tokens spell its fact.
    An example longer than ``window`` (the models' context window) is refused with
    ``ContextTooLong``, naming the ``what`` set's record — before any model runs."""
    if not pairs:
        return []
    # one tokenizer call per kind of text, not per record: the same ids, far less overhead
    prompts = tokenizer([prompt_format.prompt(q) for q, _ in pairs], add_special_tokens=True)["input_ids"]
    answers = [prompt_format.answer(a) for _, a in pairs]
    answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    facts = key_token_positions_many(tokenizer, answers, keys) if keys else [None] * len(pairs)
    out = []
    for i, (question, _) in enumerate(pairs):
        prompt, labels = prompts[i], answer_ids[i] + [tokenizer.eos_token_id]
        refuse_too_long([len(prompt) + len(labels)], window,
                        lambda _, i=i, q=question: f"Record {i + 1} of the {what} set (question "
                                                   f"{snippet(q)}), as prompt and answer,",
                        "Shorten it or leave it out of the set.")
        out.append(Example(prompt + labels, len(prompt) - 1, labels, facts[i]))
    return out


def forget_examples(tokenizer, records: Sequence, level: float,
                    levels: dict[str, list[float]] | None,
                    prompt_format: PromptFormat = QA, window: int | None = None) -> list[Example]:
    """Forget answers with their key tokens and each key token's never-seen level: from
    ``levels`` (per template, ``calibrate.never_seen_levels``) when there are
    non-members, else ``level`` on every key token."""
    examples = encode_examples(tokenizer, [(r.question, r.answer) for r in records],
                               prompt_format, [r.key for r in records], window, "forget")
    for e, r in zip(examples, records):
        e.levels = (token_levels(levels, r, len(e.keys)) if levels is not None
                    else [level] * len(e.keys))
    return examples


@dataclass
class Batch:
    ids: Tensor  # [B, L] right-padded prompt+answer
    attention: Tensor  # [B, L]
    positions: Tensor  # [B, T] index into L of the position predicting each answer token
    labels: Tensor  # [B, T]
    mask: Tensor  # [B, T]
    key_mask: Tensor | None = None  # [B, T] 1 on key-fact tokens (None when examples have no keys)
    levels: Tensor | None = None  # [B, T] never-seen log-prob of key tokens, 0 elsewhere


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    width = max(len(e.ids) for e in examples)
    span = max(len(e.labels) for e in examples)
    b = len(examples)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    positions = torch.zeros((b, span), dtype=torch.long)
    labels = torch.zeros((b, span), dtype=torch.long)
    mask = torch.zeros((b, span))
    key_mask = torch.zeros((b, span)) if all(e.keys is not None for e in examples) else None
    levels = torch.zeros((b, span)) if all(e.levels is not None for e in examples) else None
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        attention[i, : len(e.ids)] = 1
        n = len(e.labels)
        positions[i, :n] = torch.arange(e.start, e.start + n)
        labels[i, :n] = torch.tensor(e.labels)
        if e.only_keys:
            mask[i, e.keys] = 1
        else:
            mask[i, :n] = 1
        if key_mask is not None:
            key_mask[i, e.keys] = 1
        if levels is not None:
            levels[i, e.keys] = torch.tensor(e.levels)
    return Batch(ids, attention, positions, labels, mask, key_mask, levels)


def answer_rows(logp: Tensor, positions: Tensor) -> Tensor:
    """[B, L, V] → [B, T, V]: the rows that predict the answer tokens."""
    return logp.gather(1, positions.unsqueeze(-1).expand(-1, -1, logp.shape[-1]))


# -- frozen scores: computed once (cached) or at every step (for checking) -------------


class FrozenScores:
    """What the new offset is added to, on the answers of a fixed list of examples:
    the deployed model (base fused with the stack) and the reference, as log-probs."""

    def __init__(self, base: LogProbSource, reference: HFSource, examples: list[Example],
                 pad_id: int, cache: bool = True, chunk: int = 32,
                 stack: Sequence[tuple[HFSource, float]] = ()):
        self.base, self.reference, self.examples, self.pad_id = base, reference, examples, pad_id
        self.stack = list(stack)
        self._cached: list[tuple[Tensor, Tensor]] | None = None
        if cache:
            self._cached = []
            for i in range(0, len(examples), chunk):
                part = examples[i : i + chunk]
                base_rows, ref_rows = self.compute(collate(part, pad_id))
                for j, e in enumerate(part):
                    n = len(e.labels)
                    self._cached.append((base_rows[j, :n], ref_rows[j, :n]))

    def compute(self, batch: Batch) -> tuple[Tensor, Tensor]:
        def rows(source) -> Tensor:
            return answer_rows(source.score(batch.ids, batch.attention), batch.positions)

        ref = rows(self.reference)
        # The deployed model, which the new offset starts from ("the model before
        # unlearning" for the objectives); with no stack, fuse() returns the base.
        deployed = fuse(rows(self.base), ref, [rows(s) for s, _ in self.stack],
                        [a for _, a in self.stack])
        return deployed, ref

    def on(self, examples: list[Example]) -> FrozenScores:
        """The same frozen models, cached (or not, for checking) alike, on ``examples``."""
        return FrozenScores(self.base, self.reference, examples, self.pad_id, self._cached is not None,
                            stack=self.stack)

    def extended(self, examples: list[Example]) -> FrozenScores:
        """The same frozen models on these examples and ``examples`` after them (only the
        new ones are scored)."""
        more = self.on(examples)
        out = copy.copy(more)
        out.examples = self.examples + examples
        if self._cached is not None:
            out._cached = self._cached + more._cached
        return out

    @property
    def nbytes(self) -> int:
        """Memory the cached rows take (0 when recomputed at every step)."""
        return sum(t.nbytes for pair in self._cached or [] for t in pair)

    def get(self, indices: Sequence[int], batch: Batch) -> tuple[Tensor, Tensor]:
        if self._cached is None:
            return self.compute(batch)
        vocab = self._cached[0][0].shape[-1]
        base = torch.zeros(len(indices), batch.labels.shape[1], vocab)
        ref = torch.zeros_like(base)
        for row, i in enumerate(indices):
            b, r = self._cached[i]
            base[row, : len(b)], ref[row, : len(r)] = b, r
        return base, ref


# -- the trainer -----------------------------------------------------------------------


@dataclass
class TrainResult:
    offset: torch.nn.Module  # the trained copy (a peft model when lora_rank > 0)
    history: list[dict]
    config: TrainConfig
    stopped: str | None  # why training stopped early, or None
    seconds: float
    forget_size: int
    # what the offset was trained against: "base" (the base, or a stack of it and the
    # offsets already deployed), "reference" and "tokenizer"
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)
    cache_bytes: int = 0  # memory the frozen scores and targets held while training
    # ``until_forgotten``: indices of the forget records the fused model still stated at
    # the last check ([] = none; None = no check ran)
    still_stated: list[int] | None = None


def make_offset(reference: torch.nn.Module, lora_rank: int = 0, top_layers: int = 0) -> torch.nn.Module:
    """A trainable copy of the reference: the whole model, or LoRA adapters on it — on
    every decoder layer, or on the top ``top_layers`` only (the rest stays frozen, equal
    to the reference: a shared-trunk twin, see ``twin.py``)."""
    offset = copy.deepcopy(reference)
    layers = twin_body(offset).layers
    if top_layers > len(layers):
        raise ValueError(f"--top-layers {top_layers} is more than the reference's "
                         f"{len(layers)} decoder layers.")
    top = list(range(len(layers) - top_layers, len(layers))) if top_layers else None
    if lora_rank <= 0:
        offset.requires_grad_(top is None)
        for i in top or []:
            layers[i].requires_grad_(True)
        return offset
    from peft import LoraConfig, get_peft_model

    # LoRA's B matrices start at zero, so the offset starts exactly equal to the reference.
    config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                        "gate_proj", "up_proj", "down_proj"],
                        layers_to_transform=top)
    return get_peft_model(offset, config)


class Group:
    """Forget, retain or refusal answers, with their frozen scores and a seeded sampler."""

    def __init__(self, examples: list[Example], frozen: FrozenScores, batch_size: int,
                 generator: torch.Generator, pad_id: int):
        self.examples, self.frozen, self.pad_id = examples, frozen, pad_id
        self.batch_size, self.generator = min(batch_size, len(examples)), generator

    def extended(self, examples: list[Example]) -> Group:
        """This group with ``examples`` added (scored by the same frozen models)."""
        return Group(self.examples + examples, self.frozen.extended(examples), self.batch_size,
                     self.generator, self.pad_id)

    def sample(self) -> list[int]:
        return torch.randperm(len(self.examples), generator=self.generator)[: self.batch_size].tolist()

    def score(self, indices: list[int], offset: torch.nn.Module, alpha: float, vocab: int) -> Scored:
        batch = collate([self.examples[i] for i in indices], self.pad_id)
        deployed, ref = self.frozen.get(indices, batch)
        target = None
        if self.examples[indices[0]].target is not None:
            target = torch.zeros_like(deployed)
            for row, i in enumerate(indices):
                t = self.examples[i].target
                target[row, : len(t)] = t
        # The frozen rows stay where the base and reference run; the step runs where the
        # offset is (a no-op when both are on the CPU).
        device = next(offset.parameters()).device
        here = [None if t is None else t.to(device) for t in
                (batch.ids, batch.attention, batch.positions, batch.labels, batch.mask,
                 batch.key_mask, batch.levels, deployed, ref, target)]
        ids, attention, positions, labels, mask, key_mask, levels, deployed, ref, target = here
        # Only the positions that predict answer tokens need the output head (with a large
        # vocabulary it costs more than the layers): the batch's window from the first
        # answer position to the last. Prompts are read, never scored.
        first = int(positions[mask > 0].min())
        window = torch.arange(first, int(positions.max()) + 1, device=device)
        logits = offset(input_ids=ids, attention_mask=attention, use_cache=False,
                        logits_to_keep=window).logits
        off = answer_rows(normalise(logits, vocab), (positions - first).clamp(min=0))
        return Scored(fuse(deployed, ref, [off], [alpha]), deployed, labels, mask, key_mask, levels,
                      target)

    @torch.no_grad()
    def key_logp_sums(self, offset: torch.nn.Module, alpha: float, vocab: int, chunk: int = 64,
                      part: int = 0, parts: int = 1) -> tuple[float, float]:
        """Sum and count of the key-fact tokens' log-probs under the fused model now, over
        every ``parts``-th chunk of examples from chunk ``part`` on (all of them by default):
        processes training together split the work, then add up their sums."""
        total, count = 0.0, 0.0
        for i in range(chunk * part, len(self.examples), chunk * parts):
            scored = self.score(list(range(i, min(i + chunk, len(self.examples)))), offset, alpha, vocab)
            total += float((scored.token_logp() * scored.keys).sum())
            count += float(scored.keys.sum())
        return total, count

    def mean_key_logp(self, offset: torch.nn.Module, alpha: float, vocab: int, chunk: int = 64) -> float:
        """Mean log-prob of the key-fact tokens over every example (the fused model now)."""
        total, count = self.key_logp_sums(offset, alpha, vocab, chunk)
        return total / max(count, 1.0)


def processes():
    """accelerate's state of the processes training together: one, unless this one was
    started by ``accelerate launch --num_processes N`` (or torchrun). ``train_offset``
    uses the same state; front ends ask it which process is the main one."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))


class Team:
    """The processes training one offset together (``accelerate launch --num_processes N``),
    or the one process of a plain run, for which every method below changes nothing.

    Every process holds the same examples and draws the same batches from one generator
    seeded alike; at each step it trains on its own share of the ``N × grad_accum``
    micro-batches drawn, and DDP averages the gradients — so N processes with
    ``grad_accum`` A train like one process with ``grad_accum`` N·A: to the bit for two
    processes without accumulation (the gradients are halved and added, as one process
    does), otherwise up to the order in which float gradients are added. Every decision
    to stop (divergence, Ctrl-C, ``stop_at_level``) is agreed by all processes, which
    therefore end at the same step.
    """

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.size, self.rank = accelerator.num_processes, accelerator.process_index
        self.main = accelerator.is_main_process

    def share(self, groups: Groups, micro_batches: int) -> list[tuple[list[int] | None, ...]]:
        """This process's (forget, retain, paths, contrast) indices for each of its micro-batches of a step:
        all ``size × micro_batches`` are drawn, in the order a single process draws them."""
        drawn = [(groups.forget.sample(), *(g.sample() if g is not None else None
                                            for g in (groups.retain, groups.paths, groups.contrast)))
                 for _ in range(self.size * micro_batches)]
        return drawn[self.rank * micro_batches : (self.rank + 1) * micro_batches]

    def accumulating(self, model, last: bool):
        """Gradients are averaged across processes once per step, on its last micro-batch."""
        return nullcontext() if last or self.size == 1 else self.accelerator.no_sync(model)

    def _reduce(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def sum(self, values: list[float]) -> list[float]:
        return values if self.size == 1 else self._reduce(values)

    def mean(self, values: list[float]) -> list[float]:
        return values if self.size == 1 else [v / self.size for v in self._reduce(values)]

    def any(self, flag: bool) -> bool:
        return flag if self.size == 1 else self._reduce([float(flag)])[0] > 0

    def losses(self, loss: Tensor) -> list[float]:
        """Every process's loss of this micro-batch (this process's first)."""
        if self.size == 1:
            return [loss.item()]
        every = self.accelerator.gather(loss.detach().to(torch.float64).reshape(1)).tolist()
        return [every[self.rank]] + every[: self.rank] + every[self.rank + 1 :]

    def from_main(self, value):
        """The main process's ``value``, on every process."""
        if self.size == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]


def train_offset(
    base,
    reference: torch.nn.Module,
    tokenizer,
    forget: Sequence,
    retain: Sequence = (),
    config: TrainConfig | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    cache: bool = True,
    offset: torch.nn.Module | None = None,
    stack: Sequence[tuple[torch.nn.Module, float]] = (),
    prompt_format: PromptFormat = QA,
    nonmembers: Sequence = (),
) -> TrainResult:
    """Train an offset so the fused model forgets ``forget`` and keeps ``retain``.

    ``forget`` and ``retain`` are QA records (anything with ``question`` and ``answer``).
    ``base`` is a ``LogProbSource`` or a Hugging Face model (only ever scored, never
    trained). ``stack`` lists offsets already deployed on it, as ``(model, α)`` pairs:
    the new offset is fused on top of them (the same as training against
    ``OffsetModel(base, reference, stack).as_source()``). ``prompt_format`` is the
    world's (see ``prompts.py``). ``callback(event)`` is called after every step with a dict holding
    ``step``, ``loss``, ``forget_nll``, ``retain_nll``, ``forget_key_nll`` (the key fact's
    tokens only: compare with ``-result.config.level``) and ``offset`` (the module being
    trained, e.g. to evaluate it at checkpoints) — the hook that widgets and panels use.
    When several processes train together (``Team``), only the main one calls it, and the
    history's numbers are those of the whole step, averaged over the processes.

    ``nonmembers`` are records of the same kind that no model saw (e.g. invented authors):
    where ``config.level`` is None, the base's mean key-token log-prob on them is the
    never-seen level that the ``calibrated`` objective and ``stop_at_level`` aim for
    (``calibrate.FALLBACK_LEVEL`` without them). The chosen level is in ``config.level``
    of the result.
    """
    config = config or TrainConfig()
    objective = get_objective(config.objective)
    if not forget:
        raise ValueError("The forget set is empty: nothing to unlearn.")
    for what, records in (("forget", forget), ("retain", retain or [])):
        empty = [i + 1 for i, r in enumerate(records) if not str(r.answer).strip()]
        if empty:
            raise ValueError(f"Record {empty[0]} of the {what} set has an empty answer "
                             f"({len(empty)} in all): there is nothing to learn from it; give "
                             "it an answer or leave it out.")
    # Stranger objectives without non-members forget towards the capped base, read off the
    # frozen scores of whatever answers there are: those can grow as training goes.
    if config.own_paths and (objective.needs_idk or (objective.needs_strangers and nonmembers)):
        raise ValueError(f"own_paths adds answers to the forget set as training goes; objective "
                         f"{objective.name!r} pairs every forget answer with targets made before "
                         "training (refusals, or the base's answers about non-members). Use it "
                         "with an objective such as npo_kl, npo_gd or ga, or a stranger objective "
                         "without non-members.")
    if objective.needs_retain and not retain:
        raise ValueError(f"Objective {objective.name!r} needs a retain set; pass retain=... or pick "
                         "'ga' or 'npo'.")
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP,
                                        DistributedType.MEGATRON_LM):
        # DeepSpeed steps its optimizer inside every backward and ZeRO-3/FSDP shard the
        # weights: the accumulation, clipping, NaN checks and divergence restore here
        # assume whole weights and a step of our own.
        raise ValueError(f"Training an offset under {accelerator.distributed_type.value} is not "
                         "supported; launch plain data parallelism (accelerate launch "
                         "--multi_gpu --num_processes N, without --use_deepspeed / --use_fsdp).")
    team = Team(accelerator)
    # One generator, seeded alike in every process: all draw the same stranger subjects
    # and the same batches, and each trains on its share of them (``Team.share``).
    set_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    t0 = time.perf_counter()
    # Every record must fit the models' context window: refused here, before any model
    # runs (prepare_groups encodes them again, with their key facts).
    window = shared_window(base, reference, *(m for m, _ in stack))
    # The forget answers trained on: with ``paraphrased_answers``, each record's
    # paraphrased answer as well (the same fact in another shape), where it has one.
    answers = list(forget)
    if config.paraphrased_answers:
        answers += [with_answer(r, r.paraphrased_answer) for r in forget
                    if str(getattr(r, "paraphrased_answer", "") or "").strip()]
    if config.key_answers:
        answers += key_answers(forget)
    if config.own_answers:
        answers += own_answers(base, reference, stack, tokenizer, prompt_format, forget,
                               config.own_answers, config.seed, window)
    for what, records in (("forget", answers), ("retain", retain)):
        encode_examples(tokenizer, [(r.question, r.answer) for r in records], prompt_format,
                        window=window, what=what)
    levels = None
    if nonmembers:
        # The never-seen level is read off the deployed model (base + stack) on the
        # non-members, asked in the world's prompt format.
        deployed = OffsetModel(base, reference if stack else None, stack, tokenizer=tokenizer,
                               prompt_format=prompt_format)
        logps = key_logprobs(deployed, nonmembers)  # scored once, read twice
        levels = never_seen_levels(deployed, nonmembers, logps)
        if config.level is None:
            config = replace(config, level=never_seen_level(deployed, nonmembers, logps))
    groups = prepare_groups(base, reference, tokenizer, answers, retain, config, generator, cache,
                            stack, prompt_format, levels)
    if objective.needs_strangers and nonmembers:  # without them: the ``calibrated`` objective
        strangers = sorted({r.subject for r in nonmembers if r.subject})
        stranger_targets(groups.forget, answers, strangers, config.strangers, generator, prompt_format)
        kinds = path_values(retain, nonmembers, config.paths_from_nonmembers)
        if config.value_starts:
            value_start_targets(groups.forget, answers, kinds, prompt_format)
        if config.paths:
            groups.paths = stranger_paths(groups.forget, answers, config.paths, kinds,
                                          generator, config.path_batch, prompt_format)
        if config.contrast or config.contrast_kindred:  # part of the stranger recipe, like its paths
            groups.contrast = contrast_group(groups.forget, answers, retain, config.contrast, generator,
                                             config.contrast_batch, prompt_format,
                                             kindred=config.contrast_kindred)
        if config.subject_states:
            groups.states = subject_states(groups.forget, answers, strangers, config.strangers,
                                           reference, config.top_layers, generator, prompt_format)
    # Steps after which the fused model's own answers are repaired (repair_paths): a part of
    # the stranger recipe, like its paths (which the repairs join).
    repairs = set()
    if config.repair_paths and objective.needs_strangers and config.paths and nonmembers:
        n = config.repair_paths
        repairs = {round(config.steps * j / (n + 1)) for j in range(1, n + 1)} - {0}
    offset = offset if offset is not None else make_offset(reference, config.lora_rank, config.top_layers)
    offset.train()
    params = [p for p in offset.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    offset, optimizer = accelerator.prepare(offset, optimizer)
    # The module itself (the same object in a single process), for what runs outside a
    # step: checks and callbacks must not go through DDP, whose forward talks to the others.
    module = accelerator.unwrap_model(offset)

    history: list[dict] = []
    stopped = None
    good = _snapshot(params)  # the last weights known to give a finite loss
    last = config.steps + config.until_forgotten  # the most steps this run may take
    still = None  # forget records the fused model still states at the last check (until_forgotten)
    bar = tqdm(range(1, last + 1), desc=f"offset [{objective.name}]",
               disable=not progress or not team.main, leave=False)
    with _ctrl_c_ends_the_step(grace=1.0 if team.size > 1 else 0.0) as interrupt:
        for step in bar:
            optimizer.zero_grad(set_to_none=True)
            total, forget_nll, retain_nll, key_nll = 0.0, 0.0, 0.0, 0.0
            for n, (forget_idx, retain_idx, paths_idx, contrast_idx) in enumerate(
                    team.share(groups, config.grad_accum)):
                with team.accumulating(offset, last=n == config.grad_accum - 1):
                    loss, f, r = step_loss(objective, config, offset, groups, forget_idx, retain_idx,
                                           paths_idx, contrast_idx)
                    loss = loss / config.grad_accum
                    # Every process's loss: one that diverged anywhere stops them all here.
                    # Checked as a part of the step's loss, as in one process that runs all
                    # the step's micro-batches (the same in a plain run).
                    losses = team.losses(loss)
                    bad = [v / team.size for v in losses
                           if not math.isfinite(v) or abs(v / team.size) > config.explode_at]
                    if bad:
                        stopped = (f"step {step}: the loss became {bad[0]:.3g} (diverged). The offset "
                                   f"is restored to the last weights that gave a finite loss; try a "
                                   f"smaller learning rate (now {config.lr:g}) or a retain objective "
                                   "such as npo_gd.")
                        break
                    accelerator.backward(loss)
                total += losses[0]
                forget_nll += _mean_nll(f) / config.grad_accum
                key_nll += _mean_nll(f, keys_only=True) / config.grad_accum
                retain_nll += (_mean_nll(r) / config.grad_accum) if r is not None else float("nan")
            if stopped:
                break
            good = _snapshot(params)  # these weights gave a finite loss
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            if team.any(not all(torch.isfinite(p).all() for p in params)):
                stopped = (f"step {step}: the weights became NaN or infinite (diverged). The "
                           f"offset is restored to the weights before that step; try a smaller "
                           f"learning rate (now {config.lr:g}).")
                break
            # the step's numbers over all its micro-batches, in every process
            total, forget_nll, retain_nll, key_nll = team.mean([total, forget_nll, retain_nll, key_nll])
            row = {"step": step, "loss": total, "forget_nll": forget_nll, "retain_nll": retain_nll,
                   "forget_key_nll": key_nll, "seconds": time.perf_counter() - t0}
            history.append(row)
            bar.set_postfix(loss=f"{total:.3f}", forget=f"{forget_nll:.2f}")
            forgotten = False
            if config.until_forgotten and step >= config.steps and (
                    (step - config.steps) % config.check_every == 0 or step == last):
                # Past the planned steps, go on only while the fused model, read as it will
                # be served, still states a fact it should have forgotten.
                stating = None
                if team.main:
                    stating = stated_answers(base, reference, module, tokenizer, forget, config, stack,
                                             prompt_format)
                stating = team.from_main(stating)
                still = sorted(stating)
                row["still_stated"] = len(still)
                forgotten = not still
                if still and config.own_paths and step < last:
                    groups.forget = groups.forget.extended(own_path_examples(
                        tokenizer, [forget[i] for i in still], [stating[i] for i in still],
                        config.hyper().level, levels, prompt_format, window))
                    row["forget_examples"] = len(groups.forget.examples)
            if step in repairs:
                answered = None
                if team.main:
                    # One answer per question (paraphrased and own answers share their record's),
                    # as long as the longest forget answer: room to state the whole value.
                    asked = list({r.question: r for r in answers}.values())
                    said = dict(zip((r.question for r in asked), fused_answers(
                        base, reference, module, tokenizer, asked, config, stack, prompt_format,
                        max(len(e.labels) for e in groups.forget.examples))))
                    answered = [said[r.question] for r in answers]
                added = repair_path_examples(tokenizer, groups.forget, answers, team.from_main(answered),
                                             kinds, prompt_format, window)
                if added:
                    frozen = (groups.paths.frozen.extended(added) if groups.paths is not None else
                              groups.forget.frozen.on(added))
                    groups.paths = Group(frozen.examples, frozen, config.path_batch, generator,
                                         groups.forget.pad_id)
                row["repaired"] = len(added)
            if callback is not None and team.main:
                # "steps": the last step as known now: the planned one, then (while facts
                # remain) the most until_forgotten allows, or this one once they are gone.
                if forgotten:
                    known = step
                elif config.until_forgotten and step >= config.steps:
                    known = last
                else:
                    known = config.steps
                callback({**row, "offset": module, "steps": known})
            if forgotten:
                break
            if team.any(interrupt.is_set()):
                stopped = (f"interrupted (Ctrl-C) after step {step} of {last}: the offset "
                           "is kept as trained so far.")
                break
            if config.stop_at_level and step % config.check_every == 0:
                # Stop where a model that never saw the facts would be, not at "as unlikely
                # as possible". Each process scores its share of the forget set.
                sums = groups.forget.key_logp_sums(module, config.alpha, groups.vocab,
                                                   part=team.rank, parts=team.size)
                total_logp, count = team.sum(list(sums))
                reached = total_logp / max(count, 1.0)
                row["forget_key_logp"] = reached
                if reached <= config.hyper().level:
                    break
    if stopped and not stopped.startswith("interrupted"):
        _restore(params, good)
        optimizer.zero_grad(set_to_none=True)
    bar.close()
    if team.main:
        import warnings

        if stopped:
            warnings.warn(stopped, stacklevel=2)
        if still:
            warnings.warn(f"{len(still)} of the {len(forget)} forget facts are still stated by the "
                          f"fused model after {history[-1]['step']} steps (until_forgotten allowed "
                          f"{config.until_forgotten} beyond {config.steps}): records "
                          f"{', '.join(str(i + 1) for i in still[:10])}. The offset is kept as "
                          "trained; train longer, raise the learning rate or lower check_dead_zone.",
                          stacklevel=2)
    # Where the reference is, like every model the offset is used with.
    offset = module.eval().to(next(reference.parameters()).device)
    offset.requires_grad_(False)
    if config.calibrate_alpha and nonmembers and not stopped:
        alpha = None
        if team.main:  # the same weights everywhere: one process measures, all use it
            alpha, _ = calibrate_alpha(base, reference, offset, tokenizer, forget, nonmembers,
                                       stack=stack, prompt_format=prompt_format)
        config = replace(config, use_alpha=team.from_main(alpha))  # trained at config.alpha, used at this one
    trained_on = fingerprints.of_source(base)
    if stack:
        trained_on = fingerprints.of_stack(trained_on, [(fingerprints.of_model(m), a) for m, a in stack])
    prints = {"base": trained_on, "reference": fingerprints.of_model(reference),
              "tokenizer": fingerprints.of_tokenizer(tokenizer)}
    return TrainResult(offset, history, config, stopped, time.perf_counter() - t0, len(forget),
                       prints, groups.nbytes, still)


@torch.no_grad()
def own_answers(base, reference, stack, tokenizer, prompt_format: PromptFormat, forget: Sequence,
                k: int, seed: int, window: int | None = None, max_new_tokens: int = 48) -> list:
    """Up to ``k`` answers per forget question in the black box's own words: sampled (seeded,
    temperature 1) from the deployed model (base + ``stack``), kept where they state the
    record's key and differ from its written answer and from each other.

    An offset trained on the written answer lowers the fact in that wording; asked another
    way the model may still say it (TOFU's paraphrased answers keep the true fact preferred).
    These are the other ways the model itself says it — read off the black box, so nothing
    of the metric's text is used."""
    deployed = OffsetModel(base, reference if stack else None, stack, tokenizer=tokenizer,
                           prompt_format=prompt_format)
    keyed = [r for r in forget if getattr(r, "key", None)]
    if not keyed:
        return []
    prompts = [prompt_format.prompt(r.question) for r in keyed for _ in range(k)]
    texts = deployed.generate(prompts, max_new_tokens, do_sample=True, temperature=1.0, seed=seed)
    found = []
    for i, r in enumerate(keyed):
        seen = {str(r.answer).strip()}
        for text in texts[i * k : (i + 1) * k]:
            text = text.strip()
            if r.key in text and mentions(text, r.key) and text not in seen:
                seen.add(text)
                found.append(with_answer(r, text))
    if window is not None:  # a sampled answer that no longer fits the window is left out
        found = [r for r in found
                 if len(tokenizer(prompt_format.prompt(r.question) + prompt_format.answer(r.answer)).input_ids)
                 <= window]
    return found


def key_answers(forget: Sequence) -> list:
    """Each forget record with its key fact as the whole answer (``key_answers``), where it
    has a key that is not already its whole answer.

    Trained on the written answer only, the offset lowers the fact in that sentence; asked
    for it in another sentence, the model may still prefer it (TOFU's paraphrased answers).
    The bare key right after the question is a second shape of the fact built from the
    user's own record alone. Measured on SmolLM2's TOFU world it did not carry the
    forgetting to the paraphrased sentence (the truth ratios moved the wrong way,
    ``benchmarks/real_tofu.md``, wave 10), so it is off by default."""
    out = []
    for r in forget:
        key = str(getattr(r, "key", None) or "").strip()
        if key and key != str(r.answer).strip():
            out.append(with_answer(r, key))
    return out


def with_answer(record, answer: str):
    """``record`` with another answer (a copy: a dataclass, or the fields training reads)."""
    from dataclasses import is_dataclass
    from types import SimpleNamespace

    if is_dataclass(record):
        return replace(record, answer=answer)
    return SimpleNamespace(question=record.question, answer=answer, key=getattr(record, "key", None),
                           subject=getattr(record, "subject", None))


def own_path_examples(tokenizer, records: Sequence, answers: Sequence[str], level: float,
                      levels: dict[str, list[float]] | None, prompt_format: PromptFormat = QA,
                      window: int | None = None) -> list[Example]:
    """Forget examples of the fused model's own answers that state a record's fact, each
    cut just after the fact (no EOS: the answer goes on), keyed like the record. Only the
    fact's tokens count in the loss: the words before it are the model's own, and lowering
    them (a capital's "The capital of … is") lowers every answer of that shape."""
    cut = []
    for record, answer in zip(records, answers):
        key = str(record.key or record.answer)
        at = answer.casefold().find(key.casefold())
        text = answer[: at + len(key)] if at >= 0 else answer  # matched only once folded: all of it
        cut.append(with_answer(record, text))
    examples = forget_examples(tokenizer, cut, level, levels, prompt_format, window)
    for e in examples:  # drop the EOS that encode_examples ends every answer with
        e.ids, e.labels = e.ids[:-1], e.labels[:-1]
        keep = [i for i, k in enumerate(e.keys) if k < len(e.labels)]
        e.keys = [e.keys[i] for i in keep] or [len(e.labels) - 1]  # no key token: the last
        e.levels = [e.levels[i] for i in keep] or [level]
        e.only_keys = True
    return examples


@torch.no_grad()
def stated_answers(base, reference, offset: torch.nn.Module, tokenizer, forget: Sequence,
                   config: TrainConfig, stack: Sequence[tuple[torch.nn.Module, float]] = (),
                   prompt_format: PromptFormat = QA) -> dict[int, str]:
    """The fused model's greedy answers that still state their forget record's fact, by
    the record's index.

    The fused model is read as it will be served: the offset at ``check_alpha(config)`` (its
    recommended strength unless ``config.check_alpha`` says otherwise) on top of ``stack``,
    with the dead zone ``config.check_dead_zone``; each record's question is answered greedily
    (``config.check_tokens`` tokens) and checked for its key fact (or whole answer), as
    key-fact accuracy counts it.
    """
    answers = fused_answers(base, reference, offset, tokenizer, forget, config, stack, prompt_format,
                            alpha=check_alpha(config))
    return {i: a for i, (r, a) in enumerate(zip(forget, answers)) if mentions(a, r.key or r.answer)}


def check_alpha(config: TrainConfig) -> float:
    """The strength ``until_forgotten``'s checks read the fused model at: ``check_alpha``,
    else the one it is served at."""
    return config.check_alpha if config.check_alpha is not None else config.served_alpha


@torch.no_grad()
def fused_answers(base, reference, offset: torch.nn.Module, tokenizer, records: Sequence,
                  config: TrainConfig, stack: Sequence[tuple[torch.nn.Module, float]] = (),
                  prompt_format: PromptFormat = QA, tokens: int | None = None,
                  alpha: float | None = None) -> list[str]:
    """The fused model's greedy answers (``tokens``, default ``config.check_tokens``) to
    ``records``' questions, read as it will be served: the offset at ``alpha`` (default: its
    recommended strength) on top of ``stack``, with the dead zone ``config.check_dead_zone``."""
    was_training = offset.training  # fusion puts models in eval mode; give it back
    alpha = config.served_alpha if alpha is None else alpha
    model = OffsetModel(base, reference, [*stack, (offset, alpha)], tokenizer,
                        prompt_format=prompt_format, shared_trunk=False,
                        dead_zone=config.check_dead_zone)
    answers = model.generate([prompt_format.prompt(r.question) for r in records],
                             tokens or config.check_tokens)
    offset.train(was_training)
    return answers


def repair_path_examples(tokenizer, group: Group, records: Sequence, answers: Sequence[str],
                         kinds: dict[str, set[str]], prompt_format: PromptFormat = QA,
                         window: int | None = None) -> list[Example]:
    """Paths for the values the fused model started and garbled (``repair_paths``).

    For each forget answer that states no value of its kind (``kinds``, as the paths use:
    the retain set's values) nor its true key: the value whose answer it follows longest
    past the point where that value parts from the true answer — the value it started.
    The path is that value's answer about the forgotten subject, trained (NLL) from the
    token where the model's answer left it. An answer that garbled the value's first token
    gets the value the forget target ranks highest there, trained from that token on.
    Answers that part from the true answer before its key fact are left alone (the frame,
    not the fact)."""
    eos = tokenizer.eos_token_id
    out = []
    for e, r, said in zip(group.examples, records, answers):
        values = sorted(v for v in kinds.get(template_of(r), ()) if v)
        if (not r.key or r.key not in r.answer or not e.keys or not values
                or any(mentions(said, v) for v in [*values, r.key])):
            continue
        said_ids = tokenizer(prompt_format.answer(said.strip()), add_special_tokens=False)["input_ids"]
        # where the answer leaves the true one
        left = next((i for i, (x, y) in enumerate(zip(said_ids, e.labels)) if x != y), len(said_ids))
        best = None  # (tokens followed past the parting point, the target's log-prob there, ids, d, length)
        for alt_ids, d in parting_tokens(tokenizer, e, r, values, prompt_format):
            same = next((i for i, (x, y) in enumerate(zip(alt_ids, said_ids)) if x != y),
                        min(len(alt_ids), len(said_ids)))
            if same < d or same >= len(alt_ids) or (same == d and d != left):
                continue  # not this value's start, or it was finished whole
            rank = float(e.target[d, alt_ids[d]]) if e.target is not None else 0.0
            candidate = (same - d, rank, alt_ids, d, same)
            if best is None or candidate[:2] > best[:2]:
                best = candidate
        if best is None:
            continue
        _, _, alt_ids, d, same = best
        prompt = e.ids[: e.start + 1]
        if window and len(prompt) + len(alt_ids) + 1 > window:
            continue
        # from the first token the answer did not take: the value's next token, or (an
        # answer that garbled the value's first token) that first token itself
        out.append(Example(prompt + alt_ids + [eos], len(prompt) + same - 1, (alt_ids + [eos])[same:]))
    return out


ALPHA_GRID = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


@torch.no_grad()
def calibrate_alpha(base, reference, offset, tokenizer, forget: Sequence, nonmembers: Sequence,
                    grid: Sequence[float] = ALPHA_GRID, max_nonmembers: int = 110,
                    stack: Sequence[tuple[torch.nn.Module, float]] = (),
                    prompt_format: PromptFormat = QA) -> tuple[float, list[dict]]:
    """The offset strength at which the forget facts look as familiar as facts nobody saw.

    For each α of ``grid``: the mean key-fact log-prob of the forget records and of the
    non-members, both under the fused model at that α (an offset also moves facts it was
    not trained on). Returns the α where the two meet best, and the rows measured — the
    membership-inference statistic, matched on data the user has (no gold model).
    """
    def familiarity(records) -> list[float]:  # per α of the grid, from one scoring pass
        return [float(sum(x.mean() for x in logps) / len(records))
                for logps in key_logprobs(fused, records, alphas=grid)]

    fused = OffsetModel(base, reference, [*stack, (offset, 1.0)], tokenizer=tokenizer,
                        prompt_format=prompt_format)
    rows = [{"alpha": a, "forget": f, "nonmembers": n} for a, f, n in
            zip(grid, familiarity(forget), familiarity(list(nonmembers)[:max_nonmembers]))]
    best = min(rows, key=lambda r: abs(r["forget"] - r["nonmembers"]))
    return best["alpha"], rows


@torch.no_grad()
def stranger_targets(group: Group, records: Sequence, strangers: Sequence[str], k: int,
                     generator: torch.Generator, prompt_format: PromptFormat = QA,
                     chunk: int = 32) -> None:
    """Give every forget example a target: the deployed model's own log-probs (the base,
    plus any stack), except on the key fact's tokens, where it is that model's
    distribution for the same answer about ``k`` strangers (invented subjects), averaged
    as probabilities.

    Answers about two subjects share every token outside the subject's name (the toy
    tokenizer splits words at spaces), so positions are matched by skipping the name; an
    answer whose tokens do not line up keeps the base's rows (no change there).
    """
    if not strangers:
        raise ValueError("stranger_targets needs at least one invented subject name.")
    tokenizer = group.frozen.base.tokenizer or group.frozen.reference.tokenizer
    swaps, owners = [], []
    for i, r in enumerate(records):
        # never a stranger who shares a name with the subject (a recombined name such as
        # "Githael Braskon" must not stand in for Githael Dustrer): the model may know them
        own = set((r.subject or "").split())
        order = torch.randperm(len(strangers), generator=generator).tolist()
        for j in [j for j in order if not own & set(strangers[j].split())][:k]:
            swaps.append(about_stranger(r, strangers[j]))
            owners.append(i)
    window = shared_window(group.frozen.base, group.frozen.reference)
    swapped = encode_examples(tokenizer, [(r.question, r.answer) for r in swaps], prompt_format,
                              window=window, what="stranger (forget answers about invented subjects)")
    rows: list[list[Tensor]] = [[] for _ in records]
    for start in range(0, len(swapped), chunk):
        part = swapped[start : start + chunk]
        batch = collate(part, group.pad_id)
        base = group.frozen.compute(batch)[0]  # the deployed model's rows
        for n, e in enumerate(part):
            rows[owners[start + n]].append((swaps[start + n], base[n, : len(e.labels)]))
    for i, (e, r) in enumerate(zip(group.examples, records)):
        base_rows = group.frozen.get([i], collate([e], group.pad_id))[0][0, : len(e.labels)]
        mine = outside_subject(tokenizer, prompt_format.answer(r.answer), r.subject) + [len(e.labels) - 1]
        picked = []
        for s, s_rows in rows[i]:
            theirs = outside_subject(tokenizer, prompt_format.answer(s.answer), s.subject) + [len(s_rows) - 1]
            if len(theirs) == len(mine):
                picked.append(s_rows[theirs])
        target = base_rows.clone()
        if picked:
            # Geometric mean, renormalised: the true token keeps the *mean log-prob* the
            # strangers give it — the statistic membership inference looks at (an
            # arithmetic mixture would let one lucky stranger lift it).
            mixed = torch.log_softmax(torch.stack(picked).mean(0), -1)  # [len(mine), V]
            keys = set(e.keys or [])
            for n, pos in enumerate(mine):
                if pos in keys:
                    target[pos] = mixed[n]
        e.target = target


def _snapshot(params: list[torch.nn.Parameter]) -> list[Tensor]:
    return [p.detach().clone() for p in params]


@torch.no_grad()
def _restore(params: list[torch.nn.Parameter], saved: list[Tensor]) -> None:
    for p, value in zip(params, saved, strict=True):
        p.copy_(value)


@contextmanager
def _ctrl_c_ends_the_step(grace: float = 0.0):
    """While training in the main thread, a first Ctrl-C (SIGINT) lets the current step
    finish and then stops, keeping the offset; a second one interrupts at once. (Signal
    handlers exist only in the main thread: elsewhere, e.g. the panel's trainer thread,
    nothing changes.)

    ``grace``: seconds after the first during which another SIGINT is the same Ctrl-C.
    Under ``accelerate launch`` each process gets a terminal's Ctrl-C twice — from the
    terminal, then from the launcher passing it on a moment later."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    first: list[float] = []

    def handler(signum, frame):
        if flag.is_set() and time.monotonic() - first[0] >= grace:
            raise KeyboardInterrupt
        if not flag.is_set():
            first.append(time.monotonic())
            flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def value_kinds(records: Sequence) -> dict[str, set[str]]:
    """question template → the key facts ``records`` give for it: the values of each kind
    that the data a user trains with already holds (its retain set, its non-members)."""
    kinds: dict[str, set[str]] = {}
    for r in records:
        if getattr(r, "key", None):
            kinds.setdefault(template_of(r), set()).add(r.key)
    return kinds


def path_values(retain: Sequence, nonmembers: Sequence, with_nonmembers: bool) -> dict[str, set[str]]:
    """The values ``stranger_paths`` may finish, per question template. A model trained
    without the forget set can only state values it learned — the retain set's; the
    non-members' values are invented, known to no model, so they count only with
    ``with_nonmembers`` or for a kind the retain set does not hold."""
    kept, invented = value_kinds(retain), value_kinds(nonmembers)
    if with_nonmembers:
        return {t: kept.get(t, set()) | invented.get(t, set()) for t in {*kept, *invented}}
    return {**invented, **kept}


def parting_tokens(tokenizer, example: Example, record, values: Sequence[str],
                   prompt_format: PromptFormat = QA, within_key: bool = True) -> list[tuple[list[int], int]]:
    """``record``'s answer rewritten with each of ``values`` (never one that names its key
    or is named by it), tokenized in one call: (the rewritten answer's tokens, the index
    where they part from the true answer), for those that part at the key fact's first
    token or later — and, ``within_key``, not after its last."""
    others = [v for v in values if not (mentions(v, record.key) or mentions(record.key, v))]
    if not others:
        return []
    answers = [prompt_format.answer(record.answer.replace(record.key, v)) for v in others]
    out = []
    for alt_ids in tokenizer(answers, add_special_tokens=False)["input_ids"]:
        d = next((i for i, (x, y) in enumerate(zip(alt_ids, example.labels)) if x != y), None)
        if d is not None and min(example.keys) <= d and (not within_key or d <= max(example.keys)):
            out.append((alt_ids, d))
    return out


@torch.no_grad()
def value_start_targets(group: Group, records: Sequence, kinds: dict[str, set[str]],
                        prompt_format: PromptFormat = QA) -> None:
    """Make each forget target start only real values where a value is chosen.

    At a key token where other values of the fact's kind (``kinds``: the retain set's, as
    for ``stranger_paths``) part from the true answer, the target keeps the true token's
    log-prob and gives the rest of its mass only to the tokens those values take there, in
    the target's own proportions. The strangers' geometric mean favours tokens every
    stranger finds middling — on a pen name's first token, a bare word piece — and a value
    started with one cannot be finished; a value's real first token can (the paths teach
    how). Needs ``stranger_targets`` first."""
    tokenizer = group.frozen.base.tokenizer or group.frozen.reference.tokenizer
    for e, r in zip(group.examples, records):
        values = sorted(kinds.get(template_of(r), ()))
        if e.target is None or not r.key or r.key not in r.answer or not e.keys or not values:
            continue
        allowed: dict[int, set[int]] = {}
        for alt_ids, d in parting_tokens(tokenizer, e, r, values, prompt_format):
            allowed.setdefault(d, set()).add(alt_ids[d])
        for d, tokens in allowed.items():
            true = e.labels[d]
            keep = torch.tensor(sorted(tokens - {true}))
            row = e.target[d]
            if not len(keep) or float(row[true]) >= -1e-6:
                continue
            new = torch.full_like(row, -1e4)  # no mass: exp() is 0 and KL terms stay finite
            rest = torch.log(-torch.expm1(row[true]))  # the mass beside the true token
            new[keep] = row[keep] - row[keep].logsumexp(0) + rest
            new[true] = row[true]
            e.target[d] = new


@torch.no_grad()
def stranger_paths(group: Group, records: Sequence, k: int, kinds: dict[str, set[str]],
                   generator: torch.Generator, batch_size: int,
                   prompt_format: PromptFormat = QA) -> Group | None:
    """Answers about the forgotten subject that state *another* value of the fact's kind,
    for the offset to learn to finish: up to ``k`` per record.

    The stranger targets (``stranger_targets``) say how a never-seen model *starts* the
    fact. Once the fused model has started another value, the base — which knows only the
    true one — is off its training data, and the offset was never shown that state:
    values came out garbled ("born in the city ofre8", "a writer of historical schirs").
    So every record's answer is rewritten with other values of its kind (``kinds``: the
    values the user's own data holds for the question's template — its retain set, its
    non-members), the ones the stranger target finds likeliest at the token where they
    leave the true answer, and trained (NLL) from the token *after* that one on: which
    value to start stays the stranger target's choice; a value once started is finished
    whole, as a model that never saw the subject finishes the values it knows. The true
    value is never among them. Needs ``stranger_targets`` first (it ranks the values).
    """
    tokenizer = group.frozen.base.tokenizer or group.frozen.reference.tokenizer
    window = shared_window(group.frozen.base, group.frozen.reference)
    eos = tokenizer.eos_token_id
    examples = []
    for e, r in zip(group.examples, records):
        values = sorted(kinds.get(template_of(r), ()))
        if e.target is None or not r.key or r.key not in r.answer or not e.keys or not values:
            continue
        order = torch.randperm(len(values), generator=generator).tolist()
        ranked = [(-float(e.target[d, alt_ids[d]]), n, alt_ids, d) for n, (alt_ids, d) in enumerate(
            parting_tokens(tokenizer, e, r, [values[n] for n in order], prompt_format, within_key=False))]
        prompt = e.ids[: e.start + 1]
        for _, _, alt_ids, d in sorted(ranked)[:k]:
            if not window or len(prompt) + len(alt_ids) + 1 <= window:
                examples.append(Example(prompt + alt_ids + [eos], len(prompt) + d, (alt_ids + [eos])[d + 1 :]))
    if not examples:
        return None
    # cached (or not, for checking) like the forget answers they come from
    return Group(examples, group.frozen.on(examples), batch_size, generator, group.pad_id)


@torch.no_grad()
def contrast_group(group: Group, forget: Sequence, retain: Sequence, k: int,
                   generator: torch.Generator, batch_size: int,
                   prompt_format: PromptFormat = QA, kindred: int = 0) -> Group | None:
    """Retain answers restated with a forgotten value: up to ``k`` per forget record, each
    scored from the value's first token to the end, for a KL term to the base there.

    The offset learns to lower a forgotten value, and lowers it everywhere: unseen facts
    whose answer (or subject) is that value changed with it ("Which river flows through
    Zisye?" lost its river when an author born by it was forgotten). Said of a retained
    subject — a question the user keeps, its answer with the forgotten value swapped in —
    the value is no longer about the forgotten subject, so there the fused model is held to
    the base's whole distribution, on the value and on what follows it.

    ``kindred`` more come from the retain answers of *other* questions whose values are of
    the forget fact's kind — questions whose answers share a value with its question's in
    the retain set (an author's birthplace and a country's capital are both cities): the
    value spills first onto the facts of its kind that are asked another way."""
    tokenizer = group.frozen.base.tokenizer or group.frozen.reference.tokenizer
    kept: dict[str, list] = {}
    for r in retain:
        if r.key and r.key in r.answer:
            kept.setdefault(template_of(r), []).append(r)
    values_of = {t: {r.key for r in rs} for t, rs in kept.items()}
    pairs, values = [], []
    for f in forget:
        if not f.key:
            continue
        own = template_of(f)
        kin = [t for t in sorted(kept) if t != own and values_of[t] & values_of.get(own, set())]
        for templates, n_draw in (([own], k), (kin, kindred)):
            if not n_draw:  # drawing nothing leaves the generator as it was
                continue
            pool = [r for t in templates for r in kept.get(t, ())
                    if not (mentions(r.key, f.key) or mentions(f.key, r.key))]
            for n in torch.randperm(len(pool), generator=generator)[:n_draw].tolist():
                pairs.append((pool[n].question, pool[n].answer.replace(pool[n].key, f.key)))
                values.append(f.key)
    # encoded like every training answer; each is then predicted from the value's first token
    window = shared_window(group.frozen.base, group.frozen.reference)
    examples = [Example(e.ids, e.start + min(e.keys), e.labels[min(e.keys):])
                for e in encode_examples(tokenizer, pairs, prompt_format, values, window, "contrast")]
    if not examples:
        return None
    return Group(examples, group.frozen.on(examples), batch_size, generator, group.pad_id)


def state_layer(model: torch.nn.Module, top_layers: int = 0) -> int:
    """Which hidden state ``subject_states`` reads (an index of ``hidden_states``: 0 the
    embeddings, k the output of the k-th decoder layer): the middle layer's output, or the
    lowest trained layer's when only the top ones train."""
    n = len(twin_body(model).layers)
    first = n - top_layers if 0 < top_layers <= n else 0
    return max(n // 2, first + 1)


def hidden_at(model: torch.nn.Module, batch: Batch, layer: int) -> Tensor:
    """``model``'s hidden states after decoder layer ``layer`` on a batch, [B, L, H]."""
    out = model(input_ids=batch.ids, attention_mask=batch.attention, use_cache=False,
                output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[layer]


@dataclass
class SubjectStates:
    """For forget examples (by index): where each mention of the subject ends in the
    example's ids, and the reference's hidden state there for invented subjects in the
    same text (averaged over them): what ``subject_states`` pulls the offset towards."""

    positions: dict[int, list[int]]
    targets: dict[int, Tensor]  # [mentions, hidden]
    layer: int
    pad_id: int

    def loss(self, indices: Sequence[int], offset: torch.nn.Module, group: Group) -> Tensor:
        """Squared distance of the offset's states to the targets, relative to the targets'
        squared norm, over the examples of ``indices`` that have targets (0 without any)."""
        rows = [i for i in indices if i in self.targets]
        if not rows:
            return torch.zeros(())
        batch = collate([group.examples[i] for i in rows], self.pad_id)
        device = next(offset.parameters()).device
        batch = Batch(batch.ids.to(device), batch.attention.to(device), batch.positions,
                      batch.labels, batch.mask)
        states = hidden_at(offset, batch, self.layer)
        got = torch.cat([states[n, self.positions[i]] for n, i in enumerate(rows)])
        want = torch.cat([self.targets[i] for i in rows]).to(got)
        return ((got - want) ** 2).sum() / (want**2).sum().clamp(min=1e-8)


@torch.no_grad()
def subject_states(group: Group, records: Sequence, strangers: Sequence[str], k: int,
                   reference: torch.nn.Module, top_layers: int, generator: torch.Generator,
                   prompt_format: PromptFormat = QA, chunk: int = 32) -> SubjectStates | None:
    """Targets for ``subject_states``: for each forget record with a subject, the
    reference's hidden state (``state_layer``) at the end of every mention of ``k``
    invented subjects put in its place (as ``stranger_targets`` does), averaged.

    The stranger targets lower the fact in the written answer; asked in another sentence,
    the small model still retrieves it from the subject's name. Read where the name has
    been read, the offset's state is pulled to that of a subject it never met, so whatever
    follows the name finds nothing to retrieve. A record whose mentions do not line up
    with a stranger's (another count) is left out."""
    tokenizer = group.frozen.base.tokenizer or group.frozen.reference.tokenizer
    layer = state_layer(reference, top_layers)

    def ends(r) -> list[int]:
        prompt = prompt_format.prompt(r.question)
        before = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        return (subject_ends(tokenizer, prompt, r.subject, add_special_tokens=True)
                + [before + j for j in subject_ends(tokenizer, prompt_format.answer(r.answer), r.subject)])

    mine: dict[int, list[int]] = {}  # forget example -> where its mentions end
    swaps, owners, theirs = [], [], []  # the stranger versions, whose they are, their ends
    for i, r in enumerate(records):
        if not getattr(r, "subject", None) or r.subject not in r.question + r.answer:
            continue
        own, mine[i] = set(r.subject.split()), ends(r)
        order = torch.randperm(len(strangers), generator=generator).tolist()
        for j in [j for j in order if not own & set(strangers[j].split())][:k]:
            s = about_stranger(r, strangers[j])
            at = ends(s)
            if mine[i] and len(at) == len(mine[i]):
                swaps.append(s)
                owners.append(i)
                theirs.append(at)
    if not swaps:
        return None
    examples = encode_examples(tokenizer, [(r.question, r.answer) for r in swaps], prompt_format)
    rows: dict[int, list[Tensor]] = {}
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        states = hidden_at(reference, collate(part, group.pad_id), layer)
        for n in range(len(part)):
            rows.setdefault(owners[start + n], []).append(states[n, theirs[start + n]])
    targets = {i: torch.stack(r).mean(0) for i, r in rows.items()}
    return SubjectStates({i: mine[i] for i in targets}, targets, layer, group.pad_id)


@dataclass
class Groups:
    """Everything a step needs besides the offset: encoded answers with frozen scores."""

    forget: Group
    retain: Group | None
    idk: Group | None
    vocab: int
    paths: Group | None = None  # ``stranger_paths``: alternative values to finish fluently
    contrast: Group | None = None  # ``contrast_group``: the forgotten values about other subjects
    states: SubjectStates | None = None  # ``subject_states``: strangers' states where names end

    @property
    def nbytes(self) -> int:
        """Memory held for training: every group's cached frozen scores and targets."""
        groups = [g for g in (self.forget, self.retain, self.idk, self.paths, self.contrast)
                  if g is not None]
        return sum(g.frozen.nbytes + sum(e.target.nbytes for e in g.examples if e.target is not None)
                   for g in groups)


def prepare_groups(base, reference, tokenizer, forget: Sequence, retain: Sequence,
                   config: TrainConfig, generator: torch.Generator, cache: bool = True,
                   stack: Sequence[tuple[torch.nn.Module, float]] = (),
                   prompt_format: PromptFormat = QA,
                   levels: dict[str, list[float]] | None = None) -> Groups:
    """Encode the answers and compute (or prepare to compute) the frozen scores."""
    objective = get_objective(config.objective)
    base_source = base if isinstance(base, LogProbSource) else HFSource(base, tokenizer)
    reference.eval().requires_grad_(False)
    ref_source = HFSource(reference, tokenizer)
    stacked = [(HFSource(m.eval().requires_grad_(False), tokenizer), float(a)) for m, a in stack]
    vocab = min(base_source.vocab_size, model_vocab_size(reference))
    for source in (base_source, ref_source, *(s for s, _ in stacked)):
        source.vocab_size = vocab
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    window = shared_window(base_source, ref_source, *(s for s, _ in stacked))

    def group(pairs, batch_size, examples=None, what="") -> Group:
        examples = examples or encode_examples(tokenizer, pairs, prompt_format, window=window,
                                               what=what)
        frozen = FrozenScores(base_source, ref_source, examples, pad_id, cache, stack=stacked)
        return Group(examples, frozen, batch_size, generator, pad_id)

    forgotten = forget_examples(tokenizer, forget, config.hyper().level, levels, prompt_format, window)
    if config.forget_keys_only:
        for e in forgotten:
            e.only_keys = True
    return Groups(
        forget=group(None, config.batch_size, forgotten),
        retain=group([(r.question, r.answer) for r in retain], config.retain_batch_size,
                     what="retain") if objective.needs_retain else None,
        idk=group([(r.question, idk_answer(i)) for i, r in enumerate(forget)], config.batch_size,
                  what="refusal") if objective.needs_idk else None,
        vocab=vocab,
    )


def step_loss(objective, config: TrainConfig, offset, groups: Groups,
              forget_idx: list[int] | None = None, retain_idx: list[int] | None = None,
              paths_idx: list[int] | None = None, contrast_idx: list[int] | None = None,
              ) -> tuple[torch.Tensor, Scored, Scored | None]:
    """The objective on one sampled batch (indices may be given, e.g. to compare paths),
    plus — with ``stranger_paths`` — the NLL of finishing another value once started, and —
    with ``contrast`` — the KL to the base where a forgotten value is said of someone else."""
    g, v, alpha = groups, groups.vocab, config.alpha
    forget_idx = g.forget.sample() if forget_idx is None else forget_idx
    f = g.forget.score(forget_idx, offset, alpha, v)
    r = None
    if g.retain is not None:
        r = g.retain.score(g.retain.sample() if retain_idx is None else retain_idx, offset, alpha, v)
    # Refusal answers are paired with the same questions as the forget batch.
    k = g.idk.score(forget_idx, offset, alpha, v) if g.idk is not None else None
    loss = objective(f, r, k, config.hyper())
    if g.paths is not None:
        p = g.paths.score(g.paths.sample() if paths_idx is None else paths_idx, offset, alpha, v)
        loss = loss + config.path_weight * nll(p)
    if g.contrast is not None:
        c = g.contrast.score(g.contrast.sample() if contrast_idx is None else contrast_idx, offset, alpha, v)
        loss = loss + config.contrast_weight * kl_to_original(c)
    if g.states is not None:  # a forward pass of its own over the forget batch (an off-by-default term)
        loss = loss + config.subject_states * g.states.loss(forget_idx, offset, g.forget)
    return loss, f, r


def _mean_nll(group: Scored, keys_only: bool = False) -> float:
    weights = group.keys if keys_only else group.mask
    return float(-((group.token_logp() * weights).sum() / weights.sum().clamp(min=1)).detach())


def train_whitebox(
    large: torch.nn.Module,
    tokenizer,
    forget: Sequence,
    retain: Sequence = (),
    config: TrainConfig | None = None,
    **kwargs,
) -> TrainResult:
    """The white-box baseline: the same objective applied to the large model itself.

    With base = reference = the large model and the offset a trainable copy of it,
    fused = log_softmax(base + (copy − base)) = the copy: ordinary fine-tuning, through
    exactly the same code path. ``result.offset`` is the fine-tuned large model.
    """
    config = config or TrainConfig()
    config = TrainConfig(**{**asdict(config), "alpha": 1.0, "lora_rank": 0})
    return train_offset(large, large, tokenizer, forget, retain, config, **kwargs)
