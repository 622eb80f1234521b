"""Run a data section's `prepare:` steps, each cached under a fingerprint of its inputs and of every step so far.

The cache key of step k is sha256(source fingerprint, row cap, step 1 ... step k), so re-running a recipe loads
the last step from disk, and changing step k re-runs steps k.. only. Each step reports, per split, the rows it
started with, the rows it removed (by reason) or added (by source), and the rows left — which always add up.
A step that leaves a split empty stops the run with every step's counts, instead of training on nothing.

Scale: the steps hold texts in memory and run MinHash through datasketch's bulk hashing (about 5k rows/s per
core), token counting through `datasets.map(num_proc=...)`, and language detection through lingua's
multi-threaded batch call; docs/data.md has the measured rows/s and says when to move to datatrove instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop import extras
from tuneloop.config.prepare import Decontaminate, Dedup, Filter, Mix, Sample, Split, needs_data_extra
from tuneloop.config.schema import Data, ModelRef
from tuneloop.data import dedup as dd
from tuneloop.data.sources import effective_format, raw_splits, row_text, source_fingerprint, text_columns, to_trl
from tuneloop.errors import TuneloopError
from tuneloop.models.loading import load_tokenizer, resolve
from tuneloop.workspace import home

if TYPE_CHECKING:
    from datasets import Dataset

SMOKE_PREPARE_ROWS = 400
CACHE_VERSION = "tuneloop-prepare/1"  # bump when a step's behaviour changes, so old caches are not reused


@dataclass
class Prepared:
    splits: dict[str, Dataset]
    fingerprint: str
    steps: list[dict[str, Any]] = field(default_factory=list)


def cache_root() -> Path:

    return home() / "cache" / "data"


def step_key(previous: str, step: Any) -> str:
    body = json.dumps(step.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(f"{previous}\n{body}".encode()).hexdigest()[:16]


def chain_keys(spec: Data, base_dir: Path, cap: int | None) -> list[str]:
    """Key of the raw input, then one key per step."""
    keys = [hashlib.sha256(f"{CACHE_VERSION}|{source_fingerprint(spec, base_dir)}|cap={cap}".encode()).hexdigest()[:16]]
    for step in spec.prepare:
        key = step_key(keys[-1], step)
        if isinstance(step, Decontaminate):  # other data it compares with is part of its input
            extra = [source_fingerprint(a.data, base_dir) for a in step.against or [] if a.data is not None]
            key = hashlib.sha256(f"{key}|{'|'.join(extra)}".encode()).hexdigest()[:16]
        keys.append(key)
    return keys


def prepare(
    spec: Data,
    base_dir: Path,
    *,
    cap: int | None = None,
    say: Callable[[str], None] | None = None,
    use_cache: bool = True,
) -> Prepared:
    """The prepared splits of `spec` (every split of its source, after every step)."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    bars = is_progress_bar_enabled()
    disable_progress_bar()  # one line per step instead of a bar per save; the steps report their own counts
    try:
        return _prepare(spec, base_dir, cap, say or (lambda _m: None), use_cache)
    finally:
        if bars:
            enable_progress_bar()


def _prepare(spec: Data, base_dir: Path, cap: int | None, say: Callable[[str], None], use_cache: bool) -> Prepared:
    from datasets import DatasetDict, load_from_disk

    keys = chain_keys(spec, base_dir, cap)
    root = cache_root()
    start, splits, reports = 0, None, []
    if use_cache:
        for k in range(len(spec.prepare), 0, -1):
            hit = root / keys[k]
            if (hit / "report.json").is_file():
                splits = dict(load_from_disk(str(hit / "data")).items())
                reports = json.loads((hit / "report.json").read_text())["steps"]
                for r in reports:
                    r["cached"] = True
                start = k
                break
    if start == len(spec.prepare):
        say(f"prepare: {len(spec.prepare)} step(s) cached ({keys[-1]}): " + _sizes(splits or {}))
        return Prepared(splits or {}, keys[-1], reports)
    if splits is None:
        splits = raw_splits(spec, base_dir, cap)
    for k in range(start, len(spec.prepare)):
        step = spec.prepare[k]
        t0 = time.perf_counter()
        splits, report = run_step(step, splits, spec, base_dir)
        report.update({"index": k, "step": step.step, "seconds": round(time.perf_counter() - t0, 3), "cached": False})
        reports.append(report)
        say(f"prepare [{k + 1}/{len(spec.prepare)}] {describe(report)}")
        empty = [s for s, n in _counts(splits).items() if n == 0 and s in report["splits"]]
        if empty:
            table = "\n".join(f"  {describe(r)}" for r in reports)
            raise TuneloopError(
                f"prepare step {k + 1} ({step.step}) left no rows in {', '.join(empty)}; "
                f"nothing to train or evaluate on. Steps so far:\n{table}"
            )
        if use_cache:
            _store(root / keys[k + 1], DatasetDict(splits), reports)
    return Prepared(splits, keys[-1], reports)


def prepare_rows(
    steps: list[Any], ds: Dataset, base_dir: Path, say: Callable[[str], None] | None = None
) -> tuple[Dataset, list[dict]]:
    """Run data steps on rows that come from no data source (served traffic: a `text` column), uncached, so
    campaigns and the feedback loop filter prompts with the same steps recipes use."""
    spec = Data(source="<rows>", eval_split=None, prepare=steps)
    splits, reports = {"train": ds}, []
    for k, step in enumerate(steps):
        splits, report = run_step(step, splits, spec, base_dir)
        report.update({"index": k, "step": step.step, "cached": False})
        reports.append(report)
        if say:
            say(f"prepare [{k + 1}/{len(steps)}] {describe(report)}")
    return splits["train"], reports


def _store(dest: Path, data: Any, reports: list[dict]) -> None:
    """Write to a temporary directory and rename, so a killed run never leaves a half-written cache entry."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    data.save_to_disk(str(tmp / "data"))
    (tmp / "report.json").write_text(json.dumps({"steps": reports}, indent=2) + "\n")
    try:
        tmp.rename(dest)
    except OSError:  # another rank or run stored the same key first: its entry is identical
        if not (dest / "report.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _counts(splits: dict[str, Any]) -> dict[str, int]:
    return {s: len(ds) for s, ds in splits.items()}


def _sizes(splits: dict[str, Any]) -> str:
    return ", ".join(f"{s} {n}" for s, n in _counts(splits).items())


def describe(report: dict[str, Any]) -> str:
    """One line per step: `dedup: train 4000 -> 3712 (-250 exact duplicate, -38 near duplicate)`."""
    parts = []
    for split, c in report["splits"].items():
        changes = [f"-{n} {why}" for why, n in c.get("removed", {}).items() if n]
        changes += [f"+{n} {why}" for why, n in c.get("added", {}).items() if n]
        parts.append(f"{split} {c['before']} -> {c['after']}" + (f" ({', '.join(changes)})" if changes else ""))
    cached = " [cached]" if report.get("cached") else ""
    return f"{report['step']}: " + "; ".join(parts) + cached


def _targets(step: Any, splits: dict[str, Any]) -> list[str]:
    return list(splits) if step.splits == "all" else [s for s in step.splits if s in splits]


def texts_of(ds: Dataset, spec: Data, columns: list[str] | None) -> list[str]:
    cols = columns or text_columns(spec, ds.column_names)
    if not cols:
        raise TuneloopError(f"no text column in {', '.join(ds.column_names)}: give the step `columns:`")
    return [row_text(row, cols) for row in ds.select_columns(cols)]


def run_step(step: Any, splits: dict[str, Any], spec: Data, base_dir: Path) -> tuple[dict[str, Any], dict]:
    if needs_data_extra(step):
        extras.need("data", f"the `{step.step}` step of data.prepare")
    handler = {
        Dedup: _dedup,
        Filter: _filter,
        Decontaminate: _decontaminate,
        Mix: _mix,
        Sample: _sample,
        Split: _split,
    }[type(step)]
    return handler(step, dict(splits), spec, base_dir)


def _keep(ds: Dataset, drop: dict[int, str]) -> Dataset:
    return ds.select([i for i in range(len(ds)) if i not in drop]) if drop else ds


def _entry(before: int, after: int, removed: Counter | None = None, added: Counter | None = None) -> dict:
    out: dict[str, Any] = {"before": before, "after": after}
    if removed is not None:
        out["removed"] = dict(removed)
    if added is not None:
        out["added"] = dict(added)
    return out


def _dedup(step: Dedup, splits: dict, spec: Data, base_dir: Path) -> tuple[dict, dict]:
    report: dict[str, Any] = {"splits": {}, "examples": {}}
    for name in _targets(step, splits):
        ds = splits[name]
        texts = texts_of(ds, spec, step.columns)
        exact = dd.exact_clusters(texts)
        drop = {i: "exact duplicate" for g in exact for i in g[1:]}
        clusters = exact
        if step.method == "near":
            clusters = dd.near_clusters(texts, step.threshold, step.ngram, step.num_perm)
            for g in clusters:
                for i in g[1:]:
                    drop.setdefault(i, "near duplicate")
        splits[name] = _keep(ds, drop)
        report["splits"][name] = _entry(len(ds), len(splits[name]), Counter(drop.values()))
        report["examples"][name] = [
            {"kept": texts[g[0]][:200], "dropped": texts[g[1]][:200]}
            for g in sorted(clusters, key=len, reverse=True)[:3]
        ]
    return splits, report


_LINGUA: Any = None


def detect_languages(texts: list[str]) -> list[str | None]:
    """ISO 639-1 code (lower case) per text, offline, with lingua; None where it cannot tell."""
    global _LINGUA
    from lingua import LanguageDetectorBuilder

    if _LINGUA is None:
        _LINGUA = LanguageDetectorBuilder.from_all_languages().build()
    found = _LINGUA.detect_languages_in_parallel_of(texts)
    return [lang.iso_code_639_1.name.lower() if lang is not None else None for lang in found]


def token_lengths(ds: Dataset, spec: Data, tokenizer: Any) -> list[int]:
    """Tokens of each whole example as the trainer sees it (the chat template applied), in parallel for big sets."""

    formatted = to_trl(ds, effective_format(spec))

    def count(batch: dict[str, list]) -> dict[str, list[int]]:
        n = len(next(iter(batch.values())))
        rows = [{k: batch[k][i] for k in batch} for i in range(n)]
        return {"_tokens": [example_tokens(r, tokenizer) for r in rows]}

    procs = min(os.cpu_count() or 1, max(1, len(formatted) // 20000))
    counted = formatted.map(
        count,
        batched=True,
        num_proc=procs if procs > 1 else None,
        remove_columns=formatted.column_names,
        desc="counting tokens",
    )
    return list(counted["_tokens"])


def example_tokens(row: dict[str, Any], tokenizer: Any) -> int:
    """Tokens of one example as the trainer sees it; a preference pair counts its longer side (prompt + chosen or
    prompt + rejected), which is what `max_length` must hold."""
    if "chosen" in row and "rejected" in row:
        return max(
            example_tokens({**_without_pair(row), "completion": row[side]}, tokenizer)
            for side in ("chosen", "rejected")
        )
    turns = row.get("messages")
    if turns is None and isinstance(row.get("prompt"), list):
        turns = row["prompt"] + (row.get("completion") or [])
    if turns is not None:
        ids = tokenizer.apply_chat_template(turns, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns a BatchEncoding
    text = (row.get("prompt") or "") + (row.get("completion") or "") + (row.get("text") or "")
    return len(tokenizer(text)["input_ids"])


def _without_pair(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("chosen", "rejected")}


def _to_stderr(message: str) -> None:
    """Long one-off work (a first pull of the built-in model) says what it is doing, away from data output."""
    print(message, file=sys.stderr, flush=True)


def load_tokenizer_for(name: str, base_dir: Path) -> Any:

    ref = ModelRef(name=name)
    return load_tokenizer(resolve(ref, base_dir, log=_to_stderr), ref, base_dir)


def _user_function(ref: str) -> Callable[[dict], bool]:
    import importlib

    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise TuneloopError(f"filter function {ref!r}: {e}") from None


def _filter(step: Filter, splits: dict, spec: Data, base_dir: Path) -> tuple[dict, dict]:
    report: dict[str, Any] = {"splits": {}}
    tokenizer = load_tokenizer_for(step.tokenizer, base_dir) if step.tokenizer else None
    function = _user_function(step.function) if step.function else None
    drop_re = re.compile(step.drop_regex) if step.drop_regex else None
    keep_re = re.compile(step.keep_regex) if step.keep_regex else None
    for name in _targets(step, splits):
        ds = splits[name]
        texts = texts_of(ds, spec, step.columns)
        lengths = token_lengths(ds, spec, tokenizer) if tokenizer is not None else None
        langs = detect_languages(texts) if step.languages else None
        drop: dict[int, str] = {}
        for i, text in enumerate(texts):
            why = None
            if lengths is not None and step.min_tokens is not None and lengths[i] < step.min_tokens:
                why = f"fewer than {step.min_tokens} tokens"
            elif lengths is not None and step.max_tokens is not None and lengths[i] > step.max_tokens:
                why = f"more than {step.max_tokens} tokens"
            elif langs is not None and langs[i] not in step.languages:
                why = f"language not {'/'.join(step.languages)}"
            elif drop_re is not None and drop_re.search(text):
                why = "matches drop_regex"
            elif keep_re is not None and not keep_re.search(text):
                why = "does not match keep_regex"
            elif function is not None and not function(ds[i]):
                why = f"{step.function} returned false"
            if why:
                drop[i] = why
        splits[name] = _keep(ds, drop)
        report["splits"][name] = _entry(len(ds), len(splits[name]), Counter(drop.values()))
    return splits, report


def _decontaminate(step: Decontaminate, splits: dict, spec: Data, base_dir: Path) -> tuple[dict, dict]:
    references: list[str] = []
    used = []
    for ref in step.against or []:
        if ref.data is None:
            if ref.split not in splits:
                raise TuneloopError(f"decontaminate: no split {ref.split!r}; splits: {', '.join(splits)}")
            references += texts_of(splits[ref.split], spec, ref.columns or step.columns)
            used.append(ref.split)
        else:
            other = ref.data.model_copy(update={"train_split": ref.split, "eval_split": None, "max_train_rows": None})
            loaded = prepare(other, base_dir).splits if other.prepare else raw_splits(other, base_dir)
            references += texts_of(loaded[ref.split], ref.data, ref.columns)
            used.append(f"{ref.data.source}:{ref.split}")
    report: dict[str, Any] = {"splits": {}, "against": used, "reference_rows": len(references), "examples": {}}
    for name in _targets(step, splits):
        if name in used:
            continue  # a split is never decontaminated against itself
        ds = splits[name]
        texts = texts_of(ds, spec, step.columns)
        matches = dd.cross_matches(texts, references, step.threshold, step.ngram, step.num_perm)
        drop = {
            i: "exact copy of an evaluation row" if sim >= 1.0 else "near copy of an evaluation row"
            for i, (_j, sim) in matches.items()
        }
        splits[name] = _keep(ds, drop)
        report["splits"][name] = _entry(len(ds), len(splits[name]), Counter(drop.values()))
        report["examples"][name] = [
            {"train": texts[i][:200], "evaluation": references[j][:200], "jaccard": round(s, 3)}
            for i, (j, s) in list(matches.items())[:3]
        ]
    return splits, report


def _draw(n_have: int, n_want: int, rng: Any) -> tuple[list[int], bool]:
    """Indices of n_want rows out of n_have: without replacement when there are enough, else with."""
    if n_want <= n_have:
        return sorted(rng.choice(n_have, size=n_want, replace=False).tolist()), False
    return sorted(rng.choice(n_have, size=n_want, replace=True).tolist()), True


def _mix(step: Mix, splits: dict, spec: Data, base_dir: Path) -> tuple[dict, dict]:
    import numpy as np
    from datasets import concatenate_datasets

    report: dict[str, Any] = {"splits": {}, "upsampled": []}
    total_weight = step.weight + sum(s.weight for s in step.sources)
    for name in _targets(step, splits):
        own = splits[name]
        rows = step.rows or len(own)
        rng = np.random.default_rng(step.seed)
        parts, added, removed = [], Counter(), Counter()
        keep, up = _draw(len(own), round(rows * step.weight / total_weight), rng)
        removed["not drawn"] = max(0, len(own) - len(set(keep)))
        added["own rows drawn again"] = len(keep) - len(set(keep))
        if up:
            report["upsampled"].append(f"{name} (own rows)")
        parts.append(own.select(keep))
        for src in step.sources:
            other_spec = spec.model_copy(
                update={
                    "source": src.source,
                    "task": src.task,
                    "subset": src.subset,
                    "revision": src.revision,
                    "prepare": [],
                }
            )
            other = raw_splits(other_spec, base_dir)
            if src.split not in other:
                raise TuneloopError(f"mix: {src.source} has no split {src.split!r}; splits: {', '.join(other)}")
            pool = other[src.split]
            idx, up = _draw(len(pool), round(rows * src.weight / total_weight), rng)
            if up:
                report["upsampled"].append(f"{src.source}:{src.split}")
            parts.append(pool.select(idx))
            added[f"from {src.source}:{src.split}"] = len(idx)
        common = [c for c in own.column_names if all(c in p.column_names for p in parts)]
        mixed = concatenate_datasets([p.select_columns(common) for p in parts])
        mixed = mixed.shuffle(seed=step.seed).flatten_indices()
        splits[name] = mixed
        report["splits"][name] = _entry(len(own), len(mixed), removed, added)
    return splits, report


def _sample(step: Sample, splits: dict, spec: Data, base_dir: Path) -> tuple[dict, dict]:
    import numpy as np

    report: dict[str, Any] = {"splits": {}}
    for name in _targets(step, splits):
        ds = splits[name]
        n = min(len(ds), step.rows) if step.rows else round(len(ds) * (step.fraction or 1))
        idx = sorted(np.random.default_rng(step.seed).choice(len(ds), size=n, replace=False).tolist())
        splits[name] = ds.select(idx)
        report["splits"][name] = _entry(len(ds), n, Counter({"not sampled": len(ds) - n}))
    return splits, report


def _split(step: Split, splits: dict, spec: Data, base_dir: Path) -> tuple[dict, dict]:
    """Pool the chosen splits and assign each row (or group) by a seeded hash, so assignment is stable when rows
    are added and identical for every worker."""
    from datasets import concatenate_datasets

    sources = _targets(step, splits)
    pool = concatenate_datasets([splits[s] for s in sources]) if len(sources) > 1 else splits[sources[0]]
    names = list(step.fractions)
    edges, acc = [], 0.0
    for name in names:
        acc += step.fractions[name]
        edges.append(acc)

    def bucket(key: str) -> int:
        u = int(hashlib.sha256(f"{step.seed}:{key}".encode()).hexdigest()[:15], 16) / 16**15
        return next((i for i, e in enumerate(edges) if u < e), len(names) - 1)

    keys = [str(v) for v in pool[step.by]] if step.by else [str(i) for i in range(len(pool))]
    assigned: dict[str, list[int]] = {n: [] for n in names}
    for i, key in enumerate(keys):
        assigned[names[bucket(key)]].append(i)
    before = {s: len(splits[s]) for s in sources}
    for s in sources:
        del splits[s]
    report: dict[str, Any] = {"splits": {}, "pooled": len(pool), "groups": len(set(keys)), "by": step.by}
    for s in sources:
        report["splits"][s] = _entry(before[s], 0, Counter({"pooled for re-splitting": before[s]}))
    for n in names:
        splits[n] = pool.select(assigned[n])
        entry = report["splits"].setdefault(n, _entry(0, 0, Counter()))
        entry["added"] = {"assigned from the pool": len(assigned[n])}
        entry["after"] = len(assigned[n])
    return splits, report
