"""Vectorised bootstrap: confidence intervals and paired comparisons from per-example sufficient statistics.

Every metric hands over `stats`, an (N, k) array whose rows sum to the statistics of any subset, and a `score_fn`
that turns a (B, k) array of summed statistics into (B,) scores. A resample is then a vector of counts (how often
each example was drawn), and the summed statistics of B resamples are one matrix product `counts @ stats`, so 1000
resamples cost one (B, N) x (N, k) product instead of 1000 metric calls.

A metric that is no sum over examples (ROC-AUC) marks its score function with `takes_counts`; it is then called as
score_fn(counts, stats) with the (B, N) resample counts and the per-example stats. A score function may carry
`higher_is_better = False` (perplexity), which paired_bootstrap uses when not told the direction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

ScoreFn = Callable[..., np.ndarray]

# resample rows drawn at once: bounds the (rows, N) index and count arrays to ~4M cells whatever N is
_CELLS_PER_CHUNK = 1 << 22


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield (b, n) float arrays of draw counts, b rows at a time, `resamples` rows in all.

    Row r counts how often each example appears in resample r (idx = rng.integers(0, n, (b, n)) then a per-row
    bincount), which is all a sum-decomposable metric needs from the resample.
    """
    if n < 1:
        raise ValueError("bootstrap needs at least one example")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    per_chunk = max(1, min(resamples, _CELLS_PER_CHUNK // n))
    done = 0
    while done < resamples:
        b = min(per_chunk, resamples - done)
        idx = rng.integers(0, n, (b, n))
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def takes_counts(fn: ScoreFn) -> ScoreFn:
    """Mark a score function that needs (counts (B, N), stats (N, k)) rather than the summed stats (B, k)."""
    fn.takes_counts = True  # type: ignore[attr-defined]
    return fn


def scores_for(counts: np.ndarray, stats: np.ndarray, score_fn: ScoreFn) -> np.ndarray:
    """(B,) metric values for B weightings of the examples given as counts (B, N)."""
    if getattr(score_fn, "takes_counts", False):
        return score_fn(counts, stats)
    return score_fn(counts @ stats)


def point_score(stats: np.ndarray, score_fn: ScoreFn) -> float:
    """The metric on the full data set: every example counted once (the same path every resample takes)."""
    stats = np.asarray(stats, dtype=np.float64)
    return float(scores_for(np.ones((1, len(stats))), stats, score_fn)[0])


def bootstrap_scores(stats: np.ndarray, score_fn: ScoreFn, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(resamples,) metric values, one per bootstrap resample; NaN where the metric is undefined on a resample."""
    stats = np.asarray(stats, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return np.concatenate([scores_for(c, stats, score_fn) for c in resample_counts(len(stats), resamples, rng)])


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile interval ignoring undefined resamples (NaN, e.g. ROC-AUC on a resample without positives)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(
    stats: np.ndarray, score_fn: ScoreFn, resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval (1 - alpha) of the metric; resamples whose score is NaN are left out."""
    return _percentiles(bootstrap_scores(stats, score_fn, resamples, seed), alpha)


def paired_bootstrap(
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    score_fn: ScoreFn,
    resamples: int = 1000,
    seed: int = 0,
    *,
    higher_is_better: bool | None = None,
    alpha: float = 0.05,
) -> dict:
    """Compare system B with system A on the same examples, resampling the same example indices for both.

    Returns {"a", "b", "diff" (b - a), "ci" ([lo, hi] of the resampled diff), "p_value"}. The p-value is one-sided:
    the share of resamples on which B is not better than A in the metric's direction, (count + 1) / (B + 1), so a
    system compared with itself gets 1.0 and a clearly better one gets about 1 / (resamples + 1).
    The direction is `higher_is_better`, else the score function's own `higher_is_better`, else higher.
    """
    stats_a = np.asarray(stats_a, dtype=np.float64)
    stats_b = np.asarray(stats_b, dtype=np.float64)
    if len(stats_a) != len(stats_b):
        raise ValueError(f"paired bootstrap needs the same examples for both systems: {len(stats_a)} != {len(stats_b)}")
    if higher_is_better is None:
        higher_is_better = getattr(score_fn, "higher_is_better", True)
    rng = np.random.default_rng(seed)
    diffs = []
    for counts in resample_counts(len(stats_a), resamples, rng):
        diffs.append(scores_for(counts, stats_b, score_fn) - scores_for(counts, stats_a, score_fn))
    diff = np.concatenate(diffs)
    diff = diff[~np.isnan(diff)]
    a, b = point_score(stats_a, score_fn), point_score(stats_b, score_fn)
    gain = diff if higher_is_better else -diff
    p_value = (np.count_nonzero(gain <= 0) + 1) / (gain.size + 1)
    lo, hi = _percentiles(diff, alpha)
    return {"a": a, "b": b, "diff": b - a, "ci": [lo, hi], "p_value": float(p_value)}


def weighted_auc(weights: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC-AUC of one binary problem under B weightings of the examples at once: weights (B, N) -> (B,).

    The Mann-Whitney form: the weighted share of (positive, negative) pairs the score orders correctly, ties
    counting one half, which is the area under the trapezoidal ROC curve that sklearn computes. Examples are sorted
    once by score and grouped by equal score, so each weighting costs O(N). NaN where a weighting leaves no
    positive or no negative example.
    """
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order]
    pos = positive[order].astype(np.float64)
    wp = np.add.reduceat(w * pos, starts, axis=1)
    wn = np.add.reduceat(w * (1.0 - pos), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    num = (wp * (below + 0.5 * wn)).sum(1)
    den = wp.sum(1) * wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def prf_from_confusion(conf: np.ndarray, metric: str, average: str) -> np.ndarray:
    """Precision, recall or F1 (points) of B confusion matrices (B, L, L + 1) at once, as sklearn computes them.

    Rows are true labels, the last column is "unparsed". sklearn with labels=labels and zero_division=0: a parse
    failure is a miss for recall (it stays in its true row) and no prediction for precision (it is in no label's
    column); macro averages per-label scores, micro pools the counts; F1 = 2 tp / (true + predicted).
    """
    n = conf.shape[1]
    tp = np.diagonal(conf[:, :, :n], axis1=1, axis2=2)
    pred_sum, true_sum = conf[:, :, :n].sum(1), conf.sum(2)
    if average == "micro":
        tp, pred_sum, true_sum = (x.sum(1, keepdims=True) for x in (tp, pred_sum, true_sum))
    num, den = {"precision": (tp, pred_sum), "recall": (tp, true_sum), "f1": (2 * tp, true_sum + pred_sum)}[metric]
    return 100 * np.where(den > 0, num / np.where(den > 0, den, 1), 0.0).mean(1)


def ovr_auc(weights: np.ndarray, true_idx: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest macro ROC-AUC (points) under B weightings (B, N); binary problems score the second label."""
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    return 100 * np.mean([weighted_auc(weights, true_idx == c, probs[:, c]) for c in classes], axis=0)
