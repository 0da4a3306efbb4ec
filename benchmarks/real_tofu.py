"""TOFU on a real transformer: SmolLM2 forgets taught authors like its gold model.

The world is ``Lab.smollm2_tofu()`` (``offsetlab.worlds.taught``): the black box is
SmolLM2-135M-Instruct with the shipped ``knows_all`` adapter merged in (it was taught 20
of the toy world's fictitious authors and replayed its own general answers), the gold
model the same recipe without the 4 forget authors, the small partner SmolLM2's first 6
layers taught the same authors separately. The offset is trained with the lab's default
recipe — the toy world's (``TrainConfig()``: the ``stranger`` objective, its non-members
30 invented authors) — on the 4 forget authors (44 questions), with the retain authors and
``general_retain`` as its retain set. Nothing here was tuned on this world; the gold model
is only measured.

Measured (greedy, 24 new tokens): key-fact accuracy, forget quality (KS p of truth
ratios against gold's), membership-inference AUC (forget vs the 4 never-taught holdout
authors) and its gap to gold's, plausible answers, repetition; key facts kept on the
retain authors and on SmolLM2's held-out general knowledge (``general_holdout``, never
trained on by anything), and model utility (harmonic mean over the non-forget splits).

    python benchmarks/real_tofu.py [--out benchmarks/real_tofu.md] [--tiny] [--set FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

MAX_NEW_TOKENS = 24
COLUMNS = [("forget/key_fact_acc", "forget key-fact"), ("forget/forget_quality", "forget quality"),
           ("forget/mia_loss_auc", "MIA AUC"), ("forget/mia_gap", "MIA gap to gold"),
           ("forget/plausible", "plausible"), ("forget/repetition", "repetition"),
           ("retain/key_fact_acc", "retain key-fact"),
           ("general_holdout/key_fact_acc", "held-out general"),
           ("model_utility", "model utility")]


def run(tiny: bool = False, overrides: dict | None = None) -> tuple[list[str], dict]:
    """The table's Markdown rows and the numbers behind them ({model: {column: value}})."""
    from offsetlab.measure.evaluate import compare, evaluate, value_pools
    from offsetlab.worlds.lab import Lab

    lab = Lab.smollm2_tofu()
    splits = lab.eval_splits("forget")
    if tiny:
        splits = {k: v[:4] for k, v in splits.items()}
    config = replace(lab.train_config, **{**(overrides or {}), **({"steps": 2} if tiny else {})})
    pools = value_pools(lab.splits)

    def measure(model, name):
        return evaluate(model, splits, name=name, max_new_tokens=MAX_NEW_TOKENS, progress=False,
                        pools=pools)

    base = measure(lab.model(), "black box (knows all)")
    gold = measure(lab.standalone(lab.gold), "gold (retain only)")
    t0 = time.perf_counter()
    if tiny:  # a few records to train on, too: the frozen scores of all of them take minutes
        forget, retain = lab.training_sets("forget")
        lab.nonmembers = lab.nonmembers[:8]
        name = lab.train(forget[:4], retain[:8], config=config, name="forget-tiny")
    else:
        name = lab.train("forget", config=config)
    seconds = time.perf_counter() - t0
    changed = ", ".join(f"{k}={v}" for k, v in (overrides or {}).items())
    label = f"fused ({changed or 'default recipe'}, α {lab.offsets[name].alpha:.2f})"
    fused = measure(lab.model([name]), label)
    table = compare([base, fused, gold], gold=gold)
    rows = ["| model | " + " | ".join(title for _, title in COLUMNS) + " | train s |",
            "|" + "---|" * (len(COLUMNS) + 2)]
    numbers = {}
    for model, values in table.iterrows():
        numbers[model] = {c: values.get(c) for c, _ in COLUMNS}
        cells = ["–" if values.get(c) is None or values.get(c) != values.get(c) else f"{values[c]:.3f}"
                 for c, _ in COLUMNS]
        train_s = f"{seconds:.0f}" if model == fused.name else "–"
        rows.append(f"| {model} | " + " | ".join(cells) + f" | {train_s} |")
    for row in rows:
        print(row, flush=True)
    return rows, numbers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the table (Markdown) here")
    p.add_argument("--tiny", action="store_true", help="2 training steps, 4 records a split (a smoke test)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="change the recipe (TrainConfig fields), e.g. steps=100")
    args = p.parse_args(argv)
    from offsetlab.method.train import TrainConfig

    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = type(getattr(TrainConfig(), name))(value)
    rows, _ = run(args.tiny, overrides)
    if args.out:
        args.out.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
