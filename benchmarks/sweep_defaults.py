"""The small sweep behind TrainConfig's defaults (objective, β, learning rate, steps, retain set).

For each setting: train an offset on the toy world's forget10, then measure key-fact
accuracy (does the greedy answer still state the fact?) after 100 and 200 steps on
forget10, on every 4th retain90 record and on the world facts that no setting trains on
(``Lab.toy()``'s ``world_facts``), next to the base and the gold model (trained without
forget10). The retain set is retain90 alone, or retain90 plus the other half of the world
facts (``world_train``: what ``Lab.training_sets`` gives). The bar the defaults must meet:
forget10 at most 0.05 above gold, retain and world facts at least 0.9 × base. The default
setting is also run with three seeds. Writes a Markdown table.

    python benchmarks/sweep_defaults.py [--out benchmarks/sweep_defaults.md] [--only 0 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# (objective, beta, lr, steps, retain, seed); retain "+world" = Lab.training_sets
SETTINGS = [
    ("npo_gd", 0.1, 1e-3, 200, "retain90", 0),
    ("npo_gd", 0.05, 1e-3, 200, "retain90", 0),
    ("npo_gd", 0.03, 1e-3, 200, "retain90", 0),
    ("npo_gd", 0.1, 1e-3, 200, "+world", 0),
    ("npo_gd", 0.05, 1e-3, 200, "+world", 0),
    ("npo_gd", 0.03, 1e-3, 200, "+world", 0),
    ("npo_gd", 0.05, 2e-3, 200, "+world", 0),
    ("npo_kl", 0.05, 1e-3, 200, "+world", 0),
    ("simnpo", 0.05, 1e-3, 200, "+world", 0),
    ("gd", 0.05, 1e-3, 200, "+world", 0),
    ("npo_gd", 0.05, 1e-3, 200, "+world", 1),
    ("npo_gd", 0.05, 1e-3, 200, "+world", 2),
]
CHECKPOINTS = (100, 200)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    p.add_argument("--only", type=int, nargs="*", help="indices of SETTINGS to run")
    p.add_argument("--tiny", action="store_true",
                   help="the first setting, 2 steps, 4 records a probe (checks the script runs)")
    args = p.parse_args(argv)
    checkpoints, settings, size = CHECKPOINTS, SETTINGS, None
    if args.tiny:
        checkpoints, size = (1, 2), 4
        settings = [SETTINGS[0][:3] + (2,) + SETTINGS[0][4:]]

    import torch

    from offsetlab.frontends.explore import key_accuracy
    from offsetlab.method.fusion import OffsetModel
    from offsetlab.method.train import TrainConfig, train_offset
    from offsetlab.worlds.lab import Lab

    torch.set_num_threads(1)  # small models: one thread is faster than two on a busy box
    lab = Lab.toy()
    forget, with_world = lab.training_sets("forget10")
    retains = {"retain90": lab.splits["retain90"], "+world": with_world}
    probe = {"forget10": forget[:size], "retain90": lab.splits["retain90"][::4][:size],
             "world_facts": lab.splits["world_facts"][:size]}

    def accuracies(model) -> dict[str, float]:
        return {name: key_accuracy(model, records) for name, records in probe.items()}

    base, gold = accuracies(lab.model()), accuracies(lab.standalone(lab.gold))

    def meets(acc) -> bool:
        return (acc["forget10"] <= gold["forget10"] + 0.05
                and acc["retain90"] >= 0.9 * base["retain90"]
                and acc["world_facts"] >= 0.9 * base["world_facts"])

    lines = [
        "| objective | β | lr | retain set | seed | steps | forget10 | retain90 | world facts | train s | meets bar |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| base | | | | | | {base['forget10']:.3f} | {base['retain90']:.3f} | {base['world_facts']:.3f} | | |",
        f"| gold | | | | | | {gold['forget10']:.3f} | {gold['retain90']:.3f} | {gold['world_facts']:.3f} | | |",
    ]
    print("\n".join(lines), flush=True)
    chosen = [settings[i] for i in args.only] if args.only else settings
    for objective, beta, lr, steps, retain, seed in chosen:
        config = TrainConfig(objective=objective, beta=beta, lr=lr, steps=steps, seed=seed,
                             contrast=0)  # as measured, before the contrast term existed
        t0, eval_seconds = time.perf_counter(), 0.0

        def checkpoint(event, objective=objective, beta=beta, lr=lr, retain=retain, seed=seed,
                       alpha=config.alpha):
            nonlocal eval_seconds
            if event["step"] not in checkpoints:
                return
            started = time.perf_counter()
            train_seconds = event["seconds"] - eval_seconds
            offset = event["offset"]
            acc = accuracies(OffsetModel(lab.base, lab.reference, [(offset, alpha)], lab.tokenizer))
            offset.train()
            line = (f"| {objective} | {beta:g} | {lr:g} | {retain} | {seed} | {event['step']} | "
                    f"{acc['forget10']:.3f} | {acc['retain90']:.3f} | {acc['world_facts']:.3f} | "
                    f"{train_seconds:.0f} | {'yes' if meets(acc) else 'no'} |")
            print(line, flush=True)
            lines.append(line)
            eval_seconds += time.perf_counter() - started

        train_offset(lab.base, lab.reference, lab.tokenizer, forget, retains[retain], config,
                     callback=checkpoint, progress=False)
        print(f"  ({time.perf_counter() - t0:.0f} s with the evaluations)", flush=True)
    defaults = TrainConfig()
    Path(args.out).write_text(
        "# Sweep behind the default training settings\n\n"
        "Made by `python benchmarks/sweep_defaults.py` on the shipped toy world (2 CPU cores, one "
        "torch thread). Key-fact accuracy of the fused model (α = 1) after 100 and 200 steps; "
        "`train s` is training time only (seconds since the start, evaluations excluded). "
        "`+world` = retain90 plus `world_train`, the half of the world facts that is trained "
        "on; the world-facts column is always the other half, never trained on. Bar: forget10 "
        f"≤ gold + 0.05 = {gold['forget10'] + 0.05:.3f}, retain90 ≥ {0.9 * base['retain90']:.3f}, "
        f"world facts ≥ {0.9 * base['world_facts']:.3f}.\n\n"
        + "\n".join(lines) + "\n\n"
        f"Defaults chosen: {defaults.objective}, β {defaults.beta:g}, lr {defaults.lr:g}, "
        f"{defaults.steps} steps, retain set = `Lab.training_sets` (+world).\n")


if __name__ == "__main__":
    main()
