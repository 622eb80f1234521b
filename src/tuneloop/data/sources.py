"""Load the rows a stage trains and evaluates on, from any source a recipe names, in TRL's formats.

A source is one of: a built-in dataset name, a local file or directory (JSONL, JSON, CSV, Parquet), a mapping of
split name to local file, or a hub dataset id (loaded with `datasets.load_dataset`, the same code path a cluster
with network access uses).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config.schema import Data, Format
from tuneloop.config.trainer_fields import closest
from tuneloop.data import builtin
from tuneloop.data.rows import FALSE_LABELS, TRUE_LABELS, first_unreadable
from tuneloop.errors import TuneloopError, UsageError

if TYPE_CHECKING:
    from datasets import Dataset

FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TRL_COLUMNS = ("messages", "prompt", "completion", "text", "chosen", "rejected", "label")
# Tried in this order when `eval_split` is left at its default and the source has no `validation` split.
EVAL_FALLBACKS = ("valid", "val", "dev", "test")


@dataclass
class PreparedData:
    """Formatted splits plus what lineage needs to know about them."""

    train: Dataset
    eval: Dataset | None
    fingerprints: dict[str, str]
    description: str
    prepare: dict[str, Any] | None = None  # fingerprint and per-step counts of `data.prepare`, when it has steps
    eval_split: str | None = None  # the split `eval` came from: the recipe's, or its stated fallback


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


def builtin_lookalike(source: str | dict[str, str]) -> str | None:
    """The built-in dataset a hub-looking source was probably meant to name (`debian-descripions`), else None.
    A hub id with an organisation (`org/name`) is never one."""
    if not isinstance(source, str) or "/" in source or source in builtin.names():
        return None
    return closest(source, builtin.names())


def eval_split_for(spec: Data, splits: list[str]) -> tuple[str | None, str | None]:
    """The split a stage evaluates on, and a note to print when it is not the one the recipe names.

    An `eval_split` the recipe sets is taken as written (a missing one is an error elsewhere). Left at its
    default (`validation`) on a source without that split, the first of EVAL_FALLBACKS the source has is used
    and said; with none, the stage trains without evaluation, and that is said too."""
    if "eval_split" in spec.model_fields_set or not spec.eval_split or spec.eval_split in splits:
        return spec.eval_split, None
    listed = ", ".join(splits)
    for name in EVAL_FALLBACKS:
        if name in splits and name != spec.train_split:
            return name, (
                f"no {spec.eval_split!r} split (splits: {listed}); evaluating on {name!r} instead "
                f"(set data.eval_split to choose)"
            )
    return None, (
        f"no {spec.eval_split!r} split (splits: {listed}); the stage trains without evaluation "
        f"(no eval loss): set data.eval_split, or add a `split` step to data.prepare"
    )


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


def columns_for_check(spec: Data, base_dir: Path) -> list[str] | None:
    """Column names of the training split from the first row, for validation; None when unknown without loading
    (hub data) or unreadable (reported by the data checks)."""
    kind = source_kind(spec.source, base_dir)
    if kind == "builtin":
        try:
            return builtin.columns(str(spec.source), spec.task)
        except KeyError:
            return None
    if kind != "files":
        return None
    files = local_splits(spec.source, base_dir)
    path = files.get(spec.train_split) or next(iter(files.values()), None)
    try:
        return columns_of(path) if path is not None and path.exists() else None
    except (ValueError, OSError):
        return None


def text_columns(spec: Data, columns: list[str]) -> list[str]:
    """The columns that hold a row's input text: the prompt template's fields, else `prompt`, `messages`, `text`.

    Deduplication, decontamination and text filters compare inputs: a test prompt seen in training is what
    inflates scores, whatever the targets are."""
    fmt = effective_format(spec)
    if fmt is not None and fmt.prompt:
        from tuneloop.config.templates import template_fields

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
        check_hub_dataset(str(spec.source), spec.revision)
        loaded = load_dataset(str(spec.source), spec.subset, revision=spec.revision)
        out = {s: ds for s, ds in loaded.items() if only is None or s in only}
    else:
        files = _split_files(spec, kind, base_dir)
        out = {s: load_file(p) for s, p in files.items() if only is None or s in only}
        if kind == "builtin" and spec.task:
            task = builtin.task(str(spec.source), spec.task)
            if task.labels:
                keep = set(task.labels)
                out = {s: ds.filter(lambda row, t=task.target: row[t] in keep) for s, ds in out.items()}
            if task.kind == "unpaired":
                out = {s: builtin.unpair(ds) for s, ds in out.items()}
    if cap:
        out = {s: ds.select(range(min(cap, len(ds)))) for s, ds in out.items()}
    return out


def load_file(path: Path) -> Dataset:
    """One local file as a Dataset. `datasets` names no line when a JSON file is malformed (and an empty .jsonl
    ends in StopIteration): the file is then read again to say which line, as validate would."""
    from datasets import load_dataset

    if not path.exists():
        raise TuneloopError(f"data file {str(path)!r} does not exist")
    try:
        ds = load_dataset(FILE_TYPES[path.suffix], data_files=str(path), split="train")
    except Exception as e:  # re-said with the line when the file is at fault, else raised as it was
        problem = first_unreadable(path)
        if problem:
            raise TuneloopError(f"{problem}; fix or remove that line (tuneloop validate lists every one)") from e
        raise
    if len(ds) == 0:
        raise TuneloopError(f"{path}: no rows (the file is empty)")
    return ds


def _offline_variable() -> str | None:
    on = ("1", "true", "yes", "on")
    return next((v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "").lower() in on), None)


def _dataset_cached(repo_id: str) -> bool:
    """The hub cache (datasets >= 3 downloads there) or the datasets cache holds something of this dataset."""
    from datasets import config as ds_config
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
    built = Path(ds_config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return hub.is_dir() or built.is_dir()


def check_hub_dataset(repo_id: str, revision: str | None = None) -> None:
    """Fail at once, saying why and what to do, when a hub dataset cannot be loaded: a misspelt built-in name,
    offline without a cached copy, no such dataset, or the hub unreachable. Without this, `datasets` retries the
    hub for tens of seconds and ends in a traceback. Raises UsageError (exit 2)."""
    hint = builtin_lookalike(repo_id)
    if hint:
        raise UsageError(f"unknown dataset {repo_id!r}; did you mean {hint}? (built-in: {', '.join(builtin.names())})")
    offline = _offline_variable()
    cached = _dataset_cached(repo_id)
    if offline:
        if cached:
            return
        raise UsageError(
            f"hub dataset {repo_id!r} is not in the local cache and {offline}=1 (offline): use a local file "
            f"(source: data/train.jsonl), or download it where the hub is reachable "
            f"(`hf download {repo_id} --repo-type dataset`), or unset {offline}"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().dataset_info(repo_id, revision=revision, timeout=10)
    except GatedRepoError:
        return  # exists; loading asks for a token with the hub's own message
    except RepositoryNotFoundError:
        raise UsageError(
            f"no dataset {repo_id!r} on the Hugging Face hub (or it is private and no token is set: `hf auth "
            f"login`); a source is a built-in name "
            f"({', '.join(builtin.names())}), a local file or directory, or a hub id (org/name)"
        ) from None
    except Exception as e:  # no network: say so now, not after datasets' retries
        if cached:
            raise UsageError(
                f"cannot reach the Hugging Face hub ({type(e).__name__}); dataset {repo_id!r} is in the local "
                "cache: set HF_HUB_OFFLINE=1 to use it"
            ) from None
        raise UsageError(
            f"cannot reach the Hugging Face hub to find dataset {repo_id!r} ({type(e).__name__}), and it is not "
            "in the local cache: use a local file, or download it where the hub is reachable and set HF_HUB_OFFLINE=1"
        ) from None


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
    method: str = "sft",
    extra_columns: list[str] | None = None,
) -> PreparedData:
    """Load, prepare, format and fingerprint the train and eval splits of `spec`.

    Rows keep their order (the first N for `max_*_rows`); the trainer shuffles with the recipe's seed.
    `limit` caps both splits further (smoke runs use a handful of rows); a smoke run prepares only the first
    SMOKE_PREPARE_ROWS rows of each split, so `data.prepare` is exercised in seconds. Online methods (`grpo`,
    `rloo`) keep every column: TRL hands them to the reward functions; `extra_columns` keeps those named
    (evaluation metrics that read them).
    """
    from tuneloop.config.schema import ONLINE_METHODS

    kind = source_kind(spec.source, base_dir)
    wanted = {"train": spec.train_split}
    if spec.eval_split:
        wanted["eval"] = spec.eval_split
    prepared = None
    if spec.prepare:
        from tuneloop.data.prepare import SMOKE_PREPARE_ROWS, prepare

        prepared = prepare(spec, base_dir, cap=SMOKE_PREPARE_ROWS if smoke else None, say=say)
        _choose_eval(spec, list(prepared.splits), wanted, say)
        missing = [split for split in wanted.values() if split not in prepared.splits]
        if missing:
            raise TuneloopError(
                f"after data.prepare there is no split {', '.join(map(repr, missing))}; "
                f"splits: {', '.join(prepared.splits)} (check the `split` step's fractions)"
            )
        raw = {role: prepared.splits[split] for role, split in wanted.items()}
    else:
        raw = _load_raw(spec, kind, base_dir, wanted, say)
    fmt = effective_format(spec)
    out: dict[str, Dataset] = {}
    fingerprints = {}
    for role, ds in raw.items():
        cap = spec.max_train_rows if role == "train" else spec.max_eval_rows
        caps = [c for c in (cap, limit) if c]
        if caps:
            ds = ds.select(range(min(len(ds), *caps)))
        try:
            ds = to_trl(ds, fmt, keep_columns=method in ONLINE_METHODS, extra=extra_columns)
        except TuneloopError as e:
            raise TuneloopError(f"{spec.source} split {wanted[role]!r}: {e}") from e
        out[role] = ds
        fingerprints[wanted[role]] = fingerprint(ds)
    what = f"{spec.source}" + (f" ({spec.task})" if spec.task else "")
    record = {"fingerprint": prepared.fingerprint, "steps": prepared.steps} if prepared else None
    return PreparedData(out["train"], out.get("eval"), fingerprints, what, record, wanted.get("eval"))


def _choose_eval(spec: Data, splits: list[str], wanted: dict[str, str], say: Callable[[str], None] | None) -> None:
    """Point `wanted["eval"]` at the split eval_split_for picks (or drop it), and say why when it is not the
    recipe's own."""
    if "eval" not in wanted:
        return
    split, note = eval_split_for(spec, splits)
    if split is None:
        del wanted["eval"]
    else:
        wanted["eval"] = split
    if note and say is not None:
        say(f"data: {note}")


def _load_raw(
    spec: Data, kind: str, base_dir: Path, wanted: dict[str, str], say: Callable[[str], None] | None = None
) -> dict[str, Dataset]:
    from datasets import get_dataset_split_names, load_dataset

    if kind == "hub":
        check_hub_dataset(str(spec.source), spec.revision)
        if "eval" in wanted and "eval_split" not in spec.model_fields_set:
            names = get_dataset_split_names(str(spec.source), spec.subset, revision=spec.revision)
            _choose_eval(spec, list(names), wanted, say)
        return {
            role: load_dataset(str(spec.source), spec.subset, split=split, revision=spec.revision)
            for role, split in wanted.items()
        }
    _choose_eval(spec, list(_split_files(spec, kind, base_dir)), wanted, say)
    loaded = raw_splits(spec, base_dir, only=list(wanted.values()))
    return {role: loaded[split] for role, split in wanted.items()}


def to_trl(ds: Dataset, fmt: Format | None, keep_columns: bool = False, extra: list[str] | None = None) -> Dataset:
    """Map rows to TRL's dataset formats (language modeling, prompt-completion, preference, unpaired preference,
    prompt-only); keep only the columns TRL reads, plus `extra` ones, or every column with `keep_columns`."""
    extra = [c for c in extra or [] if c in ds.column_names]
    if fmt is None:
        if "label" in ds.column_names and "completion" in ds.column_names:
            ds = ds.map(lambda row, i: {"label": as_label(row["label"], i + 1)}, with_indices=True, desc="labels")
        keep = ds.column_names if keep_columns else [c for c in TRL_COLUMNS if c in ds.column_names]
        return ds.select_columns(list(dict.fromkeys([*keep, *extra])))
    if fmt.messages:
        ds = ds.select_columns(list(dict.fromkeys([fmt.messages, *extra])))
        return ds if fmt.messages == "messages" else ds.rename_column(fmt.messages, "messages")

    def answer(text: str) -> Any:
        return text if fmt.style == "plain" else [{"role": "assistant", "content": text}]

    def render(row: dict[str, Any], index: int) -> dict[str, Any]:
        prompt = fmt.prompt.format_map(row)
        out: dict[str, Any] = {}
        if fmt.style == "plain":
            out["prompt"] = prompt
        else:
            turns = [{"role": "system", "content": fmt.system}] if fmt.system else []
            out["prompt"] = [*turns, {"role": "user", "content": prompt}]
        if fmt.chosen:
            out["chosen"] = answer(fmt.chosen.format_map(row))
            out["rejected"] = answer(fmt.rejected.format_map(row))
        elif fmt.completion and not keep_columns:
            out["completion"] = answer(fmt.completion.format_map(row))
        if fmt.label:
            out["label"] = as_label(row[fmt.label], index + 1)
        return out

    kept = set(extra) - {"prompt", "completion", "chosen", "rejected", "label"}
    removed = [c for c in ds.column_names if (not keep_columns and c not in kept) or c in ("prompt", "completion")]
    return ds.map(render, with_indices=True, remove_columns=removed, desc="formatting")


def as_label(value: Any, row: int) -> bool:
    """A KTO label: booleans, 1/0, or words such as good/bad, up/down (a rating UI's thumbs)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE_LABELS:
        return True
    if word in FALSE_LABELS:
        return False
    raise TuneloopError(
        f"row {row}: label {value!r} says neither desirable nor undesirable; use true/false, 1/0, good/bad or up/down"
    )


def fingerprint(ds: Dataset) -> str:
    """Content hash of the formatted rows: same rows in the same order give the same fingerprint anywhere."""
    h = hashlib.sha256()
    for row in ds:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
