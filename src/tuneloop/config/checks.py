"""Checks that need more than the schema: files exist, data fits the method, trainer args fit TRL.

Each check returns (key path, message) pairs so the loader can point at the exact line. Still no torch here.
"""

from __future__ import annotations

import contextlib
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
    if recipe.evaluation is not None:
        found += _check_evaluation(recipe, base_dir)
    found += _check_registry(recipe)
    found += _check_cost(recipe, base_dir)
    return found


def _check_registry(recipe: Recipe) -> Found:
    registry = recipe.registry
    if registry is None or not registry.gate:
        return []
    if recipe.evaluation is None:
        return [(("registry", "gate"), "a promotion gate needs an `evaluation:` section (the suite it is judged on)")]
    return _check_gate_metrics(recipe, registry.gate, ("registry", "gate"))


def _check_cost(recipe: Recipe, base_dir: Path) -> Found:
    from tuneloop.cost import load_prices
    from tuneloop.errors import TuneloopError

    cost = recipe.cost
    prices = cost.prices
    if prices and not _exists(prices, base_dir):
        return [(("cost", "prices"), f"file {prices!r} does not exist")]
    path = None if not prices else str(Path(prices) if Path(prices).exists() else base_dir / prices)
    try:
        table = load_prices(path)
    except TuneloopError as e:
        return [(("cost", "prices"), str(e))]
    devices = list(table["devices"])
    if cost.device != "auto" and cost.device not in devices:
        hint = trainer_fields.closest(cost.device, devices)
        did = f"did you mean {hint}? " if hint else ""
        return [(("cost", "device"), f"unknown device {cost.device!r}; {did}devices: {', '.join(devices)}")]
    return []


def _check_evaluation(recipe: Recipe, base_dir: Path) -> Found:
    evaluation = recipe.evaluation
    assert evaluation is not None
    found = check_tasks(evaluation.tasks, recipe.data, base_dir, ("evaluation", "tasks"))
    found += _check_gate_metrics(recipe, evaluation.gate, ("evaluation", "gate"))
    during = evaluation.during_training
    if during and during.task and during.task not in {t.name for t in evaluation.tasks}:
        found.append((("evaluation", "during_training", "task"), f"no task named {during.task!r}"))
    return found


def _check_gate_metrics(recipe: Recipe, rules: list, loc: tuple) -> Found:
    """Every gate rule names a metric exactly one evaluation task computes."""
    assert recipe.evaluation is not None
    found: Found = []
    tasks = recipe.evaluation.tasks
    metrics = {(t.name, m) for t in tasks for m in t.resolved_metrics(_task_kind(t, recipe.data))}
    for i, rule in enumerate(rules):
        task, _, metric = rule.metric.rpartition("/")
        matches = [(t, m) for t, m in metrics if m == metric and (not task or t == task)]
        if not matches:
            listed = ", ".join(sorted(f"{t}/{m}" for t, m in metrics))
            found.append(((*loc, i, "metric"), f"no task computes {rule.metric!r}; metrics: {listed}"))
        elif len(matches) > 1:
            found.append(((*loc, i, "metric"), f"{metric!r} is computed by several tasks; write task/{metric}"))
    return found


def _task_kind(task, default_data: Data | None) -> str:
    from tuneloop.data import builtin
    from tuneloop.data.sources import source_kind

    data = task.data or default_data
    builtin_kind = None
    if data is not None and data.task and source_kind(data.source, Path()) == "builtin":
        with contextlib.suppress(KeyError):
            builtin_kind = builtin.task(str(data.source), data.task).kind
    return task.resolved_kind(builtin_kind)


def check_tasks(tasks: list, default_data: Data | None, base_dir: Path, loc: tuple) -> Found:
    """Evaluation tasks: data present and readable, the split exists, classification has labels."""
    from tuneloop.data import builtin
    from tuneloop.data.sources import local_splits, source_kind

    found: Found = []
    for i, task in enumerate(tasks):
        here = (*loc, i)
        data = task.data or default_data
        if data is None:
            found.append((here, "no data: give the task a `data:` section (or the recipe one)"))
            continue
        if task.data is not None:
            problems = _check_data(task.data, (*here, "data"), base_dir, "sft", training=False)
            if problems:
                found += problems
                continue
        kind = source_kind(data.source, base_dir)
        splits = None
        if kind == "builtin":
            splits = list(builtin.info(str(data.source))["splits"])
        elif kind == "files":
            splits = list(local_splits(data.source, base_dir))
        if splits is not None and task.split not in splits:
            found.append(((*here, "split"), f"no split {task.split!r}; splits: {', '.join(splits)}"))
        task_kind = _task_kind(task, default_data)
        if task_kind == "classification" and not task.labels:
            has = kind == "builtin" and data.task and builtin.task(str(data.source), data.task).labels
            if not has:
                found.append(((*here, "labels"), "a classification task needs `labels:` (the classes to choose from)"))
        for m in task.resolved_metrics(task_kind):
            from tuneloop.config.evaluation import METRICS

            if not m.startswith("evaluate:") and m not in METRICS[task_kind]:
                found.append(
                    ((*here, "metrics"), f"{m!r} is not a {task_kind} metric; use: {', '.join(METRICS[task_kind])}")
                )
    return found


def _check_model(recipe: Recipe, base_dir: Path) -> Found:
    from tuneloop.models.builtin import BUILTIN_MODELS

    ref = recipe.base_model
    found: Found = []
    name = ref.name
    if name.startswith("models:/"):
        from tuneloop.registry.uri import parse_model_uri

        try:
            parse_model_uri(name)
        except ValueError as e:
            found.append((("base_model",), str(e)))
        return found + _check_template(ref, base_dir)
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


def _check_data(data: Data, loc: tuple, base_dir: Path, method: str, training: bool = True) -> Found:
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
        if training and data.train_split not in splits:
            found.append(((*loc, "train_split"), f"no split {data.train_split!r}; splits: {', '.join(splits)}"))
        if "eval_split" in data.model_fields_set and data.eval_split and data.eval_split not in splits:
            found.append(((*loc, "eval_split"), f"no split {data.eval_split!r}; splits: {', '.join(splits)}"))
    if columns is not None:
        found += _check_columns(data, loc, columns, effective_format(data), method)
    if data.prepare:
        found += _check_prepare(data, loc, base_dir, columns, splits)
    return found


def _check_prepare(
    data: Data, loc: tuple, base_dir: Path, columns: list[str] | None, splits: list[str] | None
) -> Found:
    """Columns, splits, group keys, mixed-in sources and user functions of `data.prepare`, before any loading."""
    import importlib.util

    from tuneloop.config.prepare import Decontaminate, Filter, Mix, Split
    from tuneloop.data.sources import text_columns

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
                    found += _check_data(ref.data, (*here, "against", j, "data"), base_dir, "sft", training=False)
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
                found += _check_data(other, (*here, "sources", j), base_dir, "sft")
        if isinstance(step, Filter) and step.function:
            module = step.function.split(":")[0]
            try:
                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                spec = None
            if spec is None:
                found.append(((*here, "function"), f"cannot find module {module!r} (is it importable from here?)"))
    if known is not None and any(isinstance(s, Split) for s in data.prepare):
        wanted = [("train_split", data.train_split)]
        if "eval_split" in data.model_fields_set and data.eval_split:
            wanted.append(("eval_split", data.eval_split))
        for key, name in wanted:
            if name not in known:
                found.append(((*loc, key), f"no split {name!r} after the prepare steps; splits: {', '.join(known)}"))
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
