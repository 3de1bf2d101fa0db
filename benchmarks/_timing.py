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


def medians(fns, rounds, min_ns=200_000):
    """Median ns per call of each candidate in ``fns`` (name -> callable).

    Each round times one sample of every candidate, in an order that rotates from round
    to round (so no candidate always runs first, after another's cache footprint); the
    garbage collector is off while timing. Samples batch enough calls to last min_ns.
    """
    ks = {name: calls_per_sample(fn, min_ns) for name, fn in fns.items()}
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
