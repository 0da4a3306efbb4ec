"""SmolLM2 and the capitals offset, built once per test session.

test_real.py and test_remote.py both need the real model and a trained offset; loading
and training take minutes on a CPU, so both come from these memoised functions (a
conftest fixture would do the same but would load SmolLM2 for every test session).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

from offsetlab.data import format_prompt, key_in_text, set_prompt_format
from offsetlab.fusion import OffsetModel
from offsetlab.real import CAPITALS_CONFIG, PROMPT_FORMAT, load_smollm2, train_capitals_offset


@contextmanager
def chatml():
    """SmolLM2's prompt format inside, the previous one restored after (other test
    modules use the toy world's format in the same process)."""
    previous = set_prompt_format(PROMPT_FORMAT)
    try:
        yield
    finally:
        set_prompt_format(previous)


@functools.cache
def smollm2():
    """(base, small, tokenizer); the prompt format is left alone (see ``chatml``)."""
    return load_smollm2(prompt_format=None)


@functools.cache
def capitals_offset():
    """The TrainResult of the shipped capitals task with the shipped settings."""
    base, small, tokenizer = smollm2()
    with chatml():
        return train_capitals_offset(base, small, tokenizer, CAPITALS_CONFIG, progress=False)


def key_accuracy(model: OffsetModel, records, max_new_tokens: int = 16,
                 batch_size: int = 32) -> tuple[float, list[str]]:
    """Share of records whose greedy answer states the key fact, and the answers."""
    answers: list[str] = []
    for i in range(0, len(records), batch_size):
        prompts = [format_prompt(r.question) for r in records[i : i + batch_size]]
        answers += model.generate(prompts, max_new_tokens=max_new_tokens)
    hits = [key_in_text(r.key, a) for r, a in zip(records, answers)]
    return sum(hits) / len(records), answers
