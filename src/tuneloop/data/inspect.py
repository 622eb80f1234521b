"""`tuneloop data inspect`: what is in a dataset before anyone pays to train on it.

Per split: rows, example length in tokens with the model's tokenizer (histogram, percentiles, the share the
stage's max_length would truncate), exact and near-duplicate rates with the largest clusters, exact and near
overlap with the training split (which inflates scores), language mix (lingua, offline), label balance, format
problems with row numbers, and the shortest and longest examples. The result is a dict (report.json) that
`data/report.py` renders for the terminal and as report.html.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config.schema import Data
from tuneloop.config.templates import template_fields
from tuneloop.data import dedup as dd
from tuneloop.data.prepare import detect_languages, example_tokens, load_tokenizer_for, texts_of
from tuneloop.data.sources import effective_format, source_kind, text_columns, to_trl

if TYPE_CHECKING:
    from datasets import Dataset

FORMAT = "tuneloop-data-inspect/1"
PERCENTILES = (50, 90, 95, 99)
SHOWN = 3  # examples per list (clusters, overlaps, shortest, longest)
PROBLEM_ROWS = 20  # row numbers listed per kind of format problem
LANGUAGE_SAMPLE = 5000  # language mix estimated on a seeded sample: lingua runs at ~650 rows/s on 2 cores


@dataclass
class Target:
    """What to inspect: the data section, the tokenizer's model, the truncation length, the label column."""

    data: Data
    base_dir: Path
    tokenizer: str | None
    max_length: int | None
    label: str | None = None
    columns: list[str] | None = None  # text columns to analyse; default: the prompt's fields
    labels: list[str] | None = None
    train_split: str = "train"
    threshold: float = 0.8
    ngram: int = 3
    prepare_say: Callable[[str], None] | None = None


def inspect(target: Target, splits: dict[str, Dataset], say: Callable[[str], None] = print) -> dict[str, Any]:

    tokenizer = load_tokenizer_for(target.tokenizer, target.base_dir) if target.tokenizer else None
    fmt = effective_format(target.data)
    train_name = target.train_split if target.train_split in splits else next(iter(splits))
    train_texts = texts_of(splits[train_name], target.data, target.columns)
    report: dict[str, Any] = {
        "format": FORMAT,
        "source": str(target.data.source),
        "task": target.data.task,
        "tokenizer": target.tokenizer,
        "max_length": target.max_length,
        "near_threshold": target.threshold,
        "ngram": target.ngram,
        "train_split": train_name,
        "text_columns": target.columns or _text_columns(target.data, splits[train_name]),
        "splits": {},
    }
    for name, ds in splits.items():
        say(f"inspecting {name}: {len(ds)} rows")
        texts = train_texts if name == train_name else texts_of(ds, target.data, target.columns)
        entry: dict[str, Any] = {"rows": len(ds)}
        entry["tokens"] = _tokens(ds, target, tokenizer, texts)
        entry["duplicates"] = _duplicates(texts, target)
        if name != train_name:
            entry["overlap_with_train"] = _overlap(texts, train_texts, target)
        entry["languages"], entry["languages_sampled"] = _languages(texts)
        label = target.label or (target.data.task and _builtin_target(target.data))
        if label and label in ds.column_names:
            counts = Counter(str(v) for v in ds[label])
            entry["labels"] = {"column": label, "counts": dict(counts.most_common())}
        entry["problems"] = _problems(ds, fmt, target)
        report["splits"][name] = entry
    return report


def _languages(texts: list[str]) -> tuple[dict[str, int], int]:
    """Counts scaled to the split's size when only a sample was detected, and the sample size."""
    import random

    sample = texts if len(texts) <= LANGUAGE_SAMPLE else random.Random(0).sample(texts, LANGUAGE_SAMPLE)
    counts = Counter(lang or "unknown" for lang in detect_languages(sample))
    scale = len(texts) / max(1, len(sample))
    return {k: round(v * scale) for k, v in counts.most_common()}, len(sample)


def _text_columns(data: Data, ds: Dataset) -> list[str]:

    return text_columns(data, ds.column_names)


def _builtin_target(data: Data) -> str | None:
    from tuneloop.data import builtin

    if source_kind(data.source, Path()) != "builtin" or not data.task:
        return None
    task = builtin.task(str(data.source), data.task)
    return task.target if task.kind == "classification" else None


def _tokens(ds: Dataset, target: Target, tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    import numpy as np

    if tokenizer is None:
        lengths = [len(t.split()) for t in texts]
        unit = "words"
    else:
        fmt = effective_format(target.data)
        lengths = None
        if fmt is not None or {"messages", "prompt", "text"} & set(ds.column_names):
            try:
                lengths = [example_tokens(row, tokenizer) for row in to_trl(ds, fmt)]
            except (KeyError, ValueError, TypeError):  # rows that do not fit the format: count their text instead
                lengths = None
        if lengths is None:
            lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
        unit = "tokens"
    arr = np.asarray(lengths, dtype=float)
    out: dict[str, Any] = {"unit": unit, "values": lengths}
    if arr.size:
        out |= {"mean": float(arr.mean()), "min": int(arr.min()), "max": int(arr.max())}
        out |= {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}
    if target.max_length and unit == "tokens":
        over = int((arr > target.max_length).sum())
        out["truncated"] = {"rows": over, "share": over / max(1, arr.size), "max_length": target.max_length}
    order = np.argsort(arr, kind="stable")
    out["shortest"] = [{"row": int(i) + 1, "length": lengths[i], "text": texts[i][:300]} for i in order[:SHOWN]]
    out["longest"] = [{"row": int(i) + 1, "length": lengths[i], "text": texts[i][:300]} for i in order[::-1][:SHOWN]]
    return out


def _duplicates(texts: list[str], target: Target) -> dict[str, Any]:
    """Rows with no text (null or empty fields) are left out: they are format problems (`_problems`), and as one
    giant 'exact duplicate' cluster they would hide the real duplicates."""
    kept = [i for i, t in enumerate(texts) if t.strip()]
    exact = [[kept[j] for j in g] for g in dd.exact_clusters([texts[i] for i in kept])]
    near = [[kept[j] for j in g] for g in dd.near_clusters([texts[i] for i in kept], target.threshold, target.ngram)]
    n = max(1, len(texts))
    extra_exact = sum(len(g) - 1 for g in exact)
    extra_near = sum(len(g) - 1 for g in near)
    biggest = sorted(near, key=len, reverse=True)[:SHOWN]
    return {
        "exact_rows": extra_exact,
        "exact_share": extra_exact / n,
        "near_rows": extra_near,  # rows a near dedup would drop (exact copies included)
        "near_share": extra_near / n,
        "clusters": len(near),
        "largest": [
            {"size": len(g), "rows": [i + 1 for i in g[:8]], "examples": [texts[i][:200] for i in g[:3]]}
            for g in biggest
        ],
    }


def _overlap(texts: list[str], train: list[str], target: Target) -> dict[str, Any]:
    matches = dd.cross_matches(texts, train, target.threshold, target.ngram)
    exact = sum(1 for _j, s in matches.values() if s >= 1.0)
    n = max(1, len(texts))
    shown = sorted(matches.items(), key=lambda kv: -kv[1][1])[:SHOWN]
    return {
        "exact_rows": exact,
        "near_rows": len(matches) - exact,
        "rows": len(matches),
        "share": len(matches) / n,
        "examples": [
            {
                "row": i + 1,
                "train_row": j + 1,
                "jaccard": round(s, 3),
                "text": texts[i][:200],
                "train_text": train[j][:200],
            }
            for i, (j, s) in shown
        ],
    }


def _problems(ds: Dataset, fmt: Any, target: Target) -> dict[str, Any]:
    """Null, empty or missing fields the format reads (or, without a format, the TRL columns the rows have),
    chat turns out of order; 1-based rows."""

    found: dict[str, list[int]] = {}

    def add(kind: str, i: int) -> None:
        found.setdefault(kind, []).append(i + 1)

    fields: list[str] = []
    if fmt is not None and fmt.prompt:
        fields = list(dict.fromkeys(template_fields(fmt.prompt) + template_fields(fmt.completion or "")))
    target_fields = set(template_fields(fmt.completion or "")) if fmt is not None and fmt.completion else set()
    if fmt is None:
        fields = [c for c in ("prompt", "completion", "text", "chosen", "rejected") if c in ds.column_names]
        target_fields = {"completion"}
    messages = (
        fmt.messages if fmt is not None and fmt.messages else ("messages" if "messages" in ds.column_names else None)
    )
    for i, row in enumerate(ds):
        for col in fields:
            value = row.get(col)
            if value is None:  # `datasets` reads a key a row lacks as null: the two cannot be told apart here
                add(f"missing or null {col}", i)
            elif (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
                add("empty completion" if col in target_fields else f"empty {col}", i)
        if messages and messages in row:
            problem = _turn_problem(row[messages])
            if problem:
                add(problem, i)
    return {kind: {"count": len(rows), "rows": rows[:PROBLEM_ROWS]} for kind, rows in found.items()}


def _turn_problem(turns: Any) -> str | None:
    if not isinstance(turns, list) or not turns:
        return "messages not a list of turns"
    roles = [t.get("role") if isinstance(t, dict) else None for t in turns]
    if any(r not in ("system", "user", "assistant", "tool") for r in roles):
        return "unknown message role"
    body = roles[1:] if roles[0] == "system" else roles
    if "system" in body:
        return "system turn after the first"
    body = [r for r in body if r != "tool"]
    if not body or body[0] != "user":
        return "chat does not start with a user turn"
    if any(a == b for a, b in itertools.pairwise(body)):
        return "chat turns out of order (two in a row from one role)"
    if body[-1] != "assistant":
        return "chat does not end with an assistant turn"
    if any(
        isinstance(t, dict) and not str(t.get("content") or "").strip() for t in turns if t.get("role") == "assistant"
    ):
        return "empty assistant turn"
    return None
