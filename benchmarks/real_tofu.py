"""TOFU on a real transformer: SmolLM2 forgets taught authors like its gold model.

The world is ``Lab.smollm2_tofu()`` (``offsetlab.worlds.taught``): the black box is
SmolLM2-135M-Instruct with the shipped ``knows_all`` adapter merged in (it was taught 20
of the toy world's fictitious authors and replayed its own general answers), the gold
model the same recipe without the 4 forget authors, the small partner SmolLM2's first 6
layers taught the same authors separately. The offset is trained with the lab's recipe
(``taught.OFFSET_CONFIG``: the toy world's ``stranger`` recipe, its non-members 30 invented
authors, on the small partner's top 2 layers) on the 4 forget authors (44 questions), with
the retain authors and ``general_retain`` as its retain set. The gold model is only
measured.

Measured (greedy, 24 new tokens): key-fact accuracy, forget quality (KS p of truth
ratios against gold's), membership-inference AUC (forget vs the 4 never-taught holdout
authors) and its gap to gold's, plausible answers, repetition; key facts kept on the
retain authors and on SmolLM2's held-out general knowledge (``general_holdout``, never
trained on by anything), and model utility (harmonic mean over the non-forget splits).

Recipes are chosen on another request (``--request tuning``: 4 of the retain authors to
forget, no gold model) and only then measured on the reported one (``--request forget``).

    python benchmarks/real_tofu.py [--out FILE] [--tiny] [--request forget|tuning]
        [--set FIELD=VALUE ...] [--variant FIELD=VALUE[,FIELD=VALUE] ...] [--alphas A ...]
        [--partner] [--no-offset] [--records FILE]

``--partner`` adds a row for the small partner alone (the reference every offset is a copy
of, read as a model of its own) and one for each trained copy alone: does the partner know
what the fused model still knows (the truth ratios of paraphrased against perturbed
answers), and how far did training move the copy? ``--no-offset`` trains nothing: the models as they are (a quick reading).
``--records FILE`` writes every row's per-record truth ratios and key facts (JSON lines), to
compare models record by record.
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


TUNING_SEED = 11  # draws the retain authors the tuning request forgets


def tuning_request(lab, seed: int = TUNING_SEED):
    """The request recipes are chosen on, never the one reported: ``FORGET_AUTHORS`` of the
    retain authors (drawn with ``seed``) to forget; the other retain authors to keep. The
    gold model knows these authors, so this request has no gold: its membership gap is
    read against 0.5 (the forget authors as unfamiliar as the never-taught holdout ones)."""
    import random

    from offsetlab.worlds.taught import FORGET_AUTHORS

    retain = lab.split("retain")
    authors = sorted({r.subject for r in retain})
    chosen = set(random.Random(seed).sample(authors, FORGET_AUTHORS))
    return ([r for r in retain if r.subject in chosen], [r for r in retain if r.subject not in chosen])


def run(tiny: bool = False, overrides: dict | None = None, request: str = "forget",
        variants: list[dict] | None = None, alphas: list[float] = (),
        partner: bool = False, records: list | None = None) -> tuple[list[str], dict]:
    """The table's Markdown rows and the numbers behind them ({model: {column: value}}):
    the black box, with ``partner`` the small partner alone, one fused row per variant
    (TrainConfig overrides; default: one, ``overrides``; ``[]``: none) and per extra strength
    in ``alphas`` (the same offset, used at that α), and, on the ``forget`` request, the gold
    model. Each report's per-record rows are appended to ``records`` when it is given."""
    import numpy as np

    from offsetlab.measure import metrics as M
    from offsetlab.measure.evaluate import compare, evaluate, value_pools
    from offsetlab.worlds.lab import Lab

    lab = Lab.smollm2_tofu()
    if request == "tuning":
        forget, kept = tuning_request(lab)
        splits = {"forget": forget, "retain": kept, "holdout": lab.split("holdout"),
                  "general_holdout": lab.split("general_holdout")}
        retain = kept + lab.split("general_retain")
    elif request == "forget":
        splits = lab.eval_splits("forget")
        forget, retain = lab.training_sets("forget")
    else:
        raise ValueError(f"Unknown request {request!r}: forget or tuning.")
    tokens = MAX_NEW_TOKENS
    if tiny:  # a few records to measure and train on: the frozen scores of all take minutes
        splits = {k: v[:2] for k, v in splits.items()}
        forget, retain, tokens = forget[:2], retain[:4], 8
        lab.nonmembers = lab.nonmembers[:4]
    pools = value_pools(lab.splits)

    def measure(model, name):
        return evaluate(model, splits, name=name, max_new_tokens=tokens, progress=False, pools=pools)

    columns = [(c, "MIA gap to 0.5" if c == "forget/mia_gap" and request == "tuning" else title)
               for c, title in COLUMNS if request == "forget" or c != "forget/forget_quality"]
    columns.append(("forget/never_seen", "truth ratios vs never-taught (KS p)"))
    # Which way they differ: R = P(perturbed) / P(paraphrased), < 1 where the fact is preferred
    columns += [("forget/median_tr", "median truth ratio, forget"),
                ("holdout/median_tr", "median truth ratio, never-taught")]
    rows = ["| model | " + " | ".join(title for _, title in columns) + " | train s |",
            "|" + "---|" * (len(columns) + 2)]
    numbers: dict = {}

    def add_rows(reports, gold, seconds=None):
        if records is not None:
            records.extend({"model": r.name, **row} for r in reports for row in r.rows)
        table = compare(reports, gold=gold)
        # Label-free: do the forget authors' truth ratios spread like those of the authors
        # nobody was taught? (gold's forget quality asks the same of gold's forget set)
        table["forget/never_seen"] = [M.forget_quality(r.truth_ratios("forget"), r.truth_ratios("holdout"))
                                      for r in reports]
        for split in ("forget", "holdout"):
            table[f"{split}/median_tr"] = [float(np.median(r.truth_ratios(split))) if r.truth_ratios(split)
                                           else float("nan") for r in reports]
        for model, values in table.iterrows():
            numbers[model] = {c: values.get(c) for c, _ in columns}
            cells = ["–" if values.get(c) is None or values.get(c) != values.get(c) else f"{values[c]:.3f}"
                     for c, _ in columns]
            rows.append(f"| {model} | " + " | ".join(cells) + f" | {seconds if seconds else '–'} |")
            print(rows[-1], flush=True)

    for row in rows:
        print(row, flush=True)
    base = measure(lab.model(), "black box (knows all)")
    gold = measure(lab.standalone(lab.gold), "gold (retain only)") if request == "forget" else None
    add_rows([base], gold)
    if partner:
        add_rows([measure(lab.standalone(lab.reference), "small partner alone")], gold)
    for i, changes in enumerate(variants if variants is not None else [overrides or {}]):
        config = replace(lab.train_config, **{**changes, **({"steps": 2} if tiny else {})})
        t0 = time.perf_counter()
        name = lab.train(forget, retain, config=config, name=f"{request}-{i}")
        seconds = time.perf_counter() - t0
        changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "default recipe"
        for alpha in [lab.offsets[name].alpha, *alphas]:
            add_rows([measure(lab.model([(name, alpha)]), f"fused ({changed}, α {alpha:.2f})")], gold,
                     f"{seconds:.0f}")
        if partner:  # the trained copy read alone, beside the partner it was copied from
            add_rows([measure(lab.standalone(lab.offsets[name].model), f"trained copy alone ({changed})")],
                     gold, f"{seconds:.0f}")
        del lab.offsets[name]  # one trained copy in memory at a time
    if gold is not None:
        add_rows([gold], gold)
    return rows, numbers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the table (Markdown) here")
    p.add_argument("--tiny", action="store_true", help="2 training steps, 2 records a split, 8 new tokens (a smoke test)")
    p.add_argument("--request", choices=("forget", "tuning"), default="forget",
                   help="forget: the reported request, measured against gold; tuning: 4 retain "
                        "authors, the request recipes are chosen on")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="change the recipe (TrainConfig fields), e.g. steps=100")
    p.add_argument("--variant", action="append", default=[], metavar="FIELD=VALUE[,FIELD=VALUE]",
                   help="one fused row per --variant (each on top of --set)")
    p.add_argument("--alphas", nargs="*", type=float, default=[],
                   help="also measure each trained offset at these strengths")
    p.add_argument("--records", type=Path, help="write every row's per-record results here (JSON lines)")
    p.add_argument("--no-offset", action="store_true",
                   help="train nothing: only the black box (with --partner the partner) and gold")
    p.add_argument("--partner", action="store_true",
                   help="also measure the small partner alone and each trained copy alone (does "
                        "the partner know what the fused model still knows, and how far did "
                        "training move it?)")
    args = p.parse_args(argv)
    from offsetlab.method.train import config_overrides

    common = config_overrides(args.set)
    variants = [{**common, **config_overrides(v.split(","))} for v in args.variant] or [common]
    if args.no_offset:
        variants = []
    per_record: list | None = [] if args.records else None
    rows, _ = run(args.tiny, request=args.request, variants=variants, alphas=args.alphas,
                  partner=args.partner, records=per_record)
    if args.records:
        import json

        args.records.write_text("".join(json.dumps(r, ensure_ascii=False, default=float) + "\n"
                                        for r in per_record))
    if args.out:
        args.out.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
