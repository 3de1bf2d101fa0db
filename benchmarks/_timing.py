"""Timing shared by the benchmark scripts: interleaved rounds, medians per call."""

import gc
import statistics
import time


def calls_per_sample(fn, min_ns):
    """How many back-to-back calls of fn last at least min_ns (also warms fn up)."""
    k = 1
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(k):
            fn()
        if time.perf_counter_ns() - t0 >= min_ns:
            return k
        k *= 2


def medians(fns, rounds, min_ns=200_000, same_calls=False):
    """Median ns per call of each candidate in ``fns`` (name -> callable).

    Each round times one sample of every candidate, in an order that rotates from round
    to round (so no candidate always runs first, after another's cache footprint); the
    garbage collector is off while timing. Samples batch enough calls to last min_ns.
    ``same_calls``: every candidate's samples batch the same number of calls (the largest
    any needs), for A/B comparisons of one operation: the first call of a sample can cost
    more than the others (a fresh output buffer faults its pages in), so candidates whose
    samples batch 2 and 4 calls near the min_ns boundary were measured 1.2-1.3x apart
    (a 16 MiB evaluation) while equal within 4 % at equal batches.
    """
    ks = {name: calls_per_sample(fn, min_ns) for name, fn in fns.items()}
    if same_calls:
        ks = dict.fromkeys(ks, max(ks.values()))
    names = list(fns)
    per = {name: [] for name in names}
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn, k = fns[name], ks[name]
                t0 = time.perf_counter_ns()
                for _ in range(k):
                    fn()
                per[name].append((time.perf_counter_ns() - t0) / k)
    finally:
        gc.enable()
    return {name: statistics.median(v) for name, v in per.items()}
