"""Generate the recipe reference (docs/recipes.md) and JSON Schema (docs/recipe.schema.json) from the schema.

Ordered as a recipe reads (field declaration order, sections after the keys that use them), so the reference
cannot drift from the code; a test fails when the committed copies are stale.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tuneloop.config import arg_ranges, trainer_fields
from tuneloop.config.evaluation import EvalSuite
from tuneloop.config.schema import Recipe

HEADER = """# Recipe reference

Generated from `src/tuneloop/config/schema.py` by `python scripts/gen_recipe_docs.py`; do not edit by hand.
Every key below is checked by `tuneloop validate`; unknown keys are errors with the closest valid name.
Editors get completion from [recipe.schema.json](recipe.schema.json) (add
`# yaml-language-server: $schema=../docs/recipe.schema.json` at the top of a recipe).

A recipe may list `defaults:` files merged underneath it, and any key can be overridden on the command line
with a dotted path, stages addressed by name: `--set stages.sft.args.learning_rate=1e-4` (values are YAML).
"""


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:  # a discriminated union (prepare steps): name its members
        return _type_name(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in typing.get_args(ann))
    if origin is list:
        return f"list of {_type_name(typing.get_args(ann)[0])}"
    if origin is dict:
        k, v = typing.get_args(ann)
        return f"mapping {_type_name(k)} → {_type_name(v)}"
    if ann is type(None):
        return "null"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"[{ann.__name__}](#{ann.__name__.lower()})"
    return getattr(ann, "__name__", str(ann))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "see below"
        if isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
            value = [v.model_dump(exclude_defaults=True) for v in value]
        return f"`{json.dumps(value)}`"
    if field.default is PydanticUndefined or field.default is None:
        return "—"
    return f"`{json.dumps(field.default)}`"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for f in model.model_fields.values():
            stack = [f.annotation]
            while stack:
                a = stack.pop()
                if isinstance(a, type) and issubclass(a, BaseModel):
                    visit(a)
                stack.extend(typing.get_args(a))

    visit(root)
    return seen


def markdown() -> str:
    parts = [HEADER]
    for model in [*_models(Recipe), EvalSuite]:
        title = {Recipe: "Recipe (top level)", EvalSuite: "EvalSuite (a suite file under configs/eval/)"}.get(
            model, model.__name__
        )
        parts.append(f'\n## {title}\n<a id="{model.__name__.lower()}"></a>\n\n{(model.__doc__ or "").strip()}\n')
        parts.append("| key | type | default | meaning |\n|---|---|---|---|")
        for name, f in model.model_fields.items():
            desc = (f.description or "").replace("|", "\\|").replace("\n", " ")
            typ = _type_name(f.annotation).replace("|", "\\|")
            parts.append(f"| `{f.alias or name}` | {typ} | {_default(f)} | {desc} |")
    parts.append("\n## Stage `args` by method\n")
    for method in trainer_fields.methods():
        fields = trainer_fields.fields(method)
        parts.append(
            f"`{method}`: the fields of TRL's `{trainer_fields.config_class(method)}` "
            f"({len(fields)} fields, TRL {json.loads(trainer_fields.SNAPSHOT.read_text())['trl_version']}), "
            "checked by name, type and range. Managed by tuneloop and refused in recipes: "
            + ", ".join(f"`{k}`" for k in trainer_fields.MANAGED_ARGS)
            + ". See TRL's documentation for each field's meaning.\n"
        )
    parts.append(ARG_RANGES)
    parts += arg_ranges.reference()
    return "\n".join(parts) + "\n"


_EXAMPLE = arg_ranges.check("sft", {"learning_rate": -5.0e-4}, {})[0]
ARG_RANGES = f"""### Ranges of trainer arguments

Besides names and types, `tuneloop validate` checks the values that transformers, TRL or torch would reject only
at train time, after the model and data have loaded (a negative learning rate passes `TrainingArguments` and dies
in the optimizer), and values that certainly train nothing (zero epochs, a batch of 0). Each problem says the value,
the allowed range and why, at the line that set it:

```
recipes/sft.yaml:11 stages.sft.args.{_EXAMPLE[0]}: {_EXAMPLE[1]}
```

A number in quotes (`learning_rate: "5e-4"`) is text to YAML and is reported as such, with the unquoted spelling
to write; `5e-4` without quotes is read as a number (YAML 1.2), and so is `--set stages.sft.args.learning_rate=5e-4`.
Scheduler, optimizer and strategy names (`lr_scheduler_type`, `optim`, `eval_strategy`, `save_strategy`) must be
names transformers knows, with the closest one suggested. Arguments removed upstream are answered with what
replaces them: {"; ".join(f"`{k}`: {v}" for k, v in trainer_fields.GONE_ARGS.items())}.

The rules, from `src/tuneloop/config/arg_ranges.py`; a
unit test builds the real TRL configs with the values at the edge of each range, so the table follows the
libraries:
"""


def json_schema() -> str:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tuneloop recipe"
    # `base_model: name` is shorthand for `base_model: {name: ...}` (a before-validator the schema cannot see)
    prop = schema["properties"]["base_model"]
    schema["properties"]["base_model"] = {"anyOf": [{"type": "string"}, {"$ref": prop.pop("$ref")}], **prop}
    return json.dumps(schema, indent=2) + "\n"
