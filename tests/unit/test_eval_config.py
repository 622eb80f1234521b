"""Evaluation sections and suite files: validated like recipes, every problem located at file:line key.path."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config.errors import RecipeError
from tuneloop.recipes import load_recipe, load_suite

REPO = Path(__file__).resolve().parents[2]
SUITES = sorted((REPO / "configs" / "eval").glob("*.yaml"))

RECIPE = """
name: r
base_model: smollm2-135m-instruct
data: {source: debian-descriptions, task: synopsis}
stages:
  - name: sft
    method: sft
evaluation:
"""


def problems(path: Path) -> list[str]:
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    return [str(p) for p in e.value.problems]


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_every_shipped_suite_validates(path):
    suite = load_suite(path)
    assert suite.tasks


def test_validate_command_accepts_suites_and_recipes_together():
    result = CliRunner().invoke(app, ["validate", "configs/eval/synopsis.yaml", "recipes/quickstart.yaml"])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == 2


def test_unknown_metric_suggests_the_closest_name_at_its_line(write):
    path = write("r.yaml", RECIPE + "  tasks:\n    - name: t\n      split: test\n      metrics: [rougel, bleu]\n")
    found = problems(path)
    assert any("r.yaml:11 evaluation.tasks[0].metrics" in p and "did you mean rougeL?" in p for p in found), found


def test_gate_on_a_metric_no_task_computes_lists_what_is_computed(write):
    text = (
        RECIPE
        + "  tasks:\n    - {name: t, split: test, metrics: [bleu]}\n  gate:\n    - {metric: rougeL, max_drop: 1}\n"
    )
    found = problems(write("r.yaml", text))
    assert any("evaluation.gate[0].metric" in p and "t/bleu" in p for p in found), found


def test_a_gate_rule_must_say_something(write):
    text = RECIPE + "  tasks:\n    - {name: t, split: test}\n  gate:\n    - {metric: bleu}\n"
    found = problems(write("r.yaml", text))
    assert any("needs `max_drop`, `must_improve`, `min` or `max`" in p for p in found), found


def test_missing_split_names_the_splits_there_are(write):
    found = problems(write("r.yaml", RECIPE + "  tasks:\n    - {name: t, split: tset}\n"))
    assert any("evaluation.tasks[0].split" in p and "test" in p and "validation" in p for p in found), found


def test_classification_without_labels_is_refused(write):
    write("d/train.jsonl", '{"text": "a", "label": "x"}\n')
    write("d/test.jsonl", '{"text": "a", "label": "x"}\n')
    text = RECIPE + (
        "  tasks:\n    - name: c\n      kind: classification\n      split: test\n"
        "      data: {source: d, format: {style: plain, prompt: '{text}', completion: '{label}'}}\n"
    )
    found = problems(write("r.yaml", text))
    assert any("evaluation.tasks[0].labels" in p and "needs `labels:`" in p for p in found), found


def test_generation_metric_on_a_classification_task_is_refused(write):
    text = RECIPE.replace("task: synopsis", "task: section") + "  tasks:\n    - {name: s, metrics: [bleu]}\n"
    found = problems(write("r.yaml", text))
    assert any("'bleu' is not a classification metric" in p for p in found), found


def test_suite_tasks_merge_under_the_recipe_by_name(write):
    path = write("r.yaml", RECIPE + "  suite: eval/synopsis\n  tasks:\n    - {name: synopsis, max_rows: 7}\n")
    recipe = load_recipe(path)
    tasks = {t.name: t for t in recipe.evaluation.tasks}
    assert tasks["synopsis"].max_rows == 7  # the recipe's value wins
    assert "similarity" in tasks["synopsis"].metrics  # the rest comes from the suite file
    assert "synopsis-perplexity" in tasks


def test_unknown_suite_is_reported_at_the_suite_key(write):
    found = problems(write("r.yaml", RECIPE + "  suite: eval/nope\n"))
    assert len(found) == 1
    assert found[0].endswith(
        "r.yaml:8 evaluation.suite: no suite 'eval/nope' next to the recipe or under configs/eval/"
    )


def test_problem_inside_a_suite_file_points_at_that_file(write):
    write("configs/eval/mine.yaml", "name: mine\ntasks:\n  - name: t\n    split: test\n    kind: generaton\n")
    found = problems(write("r.yaml", RECIPE + "  suite: mine\n"))
    assert any("mine.yaml:5" in p and "evaluation.tasks[0].kind" in p for p in found), found


def test_suite_file_errors_are_located(write):
    path = write("s.yaml", "name: s\ntasks:\n  - name: t\n    split: test\n    generation: {max_new_token: 3}\n")
    with pytest.raises(RecipeError) as e:
        load_suite(path)
    text = str(e.value)
    assert "s.yaml:5 tasks[0].generation.max_new_token" in text and "did you mean max_new_tokens?" in text


def test_suite_task_without_data_is_refused(write):
    path = write("s.yaml", "name: s\ntasks:\n  - name: t\n    split: test\n")
    with pytest.raises(RecipeError) as e:
        load_suite(path)
    assert "s.yaml:3 tasks[0]: no data" in str(e.value)


def test_during_training_task_must_exist(write):
    text = RECIPE + "  tasks:\n    - {name: t, split: test}\n  during_training: {every_steps: 5, task: x}\n"
    found = problems(write("r.yaml", text))
    assert any("evaluation.during_training.task" in p and "no task named 'x'" in p for p in found), found
