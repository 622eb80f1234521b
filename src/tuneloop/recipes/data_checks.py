"""Checks that a data section fits the method that trains on it: the source exists, the split and columns are
there, the format block has the shape the method reads, every row of a local file parses and holds what the
method trains on, and the `prepare` steps make sense.

Split out of checks.py (recipe-level checks); still no torch here.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop import extras
from tuneloop.config import trainer_fields
from tuneloop.config.evaluation import REFERENCES
from tuneloop.config.prepare import Decontaminate, Filter, Mix, Split, needs_data_extra
from tuneloop.config.schema import ONLINE_METHODS, PREFERENCE_METHODS, Data
from tuneloop.config.templates import template_fields
from tuneloop.config.yamlsource import display_path
from tuneloop.data import builtin
from tuneloop.data.rows import LABEL, PART, REFS, TEXT, TEXT_OR_TURNS, TURNS, first_columns, scan_file
from tuneloop.data.sources import (
    FILE_TYPES,
    builtin_lookalike,
    effective_format,
    eval_split_for,
    local_splits,
    source_kind,
    text_columns,
)

Found = list[tuple[tuple, str]]


# What each method needs to find in its rows when there is no format block (TRL's own column names) ...
PAIRS = [("prompt", "chosen", "rejected"), ("chosen", "rejected")]
METHOD_COLUMNS: dict[str, list[tuple[str, ...]]] = {
    "sft": [("messages",), ("prompt", "completion"), ("text",)],
    **{m: PAIRS for m in PREFERENCE_METHODS},
    "kto": [("prompt", "completion", "label")],
    **{m: [("prompt",)] for m in ONLINE_METHODS},
    "distill": [("prompt",)],  # off_policy also needs `completion` (_check_distill)
}
# ... and which shapes of format block (Format.shape) it accepts.
METHOD_SHAPES: dict[str, tuple[str, ...]] = {
    "sft": ("messages", "prompt_completion"),
    **{m: ("pairs",) for m in PREFERENCE_METHODS},
    "kto": ("unpaired",),
    **{m: ("prompt", "prompt_completion") for m in ONLINE_METHODS},
    "distill": ("prompt", "prompt_completion"),
}
SHAPE_WORDS = {
    "messages": "chat `messages`",
    "prompt_completion": "`prompt` + `completion`",
    "pairs": "`prompt` + `chosen` + `rejected` (preference pairs)",
    "unpaired": "`prompt` + `completion` + `label` (unpaired preferences)",
    "prompt": "`prompt` only",
}
SHAPE_EXAMPLE = {
    "pairs": "format: {prompt: '{question}', chosen: '{good_answer}', rejected: '{bad_answer}'}",
    "unpaired": "format: {prompt: '{question}', completion: '{answer}', label: thumbs_up}",
    "prompt": "format: {prompt: '{question}'}",
    "prompt_completion": "format: {prompt: '{question}', completion: '{answer}'}",
}


def check_data(data: Data, loc: tuple, base_dir: Path, method: str, training: bool = True) -> Found:

    found: Found = []
    kind = source_kind(data.source, base_dir)
    columns: list[str] | None = None
    splits: list[str] | None = None
    if kind == "builtin":
        name = str(data.source)
        tasks = list(builtin.info(name)["tasks"])
        if data.task is None:
            found.append(((*loc, "task"), f"built-in dataset {name!r} needs a task: one of {', '.join(tasks)}"))
        elif data.task not in tasks:
            hint = trainer_fields.closest(data.task, tasks)
            did = f"did you mean {hint}? " if hint else ""
            found.append(((*loc, "task"), f"unknown task {data.task!r}; {did}tasks: {', '.join(tasks)}"))
            return found
        columns = builtin.columns(name, data.task)
        splits = list(builtin.info(name)["splits"])
    elif kind == "files":
        files = local_splits(data.source, base_dir)
        for split, path in files.items():
            where = (*loc, "source", split) if isinstance(data.source, dict) else (*loc, "source")
            if not path.exists():
                found.append((where, f"file {str(path)!r} does not exist"))
            elif path.suffix not in FILE_TYPES:
                found.append((where, f"unsupported file type {path.suffix!r}; use {', '.join(FILE_TYPES)}"))
        if found:
            return found
        if not files:
            return [((*loc, "source"), f"no {'/'.join(FILE_TYPES)} files in {data.source!r}")]
        splits = list(files)
        rows_found, columns = _check_rows(data, loc, files, method, training)
        found += rows_found
    lookalike = builtin_lookalike(data.source) if kind == "hub" else None
    if lookalike:
        found.append(((*loc, "source"), f"unknown dataset {data.source!r}; did you mean {lookalike}?"))
    elif data.task and kind != "builtin":
        found.append(
            (
                (*loc, "task"),
                f"`task` applies to built-in datasets only ({', '.join(builtin.names())}); this source is "
                f"{'local files' if kind == 'files' else 'a hub dataset'}: describe its rows with `format:` instead",
            )
        )
    if splits is not None:
        if training and data.train_split not in splits:
            found.append(((*loc, "train_split"), f"no split {data.train_split!r}; splits: {', '.join(splits)}"))
        if "eval_split" in data.model_fields_set and data.eval_split and data.eval_split not in splits:
            found.append(((*loc, "eval_split"), f"no split {data.eval_split!r}; splits: {', '.join(splits)}"))
    if columns is not None:
        found += _check_columns(data, loc, columns, effective_format(data), method)
    if data.prepare:
        found += _check_prepare(data, loc, base_dir, columns, splits)
    return found


def _check_rows(
    data: Data, loc: tuple, files: dict[str, Path], method: str, training: bool = True
) -> tuple[Found, list[str] | None]:
    """Every row of every file of the source, streamed: problems located as `data/train.jsonl:7: ...` under the
    recipe key that names the file, at most rows.SHOWN per file; and the training file's columns (None when it
    has no readable row, so the column checks stay quiet about a file already reported)."""
    found: Found = []
    columns: list[str] | None = None
    train = data.train_split if data.train_split in files else next(iter(files))
    needs: dict[str, str] = {}
    for split in sorted(files, key=lambda s: s != train):  # the training file first: its columns set `needs`
        path = files[split]
        where = (*loc, "source", split) if isinstance(data.source, dict) else (*loc, "source")
        shown = display_path(path)
        try:
            if split == train:
                columns = first_columns(path)
                needs = row_needs(data, method, columns or [], references=not training)
            scan = scan_file(path, needs, shown)
        except (OSError, UnicodeDecodeError, ValueError) as e:  # pyarrow's errors are ValueErrors (ArrowInvalid)
            found.append((where, f"{shown}: cannot read the file: {e}"))
            continue
        if split == train and not scan.rows:
            columns = None
        found += [(where, message) for message in scan.messages(shown)]
    return found, columns


def row_needs(data: Data, method: str, columns: list[str], references: bool = False) -> dict[str, str]:
    """The fields each row must fill for `method`, and with what (rows.TEXT, PART, TEXT_OR_TURNS, TURNS, LABEL): the
    `format:` templates' columns, else the TRL columns the method reads that the first row has. With `references`
    (evaluation data) a completion may be a list of several reference answers, and a `references` column is one."""
    if any(isinstance(step, Filter) and step.function for step in data.prepare):
        return {}  # a user's filter may drop the rows that would fail; the loader still catches what is left
    fmt = effective_format(data)
    if fmt is not None:
        if fmt.messages:
            return {fmt.messages: TURNS} if fmt.messages in columns else {}
        needs: dict[str, str] = {}
        for part in ("prompt", "completion", "chosen", "rejected"):
            template = getattr(fmt, part) or ""
            for col in template_fields(template):
                # a field may be empty beside other text ('{context}\n{question}'); alone, it may not
                alone = template.strip() == f"{{{col}}}"
                needs[col] = TEXT if alone or needs.get(col) == TEXT else PART
        if fmt.label:
            needs[fmt.label] = LABEL
        return {c: n for c, n in needs.items() if c in columns}  # a column the file lacks is reported once, above
    group = next((g for g in METHOD_COLUMNS[method] if set(g) <= set(columns)), ())
    kinds = {"messages": TURNS, "label": LABEL, "text": TEXT}
    if references:
        kinds["completion"] = REFS
        group = (*group, *([REFERENCES] if REFERENCES in columns else []))
    return {c: kinds.get(c, REFS if c == REFERENCES else TEXT_OR_TURNS) for c in group}


def eval_split_notes(data: Data, base_dir: Path) -> list[str]:
    """What `validate` says (without failing) when a stage will not evaluate on the split the recipe names:
    the stated fallback to `test`/`dev`/`valid`, or training without evaluation."""
    kind = source_kind(data.source, base_dir)
    if kind == "builtin":
        splits = list(builtin.info(str(data.source))["splits"])
    elif kind == "files":
        splits = list(local_splits(data.source, base_dir))
    else:
        return []  # a hub dataset's splits are known once loaded; the run says the same then
    if not splits or any(isinstance(step, Split) for step in data.prepare):
        return []
    return [note for note in [eval_split_for(data, splits)[1]] if note]


def _check_prepare(
    data: Data, loc: tuple, base_dir: Path, columns: list[str] | None, splits: list[str] | None
) -> Found:
    """Columns, splits, group keys, mixed-in sources and user functions of `data.prepare`, before any loading."""

    found: Found = []
    known = list(splits) if splits is not None else None
    for i, step in enumerate(data.prepare):
        here = (*loc, "prepare", i)
        if columns is not None:
            wanted = [("columns", c) for c in step.columns or []]
            if isinstance(step, Split) and step.by:
                wanted.append(("by", step.by))
            for key, col in wanted:
                if col not in columns:
                    hint = trainer_fields.closest(col, columns)
                    did = f" (did you mean {hint}?)" if hint else ""
                    found.append(((*here, key), f"no column {col!r}{did}; columns: {', '.join(columns)}"))
            if step.columns is None and not text_columns(data, columns):
                found.append(((*here, "columns"), "no text column to work on: give `columns:`"))
        if known is not None and step.splits != "all":
            for name in step.splits:
                if name not in known:
                    found.append(((*here, "splits"), f"no split {name!r} at this step; splits: {', '.join(known)}"))
        if isinstance(step, Split):
            known = list(step.fractions)
        if isinstance(step, Decontaminate) and known is not None:
            for j, ref in enumerate(step.against or []):
                if ref.data is None and ref.split not in known:
                    found.append(
                        ((*here, "against", j, "split"), f"no split {ref.split!r}; splits: {', '.join(known)}")
                    )
                elif ref.data is not None:
                    found += check_data(ref.data, (*here, "against", j, "data"), base_dir, "sft", training=False)
        if isinstance(step, Mix):
            for j, src in enumerate(step.sources):
                other = data.model_copy(
                    update={
                        "source": src.source,
                        "task": src.task,
                        "subset": src.subset,
                        "revision": src.revision,
                        "train_split": src.split,
                        "prepare": [],
                        "eval_split": None,
                    }
                )
                found += check_data(other, (*here, "sources", j), base_dir, "sft")
        if needs_data_extra(step) and extras.missing("data"):
            found.append((here, f"this step needs the 'data' extra: {extras.hint('data')}"))
        if isinstance(step, Filter) and step.function:
            found += [((*here, "function"), msg) for msg in module_problems(step.function)]
    if known is not None and any(isinstance(s, Split) for s in data.prepare):
        wanted = [("train_split", data.train_split)]
        if "eval_split" in data.model_fields_set and data.eval_split:
            wanted.append(("eval_split", data.eval_split))
        for key, name in wanted:
            if name not in known:
                found.append(((*loc, key), f"no split {name!r} after the prepare steps; splits: {', '.join(known)}"))
    return found


def _builtin_tasks_for(method: str) -> list[tuple[str, str]]:
    """Built-in (dataset, task) pairs whose rows suit `method`, to suggest when the data does not."""

    return [
        (name, task)
        for name in builtin.names()
        for task in builtin.info(name)["tasks"]
        if builtin.task(name, task).format.shape() in METHOD_SHAPES[method]
    ]


def _check_columns(data: Data, loc: tuple, columns: list[str], fmt, method: str) -> Found:
    found: Found = []
    if fmt is not None:
        shape = fmt.shape()
        if shape not in METHOD_SHAPES[method]:
            wanted = " or ".join(SHAPE_WORDS[s] for s in METHOD_SHAPES[method])
            example = SHAPE_EXAMPLE.get(METHOD_SHAPES[method][0], "")
            fits = _builtin_tasks_for(method)
            if fits and data.format is None:
                example = "the built-in " + " or ".join(f"{{source: {d}, task: {t}}}" for d, t in fits)
            found.append(
                (
                    (*loc, "format"),
                    f"{method} trains on {wanted}; this data's format gives {SHAPE_WORDS[shape]}"
                    + (f". E.g. {example}" if example else ""),
                )
            )
        if fmt.messages:
            if fmt.messages not in columns:
                found.append(
                    ((*loc, "format", "messages"), f"no column {fmt.messages!r}; columns: {', '.join(columns)}")
                )
            return found
        for part in ("prompt", "completion", "chosen", "rejected"):
            for col in template_fields(getattr(fmt, part) or ""):
                if col not in columns:
                    hint = trainer_fields.closest(col, columns)
                    did = f" (did you mean {{{hint}}}?)" if hint else ""
                    found.append(
                        (
                            (*loc, "format", part),
                            f"template uses column {col!r}, which the data lacks{did}; columns: {', '.join(columns)}",
                        )
                    )
        if fmt.label and fmt.label not in columns:
            hint = trainer_fields.closest(fmt.label, columns)
            did = f" (did you mean {hint}?)" if hint else ""
            found.append(((*loc, "format", "label"), f"no column {fmt.label!r}{did}; columns: {', '.join(columns)}"))
        return found
    need = METHOD_COLUMNS[method]
    if not any(set(group) <= set(columns) for group in need):
        wanted = " or ".join("+".join(g) for g in need)
        example = SHAPE_EXAMPLE.get(METHOD_SHAPES[method][0], SHAPE_EXAMPLE["prompt_completion"])
        found.append(
            (
                (*loc,),
                f"{method} needs {wanted} columns after formatting; found {', '.join(columns)}. "
                f"Add a `format:` block, e.g. {example}",
            )
        )
    return found


def module_problems(ref: str) -> list[str]:
    """What is wrong with a `package.module:function` reference, found without importing the module."""
    import importlib.util

    module = ref.split(":")[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    return [] if spec is not None else [f"cannot find module {module!r} (is it importable from here?)"]
