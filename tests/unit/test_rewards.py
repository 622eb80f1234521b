"""Built-in rewards follow TRL's reward-function contract and Debian's synopsis rules; the metric agrees."""

from __future__ import annotations

import json

import pytest

from tuneloop.data import builtin
from tuneloop.eval.metrics import generation_metrics
from tuneloop.rewards import build_builtin, debian_synopsis_rules, synopsis_violations


@pytest.mark.parametrize(
    ("text", "package", "broken"),
    [
        ("command-line tool to resize images", "imgresize", []),
        ("A command-line tool to resize images", None, ["no_leading_article"]),
        ("the GNU C library", None, ["no_leading_article"]),
        ("another tool", None, []),  # "an" only as a whole word
        ("tool to resize images.", None, ["no_full_stop"]),
        ("tool for ... and more...", None, []),  # an ellipsis is not a full stop
        ("imgresize resizes images", "imgresize", ["no_package_name"]),
        ("python3-imgresize bindings", "imgresize", []),  # a longer name that contains it is fine
        ("x" * 80, None, ["under_80_chars"]),
        ("first line\nsecond line", None, ["one_line"]),
        ("   ", None, ["empty"]),
    ],
)
def test_synopsis_rules(text, package, broken):
    assert synopsis_violations(text, package) == broken


def test_rule_reward_takes_chat_completions_and_dataset_columns():
    completions = [
        [{"role": "assistant", "content": "tool to resize images"}],
        [{"role": "assistant", "content": "The imgresize tool."}],
        [{"role": "assistant", "content": ""}],
    ]
    scores = debian_synopsis_rules(
        prompts=[None] * 3, completions=completions, completion_ids=None, package=["imgresize"] * 3
    )
    assert scores == [1.0, pytest.approx(1 - 3 / 5), 0.0]


def test_rouge_reward_reads_the_reference_column_and_skips_missing_ones():
    rouge = build_builtin("rougeL", "synopsis", 80)
    got = rouge(prompts=["p", "p"], completions=["resize images", "x"], synopsis=["resize images", None])
    assert got == [pytest.approx(1.0), None]
    length = build_builtin("length", None, 10)
    assert length(prompts=[], completions=["a" * 10, "a" * 15, "a" * 30]) == [1.0, 0.5, 0.0]


def test_real_synopses_mostly_follow_the_rules_and_the_metric_says_so():
    rows = [json.loads(line) for line in builtin.split_file("debian-descriptions", "test").open()][:200]
    preds = [r["synopsis"] for r in rows]
    ok = generation_metrics(
        preds,
        [[p] for p in preds],
        ["synopsis_rules"],
        resamples=100,
        columns={"package": [r["package"] for r in rows]},
    )["synopsis_rules"]
    assert ok.value > 95 and ok.ci_low <= ok.value <= ok.ci_high
    sentences = [f"The {r['package']} package provides tools." for r in rows]
    bad = generation_metrics(
        sentences,
        [[p] for p in preds],
        ["synopsis_rules"],
        resamples=100,
        columns={"package": [r["package"] for r in rows]},
    )["synopsis_rules"]
    assert bad.value == 0
