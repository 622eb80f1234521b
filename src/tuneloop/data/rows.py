"""Read a local data file row by row, knowing where each row is, and say what is wrong with the values a method
trains on.

`validate` reads every row of every local file this way (streamed with the json and csv modules, pyarrow for
Parquet: no `datasets` Dataset is built), so that a malformed line, an empty file, a null prompt or a completion
given as a list is reported as `data/train.jsonl:7: ...` before a model loads, rather than as a library traceback
mid-run. The loader uses `first_unreadable` to say the same when `datasets` fails on a file.

Where a row is: `path:LINE` for JSON Lines and CSV (the line its record ends on), `path row N` (1-based) for a
JSON array and for Parquet, which have no useful line.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUE_LABELS = {"true", "1", "yes", "good", "up", "desirable", "thumbs_up", "accept", "accepted"}
FALSE_LABELS = {"false", "0", "no", "bad", "down", "undesirable", "thumbs_down", "reject", "rejected"}
SHOWN = 5  # problems listed per file; the rest are counted by kind

# What a field must hold (the values of `needs` in `scan_file`):
TEXT = "text"  # a non-empty string a template or the trainer reads (numbers and booleans render fine too)
PART = "part"  # like TEXT, but may be empty: a template field beside other text ('{context}\n{question}')
TEXT_OR_TURNS = "text or turns"  # TRL's prompt/completion/chosen/rejected: a string or a list of chat turns
TURNS = "turns"  # chat `messages`: a non-empty list of {role, content}
LABEL = "label"  # a KTO label: a boolean, 1/0 or a word of TRUE_LABELS / FALSE_LABELS
REFS = "references"  # an evaluation answer: like TEXT_OR_TURNS, or a non-empty list of non-empty strings


@dataclass
class Row:
    """One row as read: where it is, its value, or why it could not be read."""

    where: str  # `path:7` or `path row 7`
    value: Any = None
    error: str | None = None


@dataclass
class FileScan:
    """What `scan_file` found: rows read and the problems (the first SHOWN of them in
    full, every one counted by kind)."""

    rows: int = 0
    shown: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # problems not shown, by kind

    def add(self, kind: str, message: str) -> None:
        if len(self.shown) < SHOWN:
            self.shown.append(message)
        else:
            self.counts[kind] += 1

    def messages(self, path: str) -> list[str]:
        """The problems as they are printed: the first SHOWN, then one line counting the rest by kind, so a
        systematic error in a million rows is six lines, not a million."""
        more = sum(self.counts.values())
        if not more:
            return list(self.shown)
        kinds = ", ".join(f"{kind}: {n}" for kind, n in self.counts.most_common())
        return [*self.shown, f"{path}: and {more} more like these ({kinds})"]


def is_label(value: Any) -> bool:
    if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
        return True
    return isinstance(value, str) and value.strip().lower() in TRUE_LABELS | FALSE_LABELS


def iter_rows(path: Path, shown: str | None = None) -> Iterator[Row]:
    """Every row of a .jsonl, .json, .csv or .parquet file, in order; an unreadable line is a Row with `error`
    and reading goes on (JSON Lines) so that every bad line can be reported."""
    shown = shown or str(path)
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, shown)
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for record in reader:
                yield Row(f"{shown}:{reader.line_num}", record)
    elif path.suffix == ".json" and _starts_with(path, "["):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            yield Row(f"{shown}:{e.lineno}", error=f"malformed JSON ({e.msg}, column {e.colno})")
            return
        for i, value in enumerate(rows):
            yield Row(f"{shown} row {i + 1}", value)
    else:  # .jsonl, and a .json file of one object per line (what `datasets` reads too)
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield Row(f"{shown}:{n}", json.loads(line))
                except json.JSONDecodeError as e:
                    yield Row(f"{shown}:{n}", error=f"malformed JSON line ({e.msg}, column {e.colno})")


def _starts_with(path: Path, char: str) -> bool:
    with path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith(char)


def _parquet_rows(path: Path, shown: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
        for value in batch.to_pylist():
            n += 1
            yield Row(f"{shown} row {n}", value)


def value_problem(value: Any, need: str) -> tuple[str, str] | None:
    """(kind, why) when `value` cannot be a field that needs `need`, None when it can. The kind counts rows
    alike in the summary line, so it never holds the value itself."""
    if value is None:
        return "is null", "is null"
    if need == LABEL:
        if is_label(value):
            return None
        return "is not a label", f"is {value!r}, not a label (use true/false, 1/0, good/bad or up/down)"
    if isinstance(value, str):
        if need == TURNS:
            return "is a string", "is a string; `messages` is a list of {role, content} turns"
        return ("is an empty string", "is an empty string") if not value.strip() and need != PART else None
    if need in (TEXT, PART):
        if isinstance(value, int | float):
            return None
        return f"is {_kind(value)}", f"is {_kind(value)}; a template field needs text (it would render as {value!r})"
    if need == REFS and isinstance(value, list) and value and all(isinstance(t, str | type(None)) for t in value):
        bad = next((j for j, t in enumerate(value) if t is None or not t.strip()), None)
        if bad is None:
            return None  # several references: BLEU, chrF and ROUGE use them all
        why = f"has {value[bad]!r} at {bad + 1}; a list of references holds non-empty strings"
        return "has an empty reference", why
    if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
        for j, turn in enumerate(value):
            missing = [k for k in ("role", "content") if k not in turn]
            if missing:
                why = f"turn {j + 1} has no {' or '.join(missing)} (each turn is {{role, content}})"
                return "has a turn without role or content", why
        return None
    if need == TURNS:
        return f"is {_kind(value)}", f"is {_kind(value)}; `messages` is a list of {{role, content}} turns"
    if need == REFS:
        why = "it must be a string, a list of {role, content} turns, or a list of reference strings"
        return f"is {_kind(value)}", f"is {_kind(value)}; {why}"
    return f"is {_kind(value)}", f"is {_kind(value)}; it must be a string or a list of {{role, content}} turns"


def _kind(value: Any) -> str:
    if isinstance(value, list):
        inner = sorted({type(v).__name__ for v in value})
        return f"a list of {'/'.join(inner)}" if inner else "an empty list"
    return {"dict": "an object", "int": "a number", "float": "a number", "bool": "a boolean"}.get(
        type(value).__name__, f"a {type(value).__name__}"
    )


def first_columns(path: Path) -> list[str] | None:
    """The columns of a file: the CSV header, the Parquet schema, the first JSON row that is an object; None when
    no row can say (the full scan reports why)."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return next(csv.reader(f), None)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    for row in itertools.islice(iter_rows(path), 100):
        if isinstance(row.value, dict):
            return list(row.value)
    return None


def scan_file(path: Path, needs: dict[str, str], shown: str | None = None) -> FileScan:
    """Read every row of `path` and check the fields in `needs` (column -> TEXT, PART, TEXT_OR_TURNS, TURNS or
    LABEL).

    Streams: memory stays flat however long the file; only the first SHOWN problems are kept as text."""
    shown = shown or str(path)
    scan = FileScan()
    for row in iter_rows(path, shown):
        if row.error:
            scan.add("malformed JSON", f"{row.where}: {row.error}")
            continue
        scan.rows += 1
        if not isinstance(row.value, dict):
            scan.add("not an object", f"{row.where}: the row is {_kind(row.value)}, not an object of columns")
            continue
        for col, need in needs.items():
            if col not in row.value:
                scan.add(f"no {col}", f"{row.where}: no `{col}` (the row has {', '.join(row.value) or 'no columns'})")
                continue
            problem = value_problem(row.value[col], need)
            if problem:
                scan.add(f"{col} {problem[0]}", f"{row.where}: `{col}` {problem[1]}")
    if scan.rows == 0 and not scan.shown:
        scan.add("empty", f"{shown}: no rows (the file is empty)")
    return scan


def first_unreadable(path: Path, shown: str | None = None) -> str | None:
    """`path:LINE: why` for the first line that cannot be read, or for an empty file; None when all rows parse.
    For the loader, to re-say a `datasets` failure with the line it was on."""
    if path.suffix not in (".jsonl", ".json"):
        return None
    shown = shown or str(path)
    empty = True
    for row in iter_rows(path, shown):
        if row.error:
            return f"{row.where}: {row.error}"
        empty = False
    return f"{shown}: no rows (the file is empty)" if empty else None
