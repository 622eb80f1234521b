"""One grammar for model references: what `validate` says offline, and what `eval`, `serve` and `run` check before
any engine starts, tracking run opens or data loads."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.errors import TuneloopError, UsageError
from tuneloop.models.refs import check_reference, reference_problems


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("models:/quickstart@champion", None),
        ("models:/quickstart/3", None),
        ("smollm2-135m-instruct", None),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", None),
        ("gpt2", None),  # a hub id without an organisation
        ("quickstart@champion", "did you mean models:/quickstart@champion?"),
        ("quickstart/3", "did you mean models:/quickstart/3?"),
        ("smolm2-135m-instruct", "did you mean smollm2-135m-instruct?"),
        ("models:/quickstart", "names no version"),
        ("models:/a b/1", "is not a registry reference"),
        ("./no/such/dir", "model directory './no/such/dir' does not exist"),
        ("a b", "is not a model reference: a model is models:/NAME/VERSION"),
        ("a/b/c", "is not a model reference"),
    ],
)
def test_references_are_checked_offline_with_a_did_you_mean(ref, expected, tmp_path):
    problems = reference_problems(ref, tmp_path)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems


def test_a_directory_must_hold_a_model_or_a_run(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    assert "holds no model" in reference_problems("./empty", tmp_path)[0]
    assert reference_problems(str(tiny_model), tmp_path) == []


def test_lookups_name_what_is_missing(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    with pytest.raises(UsageError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        check_reference("does/not-exist", tmp_path)
    with pytest.raises(TuneloopError, match="no registered model 'nothing'"):
        check_reference("models:/nothing@champion", tmp_path)


def test_eval_and_serve_refuse_a_lookalike_before_opening_a_run_or_starting_an_engine(workspace, tiny_recipe):
    runner = CliRunner()
    done = runner.invoke(app, ["eval", "-m", "quickstart@champion", "--suite", "eval/synopsis"])
    assert done.exit_code == 2 and "did you mean models:/quickstart@champion?" in done.stderr
    assert not (workspace / "mlflow.db").exists() and not (workspace / "evals").exists()
    served = runner.invoke(app, ["serve", "quickstart@champion", "--port", "0"])
    assert served.exit_code == 2 and "did you mean models:/quickstart@champion?" in served.stderr
    assert not (workspace / "serve").exists()
    path = tiny_recipe("typo", model="smolm2-135m-instruct")
    validated = runner.invoke(app, ["validate", str(path)])
    assert validated.exit_code == 2 and "did you mean smollm2-135m-instruct?" in validated.stderr
