"""The method's acceptance bar on the shipped toy world, with the settings `make demo` uses.

The fused model must forget forget10 as well as the gold model that never saw it (key-fact
accuracy at most 0.05 above gold's) while keeping retain90 and the world facts (at least
0.9 × the base model's key-fact accuracy).

Run with `make acceptance` (about 5 minutes on 2 idle cores); `make test` leaves it out
until the defaults are confirmed to meet the bar (see benchmarks/sweep_defaults.md).
"""

import pytest

from offsetlab.explore import key_accuracy
from offsetlab.lab import Lab
from offsetlab.offsets import Offset
from offsetlab.train import TrainConfig, train_offset


@pytest.mark.acceptance
def test_default_offset_forgets_forget10_like_gold_and_keeps_the_rest():
    lab = Lab.toy()
    forget, retain = lab.splits["forget10"], lab.splits["retain90"]
    probe = {"forget10": forget, "retain90": retain[::4], "world_facts": lab.splits["world_facts"]}

    def accuracy(model):
        return {name: key_accuracy(model, records) for name, records in probe.items()}

    result = train_offset(lab.base, lab.reference, lab.tokenizer, forget, retain, TrainConfig(),
                          progress=False)
    assert result.stopped is None
    lab.offsets["forget10"] = Offset(result.offset)
    base, gold = accuracy(lab.model()), accuracy(lab.standalone(lab.gold))
    fused = accuracy(lab.model([("forget10", 1.0)]))
    print(f"\nkey-fact accuracy  base {base}\n                   gold {gold}\n                   fused {fused}"
          f"\ntrained in {result.seconds:.0f} s")
    assert fused["forget10"] <= gold["forget10"] + 0.05
    assert fused["retain90"] >= 0.9 * base["retain90"]
    assert fused["world_facts"] >= 0.9 * base["world_facts"]
