"""Load the rows a stage trains and evaluates on, from any source a recipe names, in TRL's formats.

A source is one of: a built-in dataset name, a local file or directory (JSONL, JSON, CSV, Parquet), a mapping of
split name to local file, or a hub dataset id (loaded with `datasets.load_dataset`, the same code path a cluster
with network access uses).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config.schema import Data, Format
from tuneloop.data import builtin

if TYPE_CHECKING:
    from datasets import Dataset

FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TRL_COLUMNS = ("messages", "prompt", "completion", "text")


@dataclass
class PreparedData:
    """Formatted splits plus what lineage needs to know about them."""

    train: Dataset
    eval: Dataset | None
    fingerprints: dict[str, str]
    description: str
    prepare: dict[str, Any] | None = None  # fingerprint and per-step counts of `data.prepare`, when it has steps


def source_kind(source: str | dict[str, str], base_dir: Path) -> str:
    """`builtin`, `files` or `hub` — decided without touching the network."""
    if isinstance(source, dict):
        return "files"
    if source in builtin.names():
        return "builtin"
    p = Path(source).expanduser()
    if p.suffix in FILE_TYPES or source.startswith((".", "/", "~")) or (base_dir / p).exists() or p.exists():
        return "files"
    return "hub"


def resolve_file(name: str, base_dir: Path) -> Path:
    """A relative path is looked up next to the recipe first, then in the working directory."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return p
    return base_dir / p if (base_dir / p).exists() else p


def split_source(spec: Data, split: str, base_dir: Path) -> str:
    """Where a split's rows come from, for lineage: the local file, or the hub id (with subset and revision)."""
    kind = source_kind(spec.source, base_dir)
    if kind == "builtin":
        return str(builtin.split_file(str(spec.source), split))
    if kind == "files":
        found = local_splits(spec.source, base_dir).get(split)
        return str(found.resolve()) if found else str(spec.source)
    extra = "".join(f"{k}={v};" for k, v in (("subset", spec.subset), ("revision", spec.revision)) if v)
    return f"{spec.source}" + (f"?{extra.rstrip(';')}" if extra else "")


def local_splits(source: str | dict[str, str], base_dir: Path) -> dict[str, Path]:
    """Split name -> file for a local source. A single file is the `train` split."""
    if isinstance(source, dict):
        return {split: resolve_file(f, base_dir) for split, f in source.items()}
    path = resolve_file(source, base_dir)
    if path.is_dir():
        found = {}
        for f in sorted(path.iterdir()):
            if f.suffix in FILE_TYPES:
                found.setdefault(f.stem, f)
        return found
    return {"train": path}


def columns_of(path: Path) -> list[str]:
    """Column names of a local file, read from its first row or header only (fast, for `validate`)."""
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return next(csv.reader(f), [])
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with path.open() as f:
        if path.suffix == ".json":
            rows = json.load(f)
            first = rows[0] if isinstance(rows, list) and rows else {}
        else:
            line = next((ln for ln in f if ln.strip()), "{}")
            first = json.loads(line)
    return list(first) if isinstance(first, dict) else []


def text_columns(spec: Data, columns: list[str]) -> list[str]:
    """The columns that hold a row's input text: the prompt template's fields, else `prompt`, `messages`, `text`.

    Deduplication, decontamination and text filters compare inputs: a test prompt seen in training is what
    inflates scores, whatever the targets are."""
    fmt = effective_format(spec)
    if fmt is not None and fmt.prompt:
        from tuneloop.config.schema import template_fields

        return [c for c in dict.fromkeys(template_fields(fmt.prompt)) if c in columns]
    if fmt is not None and fmt.messages:
        return [fmt.messages] if fmt.messages in columns else []
    return [c for c in ("prompt", "messages", "text") if c in columns][:1]


def row_text(row: dict[str, Any], columns: list[str]) -> str:
    """One string per row from its text columns; chat turns contribute the user's messages."""
    parts = []
    for col in columns:
        value = row.get(col)
        if isinstance(value, list):
            parts += [str(t.get("content", "")) for t in value if isinstance(t, dict) and t.get("role") == "user"]
        elif value is not None:
            parts.append(str(value))
    return "\n".join(parts)


def _split_files(spec: Data, kind: str, base_dir: Path) -> dict[str, Path]:
    if kind == "builtin":
        return {s: builtin.split_file(str(spec.source), s) for s in builtin.info(str(spec.source))["splits"]}
    return local_splits(spec.source, base_dir)


def raw_splits(spec: Data, base_dir: Path, cap: int | None = None, only: list[str] | None = None) -> dict[str, Dataset]:
    """The splits of a source (all, or `only` those), unformatted; a built-in task keeps only rows with one of
    its labels."""
    from datasets import load_dataset

    kind = source_kind(spec.source, base_dir)
    if kind == "hub":
        loaded = load_dataset(str(spec.source), spec.subset, revision=spec.revision)
        out = {s: ds for s, ds in loaded.items() if only is None or s in only}
    else:
        files = _split_files(spec, kind, base_dir)
        out = {s: load_dataset(FILE_TYPES[p.suffix], data_files=str(p), split="train")
               for s, p in files.items() if only is None or s in only}  # fmt: skip
        if kind == "builtin" and spec.task:
            task = builtin.task(str(spec.source), spec.task)
            if task.labels:
                keep = set(task.labels)
                out = {s: ds.filter(lambda row, t=task.target: row[t] in keep) for s, ds in out.items()}
    if cap:
        out = {s: ds.select(range(min(cap, len(ds)))) for s, ds in out.items()}
    return out


def source_fingerprint(spec: Data, base_dir: Path) -> str:
    """What the raw rows are, cheaply: file digests for local and built-in data, hub id + revision + the
    datasets cache fingerprint for hub data. Feeds the cache key of prepared data."""
    kind = source_kind(spec.source, base_dir)
    h = hashlib.sha256(f"{kind}|{spec.source}|{spec.task}|{spec.subset}|{spec.revision}".encode())
    if kind == "builtin":
        h.update(json.dumps(builtin.info(str(spec.source)).get("sha256", {}), sort_keys=True).encode())
    elif kind == "files":
        for split, path in sorted(local_splits(spec.source, base_dir).items()):
            h.update(split.encode())
            with path.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    else:
        for split, ds in sorted(raw_splits(spec, base_dir).items()):
            h.update(f"{split}:{ds._fingerprint}".encode())
    return h.hexdigest()[:16]


def effective_format(spec: Data) -> Format | None:
    if spec.format is not None:
        return spec.format
    if spec.task and source_kind(spec.source, Path()) == "builtin":
        return builtin.task(str(spec.source), spec.task).format
    return None


def load_data(
    spec: Data,
    base_dir: Path,
    limit: int | None = None,
    *,
    smoke: bool = False,
    say: Callable[[str], None] | None = None,
) -> PreparedData:
    """Load, prepare, format and fingerprint the train and eval splits of `spec`.

    Rows keep their order (the first N for `max_*_rows`); the trainer shuffles with the recipe's seed.
    `limit` caps both splits further (smoke runs use a handful of rows); a smoke run prepares only the first
    SMOKE_PREPARE_ROWS rows of each split, so `data.prepare` is exercised in seconds.
    """
    kind = source_kind(spec.source, base_dir)
    wanted = {"train": spec.train_split}
    if spec.eval_split:
        wanted["eval"] = spec.eval_split
    prepared = None
    if spec.prepare:
        from tuneloop.data.prepare import SMOKE_PREPARE_ROWS, prepare

        prepared = prepare(spec, base_dir, cap=SMOKE_PREPARE_ROWS if smoke else None, say=say)
        if "eval" in wanted and wanted["eval"] not in prepared.splits and "eval_split" not in spec.model_fields_set:
            del wanted["eval"]
        missing = [split for split in wanted.values() if split not in prepared.splits]
        if missing:
            from tuneloop.errors import TuneloopError

            raise TuneloopError(
                f"after data.prepare there is no split {', '.join(map(repr, missing))}; "
                f"splits: {', '.join(prepared.splits)} (check the `split` step's fractions)"
            )
        raw = {role: prepared.splits[split] for role, split in wanted.items()}
    else:
        raw = _load_raw(spec, kind, base_dir, wanted)
    fmt = effective_format(spec)
    out: dict[str, Dataset] = {}
    fingerprints = {}
    for role, ds in raw.items():
        cap = spec.max_train_rows if role == "train" else spec.max_eval_rows
        caps = [c for c in (cap, limit) if c]
        if caps:
            ds = ds.select(range(min(len(ds), *caps)))
        ds = to_trl(ds, fmt)
        out[role] = ds
        fingerprints[wanted[role]] = fingerprint(ds)
    what = f"{spec.source}" + (f" ({spec.task})" if spec.task else "")
    record = {"fingerprint": prepared.fingerprint, "steps": prepared.steps} if prepared else None
    return PreparedData(out["train"], out.get("eval"), fingerprints, what, record)


def _load_raw(spec: Data, kind: str, base_dir: Path, wanted: dict[str, str]) -> dict[str, Dataset]:
    from datasets import load_dataset

    explicit_eval = "eval_split" in spec.model_fields_set
    if kind == "hub":
        got = {}
        for role, split in wanted.items():
            try:
                got[role] = load_dataset(str(spec.source), spec.subset, split=split, revision=spec.revision)
            except ValueError:
                if role == "eval" and not explicit_eval:
                    continue
                raise
        return got
    if "eval" in wanted and wanted["eval"] not in _split_files(spec, kind, base_dir) and not explicit_eval:
        del wanted["eval"]
    loaded = raw_splits(spec, base_dir, only=list(wanted.values()))
    return {role: loaded[split] for role, split in wanted.items()}


def to_trl(ds: Dataset, fmt: Format | None) -> Dataset:
    """Map rows to TRL's dataset formats; keep only the columns TRL reads."""
    if fmt is None:
        keep = [c for c in TRL_COLUMNS if c in ds.column_names]
        return ds.select_columns(keep)
    if fmt.messages:
        ds = ds.select_columns([fmt.messages])
        return ds if fmt.messages == "messages" else ds.rename_column(fmt.messages, "messages")

    def render(row: dict[str, Any]) -> dict[str, Any]:
        prompt = fmt.prompt.format_map(row)
        completion = fmt.completion.format_map(row)
        if fmt.style == "plain":
            return {"prompt": prompt, "completion": completion}
        turns = [{"role": "system", "content": fmt.system}] if fmt.system else []
        turns.append({"role": "user", "content": prompt})
        return {"prompt": turns, "completion": [{"role": "assistant", "content": completion}]}

    return ds.map(render, remove_columns=ds.column_names, desc="formatting")


def fingerprint(ds: Dataset) -> str:
    """Content hash of the formatted rows: same rows in the same order give the same fingerprint anywhere."""
    h = hashlib.sha256()
    for row in ds:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
