"""Defaults merging, `--set` overrides and the shipped recipes/configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tuneloop.config.errors import RecipeError
from tuneloop.config.loader import resolved_yaml
from tuneloop.config.yamlsource import load_located
from tuneloop.recipes import load_recipe

REPO = Path(__file__).resolve().parents[2]

RECIPE = """
name: demo
defaults: [base]
data: {source: debian-descriptions, task: synopsis}
stages:
  - name: sft
    method: sft
    args: {learning_rate: 1.0e-4}
"""

BASE = """
base_model: {name: smollm2-135m-instruct, dtype: float32}
seed: 7
stages:
  - name: sft
    method: sft
    args: {max_steps: 5, learning_rate: 3.0e-3}
"""


def test_defaults_merge_underneath_and_stages_merge_by_name(write):
    write("base.yaml", BASE)
    recipe = load_recipe(write("r.yaml", RECIPE))
    assert recipe.seed == 7 and recipe.base_model.dtype == "float32"
    assert recipe.stage("sft").args == {"max_steps": 5, "learning_rate": 1e-4}


def test_defaults_found_under_configs_dir_of_an_ancestor(write):
    write("configs/models/m.yaml", "base_model: smollm2-135m-instruct\n")
    path = write("recipes/sub/r.yaml", RECIPE.replace("[base]", "[models/m]"))
    assert load_recipe(path).base_model.name == "smollm2-135m-instruct"


def test_error_in_defaults_file_points_at_that_file(write):
    base = write("base.yaml", BASE.replace("max_steps", "max_stepz"))
    with pytest.raises(RecipeError) as info:
        load_recipe(write("r.yaml", RECIPE))
    (p,) = info.value.problems
    assert (p.file, p.line, p.key) == (str(base), 6, "stages.sft.args.max_stepz")


def test_defaults_cycle_is_an_error(write):
    write("a.yaml", "defaults: [b]\nseed: 1\n")
    write("b.yaml", "defaults: [a]\nseed: 2\n")
    with pytest.raises(RecipeError, match="includes itself"):
        load_recipe(write("r.yaml", RECIPE.replace("[base]", "[a]")))


def test_set_parses_yaml_scalars_and_addresses_stage_by_name(write):
    write("base.yaml", BASE)
    recipe = load_recipe(
        write("r.yaml", RECIPE),
        [
            "stages.sft.args.learning_rate=2e-5",
            "stages.sft.args.packing=true",
            "seed=11",
            "data.max_train_rows=100",
            "stages.sft.peft.type=lora",
        ],
    )
    args = recipe.stage("sft").args
    assert args["learning_rate"] == 2e-5 and args["packing"] is True
    assert recipe.seed == 11 and recipe.data.max_train_rows == 100
    assert recipe.stage("sft").peft.r == 16


def test_set_reaches_into_a_base_model_given_as_a_string(write):
    write("x.jsonl", '{"prompt": "p", "completion": "c"}\n')
    short = "name: s\nbase_model: my/model\ndata: {source: x.jsonl}\nstages: [{name: sft, method: sft}]\n"
    recipe = load_recipe(write("s.yaml", short), ["base_model.name=other/model", "base_model.dtype=bfloat16"])
    assert recipe.base_model.name == "other/model" and recipe.base_model.dtype == "bfloat16"
    assert load_recipe(write("t.yaml", short), ["base_model=third/model"]).base_model.name == "third/model"


def test_set_without_equals_is_an_error(write):
    write("base.yaml", BASE)
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(write("r.yaml", RECIPE), ["seed"])


def test_yaml_reads_exponent_floats_as_numbers(write):
    data, _ = load_located(write("x.yaml", "a: 1e-4\nb: 5E+3\nc: 1.0\nd: '1e-4'\n"))
    assert data == {"a": 1e-4, "b": 5e3, "c": 1.0, "d": "1e-4"}


def test_resolved_recipe_round_trips(write):
    write("base.yaml", BASE)
    recipe = load_recipe(write("r.yaml", RECIPE))
    again = load_recipe(write("again.yaml", resolved_yaml(recipe)))
    assert "defaults" not in resolved_yaml(recipe)
    assert again == recipe.model_copy(update={"defaults": []})


def test_a_resolved_recipe_keeps_what_eval_split_meant(write, tiny_model):
    """The default eval split applies only where the source has it, and a recipe's `eval_split: null` turns it off;
    the resolved recipe must load back meaning the same (it once said `validation` for a source without one)."""
    rows = "".join(f'{{"prompt": "p{i}", "completion": "c{i}"}}\n' for i in range(4))
    write("only-train/train.jsonl", rows)
    write("both/train.jsonl", rows)
    write("both/validation.jsonl", rows)
    for source, eval_split in (("only-train", "default"), ("both", "null")):
        line = "" if eval_split == "default" else f"eval_split: {eval_split}, "
        recipe = load_recipe(
            write(
                f"{source}.yaml",
                f"""
            name: r
            base_model: {tiny_model}
            data: {{source: {source}, {line}format: {{prompt: "{{prompt}}", completion: "{{completion}}"}}}}
            stages: [{{name: sft, method: sft}}]
            """,
            )
        )
        again = load_recipe(write(f"{source}-resolved.yaml", resolved_yaml(recipe)))
        assert again.data.eval_split == recipe.data.eval_split
        assert ("eval_split" in again.data.model_fields_set) == (eval_split != "default")


SHIPPED = sorted((REPO / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    load_recipe(path)


def test_every_shipped_config_is_valid_yaml_or_json():
    import json

    files = [p for p in (REPO / "configs").rglob("*") if p.is_file()]
    assert files
    for f in files:
        if f.suffix in (".yaml", ".yml"):
            load_located(f)
        elif f.suffix == ".json":
            json.loads(f.read_text())


def test_shipped_recipes_open_with_a_run_command():
    for path in SHIPPED:
        head = path.read_text().split("\nname:")[0]
        assert "tuneloop " in head and "--set" in head, f"{path.name} should say how to run and override it"


def test_validate_does_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from tuneloop.cli import app; "
        "r = CliRunner().invoke(app, ['validate', 'recipes/quickstart.yaml']); "
        "assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets', 'mlflow', 'wandb') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "models").glob("*.yaml")), ids=lambda p: p.name)
def test_every_model_config_works_as_recipe_defaults(write, config):
    path = write("r.yaml", RECIPE.replace("[base]", f"[{config}]"))
    assert load_recipe(path).base_model.name
