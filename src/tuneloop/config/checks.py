"""Checks that need more than the schema: files exist, data fits the method, trainer args fit TRL.

Each check returns (key path, message) pairs so the loader can point at the exact line. Still no torch here.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.config import trainer_fields
from tuneloop.config.schema import Data, Recipe, template_fields

Found = list[tuple[tuple, str]]

# What each method needs to find in its rows once the format block has been applied.
METHOD_COLUMNS: dict[str, list[tuple[str, ...]]] = {"sft": [("messages",), ("prompt", "completion"), ("text",)]}


def check_recipe(recipe: Recipe, base_dir: Path) -> Found:
    found: Found = []
    found += _check_model(recipe, base_dir)
    checked: set[tuple[int, str]] = set()  # a data section shared by stages is checked once per method
    for i, stage in enumerate(recipe.stages):
        data, loc = (stage.data, ("stages", i, "data")) if stage.data else (recipe.data, ("data",))
        if data is None:
            found.append((("stages", i), "no data: give a `data:` section in the recipe or in this stage"))
            continue
        if (id(data), stage.method) not in checked:
            checked.add((id(data), stage.method))
            found += _check_data(data, loc, base_dir, stage.method)
    return found


def _check_model(recipe: Recipe, base_dir: Path) -> Found:
    from tuneloop.models.builtin import BUILTIN_MODELS

    ref = recipe.base_model
    found: Found = []
    name = ref.name
    if name in BUILTIN_MODELS:
        return found + _check_template(ref, base_dir)
    if name.startswith((".", "/", "~")) or (base_dir / name).exists() or Path(name).exists():
        path = Path(name).expanduser()
        path = path if path.is_absolute() or path.exists() else base_dir / path
        if not path.is_dir():
            found.append((("base_model",), f"model directory {name!r} does not exist"))
        elif not (path / "config.json").is_file():
            found.append((("base_model",), f"{name!r} has no config.json; is it a Hugging Face checkpoint?"))
    elif "/" not in name:
        hint = trainer_fields.closest(name, list(BUILTIN_MODELS))
        if hint:
            found.append((("base_model",), f"unknown built-in model {name!r} (did you mean {hint}?)"))
    return found + _check_template(ref, base_dir)


def _check_template(ref, base_dir: Path) -> Found:
    if ref.chat_template and not _exists(ref.chat_template, base_dir):
        return [(("base_model", "chat_template"), f"file {ref.chat_template!r} does not exist")]
    return []


def _exists(name: str, base_dir: Path) -> bool:
    p = Path(name).expanduser()
    return p.exists() or (base_dir / p).exists()


def _check_data(data: Data, loc: tuple, base_dir: Path, method: str) -> Found:
    from tuneloop.data import builtin
    from tuneloop.data.sources import FILE_TYPES, columns_of, effective_format, local_splits, source_kind

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
        columns = builtin.info(name)["columns"]
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
        try:
            columns = columns_of(files.get(data.train_split) or next(iter(files.values())))
        except (ValueError, OSError) as e:
            found.append(((*loc, "source"), f"cannot read the first row: {e}"))
    if data.task and kind != "builtin":
        found.append(((*loc, "task"), "`task` applies to built-in datasets only"))
    if splits is not None:
        if data.train_split not in splits:
            found.append(((*loc, "train_split"), f"no split {data.train_split!r}; splits: {', '.join(splits)}"))
        if "eval_split" in data.model_fields_set and data.eval_split and data.eval_split not in splits:
            found.append(((*loc, "eval_split"), f"no split {data.eval_split!r}; splits: {', '.join(splits)}"))
    if columns is not None:
        found += _check_columns(data, loc, columns, effective_format(data), method)
    return found


def _check_columns(data: Data, loc: tuple, columns: list[str], fmt, method: str) -> Found:
    found: Found = []
    if fmt is not None:
        if fmt.messages:
            if fmt.messages not in columns:
                found.append(
                    ((*loc, "format", "messages"), f"no column {fmt.messages!r}; columns: {', '.join(columns)}")
                )
            return found
        for part in ("prompt", "completion"):
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
        return found
    need = METHOD_COLUMNS[method]
    if not any(set(group) <= set(columns) for group in need):
        wanted = " or ".join("+".join(g) for g in need)
        found.append(
            (
                (*loc,),
                f"{method} needs {wanted} columns after formatting; found {', '.join(columns)}. "
                "Add a `format:` block, e.g. format: {prompt: '{question}', completion: '{answer}'}",
            )
        )
    return found
