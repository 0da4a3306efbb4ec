"""The small sweep behind TrainConfig's defaults (objective, learning rate, steps, α).

For each setting: train an offset on the toy world's forget10 against retain90, then
measure key-fact accuracy (does the greedy answer still state the fact?) on forget10,
on 200 retain90 records and on the world facts, next to the base and the gold model
(trained without forget10). The bar the defaults must meet: forget10 at most 0.05 above
gold, retain and world facts at least 0.9 × base. Writes a Markdown table.

    python benchmarks/sweep_defaults.py [--out benchmarks/sweep_defaults.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SETTINGS = [  # (objective, lr, steps, alpha)
    ("npo_gd", 1e-3, 200, 1.0),
    ("npo_gd", 2e-3, 200, 1.0),
    ("npo_gd", 1e-3, 300, 1.0),
    ("npo_gd", 2e-3, 300, 1.0),
    ("gd", 1e-3, 200, 1.0),
    ("simnpo", 2e-3, 200, 1.0),
]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    p.add_argument("--only", type=int, nargs="*", help="indices of SETTINGS to run")
    args = p.parse_args(argv)

    from offsetlab.explore import key_accuracy
    from offsetlab.lab import Lab
    from offsetlab.offsets import Offset
    from offsetlab.train import TrainConfig, train_offset

    lab = Lab.toy()
    forget, retain = lab.splits["forget10"], lab.splits["retain90"]
    probe = {"forget10": forget, "retain90": retain[:200], "world_facts": lab.splits["world_facts"]}

    def accuracies(model) -> dict[str, float]:
        return {name: key_accuracy(model, records) for name, records in probe.items()}

    base, gold = accuracies(lab.model()), accuracies(lab.standalone(lab.gold))
    lines = [
        "| objective | lr | steps | α | forget10 | retain90 | world facts | train s | meets bar |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| base | | | | {base['forget10']:.3f} | {base['retain90']:.3f} | {base['world_facts']:.3f} | | |",
        f"| gold | | | | {gold['forget10']:.3f} | {gold['retain90']:.3f} | {gold['world_facts']:.3f} | | |",
    ]
    print("\n".join(lines), flush=True)
    chosen = [SETTINGS[i] for i in args.only] if args.only else SETTINGS
    for objective, lr, steps, alpha in chosen:
        config = TrainConfig(objective=objective, lr=lr, steps=steps, alpha=alpha)
        t0 = time.perf_counter()
        result = train_offset(lab.base, lab.reference, lab.tokenizer, forget, retain, config, progress=False)
        seconds = time.perf_counter() - t0
        lab.offsets["sweep"] = Offset(result.offset)
        acc = accuracies(lab.model([("sweep", alpha)]))
        ok = (acc["forget10"] <= gold["forget10"] + 0.05
              and acc["retain90"] >= 0.9 * base["retain90"]
              and acc["world_facts"] >= 0.9 * base["world_facts"])
        line = (f"| {objective} | {lr:g} | {steps} | {alpha:g} | {acc['forget10']:.3f} | "
                f"{acc['retain90']:.3f} | {acc['world_facts']:.3f} | {seconds:.0f} | {'yes' if ok else 'no'} |")
        print(line, flush=True)
        lines.append(line)
    Path(args.out).write_text(
        "# Sweep behind the default training settings\n\n"
        "Made by `python benchmarks/sweep_defaults.py` on the shipped toy world (2 CPU cores; "
        "train seconds are wall time on a shared machine, for scale only).\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
