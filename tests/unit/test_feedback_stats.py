"""Feedback statistics: agreement (alpha, kappa), Bradley-Terry rankings, position bias and rater flagging."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from tuneloop.feedback.stats import (
    ELO_SCALE,
    Estimate,
    bradley_terry,
    cohen_kappa_pairs,
    flag_raters,
    krippendorff_alpha,
    position_bias,
    wilson,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 observers x 12 units, None = missing.
_PAPER = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def paper_ratings(recode=lambda v: v):
    return {
        f"u{unit}": {rater: recode(values[unit]) for rater, values in _PAPER.items() if values[unit] is not None}
        for unit in range(12)
    }


def test_alpha_reproduces_the_paper():
    est = krippendorff_alpha(paper_ratings(), "nominal", resamples=200)
    assert est.value == pytest.approx(0.743, abs=0.001)
    assert est.ci_low <= est.value <= est.ci_high
    assert est.n == 11  # unit 12 has a single rating, so it cannot be paired


def test_alpha_codes_string_labels_and_is_seeded():
    labels = paper_ratings(lambda v: "abcde"[v - 1])
    est = krippendorff_alpha(labels, "nominal", resamples=200, seed=3)
    assert est.value == pytest.approx(0.743, abs=0.001)
    assert est == krippendorff_alpha(labels, "nominal", resamples=200, seed=3)
    with pytest.raises(ValueError, match="numeric"):
        krippendorff_alpha(labels, "ordinal")


def test_alpha_levels_differ_on_numeric_data():
    ordinal = krippendorff_alpha(paper_ratings(), "ordinal", resamples=50)
    interval = krippendorff_alpha(paper_ratings(), "interval", resamples=50)
    assert interval.value == pytest.approx(0.849, abs=0.001)
    assert abs(ordinal.value - interval.value) > 0.01


def test_alpha_perfect_agreement_and_too_few_items():
    perfect = {f"i{k}": {"r1": k % 3, "r2": k % 3, "r3": k % 3} for k in range(9)}
    assert krippendorff_alpha(perfect, "nominal", resamples=50).value == pytest.approx(1.0)
    few = krippendorff_alpha({"i1": {"r1": 1, "r2": 2}, "i2": {"r1": 3}}, "nominal")
    assert math.isnan(few.value) and few.n == 1 and "at least two items" in few.note


def test_kappa_pairs_match_sklearn_on_common_items_and_skip_disjoint_pairs():
    ratings = {
        "i1": {"ann": "good", "bob": "good"},
        "i2": {"ann": "bad", "bob": "good"},
        "i3": {"ann": "bad", "bob": "bad"},
        "i4": {"ann": "good", "bob": "good", "cy": "bad"},
        "i5": {"ann": "good", "cy": "good"},
        "i6": {"dee": "bad"},
    }
    pairs = {(p["rater_a"], p["rater_b"]): p for p in cohen_kappa_pairs(ratings)}
    assert set(pairs) == {("ann", "bob"), ("ann", "cy"), ("bob", "cy")}
    expected = cohen_kappa_score(["good", "bad", "bad", "good"], ["good", "good", "bad", "good"])
    assert pairs["ann", "bob"]["kappa"] == pytest.approx(expected)
    assert pairs["ann", "bob"]["n"] == 4 and pairs["ann", "cy"]["n"] == 2
    assert math.isnan(pairs["bob", "cy"]["kappa"])  # one item in common


def test_weighted_kappa_matches_sklearn():
    a, b = [1, 2, 3, 4, 5, 3], [1, 3, 3, 5, 4, 1]
    ratings = {f"i{k}": {"r1": x, "r2": y} for k, (x, y) in enumerate(zip(a, b, strict=True))}
    [pair] = cohen_kappa_pairs(ratings, weights="quadratic")
    assert pair["kappa"] == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))


def simulated_votes(seed=0, n=150):
    rng = np.random.default_rng(seed)
    votes = []
    for better, worse in [("A", "B"), ("B", "C")]:
        votes += [(better, worse) if rng.random() < 0.8 else (worse, better) for _ in range(n)]
    return votes + [("A", "C", "tie")] * 5


def test_bradley_terry_ranks_simulated_models():
    rows = bradley_terry(simulated_votes(), ["C", "B", "A"], resamples=200, seed=1)
    assert [r["name"] for r in rows] == ["A", "B", "C"] and [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["ci_low"] <= r["score"] <= r["ci_high"] for r in rows)
    a, _, c = rows
    assert a["ci_low"] > c["ci_high"]
    assert np.mean([r["score"] for r in rows]) == pytest.approx(1000)
    assert a["ties"] == c["ties"] == 5 and rows[1]["ties"] == 0
    assert a["wins"] + a["losses"] == 150 and rows[1]["wins"] + rows[1]["losses"] == 300
    assert rows == bradley_terry(simulated_votes(), ["C", "B", "A"], resamples=200, seed=1)


def test_tie_is_half_a_win_each_way():
    # 2 wins + 1 tie = 2.5 wins to 0.5, so the strength gap is ln(2.5 / 0.5)
    rows = bradley_terry([("A", "B"), ("A", "B"), ("A", "B", "tie")], ["A", "B"], resamples=0, alpha=1e-6)
    assert rows[0]["score"] - rows[1]["score"] == pytest.approx(ELO_SCALE * math.log(5), rel=1e-3)
    only_ties = bradley_terry([("A", "B", "tie")] * 4, ["A", "B"], resamples=20)
    assert [r["score"] for r in only_ties] == pytest.approx([1000, 1000])


def test_bradley_terry_all_wins_stay_finite_and_bad_input_fails():
    rows = bradley_terry([("A", "B")] * 10, ["A", "B"], resamples=20)
    assert all(math.isfinite(r[k]) for r in rows for k in ("score", "ci_low", "ci_high"))
    with pytest.raises(ValueError, match="unknown model"):
        bradley_terry([("A", "Z")], ["A", "B"])
    with pytest.raises(ValueError, match="'tie'"):
        bradley_terry([("A", "B", "draw")], ["A", "B"])


def test_position_bias_and_wilson():
    bias = position_bias(70, 100)
    assert bias.value == pytest.approx(0.70) and bias.n == 100
    assert 0.5 < bias.ci_low < 0.70 < bias.ci_high < 1 and "left" in bias.note
    assert position_bias(50, 100).note is None
    empty = wilson(0, 0)
    assert math.isnan(empty.value) and math.isnan(empty.ci_low) and empty.note
    assert wilson(10, 10).ci_high == pytest.approx(1.0) and wilson(10, 10).ci_low < 1
    assert Estimate(0.5, 0.4, 0.6, 10).as_dict() == {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10, "note": None}


def test_flag_raters():
    report = flag_raters(
        {"sloppy": [True] * 2 + [False] * 8, "new": [True, True, False], "good": [True] * 9 + [False]}, 0.7
    )
    assert report["sloppy"]["flagged"] and report["sloppy"]["accuracy"].value == pytest.approx(0.2)
    assert report["sloppy"]["gold_items"] == 10 and report["sloppy"]["correct"] == 2
    assert not report["new"]["flagged"] and report["new"]["reason"] == "too few gold items"
    assert not report["good"]["flagged"] and report["good"]["reason"] is None
