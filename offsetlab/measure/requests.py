"""Forget requests side by side: does each one stay forgotten when others are active?

Every forget request gets its own offset, and active offsets add their deltas in fusion,
so one request's offset can disturb another's: bring forgotten facts back, or erase
facts that were meant to stay. ``evaluate_requests`` scores one fused model on every
request's forget set and on the shared splits (retain, world facts) in one pass;
``interference_table`` lines up several such runs — offsets added one by one, one
removed — so that interference shows as numbers moving in the wrong column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import pandas as pd

from .evaluate import evaluate

REQUEST_METRICS = ("key_fact_acc", "rouge_l", "answer_prob")


def evaluate_requests(
    lab,
    active: Sequence[tuple[str, float]],
    request_splits: Mapping[str, Sequence],
    shared_splits: Mapping[str, Sequence],
    max_records: int | None = None,
    max_new_tokens: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per request (its forget set) and per shared split, for ``lab.model(active)``.

    Columns: ``kind`` ("request" or "shared"), ``n`` (records scored) and the metrics of
    ``REQUEST_METRICS``. Requests need not be active: an inactive request's row shows
    what the other offsets do to it.
    """
    clash = sorted(set(request_splits) & set(shared_splits))
    if clash:
        raise ValueError(f"{', '.join(clash)} named both a request and a shared split; rename one.")
    # Without perturbed answers evaluate() skips the truth ratio, which is not reported here
    # and would cost four more scoring passes per record.
    splits = {name: [replace(r, perturbed_answers=[]) for r in records]
              for name, records in {**request_splits, **shared_splits}.items()}
    label = " + ".join(f"{alpha:g}·{name}" for name, alpha in active) or "base"
    report = evaluate(lab.model(active), splits, name=label, max_records=max_records,
                      max_new_tokens=max_new_tokens, progress=progress)
    table = {name: {"kind": "request" if name in request_splits else "shared",
                    "n": int(values["n"]), **{m: values[m] for m in REQUEST_METRICS}}
             for name, values in report.metrics.items()}
    return pd.DataFrame.from_dict(table, orient="index")


def interference_table(tables: Mapping[str, pd.DataFrame], metric: str = "key_fact_acc") -> pd.DataFrame:
    """One row per run (e.g. "+A", "+A+B", "−B"), one column per request or shared split."""
    return pd.DataFrame({run: table[metric] for run, table in tables.items()}).T
