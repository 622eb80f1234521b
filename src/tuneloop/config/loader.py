"""Turn a recipe file (+ its `defaults:` + `--set` overrides) into a schema-valid `Recipe`, or every problem at once.

This is the floor every package stands on, so it checks only what the schema and TRL's argument lists can tell.
The checks that need data sources, the model catalogue or prices (files exist, columns fit the method) live in
`tuneloop.recipes`, whose `load_recipe`/`load_suite`/`load_campaign` pass them here as `check`: use those.
Nothing here imports torch or loads a model: `tuneloop validate` runs in well under a second per recipe.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneloop import shipped
from tuneloop.config import trainer_fields
from tuneloop.config.errors import AtKey, Problem, RecipeError
from tuneloop.config.evaluation import EvalSuite
from tuneloop.config.feedback import Campaign
from tuneloop.config.schema import Recipe
from tuneloop.config.yamlsource import KeyPath, Where, display_path, load_located, parse

OVERRIDE = "--set"
# A check beyond the schema: (key path, message) pairs for a validated value and the folder of its file.
Check = Callable[[Any, Path], list[tuple[tuple, str]]]


def parse_recipe(
    path: str | Path, overrides: list[str] | None = None, base_dir: Path | None = None, check: Check | None = None
) -> Recipe:
    """Load, merge, override and validate a recipe, then run `check`; raise RecipeError listing every problem found.

    `base_dir` is where relative paths in the recipe are looked up (default: the recipe's folder); a recipe
    recorded elsewhere (a run directory, a registered version) is read against its original folder."""
    path = Path(path)
    raw, where = _load_with_defaults(path, chain=())
    if not isinstance(raw, dict):
        raise RecipeError([Problem(display_path(path), 1, "", "a recipe is a YAML mapping (key: value lines)")])
    raw, where = _with_suite(raw, where, path)
    problems: list[Problem] = []
    for text in overrides or []:
        try:
            _apply_override(raw, where, text)
        except ValueError as e:
            problems.append(Problem(OVERRIDE, None, text.split("=", 1)[0], str(e)))
    fallback = (display_path(path), None)

    def add(found: list[tuple[tuple, str]]) -> None:
        for key_path, message in found:
            file, line = _locate(key_path, where, fallback)
            problems.append(Problem(file, line, _dotted(key_path, raw), message))

    # Trainer arguments are checked on the raw stages, so they are reported even when the schema fails too.
    add(_check_stage_args(raw))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        problems += [_problem_from_pydantic(err, raw, where, fallback) for err in e.errors()]
        raise RecipeError(_sorted(_dedupe(problems))) from None
    if check is not None:
        add(check(recipe, base_dir or path.parent))
    if problems:
        raise RecipeError(_sorted(_dedupe(problems)))
    return recipe


def parse_suite(path: str | Path, check: Check | None = None) -> EvalSuite:
    """Load and validate an evaluation suite file (`configs/eval/*.yaml`); RecipeError lists every problem."""
    return load_validated(Path(path), EvalSuite, "suite", check)


def parse_campaign(path: str | Path, check: Check | None = None, recipe_check: Check | None = None) -> Campaign:
    """Load and validate a feedback campaign (`configs/feedback/*.yaml`, or a recipe's `feedback:` section, checked
    with `recipe_check` as part of its recipe); RecipeError lists every problem with its file and line."""
    path = Path(path)
    if not path.is_file():
        found = find_default(f"feedback/{path}", Path.cwd())
        if found is None:
            raise RecipeError([Problem(str(path), None, "", "no such campaign file (nor under configs/feedback/)")])
        path = found
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raw = None  # reported with its line by the located loader below
    if isinstance(raw, dict) and "stages" in raw:  # a recipe: its `feedback:` section, validated with the recipe
        recipe = parse_recipe(path, check=recipe_check)
        if recipe.feedback is None:
            raise RecipeError([Problem(display_path(path), None, "feedback", "this recipe has no `feedback:` section")])
        return recipe.feedback
    return load_validated(path, Campaign, "campaign", check)


def load_validated(path: Path, model: type[BaseModel], what: str, check: Check | None) -> Any:
    """A YAML file (with `defaults:`) validated against `model`, then `check(value, folder)`; every problem is
    reported with its file and line."""
    raw, where = _load_with_defaults(path, chain=())
    shown = display_path(path)
    if not isinstance(raw, dict):
        raise RecipeError([Problem(shown, 1, "", f"a {what} is a YAML mapping (key: value lines)")])
    try:
        value = model.model_validate(raw)
    except ValidationError as e:
        problems = [_problem_from_pydantic(err, raw, where, (shown, None), model) for err in e.errors()]
        raise RecipeError(_sorted(_dedupe(problems))) from None
    found = check(value, path.parent) if check is not None else []
    if found:
        problems = []
        for key_path, message in found:
            file, line = _locate(key_path, where, (shown, None))
            problems.append(Problem(file, line, _dotted(key_path, raw), message))
        raise RecipeError(_sorted(_dedupe(problems)))
    return value


def file_kind(path: Path) -> str:
    """Suite files (configs/eval/) have `tasks` and no `stages`; sweep files (configs/sweeps/) name a `recipe` and
    have `objectives`, and a recipe with a `sweep:` section is checked as a sweep too; the rest are recipes."""

    try:
        raw = parse(path.read_text())
    except Exception:  # unreadable or invalid YAML: the recipe loader reports it with a line number
        return "recipe"
    if not isinstance(raw, dict):
        return "recipe"
    if "tasks" in raw and "stages" not in raw:
        return "suite"
    if ("objectives" in raw and "stages" not in raw) or "sweep" in raw:
        return "sweep"
    return "recipe"


def find_suite(entry: str, near: Path) -> Path | None:
    """A suite named in a recipe or on the command line: a path, or a name under `configs/eval/`."""
    direct = Path(entry).expanduser()
    if direct.is_file():
        return direct
    return find_default(entry, near) or find_default(f"eval/{entry}", near)


def _with_suite(raw: dict, where: dict[KeyPath, Where], path: Path) -> tuple[dict, dict[KeyPath, Where]]:
    """Put the tasks of `evaluation.suite` under the recipe's own tasks (which merge over them by name)."""
    evaluation = raw.get("evaluation")
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("suite"), str):
        return raw, where
    shown = display_path(path)
    found = find_suite(evaluation["suite"], path.parent)
    if found is None:
        line = where.get(("evaluation", "suite"), (shown, None))[1]
        msg = f"no suite {evaluation['suite']!r} next to the recipe or under configs/eval/"
        raise RecipeError([Problem(shown, line, "evaluation.suite", msg)])
    sub, sub_where = _load_with_defaults(found, (path.resolve(),))
    if not isinstance(sub, dict) or not isinstance(sub.get("tasks"), list):
        raise RecipeError([Problem(display_path(found), 1, "tasks", "a suite file needs a `tasks:` list")])
    base = {"evaluation": {"tasks": sub["tasks"]}}
    base_where = {("evaluation", *k): v for k, v in sub_where.items() if k[:1] == ("tasks",)}
    merged: dict = {}
    merged_where: dict[KeyPath, Where] = {}
    _merge(merged, merged_where, base, base_where, ())
    _merge(merged, merged_where, raw, where, ())
    return merged, merged_where


def _check_stage_args(raw: dict) -> list[tuple[tuple, str]]:
    """Trainer arguments of the recipe's stages, and of a `loop:`'s retraining stages (checked now, not after a
    round has waited two days for votes)."""
    found = []
    loop = raw.get("loop")
    retrain = loop.get("retrain") if isinstance(loop, dict) else None
    for where, stages in ((("stages",), raw.get("stages")), (("loop", "retrain"), retrain)):
        for i, stage in enumerate(stages if isinstance(stages, list) else []):
            if not isinstance(stage, dict) or stage.get("method") not in trainer_fields.methods():
                continue
            args = stage.get("args")
            if isinstance(args, dict):
                checked = trainer_fields.check_args(stage["method"], args)
                found += [((*where, i, "args", key), msg) for key, msg in checked]
    return found


def _sorted(problems: list[Problem]) -> list[Problem]:
    """File order, then line order: the order a user reads and fixes them in."""
    return sorted(problems, key=lambda p: (p.file == OVERRIDE, p.file, p.line or 0))


def resolved_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as it will run (defaults merged, overrides applied), in a form that loads back to the same recipe:
    what the run directory, the tracked run and the registered model keep."""
    return recipe.model_dump(mode="json", exclude_none=True, exclude={"defaults"}, context={"resolved": True})


def resolved_yaml(recipe: Recipe) -> str:
    """`resolved_dict` as YAML, for the run directory and logs."""
    return yaml.safe_dump(resolved_dict(recipe), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- defaults


def find_default(entry: str, recipe_dir: Path) -> Path | None:
    names = [entry] if entry.endswith((".yaml", ".yml")) else [f"{entry}.yaml", entry]
    dirs = [recipe_dir, Path.cwd()]
    dirs += [anc / "configs" for anc in (recipe_dir.resolve(), *recipe_dir.resolve().parents)]
    dirs.append(Path.cwd() / "configs")
    dirs.append(shipped.configs())  # last: a project's own configs/ wins over what tuneloop ships
    for d in dirs:
        for n in names:
            candidate = d / n
            if candidate.is_file():
                return candidate
    return None


def _load_with_defaults(path: Path, chain: tuple[Path, ...]) -> tuple[Any, dict[KeyPath, Where]]:
    data, where = load_located(path)
    if not isinstance(data, dict) or "defaults" not in data:
        return data, where
    entries = data["defaults"]
    shown = display_path(path)
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise RecipeError([Problem(shown, where[("defaults",)][1], "defaults", "expected a list of file names")])
    merged: dict[str, Any] = {}
    merged_where: dict[KeyPath, Where] = {}
    problems = []
    for i, entry in enumerate(entries):
        found = find_default(entry, path.parent)
        line = where.get(("defaults", i), (shown, None))[1]
        if found is None:
            msg = f"no file {entry!r} next to the recipe, under a configs/ directory or in tuneloop's shipped configs"
            problems.append(Problem(shown, line, f"defaults[{i}]", msg))
            continue
        if found.resolve() in chain or found.resolve() == path.resolve():
            problems.append(Problem(shown, line, f"defaults[{i}]", f"{entry!r} includes itself (a cycle)"))
            continue
        sub, sub_where = _load_with_defaults(found, (*chain, path.resolve()))
        if not isinstance(sub, dict):
            problems.append(Problem(display_path(found), 1, "", "a defaults file is a YAML mapping"))
            continue
        sub.pop("defaults", None)
        _merge(merged, merged_where, sub, sub_where, ())
    if problems:
        raise RecipeError(problems)
    _merge(merged, merged_where, data, where, ())
    return merged, merged_where


def _merge(dst: dict, dst_where: dict, src: dict, src_where: dict, prefix: KeyPath) -> None:
    """Deep-merge src over dst. Mappings merge by key; lists of named mappings (stages) merge by name."""
    for key, value in src.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            dst_where[path] = src_where.get(path, dst_where.get(path))
            _merge(dst[key], dst_where, value, src_where, path)
        elif _named_list(value) and _named_list(dst.get(key)):
            by_name = {item["name"]: i for i, item in enumerate(dst[key])}
            for j, item in enumerate(value):
                src_item = {k: v for k, v in src_where.items() if k[: len(path) + 1] == (*path, j)}
                if item["name"] in by_name:
                    i = by_name[item["name"]]
                    shifted = {(*path, i, *k[len(path) + 1 :]): v for k, v in src_item.items()}
                    _merge(dst[key][i], dst_where, item, shifted, (*path, i))
                else:
                    i = len(dst[key])
                    dst[key].append(copy.deepcopy(item))
                    dst_where.update({(*path, i, *k[len(path) + 1 :]): v for k, v in src_item.items()})
        else:
            for k in [k for k in dst_where if k[: len(path)] == path]:
                del dst_where[k]
            dst[key] = copy.deepcopy(value)
            dst_where.update({k: v for k, v in src_where.items() if k[: len(path)] == path})


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) and "name" in i for i in value)


# ---------------------------------------------------------------- --set overrides


def _apply_override(raw: dict, where: dict[KeyPath, Where], text: str) -> None:
    if "=" not in text:
        raise ValueError("expected KEY=VALUE, e.g. stages.sft.args.learning_rate=1e-4")
    dotted, value_text = text.split("=", 1)
    try:
        value = parse(value_text) if value_text else ""
    except yaml.YAMLError as e:
        raise ValueError(f"value is not valid YAML: {e}") from None
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ValueError("empty key segment")
    node: Any = raw
    path: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            names = [s.get("name") for s in node if isinstance(s, dict)]
            if part not in names:
                hint = trainer_fields.closest(part, [str(n) for n in names])
                did = f" (did you mean {hint}?)" if hint else ""
                listed = ", ".join(map(str, names)) or "none"
                raise ValueError(f"no stage named {part!r}{did}; stages: {listed}")
            index = names.index(part)
            path.append(index)
            if last:
                raise ValueError("cannot replace a whole stage from the command line; set its keys")
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise ValueError(f"{'.'.join(parts[:i])} is not a mapping")
        path.append(part)
        if last:
            node[part] = value
        else:
            if isinstance(node.get(part), str) and tuple(path) in SHORTHAND:  # `base_model: NAME` is {name: NAME}
                node[part] = {SHORTHAND[tuple(path)]: node[part]}
            node = node.setdefault(part, [] if path == ["stages"] else {})
    where[tuple(path)] = (OVERRIDE, 0)


# keys whose string value is shorthand for a mapping with one key, so `--set base_model.dtype=bfloat16` works on
# `base_model: NAME` as it does on `base_model: {name: NAME}`
SHORTHAND: dict[KeyPath, str] = {("base_model",): "name"}


# ---------------------------------------------------------------- messages


def _dotted(loc: tuple, raw: Any) -> str:
    """Key path for people: stage list indices become stage names (`stages.sft.args.lr`)."""
    out: list[str] = []
    node = raw
    for part in loc:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None  # a list of strings has no names
            if isinstance(name, str) and out and out[-1] == "stages":
                out.append(name)
            elif out:
                out[-1] += f"[{part}]"
            else:
                out.append(f"[{part}]")
        else:
            out.append(str(part))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(out)


def _locate(loc: tuple, where: dict[KeyPath, Where], fallback: tuple[str, None]) -> tuple[str, int | None]:
    for n in range(len(loc), -1, -1):
        if tuple(loc[:n]) in where:
            file, line = where[tuple(loc[:n])]
            return file, (line or None)
    return fallback


def _model_at(loc: tuple, root: type[BaseModel] = Recipe) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc` (for 'did you mean' on unknown keys)."""
    import typing

    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        candidates = [ann, *typing.get_args(ann)]
        for a in list(candidates):
            candidates += typing.get_args(a)
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _problem_from_pydantic(
    err: dict, raw: Any, where: dict, fallback: tuple[str, None], root: type[BaseModel] = Recipe
) -> Problem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "constrained-"))))
    # a union of str | mapping reports each branch; the loc carries the branch type name: drop it
    loc = tuple(p for p in loc if p not in ("str", "dict[str,str]", "ModelRef", "list[str]"))
    loc = _without_tags(loc, raw)
    kind = err["type"]
    if kind == "union_tag_invalid":
        tag, expected = err["ctx"]["tag"], [t.strip(" '") for t in err["ctx"]["expected_tags"].split(",")]
        hint = trainer_fields.closest(str(tag), expected)
        did = f"did you mean {hint}? " if hint else ""
        loc = (*loc, err["ctx"]["discriminator"].strip("'"))
        message = f"unknown {loc[-1]} {tag!r}; {did}available: {', '.join(expected)}"
    elif kind == "extra_forbidden":
        model = _step_model(loc, raw) or _model_at(loc, root)
        hint = trainer_fields.closest(str(loc[-1]), list(model.model_fields)) if model else None
        message = f"unknown key (did you mean {hint}?)" if hint else "unknown key"
        if model and not hint:
            message += f"; valid keys: {', '.join(model.model_fields)}"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "value_error":
        cause = err.get("ctx", {}).get("error")
        message = str(cause) if cause is not None else err["msg"]
        if isinstance(cause, AtKey):
            loc = (*loc, *cause.key)
    else:
        got = err.get("input")
        message = err["msg"][0].lower() + err["msg"][1:]
        if not isinstance(got, (dict, list)):
            message += f" (got {got!r})"
    file, line = _locate(loc, where, fallback)
    return Problem(file, line, _dotted(loc, raw), message)


def _step_model(loc: tuple, raw: Any) -> type[BaseModel] | None:
    """The step class of a `data.prepare` item, found by its `step:` tag."""
    from tuneloop.config import prepare

    node = raw
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    step = node.get("step") if isinstance(node, dict) else None
    return getattr(prepare, str(step).capitalize(), None) if step in prepare.STEP_NAMES else None


def _without_tags(loc: tuple, raw: Any) -> tuple:
    """A discriminated union (`step: dedup`) puts the tag into the error's location; people never wrote it."""
    out: list = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("step") == part:
            continue
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: dict[tuple, Problem] = {}
    for p in problems:
        seen.setdefault((p.file, p.line, p.key, p.message), p)
    return list(seen.values())
