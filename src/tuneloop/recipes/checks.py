"""Checks that need more than the schema: files exist, data fits the method, trainer args fit TRL.

Each check returns (key path, message) pairs so the loader can point at the exact line. Still no torch here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tuneloop.config import trainer_fields
from tuneloop.config.evaluation import METRICS, REFERENCES, EvalTask
from tuneloop.config.schema import ONLINE_METHODS, Data, Recipe
from tuneloop.config.templates import template_fields
from tuneloop.cost import load_prices
from tuneloop.data.sources import columns_for_check, effective_format, local_splits, source_kind
from tuneloop.errors import TuneloopError
from tuneloop.models.builtin import BUILTIN_MODELS
from tuneloop.models.refs import reference_problems as model_ref_problems
from tuneloop.recipes.data_checks import Found, check_data, eval_split_notes, module_problems


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
            found += check_data(data, loc, base_dir, stage.method)
    found += _check_stages(recipe, base_dir)
    if recipe.evaluation is not None:
        found += _check_evaluation(recipe, base_dir)
    found += _check_registry(recipe)
    found += _check_cost(recipe, base_dir)
    if recipe.feedback is not None:
        found += [(("feedback", *loc), msg) for loc, msg in check_campaign(recipe.feedback, base_dir)]
    return found


def recipe_notes(recipe: Recipe, base_dir: Path) -> list[str]:
    """What a valid recipe will do that its author may not expect, as `key.path: note` lines for `validate`:
    a stage evaluating on a fallback split, or training without evaluation."""
    notes: list[str] = []
    seen: set[int] = set()
    for stage in recipe.stages:
        data, key = (stage.data, f"stages.{stage.name}.data") if stage.data else (recipe.data, "data")
        if data is None or id(data) in seen:
            continue
        seen.add(id(data))
        notes += [f"{key}.eval_split: {note}" for note in eval_split_notes(data, base_dir)]
    return notes


def _check_registry(recipe: Recipe) -> Found:
    registry = recipe.registry
    if registry is None or not registry.gate:
        return []
    if recipe.evaluation is None:
        return [(("registry", "gate"), "a promotion gate needs an `evaluation:` section (the suite it is judged on)")]
    return _check_gate_metrics(recipe, registry.gate, ("registry", "gate"))


def _check_cost(recipe: Recipe, base_dir: Path) -> Found:

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

    data = task.data or default_data
    builtin_kind = None
    if data is not None and data.task and source_kind(data.source, Path()) == "builtin":
        with contextlib.suppress(KeyError):
            builtin_kind = builtin.task(str(data.source), data.task).kind

    return task.resolved_kind(builtin_kind if builtin_kind in METRICS else None)


def check_tasks(tasks: list, default_data: Data | None, base_dir: Path, loc: tuple) -> Found:
    """Evaluation tasks: data present and readable, the split exists, classification has labels."""
    from tuneloop.data import builtin

    found: Found = []
    for i, task in enumerate(tasks):
        here = (*loc, i)
        data = task.data or default_data
        if data is None:
            found.append((here, "no data: give the task a `data:` section (or the recipe one)"))
            continue
        if task.data is not None:
            shape = "dpo" if task.kind == "preference" else "sft"  # preference tasks read chosen/rejected pairs
            if shape == "sft" and REFERENCES in (columns_for_check(task.data, base_dir) or []):
                fmt = effective_format(task.data)
                if fmt is None or fmt.shape() == "prompt":
                    shape = "distill"  # a `references` column stands in for the completion: a prompt is enough
            problems = check_data(task.data, (*here, "data"), base_dir, shape, training=False)
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
                found.append(
                    (
                        (*here, "reward_model"),
                        f"a reward model scores generated answers; {task.name} is a {task_kind} task",
                    )
                )
            found += [((*here, "reward_model"), msg) for msg in model_ref_problems(task.reward_model, base_dir)]
        if task_kind == "classification" and not task.labels:
            has = kind == "builtin" and data.task and builtin.task(str(data.source), data.task).labels
            if not has:
                found.append(((*here, "labels"), "a classification task needs `labels:` (the classes to choose from)"))
        for m in task.resolved_metrics(task_kind):
            if not m.startswith("evaluate:") and m not in METRICS[task_kind]:
                found.append(
                    ((*here, "metrics"), f"{m!r} is not a {task_kind} metric; use: {', '.join(METRICS[task_kind])}")
                )
    return found


def check_campaign(campaign, base_dir: Path) -> Found:
    """A campaign's prompts exist (the split, the columns its format reads), its models exist, its guidelines
    file is there, and gold items have references to be built from."""

    found: Found = []
    if campaign.data is not None:
        found = check_tasks(
            [EvalTask(name="prompts", data=campaign.data, split=campaign.split)], None, base_dir, ("prompts",)
        )
        found = [(loc[2:], msg) for loc, msg in found]  # the task's `data`/`split` are the campaign's
    for i, step in enumerate(campaign.requests.prepare if campaign.requests else []):
        if step.step in ("mix", "split") or (
            step.step == "decontaminate" and (not step.against or any(a.data is None for a in step.against))
        ):
            why = (
                "`decontaminate` needs `against:` (a data source) here: logged prompts have no eval split"
                if step.step == "decontaminate"
                else f"`{step.step}` makes no sense on logged prompts"
            )
            found.append((("requests", "prepare", i), why + "; use dedup, filter, decontaminate or sample"))
    for i, model in enumerate(campaign.models):
        if model.model:
            found += [(("models", i, "model"), msg) for msg in model_ref_problems(model.model, base_dir)]
    text = campaign.guidelines
    if text.endswith(".md") and "\n" not in text and not (base_dir / text).is_file() and not Path(text).is_file():
        found.append((("guidelines",), f"no guidelines file {text!r} (give a .md path next to the campaign, or text)"))
    if campaign.gold_share > 0 and campaign.data is not None:
        try:
            fmt = effective_format(campaign.data)
        except KeyError:
            fmt = None
        if fmt is not None and not fmt.completion:
            found.append(
                (
                    ("gold_share",),
                    "gold items are built from references, and this data's format has no "
                    "`completion`; set gold_share: 0 or give the format a completion",
                )
            )
    return found


def _check_model(recipe: Recipe, base_dir: Path) -> Found:
    ref = recipe.base_model
    return [(("base_model",), msg) for msg in model_ref_problems(ref.name, base_dir)] + _check_template(ref, base_dir)


def _check_stages(recipe: Recipe, base_dir: Path) -> Found:
    """Where each stage starts, its reference model and its rewards."""

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
                found += [((*at, "function"), msg) for msg in module_problems(reward.function)]
            if reward.model:
                found += [((*at, "model"), msg) for msg in model_ref_problems(reward.model, base_dir)]
            if reward.builtin == "rougeL":
                ref = reward_reference(reward, fmt)
                if ref is None:
                    found.append(
                        (
                            (*at, "reference"),
                            "rougeL needs a reference: give `reference: COLUMN` or a `completion` "
                            "template in the data's format",
                        )
                    )
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
                (
                    (*here, "mode"),
                    "off_policy distillation trains on the data's completions, and this data has "
                    "only prompts; give the format a `completion` template, or use `mode: on_policy`",
                )
            )
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
                (
                    (*here, "student", "from"),
                    f"the student's vocabulary ({other.get('vocab_size')} tokens) differs "
                    f"from the teacher's ({teacher_name}: {teacher.get('vocab_size')}); distillation compares "
                    "next-token distributions token by token, so both need the same tokenizer",
                )
            )
    layers = teacher.get("num_hidden_layers")
    if isinstance(student.keep_layers, list) and isinstance(layers, int):
        outside = [n for n in student.keep_layers if n >= layers]
        if outside:
            found.append(
                (
                    (*here, "student", "keep_layers"),
                    f"layers {outside} do not exist: the teacher ({teacher_name}) "
                    f"has {layers} layers, numbered 0-{layers - 1}",
                )
            )
    return found


def local_model_config(name: str, base_dir: Path) -> dict | None:
    """A model's config.json when it is on this machine (built-in, directory, adapter's base, hub cache);
    None when only loading would tell (an uncached hub id, a registry URI)."""
    import json

    from tuneloop.models import builtin

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
        return []  # config.arg_ranges reported it, with the line
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
            (
                (*at, key),
                f"the generation batch ({what}) must be a multiple of num_generations={n}: each prompt's "
                f"{n} samples are compared with each other",
            )
        ]
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
