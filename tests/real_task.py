"""SmolLM2 and the capitals offset, built once per test session.

test_real.py and test_remote.py both need the real model and a trained offset; loading
and training take minutes on a CPU, so both come from these memoised functions (a
conftest fixture would do the same but would load SmolLM2 for every test session).
"""

from __future__ import annotations

import functools

from offsetlab.measure.metrics import key_fact_hit
from offsetlab.method.fusion import OffsetModel
from offsetlab.worlds.real import CAPITALS_CONFIG, load_smollm2, train_capitals_offset


@functools.cache
def smollm2():
    """(base, small, tokenizer)."""
    return load_smollm2()


@functools.cache
def capitals_offset():
    """The TrainResult of the shipped capitals task with the shipped settings."""
    base, small, tokenizer = smollm2()
    return train_capitals_offset(base, small, tokenizer, CAPITALS_CONFIG, progress=False)


def key_accuracy(model: OffsetModel, records, max_new_tokens: int = 16,
                 batch_size: int = 32) -> tuple[float, list[str]]:
    """Share of records whose greedy answer states the key fact, and the answers (asked
    in the model's own prompt format)."""
    answers: list[str] = []
    for i in range(0, len(records), batch_size):
        prompts = [model.prompt_format.prompt(r.question) for r in records[i : i + batch_size]]
        answers += model.generate(prompts, max_new_tokens=max_new_tokens)
    hits = [key_fact_hit(a, r.key) for r, a in zip(records, answers)]
    return sum(hits) / len(records), answers
