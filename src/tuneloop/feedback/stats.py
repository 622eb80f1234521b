"""Statistics of a human-feedback campaign: how far raters agree, how the models rank, whom to trust.

Every statistic comes from a library (krippendorff, scikit-learn, choix, scipy); this module only shapes campaign
data into their inputs and attaches intervals, so the numbers match what the literature and other tools report.
Intervals are 95%: Wilson for proportions, seeded percentile bootstraps elsewhere, so a report is reproducible.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any, Literal

import choix
import krippendorff
import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

NAN = float("nan")
ELO_SCALE = 400 / math.log(10)  # a 400-point gap means 10:1 odds, as in Elo and Chatbot Arena
ELO_BASE = 1000.0
Ratings = Mapping[Hashable, Mapping[Hashable, Any]]  # item id -> {rater id: value}; None counts as missing
Level = Literal["nominal", "ordinal", "interval"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its 95% interval and the number of observations behind it; `note` says why it is nan."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _undefined(n: int, note: str) -> Estimate:
    return Estimate(NAN, NAN, NAN, n, note)


def _quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """A library statistic with 'undefined' (0/0, warned about rather than raised) turned into nan."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(*args, **kwargs))
    return value if math.isfinite(value) else NAN


def _raters(ratings: Ratings) -> list[Hashable]:
    return sorted({rater for item in ratings.values() for rater in item}, key=str)


def krippendorff_alpha(ratings: Ratings, level: Level = "nominal", resamples: int = 1000, seed: int = 0) -> Estimate:
    """Krippendorff's alpha over the raters × items matrix, with a bootstrap interval over items.

    Choose the level by what the values mean: "nominal" for unordered labels (which answer is better, a category),
    "ordinal" for ranked scales whose steps need not be even (a 1-5 Likert score), "interval" for numbers whose
    differences mean something. Alpha copes with raters skipping items, which is why it is the campaign-wide
    figure. 1 is perfect agreement, 0 is chance level; Krippendorff advises against conclusions below 0.667.

    Only items with two or more ratings carry information (`n` counts them); the bootstrap resamples those items
    with replacement and skips resamples where alpha is undefined (all drawn ratings the same value).
    """
    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"level must be nominal, ordinal or interval, not {level!r}")
    raters, items = _raters(ratings), list(ratings)
    values = [v for item in items for v in ratings[item].values() if v is not None]
    if level == "nominal":  # labels may be strings: alpha only needs them told apart
        codes = {v: float(i) for i, v in enumerate(dict.fromkeys(values))}
    else:
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Real)]
        if bad:
            raise ValueError(f"{level} alpha needs numeric ratings, got {bad[0]!r}")
        codes = {v: float(v) for v in values}
    matrix = np.full((len(raters), len(items)), np.nan)
    for col, item in enumerate(items):
        for row, rater in enumerate(raters):
            value = ratings[item].get(rater)
            if value is not None:
                matrix[row, col] = codes[value]
    matrix = matrix[:, (~np.isnan(matrix)).sum(axis=0) >= 2]
    n = matrix.shape[1]
    if n < 2:
        return _undefined(n, "alpha needs at least two items rated by two or more raters")
    domain = np.unique(matrix[~np.isnan(matrix)])
    if len(domain) < 2:
        return _undefined(n, "every rating has the same value, so agreement beyond chance is undefined")

    def alpha(data: np.ndarray) -> float:
        return _quiet(krippendorff.alpha, reliability_data=data, value_domain=domain, level_of_measurement=level)

    rng = np.random.default_rng(seed)
    boots = np.array([alpha(matrix[:, rng.integers(0, n, n)]) for _ in range(resamples)])
    boots = boots[~np.isnan(boots)]
    skipped = resamples - len(boots)
    note = f"{skipped} of {resamples} bootstrap resamples undefined and skipped" if skipped else None
    low, high = np.percentile(boots, [2.5, 97.5]) if len(boots) else (NAN, NAN)
    return Estimate(alpha(matrix), float(low), float(high), n, note)


def cohen_kappa_pairs(ratings: Ratings, weights: Literal["linear", "quadratic"] | None = None) -> list[dict[str, Any]]:
    """Cohen's kappa for every pair of raters, over the items both rated: who disagrees with whom.

    weights=None for nominal labels; "linear" or "quadratic" for ordinal scales, where a near miss is partial
    agreement (quadratic punishes big misses more). Weighted kappa orders labels by sorting them, so give numbers.
    Pairs with no item in common are left out; kappa is nan when they share fewer than two items or it is
    undefined (both raters gave one and the same label throughout).
    """
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', not {weights!r}")
    pairs = []
    for a, b in combinations(_raters(ratings), 2):
        common = [r for r in ratings.values() if r.get(a) is not None and r.get(b) is not None]
        if not common:
            continue
        ya, yb = [r[a] for r in common], [r[b] for r in common]
        kappa = _quiet(cohen_kappa_score, ya, yb, weights=weights) if len(common) >= 2 else NAN
        pairs.append({"rater_a": a, "rater_b": b, "n": len(common), "kappa": kappa})
    return pairs


def bradley_terry(
    comparisons: Iterable[tuple[str, str] | tuple[str, str, str]],
    models: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.01,
) -> list[dict[str, Any]]:
    """Bradley-Terry strengths by maximum likelihood (choix), on the Elo-like scale Chatbot Arena reports.

    A comparison is (winner, loser) or (a, b, "tie"). A tie is half a win each way: a decisive vote enters the fit
    twice as (winner, loser), a tie once as (a, b) and once as (b, a), so a tie weighs as much as a decisive vote
    (the weighting of Chatbot Arena's Bradley-Terry fit). `alpha` is a small regularisation (choix adds it as a
    pseudo-count to every pair) so a model that won or lost every vote still gets a finite score; it pulls scores
    slightly towards the mean. score = 1000 + 400/ln(10) * strength, strengths centred on mean 0.

    The 95% interval is the percentile interval of a seeded bootstrap that resamples the votes and refits. Each
    row: name, score, ci_low, ci_high, wins, losses, ties, rank (1 = best); sorted by score, best first.
    """
    index = {m: i for i, m in enumerate(models)}
    if len(index) < 2:
        raise ValueError("Bradley-Terry needs at least two models")
    votes: list[tuple[int, int, bool]] = []
    for c in comparisons:
        if len(c) not in (2, 3) or (len(c) == 3 and c[2] != "tie"):
            raise ValueError(f"a comparison is (winner, loser) or (a, b, 'tie'), not {c!r}")
        unknown = [m for m in c[:2] if m not in index]
        if unknown or c[0] == c[1]:
            raise ValueError(f"comparison {c!r} names an unknown model or the same model twice")
        votes.append((index[c[0]], index[c[1]], len(c) == 3))
    if not votes:
        raise ValueError("Bradley-Terry needs at least one comparison")

    def fit(sample: Iterable[tuple[int, int, bool]]) -> np.ndarray:
        data = [pair for i, j, tie in sample for pair in ([(i, j), (j, i)] if tie else [(i, j), (i, j)])]
        strength = choix.ilsr_pairwise(len(index), data, alpha=alpha)
        return ELO_BASE + ELO_SCALE * (strength - strength.mean())

    scores = fit(votes)
    rng = np.random.default_rng(seed)
    boots = [fit(votes[k] for k in rng.integers(0, len(votes), len(votes))) for _ in range(resamples)]
    low, high = np.percentile(np.array(boots), [2.5, 97.5], axis=0) if boots else (scores * NAN, scores * NAN)
    rows = []
    for m, i in index.items():
        wins = sum(1 for a, _, tie in votes if a == i and not tie)
        losses = sum(1 for _, b, tie in votes if b == i and not tie)
        ties = sum(1 for a, b, tie in votes if tie and i in (a, b))
        row = {"name": m, "score": float(scores[i]), "ci_low": float(low[i]), "ci_high": float(high[i])}
        rows.append(row | {"wins": wins, "losses": losses, "ties": ties})
    rows.sort(key=lambda r: r["score"], reverse=True)
    return [row | {"rank": rank} for rank, row in enumerate(rows, 1)]


def wilson(successes: int, n: int) -> Estimate:
    """A proportion (e.g. a rater's accuracy on gold items) with its Wilson 95% interval.

    Wilson rather than the normal approximation because it stays inside [0, 1] and is honest for small n and for
    proportions near 0 or 1, which is exactly where a rater's gold accuracy tends to be.
    """
    if n == 0:
        return _undefined(0, "no observations")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return Estimate(successes / n, float(ci.low), float(ci.high), n)


def position_bias(left_wins: int, decided: int) -> Estimate:
    """P(the answer shown on the left wins) among decided pairwise votes, with a Wilson 95% interval.

    Ties say nothing about position, so they are left out of both counts. Unbiased raters sit at 0.5; an interval
    that excludes 0.5 means they favour a side, and sides must stay randomised and balanced for the comparison to
    be fair.
    """
    est = wilson(left_wins, decided)
    if est.ci_low > 0.5 or est.ci_high < 0.5:
        side = "left" if est.value > 0.5 else "right"
        return Estimate(est.value, est.ci_low, est.ci_high, est.n, f"raters favour the answer on the {side}")
    return est


def flag_raters(
    gold_results: Mapping[Hashable, Iterable[bool]], threshold: float, min_items: int = 5
) -> dict[Hashable, dict[str, Any]]:
    """Raters whose accuracy on gold items (items with a known answer) is below `threshold`, for review.

    `gold_results` maps each rater to whether each of their gold answers was correct. Flagging uses the point
    accuracy, and only from `min_items` gold answers on: below that a single slip would flag a good rater, so
    those raters are not flagged but get reason "too few gold items". The Wilson interval shows how sure it is.
    """
    report = {}
    for rater, answers in gold_results.items():
        correct = [bool(a) for a in answers]
        n, k = len(correct), sum(correct)
        accuracy = wilson(k, n)
        flagged = n >= min_items and accuracy.value < threshold
        reason = "too few gold items" if n < min_items else "gold accuracy below threshold" if flagged else None
        report[rater] = {"gold_items": n, "correct": k, "accuracy": accuracy, "flagged": flagged, "reason": reason}
    return report
