"""Turn a suite task into prompts and references, through the same data code that trains (so the prompt format
of evaluation is the format of training), and parse answers back into labels for classification.

A row may carry several references: a `completion` that is a list of strings, or a `references` column (a list,
or one string), which wins over the completion. Generation metrics use all of them (sacrebleu's reference streams,
rouge-score's best reference, exact match against any); perplexity scores the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.config.evaluation import REFERENCES, EvalTask
from tuneloop.config.schema import Data, Format
from tuneloop.data import builtin
from tuneloop.data.sources import effective_format, load_data, source_kind, split_source
from tuneloop.errors import TuneloopError
from tuneloop.eval.backends import Prompt
from tuneloop.eval.metrics import METRIC_COLUMNS


@dataclass
class TaskRows:
    task: EvalTask
    kind: str
    metrics: list[str]
    prompts: list[Prompt]
    references: list[list[str]]
    labels: list[str] | None
    fmt: Format | None
    data: dict[str, Any]  # source, task, split, rows, fingerprint: what the numbers were computed on
    columns: dict[str, list[Any]] = field(default_factory=dict)  # raw columns some metrics read (METRIC_COLUMNS)


def load_task(task: EvalTask, default_data: Data | None, base_dir: Path, smoke: bool = False) -> TaskRows:
    data = task.data or default_data
    if data is None:
        raise TuneloopError(f"task {task.name}: no data (give the task a `data:` section)")
    builtin_task = None
    if data.task and source_kind(data.source, base_dir) == "builtin":
        builtin_task = builtin.task(str(data.source), data.task)
    kind = task.resolved_kind(builtin_task.kind if builtin_task else None)
    spec = data.model_copy(update={"train_split": task.split, "eval_split": None, "max_train_rows": None})

    metrics = task.resolved_metrics(kind)
    extra = sorted({c for m in metrics for c in METRIC_COLUMNS.get(m, [])} | {REFERENCES})
    prepared = load_data(spec, base_dir, limit=task.max_rows, smoke=smoke, extra_columns=extra)
    rows = prepared.train
    columns = {c: rows[c] for c in extra if c in rows.column_names and c != REFERENCES}
    prompts: list[Prompt] = []
    references: list[list[str]] = []
    for i, row in enumerate(rows):
        if kind == "preference":
            prompt, pair = _split_pair(row, task.name)
            prompts.append(prompt)
            references.append(pair)
            continue
        prompt, refs = _split_row(row, task.name)
        if isinstance(refs, list):
            where = split_source(spec, task.split, base_dir) + (" (after data.prepare)" if data.prepare else "")
            refs = _checked_references(refs, f"task {task.name}: {where} row {i + 1}")
            if kind == "classification" and len(refs) > 1:
                raise TuneloopError(
                    f"task {task.name}: {where} row {i + 1}: a classification row has one true label, "
                    f"got {len(refs)} references {refs!r}"
                )
        prompts.append(prompt)
        references.append(refs if isinstance(refs, list) else [refs])
    labels = task.labels or (list(builtin_task.labels) if builtin_task and builtin_task.labels else None)
    if kind == "classification" and not labels:
        raise TuneloopError(f"task {task.name}: a classification task needs `labels:`")
    info = {
        "source": data.source,
        "task": data.task,
        "split": task.split,
        "rows": len(rows),
        "fingerprint": prepared.fingerprints.get(task.split),
    }
    fmt = effective_format(data)
    return TaskRows(task, kind, metrics, prompts, references, labels, fmt, info, columns)


def _split_pair(row: dict[str, Any], task: str) -> tuple[Prompt, list[str]]:
    """A preference row's prompt and [chosen, rejected] answer texts."""
    if not all(k in row for k in ("prompt", "chosen", "rejected")):
        raise TuneloopError(f"task {task} (preference): rows need prompt, chosen and rejected columns")

    def text(answer: Any) -> str:
        return answer[-1]["content"] if isinstance(answer, list) else str(answer)

    return row["prompt"], [text(row["chosen"]), text(row["rejected"])]


def _split_row(row: dict[str, Any], task: str) -> tuple[Prompt, str | list[Any]]:
    """A row's prompt and its reference: one string, or the list of references (checked by the caller)."""
    refs = row.get(REFERENCES)
    if "messages" in row:
        turns = list(row["messages"])
        if not turns or turns[-1].get("role") != "assistant":
            raise TuneloopError(f"task {task}: a `messages` row must end with the assistant's answer")
        return turns[:-1], turns[-1]["content"] if refs is None else refs
    if "prompt" in row and (refs is not None or "completion" in row):
        completion = row.get("completion")
        if refs is None and isinstance(completion, list) and completion and isinstance(completion[-1], dict):
            refs = completion[-1].get("content")  # a conversational completion: the assistant's turn
        return row["prompt"], completion if refs is None else refs
    if "text" in row:
        return "", row["text"]  # plain language-model text: perplexity only
    raise TuneloopError(
        f"task {task}: rows need prompt/completion, prompt/references or messages columns after formatting"
    )


def _checked_references(refs: list[Any], where: str) -> list[str]:
    """Several references must each be text: sacrebleu reads None as "no reference here" and an empty string as a
    reference nothing matches, so either would change the scores without a word."""
    bad = [j for j, r in enumerate(refs) if not isinstance(r, str) or not r.strip()]
    if not refs or bad:
        what = "is empty" if not refs else f"has {', '.join(f'{refs[j]!r} at {j}' for j in bad)}"
        raise TuneloopError(
            f"{where}: a list of references must be a non-empty list of non-empty strings; this one {what}"
        )
    return list(refs)


def parse_label(answer: str, labels: list[str]) -> str | None:
    """The label an answer names: the whole answer, else the earliest label mentioned as a word; None when the
    answer names none (counted as a parse failure, never dropped)."""
    clean = answer.strip().strip(".:;,!\"'`*").strip().lower()
    by_lower = {label.lower(): label for label in labels}
    if clean in by_lower:
        return by_lower[clean]
    found = []
    for label in labels:
        m = re.search(rf"(?<![\w-]){re.escape(label.lower())}(?![\w-])", answer.lower())
        if m:
            found.append((m.start(), -len(label), label))
    return min(found)[2] if found else None
