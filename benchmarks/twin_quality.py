"""Does a shared-trunk offset forget as well as a full copy? Side by side, on both worlds.

A shared-trunk twin (``method/twin.py``) needs an offset that trained only its top layers
(``TrainConfig.top_layers``): fewer weights move, so the question is what forgetting
costs in quality, not only what it saves in time.

* **Toy forget10**, the default recipe, with every layer trained (the shipped way), the
  top 1 of the small model's 2 layers (at the default lr, and at lr 3e-3 for 400 steps,
  chosen for it on tuning requests), and both layers with embeddings and head frozen
  (``top_layers=2``: no layer shared, the head is). Measured like ``offsetlab eval``:
  forget quality and MIA against the gold model, plausible answers, retain, world facts.
* **SmolLM2 capitals** (6-layer twin), the shipped recipe (``CAPITALS_CONFIG``, a full
  copy) against the top 2 layers at the shipped learning rate and at the one chosen for
  them on another request (four *retain* capitals forgotten, the shipped forget capitals
  as its held-out set: ``--tune``), never on the shipped request. Key-fact accuracy of
  greedy answers, as ``tests/worlds/test_real.py`` measures it.

* **SmolLM2 capitals over training seeds** (``--seeds 0 1 2``): four capitals are too few
  to tell two recipes apart from one run (the same full copy forgot all four on one thread
  and three of four on two), so the full copy and the twin at its setting are trained with
  each seed and read with and without the world's dead zone; the table ends with the means.

    python benchmarks/twin_quality.py [--out benchmarks/twin_quality.md] [--tune] [--tune-grid]
        [--seeds 0 1 2 [--request R] [--set FIELD=VALUE ...] [--twin-only] ...] [--tiny]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name → the default recipe's changes; the top layer's lr and steps were chosen on the
# tuning requests of sweep_calibrated.py (twin_quality_tuning.md, "The toy world's twin")
TOY = {"every layer (shipped)": {"top_layers": 0}, "top 1 of 2 layers": {"top_layers": 1},
       "top 1 of 2, lr 3e-3, 400 steps": {"top_layers": 1, "lr": 3e-3, "steps": 400},
       "both layers, head frozen": {"top_layers": 2}}
# (top_layers, lr); lr 1e-3 for top 2 was chosen with --tune (see the module docstring)
CAPITALS = {"full copy (shipped)": (0, None), "top 2 of 6, shipped lr": (2, None),
            "top 2 of 6, lr 1e-3": (2, 1e-3)}
TUNE_LRS = (1e-4, 3e-4, 1e-3)
GRID_LRS, GRID_ALPHAS = (3e-4, 1e-3, 3e-3), (0.75, 1.0)  # --tune-grid


def key_accuracy(model, records) -> float:
    from offsetlab.frontends.explore import key_accuracy as accuracy

    return accuracy(model, records, max_new_tokens=16)


def toy_rows(tiny: bool) -> list[str]:
    from offsetlab.measure.evaluate import compare, evaluate, value_pools
    from offsetlab.worlds.lab import Lab

    lab = Lab.toy(shipped=False)
    pools = value_pools(lab.splits)  # a plausible answer: any value the world uses, as `eval` judges
    size = 6 if tiny else None
    splits = {name: lab.split(name)[:size] for name in ("forget10", "retain90", "world_facts", "holdout")}
    if not tiny:
        splits["retain90"] = lab.split("retain90")[::8]
    gold = evaluate(lab.standalone(lab.gold), splits, name="gold", progress=False, max_new_tokens=24,
                    pools=pools)
    rows = ["| toy forget10 | trained | forget quality | MIA AUC (gold) | plausible | key-fact | "
            "retain | world facts | shared layers | train s |", "|" + "---|" * 10]
    for name, changes in TOY.items():
        config = replace(lab.train_config, **{**changes, **({"steps": 2} if tiny else {})})
        t0 = time.perf_counter()
        trained = lab.train("forget10", config=config, name=name)
        seconds = time.perf_counter() - t0
        model = lab.model([trained])
        report = evaluate(model, splits, name=name, progress=False, max_new_tokens=24, pools=pools)
        v = compare([report], gold).iloc[0]
        depth = model.twin.depth if model.twin is not None else "– (two models)"
        trained_as = ", ".join(f"{k}={value:g}" for k, value in changes.items())
        rows.append(f"| {name} | {trained_as} | {v['forget10/forget_quality']:.3f} | "
                    f"{v['forget10/mia_loss_auc']:.3f} ({gold.metrics['forget10']['mia_loss_auc']:.3f}) | "
                    f"{v['forget10/plausible']:.2f} | {v['forget10/key_fact_acc']:.3f} | "
                    f"{v['retain90/key_fact_acc']:.3f} | {v['world_facts/key_fact_acc']:.3f} | {depth} | "
                    f"{seconds:.0f} |")
        print(rows[-1], flush=True)
    return rows


def capitals_sets(tune: bool):
    from offsetlab.worlds.real import load_capitals

    s = load_capitals()
    if not tune:
        return s["forget"], s["retain"], {
            "forget": s["forget"], "paraphrases": s["forget_paraphrased"], "retain": s["retain"],
            "held-out capitals": [r for r in s["holdout"] if r.subject != "general"],
            "held-out other facts": [r for r in s["holdout"] if r.subject == "general"]}
    # The tuning request: four of the retain capitals; the shipped forget capitals are
    # capitals it never trains on, i.e. its held-out set.
    _, forget, retain, sets = next(grid_requests())
    return forget, retain, sets


def grid_requests(famous: bool = False):
    """Two tuning requests of four retain capitals each (the shipped forget capitals held
    out): ``--tune``'s (the last four) and four drawn with seed 1 from the others. With
    ``famous``, a third: the four most famous of them (Italy, Germany, Spain, the United
    Kingdom), as famous as the shipped four (``--request "famous four"``)."""
    import random

    from offsetlab.worlds.real import load_capitals

    s = load_capitals()
    capitals = [r for r in s["retain"] if r.subject != "general"]
    first = capitals[-4:]
    second = random.Random(1).sample(capitals[:-4], 4)
    requests = [("last four", first), ("seed 1", second)]
    if famous:
        names = ("Italy", "Germany", "Spain", "The United Kingdom")
        requests.append(("famous four", [r for r in capitals if r.subject in names]))
    for name, forget in requests:
        retain = [r for r in s["retain"] if r not in forget]
        yield name, forget, retain, {"forget": forget, "retain": retain, "held-out capitals": s["forget"]}


def capitals_offset(models, forget, retain, config, callback=None):
    """An offset of SmolLM2's partner trained on a capitals request, and its training seconds."""
    from offsetlab.method.train import train_offset
    from offsetlab.worlds.real import PROMPT_FORMAT

    base, small, tokenizer = models
    t0 = time.perf_counter()
    result = train_offset(base, small, tokenizer, forget, retain, config, callback=callback,
                          prompt_format=PROMPT_FORMAT, progress=False)
    return result, time.perf_counter() - t0


def fused_capitals(models, offset, alpha: float, dead_zone: float = 0.0):
    from offsetlab.method.fusion import OffsetModel
    from offsetlab.worlds.real import PROMPT_FORMAT

    base, small, tokenizer = models
    return OffsetModel(base, small, [(offset, alpha)], tokenizer=tokenizer,
                       prompt_format=PROMPT_FORMAT, dead_zone=dead_zone)


def capitals_grid_rows(tiny: bool) -> list[str]:
    """The top-2 twin on both tuning requests at every lr of GRID_LRS and α of GRID_ALPHAS
    (``--tune-grid``; the rule it answers is in twin_quality_tuning.md)."""
    from offsetlab.worlds.real import CAPITALS_CONFIG, load_smollm2

    models = load_smollm2()
    rows = ["| request | lr | α | forget | retain | held-out capitals | train s |", "|" + "---|" * 7]
    for request, forget, retain, sets in grid_requests():
        if tiny:
            sets = {k: v[:2] for k, v in sets.items()}
        for lr in GRID_LRS[:1] if tiny else GRID_LRS:
            config = replace(CAPITALS_CONFIG, top_layers=2, lr=lr, **({"steps": 2} if tiny else {}))
            result, seconds = capitals_offset(models, forget, retain, config)
            for alpha in GRID_ALPHAS:
                model = fused_capitals(models, result.offset, alpha)
                cells = [f"{key_accuracy(model, records):.3f}" for records in sets.values()]
                rows.append(f"| {request} | {lr:g} | {alpha:g} | " + " | ".join(cells) + f" | {seconds:.0f} |")
                print(rows[-1], flush=True)
        if tiny:
            break
    return rows


def capitals_rows(tune: bool, tiny: bool) -> list[str]:
    from offsetlab.worlds.real import CAPITALS_ALPHA, CAPITALS_CONFIG, load_smollm2

    models = load_smollm2()
    forget, retain, sets = capitals_sets(tune)
    if tiny:
        sets = {k: v[:2] for k, v in sets.items()}
    runs = ({f"top 2 of 6, lr {lr:g}": (2, lr) for lr in TUNE_LRS} | {"full copy (shipped)": (0, None)}
            if tune else CAPITALS)
    rows = [f"| capitals{' (tuning request)' if tune else ''} | " + " | ".join(sets) + " | train s |",
            "|" + "---|" * (len(sets) + 2)]
    for name, (top, lr) in runs.items():
        config = replace(CAPITALS_CONFIG, top_layers=top, lr=lr or CAPITALS_CONFIG.lr,
                         **({"steps": 2} if tiny else {}))
        result, seconds = capitals_offset(models, forget, retain, config)
        model = fused_capitals(models, result.offset, CAPITALS_ALPHA)
        cells = [f"{key_accuracy(model, records):.3f}" for records in sets.values()]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
        print(rows[-1], flush=True)
    return rows


def paraphrased(records):
    """Each capital question asked the three other ways the shipped paraphrases ask it
    (``capitals_forget_paraphrased``), for the tuning requests, which have none."""
    from dataclasses import replace as copy_with

    ways = ("Which city is the capital of {}?", "Name the capital city of {}.", "What city is {}'s capital?")
    return [copy_with(r, question=way.format(r.subject)) for r in records for way in ways]


def capitals_seed_rows(seeds, tiny: bool, until: int = 0, request: str = "shipped",
                       own_paths: bool = False, depths=None, overrides: dict | None = None,
                       twin_only: bool = False) -> list[str]:
    """The full copy and the twin (top 2 of 6, lr 1e-3) on the shipped capitals, trained
    with each of ``seeds``, read at α 0.75 without and with the world's dead zone; then
    the mean of each over the seeds (``--seeds``).

    ``until`` > 0 (``--until-forgotten``): trained with ``until_forgotten=until``, checked
    at the world's fusion (α 0.75, dead zone 0.3); the offset as it stood after the planned
    steps is read beside it ("planned" rows), so one run gives both. ``request`` names a
    tuning request of ``grid_requests`` instead of the shipped capitals
    (``--request``). ``own_paths`` (``--own-paths``): with ``until``, each check adds the
    fused model's own stating answers to the forget set (``TrainConfig.own_paths``).
    ``depths`` (``--depths``): the full copy and twins training the top d of the 6 layers
    (lr 1e-3) for each d, instead of the top-2 twin alone. A tuning request is also asked
    its capitals the three other ways the shipped paraphrases ask them. ``overrides``
    (``--set FIELD=VALUE``): training options changed for every row (full copy and twins).
    ``twin_only`` (``--twin-only``): no full-copy rows."""
    import copy

    from offsetlab.worlds.real import (
        CAPITALS_ALPHA,
        CAPITALS_CONFIG,
        CAPITALS_DEAD_ZONE,
        load_smollm2,
    )

    models = load_smollm2()
    if request == "shipped":
        forget, retain, sets = capitals_sets(False)
    else:
        forget, retain, sets = next((f, r, s) for name, f, r, s in grid_requests(famous=True)
                                    if name == request)
        sets = {"forget": forget, "paraphrases": paraphrased(forget), **sets}
    if tiny:
        sets = {k: v[:2] for k, v in sets.items()}
    runs = {name: CAPITALS[name] for name in ("full copy (shipped)", "top 2 of 6, lr 1e-3")}
    if depths:
        runs = {"full copy (shipped)": CAPITALS["full copy (shipped)"]} | {
            f"top {d} of 6, lr 1e-3": (d, 1e-3) for d in depths}
    if twin_only:
        runs.pop("full copy (shipped)")
    zones = (0.0, CAPITALS_DEAD_ZONE)
    label = ", ".join([request, *(f"{k}={v}" for k, v in (overrides or {}).items())])
    rows = [f"| capitals ({label}) | seed | dead zone | " + " | ".join(sets) + " | steps | train s |",
            "|" + "---|" * (len(sets) + 5)]
    got: dict[tuple[str, float], list[list[float]]] = {}
    for seed in seeds:
        for name, (top, lr) in runs.items():
            config = replace(CAPITALS_CONFIG, top_layers=top, lr=lr or CAPITALS_CONFIG.lr, seed=seed,
                             until_forgotten=until, check_dead_zone=CAPITALS_DEAD_ZONE,
                             **({"own_paths": True} if own_paths else {}),
                             **(overrides or {}), **({"steps": 2} if tiny else {}))
            planned = {}

            def keep_planned(event, config=config, planned=planned):
                if event["step"] == config.steps:
                    planned["offset"] = copy.deepcopy(event["offset"]).eval()

            result, seconds = capitals_offset(models, forget, retain, config,
                                              callback=keep_planned if until else None)
            trained = [(name, result.offset, len(result.history))]
            if until:
                trained = [(f"{name}, planned", planned["offset"], config.steps),
                           (f"{name}, until forgotten", result.offset, len(result.history))]
            for label, offset, steps in trained:
                for zone in zones:
                    model = fused_capitals(models, offset, CAPITALS_ALPHA, zone)
                    values = [key_accuracy(model, records) for records in sets.values()]
                    got.setdefault((label, zone), []).append(values)
                    rows.append(f"| {label} | {seed} | {zone:g} | " + " | ".join(f"{v:.3f}" for v in values)
                                + f" | {steps} | {seconds:.0f} |")
                    print(rows[-1], flush=True)
    for (name, zone), runs_values in got.items():
        means = [sum(column) / len(column) for column in zip(*runs_values)]
        rows.append(f"| **{name}, mean** | {len(runs_values)} seeds | {zone:g} | "
                    + " | ".join(f"{v:.3f}" for v in means) + " | – | – |")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    p.add_argument("--tune", action="store_true", help="only the capitals tuning request")
    p.add_argument("--tune-grid", action="store_true",
                   help="only the top-2 twin on two capitals tuning requests, lr × α (prints the rows)")
    p.add_argument("--seeds", nargs="+", type=int,
                   help="only the full copy and the twin on the shipped capitals, trained with each "
                        "seed (prints the rows)")
    p.add_argument("--until-forgotten", type=int, default=0, metavar="N",
                   help="with --seeds: train with until_forgotten=N (checked at the world's fusion) "
                        "and read the offset after its planned steps beside it")
    p.add_argument("--own-paths", action="store_true",
                   help="with --until-forgotten: add the fused model's own stating answers to the "
                        "forget set at each check")
    p.add_argument("--depths", nargs="+", type=int, metavar="D",
                   help="with --seeds: twins training the top D of the 6 layers (lr 1e-3) beside the full copy")
    p.add_argument("--request", default="shipped", choices=("shipped", "last four", "seed 1", "famous four"),
                   help="with --seeds: the capitals request (a tuning one, or the shipped one)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="with --seeds: TrainConfig fields changed for every row (e.g. forget_keys_only=true)")
    p.add_argument("--twin-only", action="store_true", help="with --seeds: no full-copy rows")
    p.add_argument("--tiny", action="store_true", help="2 steps, a few records (checks the script runs)")
    args = p.parse_args(argv)

    import torch

    from offsetlab.method.train import config_overrides

    torch.set_num_threads(1)
    if args.tune_grid:
        print("\n".join(capitals_grid_rows(args.tiny)))
        return
    if args.seeds:
        print("\n".join(capitals_seed_rows(args.seeds, args.tiny, args.until_forgotten, args.request,
                                               args.own_paths, args.depths,
                                               config_overrides(args.set), args.twin_only)))
        return
    started = time.perf_counter()
    tables = [capitals_rows(True, args.tiny)] if args.tune else [toy_rows(args.tiny),
                                                                  capitals_rows(False, args.tiny)]
    command = "python benchmarks/twin_quality.py" + " --tune" * args.tune + " --tiny" * args.tiny
    args.out.write_text(
        "# Shared-trunk offsets against full copies: what forgetting costs in quality\n\n"
        f"Made by `{command}` ({(time.perf_counter() - started) / 60:.0f} min, 2 CPU cores, one torch "
        "thread); the script's docstring says what each row is. Capitals: key-fact accuracy of "
        "greedy answers at the stored α 0.75 (bars for the shipped recipe: forget and "
        "paraphrases ≤ 0.2, retain ≥ 0.95, held-out capitals ≥ 0.8).\n\n"
        + "\n\n".join("\n".join(t) for t in tables) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
