"""The method's acceptance bar on the shipped toy world, with the settings `make demo` uses.

The fused model must forget forget10 as well as the gold model that never saw it (key-fact
accuracy at most 0.05 above gold's) while keeping retain90 and the world facts that
training never sees (at least 0.9 × the base model's key-fact accuracy). Default
TrainConfig, default retain set (``Lab.training_sets``); about a minute and a half on 2 cores.
"""

import pytest

from offsetlab.frontends.explore import key_accuracy
from offsetlab.method.train import TrainConfig, train_offset
from offsetlab.offsets.artifact import Offset
from offsetlab.worlds.lab import Lab


@pytest.mark.slow
def test_default_offset_forgets_forget10_like_gold_and_keeps_the_rest():
    lab = Lab.toy()
    forget, retain = lab.training_sets("forget10")
    assert not {r.question for r in retain} & {r.question for r in lab.splits["world_facts"]}
    probe = {"forget10": forget, "retain90": lab.splits["retain90"][::4],
             "world_facts": lab.splits["world_facts"]}

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
