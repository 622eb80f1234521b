"""Checks that need more than the schema: files exist, data fits the method, trainer args fit TRL.

Each check returns (key path, message) pairs so the loader can point at the exact line. Still no torch here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tuneloop.config import trainer_fields
from tuneloop.config.schema import ONLINE_METHODS, PREFERENCE_METHODS, Data, Recipe, template_fields

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
    found += _check_stages(recipe, base_dir)
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
    if evaluation.baseline and evaluation.baseline.startswith("stage:"):
        name = evaluation.baseline.removeprefix("stage:")
        earlier = [s.name for s in recipe.stages[:-1]]
        if name not in earlier:
            listed = ", ".join(earlier) or "none: the recipe has one stage"
            found.append(
                (("evaluation", "baseline"), f"no earlier stage {name!r} to compare with; earlier stages: {listed}")
            )
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
    from tuneloop.config.evaluation import METRICS

    return task.resolved_kind(builtin_kind if builtin_kind in METRICS else None)


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
        if task.reward_model:
            if task_kind != "generation":
                found.append(((*here, "reward_model"), f"a reward model scores generated answers; {task.name} is a "
                              f"{task_kind} task"))  # fmt: skip
            found += [((*here, "reward_model"), msg) for msg in model_ref_problems(task.reward_model, base_dir)]
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


def check_campaign(campaign, base_dir: Path) -> Found:
    """A campaign's prompts exist (the split, the columns its format reads), its models exist, its guidelines
    file is there, and gold items have references to be built from."""
    from tuneloop.config.evaluation import EvalTask
    from tuneloop.data.sources import effective_format

    found: Found = check_tasks(
        [EvalTask(name="prompts", data=campaign.data, split=campaign.split)], None, base_dir, ("prompts",)
    )
    found = [(loc[2:], msg) for loc, msg in found]  # the task's `data`/`split` are the campaign's
    for i, model in enumerate(campaign.models):
        if model.model:
            found += [(("models", i, "model"), msg) for msg in model_ref_problems(model.model, base_dir)]
    text = campaign.guidelines
    if text.endswith(".md") and "\n" not in text and not (base_dir / text).is_file() and not Path(text).is_file():
        found.append((("guidelines",), f"no guidelines file {text!r} (give a .md path next to the campaign, or text)"))
    if campaign.gold_share > 0:
        try:
            fmt = effective_format(campaign.data)
        except KeyError:
            fmt = None
        if fmt is not None and not fmt.completion:
            found.append(
                (("gold_share",), "gold items are built from references, and this data's format has no "
                 "`completion`; set gold_share: 0 or give the format a completion")
            )  # fmt: skip
    return found


def _check_model(recipe: Recipe, base_dir: Path) -> Found:
    ref = recipe.base_model
    return [(("base_model",), msg) for msg in model_ref_problems(ref.name, base_dir)] + _check_template(ref, base_dir)


def model_ref_problems(name: str, base_dir: Path) -> list[str]:
    """What is wrong with a model reference (built-in, directory, hub id, `models:/`), without loading it."""
    from tuneloop.models.builtin import BUILTIN_MODELS

    if name.startswith("models:/"):
        from tuneloop.registry.uri import parse_model_uri

        try:
            parse_model_uri(name)
        except ValueError as e:
            return [str(e)]
        return []
    if name in BUILTIN_MODELS:
        return []
    if name.startswith((".", "/", "~")) or (base_dir / name).exists() or Path(name).exists():
        path = Path(name).expanduser()
        path = path if path.is_absolute() or path.exists() else base_dir / path
        if not path.is_dir():
            return [f"model directory {name!r} does not exist"]
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            return [f"{name!r} has no config.json; is it a Hugging Face checkpoint?"]
    elif "/" not in name:
        hint = trainer_fields.closest(name, list(BUILTIN_MODELS))
        if hint:
            return [f"unknown built-in model {name!r} (did you mean {hint}?)"]
    return []


def _check_stages(recipe: Recipe, base_dir: Path) -> Found:
    """Where each stage starts, its reference model and its rewards."""
    import importlib.util

    from tuneloop.data.sources import columns_for_check, effective_format

    found: Found = []
    for i, stage in enumerate(recipe.stages):
        here = ("stages", i)
        if stage.base == "previous" and i == 0:
            found.append(((*here, "base"), "the first stage has no previous stage; omit `base` or name a model"))
        elif stage.base not in (None, "previous", "base_model"):
            found += [((*here, "base"), msg) for msg in model_ref_problems(stage.base, base_dir)]
        if stage.ref_model:
            found += [((*here, "ref_model"), msg) for msg in model_ref_problems(stage.ref_model, base_dir)]
        if stage.method in ONLINE_METHODS:
            found += _check_generation_counts(stage, here)
        data = recipe.stage_data(stage) if (stage.data or recipe.data) else None
        columns = columns_for_check(data, base_dir) if data is not None else None
        try:
            fmt = effective_format(data) if data is not None else None
        except KeyError:  # an unknown built-in task, reported by the data checks
            fmt = None
        if stage.method == "distill":
            found += _check_distill(recipe, i, fmt, columns, base_dir)
        for j, reward in enumerate(stage.rewards):
            at = (*here, "rewards", j)
            if reward.function:
                module = reward.function.split(":")[0]
                try:
                    spec = importlib.util.find_spec(module)
                except (ImportError, ValueError):
                    spec = None
                if spec is None:
                    found.append(((*at, "function"), f"cannot find module {module!r} (is it importable from here?)"))
            if reward.model:
                found += [((*at, "model"), msg) for msg in model_ref_problems(reward.model, base_dir)]
            if reward.builtin == "rougeL":
                ref = reward_reference(reward, fmt)
                if ref is None:
                    found.append(
                        ((*at, "reference"), "rougeL needs a reference: give `reference: COLUMN` or a `completion` "
                         "template in the data's format")
                    )  # fmt: skip
                elif columns is not None and ref not in columns:
                    hint = trainer_fields.closest(ref, columns)
                    did = f" (did you mean {hint}?)" if hint else ""
                    found.append(((*at, "reference"), f"no column {ref!r}{did}; columns: {', '.join(columns)}"))
    return found


def _check_distill(recipe: Recipe, i: int, fmt, columns: list[str] | None, base_dir: Path) -> Found:
    """Teacher and student exist, share a vocabulary, the kept layers exist, and off-policy data has answers."""
    stage = recipe.stages[i]
    here = ("stages", i)
    found: Found = []
    if stage.mode == "off_policy" and (fmt is not None or columns is not None):
        has_completion = fmt.shape() == "prompt_completion" if fmt is not None else "completion" in columns
        if not has_completion:
            found.append(
                ((*here, "mode"), "off_policy distillation trains on the data's completions, and this data has "
                 "only prompts; give the format a `completion` template, or use `mode: on_policy`")
            )  # fmt: skip
    if stage.teacher:
        found += [((*here, "teacher"), msg) for msg in model_ref_problems(stage.teacher, base_dir)]
    student = stage.student
    if student.from_ != "teacher":
        found += [((*here, "student", "from"), msg) for msg in model_ref_problems(student.from_, base_dir)]
    # what the teacher is: its own reference, else where the stage starts (earlier stages keep the vocabulary)
    start = stage.base if stage.base not in (None, "previous", "base_model") else recipe.base_model.name
    teacher_name = stage.teacher or start
    teacher = local_model_config(teacher_name, base_dir)
    if teacher is None:
        return found
    if student.from_ != "teacher":
        other = local_model_config(student.from_, base_dir)
        if other is not None and other.get("vocab_size") != teacher.get("vocab_size"):
            found.append(
                ((*here, "student", "from"), f"the student's vocabulary ({other.get('vocab_size')} tokens) differs "
                 f"from the teacher's ({teacher_name}: {teacher.get('vocab_size')}); distillation compares "
                 "next-token distributions token by token, so both need the same tokenizer")
            )  # fmt: skip
    layers = teacher.get("num_hidden_layers")
    if isinstance(student.keep_layers, list) and isinstance(layers, int):
        outside = [n for n in student.keep_layers if n >= layers]
        if outside:
            found.append(
                ((*here, "student", "keep_layers"), f"layers {outside} do not exist: the teacher ({teacher_name}) "
                 f"has {layers} layers, numbered 0-{layers - 1}")
            )  # fmt: skip
    return found


def local_model_config(name: str, base_dir: Path) -> dict | None:
    """A model's config.json when it is on this machine (built-in, directory, adapter's base, hub cache);
    None when only loading would tell (an uncached hub id, a registry URI)."""
    import json

    from tuneloop.models import builtin
    from tuneloop.models.builtin import BUILTIN_MODELS

    if name.startswith("models:/"):
        return None
    if name in BUILTIN_MODELS:
        path = builtin.path(name)
    else:
        path = Path(name).expanduser()
        path = path if path.is_absolute() or path.exists() else base_dir / path
    if path.is_dir():
        if (path / "config.json").is_file():
            return json.loads((path / "config.json").read_text())
        adapter = path / "adapter_config.json"
        if adapter.is_file():
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
            return local_model_config(base, base_dir) if base and base != name else None
        return None
    if "/" in name and not name.startswith((".", "/", "~")):
        with contextlib.suppress(Exception):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
            if isinstance(cached, str):
                return json.loads(Path(cached).read_text())
    return None


def _check_generation_counts(stage, here: tuple) -> Found:
    """GRPO/RLOO sample `num_generations` answers per prompt, and a generation batch must hold whole groups.
    Checked for one process (what a smoke run and a single GPU use); more processes multiply the batch."""
    args = stage.args
    at = (*here, "args")
    n = args.get("num_generations", 4)
    if not isinstance(n, int) or n < 2:
        return [((*at, "num_generations"), f"needs at least 2 samples per prompt to compare them; got {n!r}")]
    per_device = args.get("per_device_train_batch_size", 8)
    if args.get("generation_batch_size") is not None:
        batch, key = args["generation_batch_size"], "generation_batch_size"
        what = f"generation_batch_size={batch}"
    else:
        steps = args.get("steps_per_generation") or args.get("gradient_accumulation_steps", 1)
        batch, key = per_device * steps, "per_device_train_batch_size"
        what = f"per_device_train_batch_size × steps_per_generation = {per_device} × {steps} = {batch}"
    if not all(isinstance(v, int) for v in (batch, n)) or batch % n:
        return [
            ((*at, key), f"the generation batch ({what}) must be a multiple of num_generations={n}: each prompt's "
             f"{n} samples are compared with each other")
        ]  # fmt: skip
    return []


def reward_reference(reward, fmt) -> str | None:
    """The column a rougeL reward compares with: its own `reference`, else the `completion` template's column."""
    if reward.reference:
        return reward.reference
    if fmt is not None and fmt.completion:
        fields = template_fields(fmt.completion)
        return fields[0] if len(fields) == 1 else None
    return "completion" if fmt is None else None


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


def _builtin_tasks_for(method: str) -> list[tuple[str, str]]:
    """Built-in (dataset, task) pairs whose rows suit `method`, to suggest when the data does not."""
    from tuneloop.data import builtin

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
                ((*loc, "format"), f"{method} trains on {wanted}; this data's format gives {SHAPE_WORDS[shape]}"
                 + (f". E.g. {example}" if example else ""))
            )  # fmt: skip
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
