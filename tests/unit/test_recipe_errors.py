"""Bad recipes fail fast, all problems at once, each as `file:line key.path: reason`, exit code 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config.errors import RecipeError
from tuneloop.recipes import load_recipe

GOOD = """
name: demo
base_model: smollm2-135m-instruct
data:
  source: debian-descriptions
  task: synopsis
stages:
  - name: sft
    method: sft
    peft: {type: lora, r: 8}
    args:
      learning_rate: 1.0e-4
      max_steps: 3
"""


def problems(path, overrides=None) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return [str(p) for p in info.value.problems]


def test_good_recipe_loads(write):
    recipe = load_recipe(write("r.yaml", GOOD))
    assert recipe.stages[0].args["learning_rate"] == 1e-4
    assert recipe.base_model.name == "smollm2-135m-instruct"


def test_yaml_syntax_error_names_the_line(write):
    path = write("r.yaml", GOOD.replace("  task: synopsis", "  task: [synopsis"))
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:") and "YAML syntax error" in msg
    assert int(msg.split(":")[1].split()[0]) in (6, 7, 8)


def test_unknown_top_level_key_suggests_closest(write):
    path = write("r.yaml", GOOD + "seeed: 3\n")
    assert problems(path) == [f"{path}:13 seeed: unknown key (did you mean seed?)"]


def test_unknown_data_key_suggests_closest(write):
    path = write("r.yaml", GOOD.replace("  task: synopsis", "  tsak: synopsis"))
    assert f"{path}:5 data.tsak: unknown key (did you mean task?)" in problems(path)


def test_unknown_stage_key_is_reported_by_stage_name(write):
    path = write("r.yaml", GOOD.replace("    peft:", "    pefts:"))
    assert problems(path) == [f"{path}:9 stages.sft.pefts: unknown key (did you mean peft?)"]


def test_unknown_peft_key_lists_valid_keys(write):
    path = write("r.yaml", GOOD.replace("r: 8}", "rank: 8}"))
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:9 stages.sft.peft.rank: unknown key")


def test_unknown_trainer_arg_suggests_closest_name(write):
    path = write("r.yaml", GOOD.replace("learning_rate:", "lerning_rate:"))
    assert problems(path) == [f"{path}:11 stages.sft.args.lerning_rate: unknown key (did you mean learning_rate?)"]


def test_trainer_arg_of_wrong_type(write):
    path = write("r.yaml", GOOD.replace("1.0e-4", "fast"))
    assert problems(path) == [f"{path}:11 stages.sft.args.learning_rate: expected a number, got 'fast' (str)"]


def test_trainer_arg_choice_suggests_closest(write):
    path = write("r.yaml", GOOD + "      lr_scheduler_type: cosin\n")
    (msg,) = problems(path)
    assert msg == f"{path}:13 stages.sft.args.lr_scheduler_type: 'cosin' is not a valid choice; did you mean 'cosine'?"


def test_schema_value_of_wrong_type(write):
    path = write("r.yaml", GOOD.replace("  task: synopsis", "  task: synopsis\n  max_train_rows: many"))
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:6 data.max_train_rows: input should be a valid integer")
    assert "'many'" in msg


@pytest.mark.parametrize(
    ("old", "new", "key", "line"),
    [
        ("r: 8}", "r: 8, dropout: 1.5}", "stages.sft.peft.dropout", 9),
        ("  task: synopsis", "  task: synopsis\n  max_eval_rows: 0", "data.max_eval_rows", 6),
        ("r: 8}", "r: 0}", "stages.sft.peft.r", 9),
    ],
)
def test_out_of_range_values(write, old, new, key, line):
    path = write("r.yaml", GOOD.replace(old, new))
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:{line} {key}: input should be")


def test_missing_data_file(write):
    path = write(
        "r.yaml", GOOD.replace("source: debian-descriptions", "source: missing.jsonl").replace("  task: synopsis\n", "")
    )
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:4 data.source: file ") and "does not exist" in msg


def test_unknown_method_suggests_closest(write):
    path = write("r.yaml", GOOD.replace("method: sft", "method: sftt"))
    (msg,) = problems(path)
    methods = "sft, reward, dpo, kto, grpo, rloo, distill, orpo, cpo"
    assert msg == f"{path}:8 stages.sft.method: unknown method 'sftt'; did you mean sft? available: {methods}"


def test_bad_stage_name_in_set_override(write):
    path = write("r.yaml", GOOD)
    (msg,) = problems(path, ["stages.sfft.args.learning_rate=1e-3"])
    assert msg == "--set stages.sfft.args.learning_rate: no stage named 'sfft' (did you mean sft?); stages: sft"


def test_set_override_type_error_points_at_set(write):
    path = write("r.yaml", GOOD)
    (msg,) = problems(path, ["stages.sft.args.max_steps=lots"])
    assert msg.startswith("--set stages.sft.args.max_steps: expected an integer")


def test_data_without_required_columns(write, tmp_path):
    (tmp_path / "qa.jsonl").write_text('{"question": "2+2?", "answer": "4"}\n')
    path = write(
        "r.yaml", GOOD.replace("source: debian-descriptions", "source: qa.jsonl").replace("  task: synopsis\n", "")
    )
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:3 data: sft needs messages or prompt+completion or text columns")
    assert "found question, answer" in msg and "format:" in msg


def test_format_template_with_unknown_column(write, tmp_path):
    (tmp_path / "qa.jsonl").write_text('{"question": "2+2?", "answer": "4"}\n')
    text = GOOD.replace("source: debian-descriptions", "source: qa.jsonl").replace(
        "  task: synopsis\n", "  format: {prompt: '{questoin}', completion: '{answer}'}\n"
    )
    path = write("r.yaml", text)
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:5 data.format.prompt: template uses column 'questoin'")
    assert "did you mean {question}?" in msg


def test_missing_required_section(write):
    path = write("r.yaml", GOOD.split("stages:")[0])
    assert problems(path) == [f"{path}:1 stages: required key is missing"]


def test_missing_defaults_file(write):
    path = write("r.yaml", "defaults: [models/nope]\n" + GOOD)
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:1 defaults[0]: no file 'models/nope'")


def test_duplicate_stage_names(write):
    stage = GOOD.split("stages:\n")[1]
    path = write("r.yaml", GOOD + stage)
    assert any("stage names must be unique; repeated: sft" in m for m in problems(path))


def test_duplicate_yaml_key(write):
    path = write("r.yaml", GOOD.replace("name: demo\n", "name: demo\nname: other\n"))
    assert problems(path) == [f"{path}:2 name: key appears twice"]


def test_managed_trainer_arg_is_refused(write):
    path = write("r.yaml", GOOD + "      output_dir: /tmp/x\n")
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:13 stages.sft.args.output_dir: set by tuneloop")


def test_unknown_builtin_task(write):
    path = write("r.yaml", GOOD.replace("task: synopsis", "task: synopses"))
    (msg,) = problems(path)
    assert msg == f"{path}:5 data.task: unknown task 'synopses'; did you mean synopsis? tasks: synopsis, section"


def test_misspelt_builtin_model(write):
    path = write("r.yaml", GOOD.replace("smollm2-135m-instruct", "smollm2-135m-instrct"))
    assert problems(path) == [
        f"{path}:2 base_model: unknown built-in model 'smollm2-135m-instrct' (did you mean smollm2-135m-instruct?)"
    ]


def test_every_problem_is_reported_in_one_pass(write):
    text = GOOD.replace("learning_rate:", "lerning_rate:").replace("r: 8}", "r: -1}") + "seeed: 1\n"
    path = write("r.yaml", text)
    found = problems(path)
    assert len(found) == 3, found


def test_cli_validate_exits_2_and_prints_every_problem(write):
    path = write("r.yaml", GOOD.replace("learning_rate:", "lerning_rate:") + "seeed: 1\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "stages.sft.args.lerning_rate: unknown key (did you mean learning_rate?)" in result.output
    assert "seeed: unknown key (did you mean seed?)" in result.output
    assert "Traceback" not in result.output


def test_cli_validate_json_for_ci(write):
    good = write("good.yaml", GOOD)
    bad = write("bad.yaml", GOOD.replace("method: sft", "method: dpoo"))
    result = CliRunner().invoke(app, ["validate", "--json", str(good), str(bad)])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert [r["ok"] for r in data] == [True, False]
    (p,) = data[1]["problems"]
    assert p["key"] == "stages.sft.method" and p["line"] == 8 and p["file"] == str(bad)


def test_launcher_settings_in_recipe_args_are_refused(write):
    path = write("r.yaml", GOOD + "      deepspeed: configs/deepspeed/zero3.json\n")
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:13 stages.sft.args.deepspeed: a launcher setting: it belongs in an accelerate")


def test_missing_chat_template_file(write):
    path = write(
        "r.yaml",
        GOOD.replace(
            "base_model: smollm2-135m-instruct", "base_model: {name: smollm2-135m-instruct, chat_template: nope.jinja}"
        ),
    )
    assert problems(path) == [f"{path}:2 base_model.chat_template: file 'nope.jinja' does not exist"]
