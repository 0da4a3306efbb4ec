"""Speed of the two things offsetlab makes fast, measured side by side in one run.

1. Decoding: the fused model keeps one KV cache per model (base, reference, offset);
   compared with recomputing every prefix, and with the base model alone.
2. Training: base and reference scores on the training answers are computed once and
   cached; compared with recomputing them at every step.
3. Moving α in the panel or the widgets: one Compare (base, fused and gold answers with
   their traces and figures) at each of a few strengths, with the shipped offset. The
   target is ≤ 1 s per move on the toy world, so the plots follow the slider.

Only ratios between runs made here, now, on the same machine are printed as results —
absolute seconds depend on the machine and are shown for context only.

    python benchmarks/run_all.py [--records 64] [--steps 10] [--alphas 6]
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=64, help="questions to answer")
    p.add_argument("--steps", type=int, default=10, help="training steps to time")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--alphas", type=int, default=6, help="α values to move the Compare view to")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    from offsetlab.method.train import TrainConfig, make_offset, train_offset
    from offsetlab.offsets.artifact import Offset
    from offsetlab.worlds.lab import Lab

    lab = Lab.toy()
    forget = lab.splits["forget10"]
    retain = lab.splits["retain90"]
    prompts = [lab.prompt_format.prompt(r.question) for r in (forget + retain)[: args.records]]
    offset = make_offset(lab.reference)
    with torch.no_grad():  # a non-trivial offset, so the fused model differs from the base
        for p_ in offset.parameters():
            p_.add_(0.01 * torch.randn_like(p_))
    name = lab.add_offset(Offset(offset), "bench")
    fused, base = lab.model([name]), lab.model()

    def decode(model, use_cache=True):
        return lambda: [model.generate(prompts[i : i + 32], max_new_tokens=args.max_new_tokens,
                                       use_cache=use_cache) for i in range(0, len(prompts), 32)]

    print(f"Decoding {len(prompts)} answers (≤ {args.max_new_tokens} tokens, batches of 32):")
    t_base = timed(decode(base), 2)
    t_cached = timed(decode(fused), 2)
    t_fresh = timed(decode(fused, use_cache=False))
    print(f"  base alone                         {t_base:7.2f} s")
    print(f"  fused, three KV caches             {t_cached:7.2f} s")
    print(f"  fused, recomputing every prefix    {t_fresh:7.2f} s")
    print(f"  → caches make fused decoding {t_fresh / t_cached:.1f}× faster; "
          f"fused costs {t_cached / t_base:.2f}× the base alone")

    config = TrainConfig(steps=args.steps)
    print(f"\nTraining {args.steps} steps ({config.objective}, batch {config.batch_size} + "
          f"{config.retain_batch_size}):")
    results = {}
    for cache in (True, False):
        t0 = time.perf_counter()
        r = train_offset(lab.base, lab.reference, lab.tokenizer, forget, retain[:200], config,
                         progress=False, cache=cache)
        results[cache] = (time.perf_counter() - t0, r.history[-1]["loss"])
    (tc, lc), (tu, lu) = results[True], results[False]
    print(f"  frozen scores cached once (incl. caching)   {tc:7.2f} s  final loss {lc:.4f}")
    print(f"  frozen scores recomputed every step         {tu:7.2f} s  final loss {lu:.4f}")
    print(f"  → caching makes these {args.steps} steps {tu / tc:.1f}× faster "
          f"(the gap grows with steps: the cache is paid once)")

    from offsetlab.frontends.app import compare_view
    from offsetlab.frontends.explore import Decoding

    shipped = next((n for n in lab.offsets if n != name), name)
    question = forget[0].question
    alphas = [round(2.0 * i / max(args.alphas - 1, 1), 2) for i in range(args.alphas)]
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    compare_view(lab, question, shipped, 1.0, decoding)  # warm-up
    moves = sorted(timed(lambda a=a: compare_view(lab, question, shipped, a, decoding))
                   for a in alphas)
    median = moves[len(moves) // 2]
    print(f"\nMoving α in Compare ({shipped}, {len(alphas)} strengths, "
          f"≤ {args.max_new_tokens} tokens, base + fused + gold with figures):")
    print(f"  median {median:.2f} s per move (fastest {moves[0]:.2f} s, slowest {moves[-1]:.2f} s)")
    print(f"  → {'within' if median <= 1.0 else 'over'} the 1 s a slider move may take "
          f"({median / 1.0:.2f}× of it)")
    print(f"\n[{torch.get_num_threads()} torch threads, {os.cpu_count()} CPU cores]")


if __name__ == "__main__":
    main()
