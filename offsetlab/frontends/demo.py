"""``offsetlab demo``: the main job — make the toy model forget ten authors, and show it.

1. load the shipped toy world: a "large" model that memorised 100 fictitious authors,
   its small partner, and the gold model trained without the forget set;
2. train an offset on ``forget10`` with the default objective (the large model is never
   touched);
3. evaluate base, fused and gold side by side and print a few answers;
4. save the offset and an HTML report.
"""

from __future__ import annotations

import time

# Records evaluated per split: all of forget10 (110), a fixed sample of the others.
FULL_RECORDS, FAST_STEPS, FAST_RECORDS = 200, 40, 40


def run_demo(fast: bool = False, out: str = "offsets/demo", html: str | None = "reports/demo.html",
             whitebox: bool = False, forget_split: str = "forget10") -> int:
    from ..measure.evaluate import compare, evaluate
    from ..method.train import TrainConfig, train_whitebox
    from ..worlds.lab import Lab
    from .console import print_table

    t0 = time.perf_counter()
    lab = Lab.toy()
    forget, retain = lab.training_sets(forget_split)
    print(f"Toy world: {len(forget)} records to forget ({forget_split}), {len(retain)} to keep "
          f"({lab.retain_for(forget_split)} + {len(lab.splits['world_train'])} world facts), and "
          f"{len(lab.splits['world_facts'])} world facts that training never sees.")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"Base model {n(lab.base) / 1e6:.2f} M parameters (a black box: only its scores are read); "
          f"offset = a trainable copy of the {n(lab.reference) / 1e6:.2f} M small model.\n")

    config = TrainConfig(steps=FAST_STEPS) if fast else TrainConfig()
    print(f"Training the offset: objective {config.objective}, {config.steps} steps, lr {config.lr:g}, "
          f"alpha {config.alpha:g} ...")
    name = lab.train(forget_split, config=config, name="demo", progress=True)
    offset = lab.offsets[name]
    stopped = offset.meta.get("stopped")
    print(f"  done in {offset.meta['train_seconds']:.0f} s" + (f" — stopped early: {stopped}" if stopped else ""))

    models = {"base": lab.model(), "fused": lab.model([name]), "gold": lab.standalone(lab.gold)}
    if whitebox:
        print("Fine-tuning the large model directly (the white-box baseline) ...")
        wb = train_whitebox(lab.base, lab.tokenizer, forget, retain, config)
        models["whitebox"] = lab.standalone(wb.offset)

    splits = lab.eval_splits(forget_split)
    max_records = FAST_RECORDS if fast else FULL_RECORDS
    print("Evaluating " + ", ".join(models) + " ...")
    reports = {name: evaluate(m, splits, name=name, max_records=max_records) for name, m in models.items()}
    table = compare(list(reports.values()), gold=reports["gold"])
    print("\nBefore (base) and after (fused), next to the gold model that never saw the forget set:\n")
    print_table(table.T)
    print(f"\nThe gold model is used only to measure: forget quality (KS test of truth ratios against "
          f"gold's) and mia_gap (|MIA AUC − gold's AUC|, forget vs holdout). Training read the "
          f"never-seen level from {len({r.subject for r in lab.nonmembers})} invented authors (not the holdout split).")

    print("\nA few answers, base → fused:")
    for split in (forget_split, lab.retain_for(forget_split)):
        base_rows = [r for r in reports["base"].rows if r["split"] == split][:3]
        fused_rows = [r for r in reports["fused"].rows if r["split"] == split][:3]
        for b, f in zip(base_rows, fused_rows):
            print(f"  [{split}] {lab.prompt_format.prompt(b['question']).splitlines()[0]}")
            print(f"      base : {b['generated']}")
            print(f"      fused: {f['generated']}   (key '{b['key']}' {'kept' if f['key_hit'] else 'gone'})")

    offset.meta["metrics"] = {s: reports["fused"].metrics[s] for s in splits}
    offset.save(out, overwrite=True)
    print(f"\nSaved the offset to {out}/ (weights + metadata; no forget-set text).")
    if html:
        from .report import write_html

        write_html(html, list(reports.values()), gold=reports["gold"], forget_split=forget_split)
        print(f"Wrote the HTML report to {html}")
    print(f"Total {time.perf_counter() - t0:.0f} s. Next: `make lab` for the notebooks, `make panel` for the panel.")
    return 0
