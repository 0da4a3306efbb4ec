"""Forget one thing on SmolLM2 and keep the rest: four requests, three kinds of retain data.

Each request asks the fused model to forget four facts it really knows (checked by greedy
decoding): the shipped **capitals** (France, Japan, Egypt, Canada), and three validation
requests never used to choose anything — **works** (who wrote four novels), **dates**
(four famous years) and **scientists** (four discoveries) — and two drawn later, after
waves 1–6 had read those three (wave 7): **currencies** (India, Mexico, Russia, the euro)
and **continents** (Brazil, India, Kenya, Argentina). Each has 12 paraphrased questions
(``data/real/<request>_forget_paraphrased.jsonl``).

The recipe is the shipped capitals recipe (``CAPITALS_CONFIG``: npo_kl, 60 steps, a full
copy of SmolLM2's first 6 layers, used at α 0.75 with the world's dead zone of 0.3 nats;
``--alphas`` and ``--dead-zones`` read each trained offset at other settings too); what
varies is the retain data its KL anchor holds on to:

* ``hand-written``: ``capitals_retain`` (20 other capitals and 6 facts of other kinds,
  written by hand: the shipped recipe);
* ``hand + general``: the same plus ``general_retain`` (79 general-knowledge questions
  with the base's own answers; ``offsetlab real build-general``);
* ``self-made``: nothing written for the request — the base's own answers to the open
  prompts of ``general_prompts.txt`` and the ``general_retain`` questions
  (``Lab.self_made_retain``; answers that state a forget key are dropped).

Choices are made on **capitals** (the tuning request) only; works, dates and scientists
are reported as drawn. Measured (greedy, 32 new tokens, key fact in the answer): forget
and paraphrases; the 20 capitals of ``capitals_retain``; the 24 held-out capitals of
``capitals_holdout``; the 79 held-out general facts of ``general_holdout`` (minus any
forget fact; never trained on by any variant) as a share of the base's; and the KL from
the base to the fused model, per token, on the base's own answers to those held-out
questions (``measure.evaluate.text_drift``).

    python benchmarks/real_requests.py [--out benchmarks/real_requests.md] [--tiny]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = ("capitals", "works", "dates", "scientists", "currencies", "continents")
TUNING = ("capitals",)
# The largest dead zone first: --fit-dead-zone reads the fused model on the forget questions
# alone at each and keeps the largest at which it states none of the forget facts.
DEAD_ZONE_LADDER = (1.0, 0.5, 0.3)
RETAINS = ("hand-written", "hand + general", "self-made")
MAX_NEW_TOKENS = 32
# Invented subjects (no country, book, person or event has these names): ``--strangers N``
# asks each forget question about the first N of them, as the never-seen side the
# ``stranger`` objective forgets towards — the "few invented records of the same shape" a
# user can always write.
STRANGER_NAMES = ("Veltoria", "Drelmark", "Kalbrunia", "Tovanique", "Sarnethe", "Ombrelvia")


def accuracy(model, records) -> float:
    from offsetlab.measure.metrics import key_fact_hit
    from offsetlab.worlds.general import ask

    answers = ask(model, [r.question for r in records], max_new_tokens=MAX_NEW_TOKENS)
    return sum(key_fact_hit(a, r.key) for r, a in zip(records, answers)) / len(records)


def request(name: str) -> dict:
    from offsetlab.worlds.real import data_dir
    from offsetlab.worlds.records import load_records

    return {split: load_records(data_dir() / f"{name}_{split}.jsonl")
            for split in ("forget", "forget_paraphrased")}


def retain_for(lab, variant: str, forget) -> list:
    asked = {r.question for r in forget}
    general = [r for r in lab.split("general_retain") if r.question not in asked]
    if variant == "hand-written":
        return list(lab.split("retain"))
    if variant == "hand + general":
        return list(lab.split("retain")) + general
    return lab.self_made_retain(forget)


def stranger_records(forget, n: int) -> list:
    """Each forget record asked about the first ``n`` invented subjects of
    ``STRANGER_NAMES`` (question and answer alike, key unchanged): records nobody has seen."""
    from offsetlab.method.calibrate import about_stranger

    if not 0 <= n <= len(STRANGER_NAMES):
        raise ValueError(f"--strangers must be between 0 and {len(STRANGER_NAMES)}, got {n}.")
    missing = [r.question for r in forget if not r.subject or r.subject not in r.question]
    if n and missing:
        raise ValueError(f"--strangers needs every forget record's subject in its question; not in "
                         f"{missing[0]!r}.")
    return [about_stranger(r, name) for r in forget for name in STRANGER_NAMES[:n]]


def measure_sets(lab, forget_set: dict) -> dict:
    asked = {r.question for r in forget_set["forget"]}
    return {
        "forget": forget_set["forget"],
        "paraphrases": forget_set["forget_paraphrased"],
        "retain capitals": [r for r in lab.split("retain") if r.subject != "general"],
        "held-out capitals": [r for r in lab.split("holdout") if r.subject != "general"],
        "held-out general": [r for r in lab.split("general_holdout") if r.question not in asked],
    }


def drift_records(lab, held_out) -> list:
    """The base's own answers to the held-out general questions (cached)."""
    from offsetlab.worlds.general import self_made_retain

    return self_made_retain(lab.model(), [r.question for r in held_out], progress=False)


def moves_rows(lab, trained: str, alpha: float, sets: dict, label: str) -> list[str]:
    """Quantiles of the offset's moves (KL(fused ‖ base) per position, fused everywhere)
    along the base's own answers to each measured set (``--moves``)."""
    import numpy as np

    from offsetlab.measure.evaluate import offset_moves
    from offsetlab.worlds.general import self_made_retain

    model = lab.model([(trained, alpha)], dead_zone=0.0)
    rows = []
    for name, records in sets.items():
        own = self_made_retain(lab.model(), [r.question for r in records], progress=False)
        kl = offset_moves(model, own)
        q = np.quantile(kl, [0.5, 0.9, 0.99])
        rows.append(f"| {label} | {name} | {len(kl)} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} | "
                    f"{kl.max():.2f} | {(kl >= 0.3).mean():.3f} |")
        print(rows[-1], flush=True)
    return rows


def fitted_dead_zone(lab, trained: str, alpha: float, forget) -> float:
    """The largest dead zone of ``DEAD_ZONE_LADDER`` at which the fused model (at ``alpha``)
    states none of the ``forget`` facts; the smallest if it states one at every zone. Reads
    the user's forget questions only."""
    for zone in DEAD_ZONE_LADDER:
        if accuracy(lab.model([(trained, alpha)], dead_zone=zone), forget) == 0:
            return zone
    return DEAD_ZONE_LADDER[-1]


MOVES_HEADER = ["| request | set (the base's own answers) | positions | median | 90 % | 99 % | largest | "
                "share ≥ 0.3 nats |", "|" + "---|" * 8]


def run(tiny: bool = False, requests=REQUESTS, retains=RETAINS, overrides: dict | None = None,
        alphas=(None,), dead_zones=(None,), moves: bool = False, fit_dead_zone: bool = False,
        strangers: int = 0) -> list[str]:
    """One row per request, retain data, α and dead zone (``None``: the lab's own); the
    α's and dead zones are read off one trained offset each. ``fit_dead_zone``: instead of
    ``dead_zones``, the largest of ``DEAD_ZONE_LADDER`` at which the fused model states none
    of the forget facts (read on the forget questions only; the smallest if none).
    ``strangers``: train with each forget question asked about that many invented subjects
    as the non-members (``stranger_records``; what the ``stranger`` objective reads)."""
    from offsetlab.measure.evaluate import text_drift
    from offsetlab.worlds.lab import Lab

    lab = Lab.smollm2()
    rows = ["| request | retain data | retain records | α | dead zone | forget | paraphrases | "
            "retain capitals | held-out capitals | held-out general (× base) | KL on base text | train s |",
            "|" + "---|" * 12]
    moved: list[str] = []
    for name in requests:
        forget_set = request(name)
        sets = measure_sets(lab, forget_set)
        if tiny:
            sets = {k: v[:3] for k, v in sets.items()}
        drift = drift_records(lab, sets["held-out general"])
        base = {k: accuracy(lab.model(), v) for k, v in sets.items()}
        rows.append(f"| {name} | (base) | – | – | – | {base['forget']:.2f} | {base['paraphrases']:.2f} | "
                    f"{base['retain capitals']:.2f} | {base['held-out capitals']:.2f} | "
                    f"{base['held-out general']:.2f} | 0 | – |")
        for variant in retains:
            retain = retain_for(lab, variant, forget_set["forget"])
            lab.nonmembers = stranger_records(forget_set["forget"], strangers)
            config = replace(lab.train_config, **(overrides or {}), **({"steps": 2} if tiny else {}))
            t0 = time.perf_counter()
            trained = lab.train(forget_set["forget"], retain, config, name=f"{name}-{variant}")
            seconds = time.perf_counter() - t0
            own = lab.offsets[trained].alpha
            if moves:
                moved += moves_rows(lab, trained, own, sets, f"{name}, {variant}")
            for alpha in (own if a is None else a for a in alphas):
                zones = [lab.dead_zone if z is None else z for z in dead_zones]
                if fit_dead_zone:
                    zones = [fitted_dead_zone(lab, trained, alpha, sets["forget"])]
                for zone in zones:
                    model = lab.model([(trained, alpha)], dead_zone=zone)
                    got = {k: accuracy(model, v) for k, v in sets.items()}
                    kl = text_drift(model, drift)["kl"]
                    general = got["held-out general"] / base["held-out general"]
                    tag = " (tuning)" if name in TUNING else ""
                    rows.append(f"| {name}{tag} | {variant} | {len(retain)} | {alpha:g} | {zone:g} | "
                                f"{got['forget']:.2f} | {got['paraphrases']:.2f} | "
                                f"{got['retain capitals']:.2f} | {got['held-out capitals']:.2f} | "
                                f"{got['held-out general']:.2f} ({general:.3f}) | {kl:.3f} | {seconds:.0f} |")
                    print(rows[-1], flush=True)
            del lab.offsets[trained]
    return rows + ([""] + MOVES_HEADER + moved if moves else [])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the table (Markdown) here")
    p.add_argument("--tiny", action="store_true", help="2 training steps, 3 records a set (a smoke test)")
    p.add_argument("--requests", nargs="+", default=list(REQUESTS), choices=REQUESTS)
    p.add_argument("--retains", nargs="+", default=list(RETAINS), choices=RETAINS)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="change the recipe (TrainConfig fields), e.g. retain_batch_size=16")
    p.add_argument("--alphas", nargs="+", type=float, default=[None], metavar="A",
                   help="strengths to read each trained offset at (default: its stored α)")
    p.add_argument("--dead-zones", nargs="+", type=float, default=[None], metavar="NATS",
                   help="dead zones to read each trained offset with (default: the lab's own)")
    p.add_argument("--fit-dead-zone", action="store_true",
                   help=f"read each offset at the largest dead zone of {DEAD_ZONE_LADDER} at which it "
                        "states none of the forget facts (instead of --dead-zones)")
    p.add_argument("--strangers", type=int, default=0, metavar="N",
                   help="train with each forget question asked about N invented subjects as the "
                        f"non-members (at most {len(STRANGER_NAMES)}; for --set objective=stranger)")
    p.add_argument("--moves", action="store_true",
                   help="also print how far each offset moves the base, position by position, along "
                        "the base's own answers to every measured set (what a dead zone is read against)")
    args = p.parse_args(argv)
    if args.fit_dead_zone and args.dead_zones != [None]:
        p.error("--fit-dead-zone chooses the dead zone itself; leave out --dead-zones")
    from offsetlab.method.train import config_overrides

    rows = run(args.tiny, args.requests, args.retains, config_overrides(args.set), args.alphas,
               args.dead_zones, args.moves, args.fit_dead_zone, args.strangers)
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
