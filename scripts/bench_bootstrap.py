"""Bootstrap cost per metric: one CI and one paired comparison at 1000 examples x 1000 resamples.

    python scripts/bench_bootstrap.py [--rows 1000] [--resamples 1000] [--labels 8]

Synthetic predictions and references (word-level noise on random sentences), 8-way classification with
label probabilities, and per-example NLLs. "metric s" is the time to compute the per-example statistics once
(tokenising, ROUGE, embeddings; one call for all classification metrics); "ci s" is bootstrap_ci alone and
"paired s" is paired_bootstrap alone. The target is under 2 s per metric for both.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from tuneloop.eval import metrics as M

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "big", "red", "house", "tree", "river", "near"]


def synthetic_text(rng: np.random.Generator, rows: int) -> tuple[list[str], list[list[str]]]:
    refs = [" ".join(rng.choice(WORDS, rng.integers(5, 25))) for _ in range(rows)]
    preds = [" ".join(w if rng.random() < 0.7 else rng.choice(WORDS) for w in r.split()) for r in refs]
    return preds, [[r] for r in refs]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, b = args.rows, args.resamples

    preds, refs = synthetic_text(rng, n)
    M.embedder()  # load the model outside the timings
    values: dict[str, tuple[M.MetricValue, float]] = {}
    for name in M.GENERATION_METRICS:
        out, s = timed(lambda name=name: M.generation_metrics(preds, refs, [name], resamples=1))
        values[name] = (out[name], s)

    labels = [f"label{i}" for i in range(args.labels)]
    y_true = list(rng.choice(labels, n))
    y_pred = [y if rng.random() < 0.6 else rng.choice([*labels, None]) for y in y_true]
    logits = rng.normal(size=(n, len(labels))) + np.array([[y == lab for lab in labels] for y in y_true])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cls, s = timed(lambda: M.classification_metrics(y_true, y_pred, labels, probs, resamples=1)[0])
    values |= {k: (v, s) for k, v in cls.items()}

    tokens = rng.integers(5, 60, n)
    ppl, s = timed(lambda: M.perplexity_metric(list(tokens * rng.uniform(1, 4, n)), list(tokens), resamples=1))
    values["perplexity"] = (ppl, s)

    print(f"{n} examples x {b} resamples; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'metric':<16} {'stats':>12} {'metric s':>9} {'ci s':>7} {'paired s':>9}")
    for name, (mv, metric_s) in values.items():
        fn = M.score_fn(name)
        _, ci_s = timed(lambda mv=mv, fn=fn: M.bootstrap_ci(mv.stats, fn, resamples=b))
        _, paired_s = timed(lambda mv=mv, fn=fn: M.paired_bootstrap(mv.stats, mv.stats, fn, resamples=b))
        shape = "x".join(map(str, mv.stats.shape))
        print(f"{name:<16} {shape:>12} {metric_s:>9.3f} {ci_s:>7.3f} {paired_s:>9.3f}")


if __name__ == "__main__":
    main()
