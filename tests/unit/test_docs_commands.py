"""Docs that run: every shell command in README.md and docs/*.md parses against the real CLI, and is either run by a
test (RUN_BY names it) or sits in a block marked `<!-- not run: REASON -->` (tests/docs_commands.py)."""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import json
import re
import shlex

import pytest
import typer
import yaml
from typer.testing import CliRunner

from tests.docs_commands import REPO, DocCommand, collect, collect_all, doc_files, markers, tuneloop_calls
from tuneloop.cli import app

COMMANDS = collect_all()
CALLS = [(c, argv) for c in COMMANDS for argv in tuneloop_calls(c.text)]
HERE = "tests/unit/test_docs_commands.py"
WHEEL = "tests/e2e/test_wheel.py::test_the_wheel_works_from_an_unrelated_directory"
SMOKE_ALL = "tests/integration/test_builtin_model.py::test_every_shipped_recipe_passes_smoke"
SWEEP = "tests/e2e/test_sweep_cli.py::test_sweep_runs_trials_reports_and_registers_the_best"
LOOP_E2E = "tests/integration/test_loop_e2e.py::test_a_round_from_served_traffic_to_a_hot_swapped_champion"
TWO_RANKS = "tests/integration/test_distributed_and_resume.py::test_two_cpu_processes_end_with_identical_weights"
ZERO2 = (
    "tests/integration/test_cluster_cpu.py::"
    "test_zero2_shipped_recipe_smoke_ranks_agree_and_the_saved_model_reloads_bit_identical"
)
CHEAP_RUN = f"{HERE}::test_cheap_doc_command_runs"

# doc command (as collected) -> the test that runs it, verbatim (HERE) or the same verb with cheap inputs
RUN_BY = {
    # run verbatim below
    "tuneloop configs path accelerate/zero3": CHEAP_RUN,
    "tuneloop validate recipes/*.yaml": CHEAP_RUN,
    "tuneloop feedback validate configs/feedback/synopsis.yaml": CHEAP_RUN,
    "tuneloop monitor history recipes/quickstart.yaml": CHEAP_RUN,
    "tuneloop serve keys create my-app": CHEAP_RUN,
    "tuneloop serve keys create billing-app --rpm 120": CHEAP_RUN,
    "tuneloop serve keys list": CHEAP_RUN,
    "tuneloop serve keys create ci > key.txt": CHEAP_RUN,
    "tuneloop serve requests --limit 20": CHEAP_RUN,
    "tuneloop validate my-recipe.yaml": f"{HERE}::test_readme_own_data_recipe_validates_offline",
    # the README's "installed as a package" block, from the wheel in an unrelated directory
    "tuneloop init my-project": WHEEL,
    "cd my-project && tuneloop run recipes/quickstart.yaml --smoke": WHEEL,
    # every shipped recipe, with --smoke
    "tuneloop run recipes/quickstart.yaml": SMOKE_ALL,
    "tuneloop run recipes/retrain-loop.yaml": SMOKE_ALL,
    "tuneloop train recipes/quickstart.yaml --smoke": (
        "tests/unit/test_train_sft.py::test_cli_train_and_run_print_a_summary"
    ),
    "tuneloop train recipes/quickstart.yaml --resume": (
        "tests/unit/test_train_sft.py::test_resume_continues_from_last_complete_checkpoint"
    ),
    # the same verbs on the tiny model
    "tuneloop registry show quickstart": (
        "tests/unit/test_registry.py::test_list_and_show_print_versions_aliases_metrics_and_cost"
    ),
    "tuneloop registry lineage quickstart@champion": (
        "tests/unit/test_registry.py::test_registry_uris_work_for_evaluation_and_as_a_base_model_with_lineage"
    ),
    "tuneloop registry register RUN_DIR": (
        "tests/unit/test_registry.py::test_a_run_trained_with_tuneloop_train_is_registered_afterwards"
    ),
    "tuneloop serve keys revoke tlk_1a2b3c4d": "tests/unit/test_serve.py::test_keys_verbs",
    "tuneloop eval --endpoint http://localhost:8000 --api-key KEY --suite eval/synopsis": (
        "tests/integration/test_serve.py::test_eval_endpoint_with_a_gateway_key_skips_what_it_cannot_score"
    ),
    "tuneloop serve models:/quickstart@champion --follow champion": (
        "tests/integration/test_serve.py::test_hot_swap_drops_no_request"
    ),
    "tuneloop serve models:/support@champion models:/billing@champion --mode multi-lora": (
        "tests/integration/test_serve.py::test_multi_lora_serves_both_versions_from_one_engine"
    ),
    "tuneloop loop recipes/retrain-loop.yaml": LOOP_E2E,
    "tuneloop loop recipes/retrain-loop.yaml --no-wait": LOOP_E2E,
    "tuneloop loop history synopsis-loop": LOOP_E2E,
    "tuneloop loop status synopsis-loop": (
        "tests/unit/test_loop.py::test_rounds_wait_for_votes_retrain_promote_and_refuse"
    ),
    "tuneloop monitor recipes/retrain-loop.yaml --once": (
        "tests/unit/test_loop.py::test_the_monitor_starts_a_round_and_later_checks_finish_it"
    ),
    "tuneloop monitor recipes/quickstart.yaml --once": "tests/unit/test_monitor.py::test_cli_once_json_and_history",
    "tuneloop monitor recipes/quickstart.yaml --once --json": (
        "tests/unit/test_monitor.py::test_cli_once_json_and_history"
    ),
    "tuneloop sweep recipes/sweep.yaml": SWEEP,
    "tuneloop sweep status sweep-synopsis": SWEEP,
    "tuneloop sweep best sweep-synopsis --within 0.5 --register": SWEEP,
    "tuneloop sweep report sweep-synopsis": SWEEP,
    (
        "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m tuneloop.train "
        "recipes/quickstart.yaml --smoke"
    ): TWO_RANKS,
    "torchrun --nproc_per_node 2 -m tuneloop.train recipes/quickstart.yaml --smoke": TWO_RANKS,
    (
        "accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 2 -m tuneloop.train "
        "recipes/sft-full.yaml --smoke"
    ): ZERO2,
}

# doc command -> what its output must show; run as written, from the repository root, in a fresh workspace
CHEAP = {
    "tuneloop configs path accelerate/zero3": "configs/accelerate/zero3.yaml",
    "tuneloop validate recipes/*.yaml": "ok recipes/quickstart.yaml",
    "tuneloop feedback validate configs/feedback/synopsis.yaml": "ok configs/feedback/synopsis.yaml",
    "tuneloop monitor history recipes/quickstart.yaml": "no checks yet",
    "tuneloop serve keys create my-app": "tlk_",
    "tuneloop serve keys create billing-app --rpm 120": "tlk_",
    "tuneloop serve keys list": "no API keys yet",
    "tuneloop serve keys create ci > key.txt": "tlk_",
    "tuneloop serve requests --limit 20": "no requests",
}


@functools.cache
def _parser() -> typer.main.TyperGroup:
    """The real click tree of `tuneloop` with every command's body replaced by nothing: parsing (options, arity,
    verbs, the groups' own argument handling) runs as it does for a user; no command does."""
    root = typer.main.get_command(app)

    def silence(command) -> None:  # type: ignore[no-untyped-def]
        command.callback = lambda *args, **kwargs: None
        for sub in getattr(command, "commands", {}).values():
            silence(sub)

    silence(root)
    return root


def parse_error(argv: list[str]) -> str | None:
    """Why `tuneloop ARGV` would be refused before running, or None when it parses."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # `--help` prints
            _parser().main(args=list(argv), prog_name="tuneloop", standalone_mode=False)
    except typer.TyperException as e:
        return e.format_message() if hasattr(e, "format_message") else str(e)
    return None


@pytest.mark.parametrize("command, argv", CALLS, ids=[f"{c.file}:{c.line}" for c, _ in CALLS])
def test_every_tuneloop_command_in_the_docs_parses(command: DocCommand, argv: list[str]) -> None:
    assert parse_error(argv) is None, f"{command}\n  tuneloop {shlex.join(argv)}: {parse_error(argv)}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--compare", "evals/a", "evals/b"], "unexpected extra argument"),
        (["registry", "shwo", "quickstart"], "No such command"),
        (["validate", "r.yaml", "--bogus"], "No such option"),
        (["registry", "promote", "--version", "2"], "Missing argument"),
    ],
)
def test_the_parse_check_refuses_what_the_cli_refuses(argv: list[str], message: str) -> None:
    assert message in (parse_error(argv) or "")


def test_the_parse_check_accepts_help_version_and_implied_verbs() -> None:
    for argv in (["--help"], ["--version"], ["serve", "keys", "--help"], ["serve", "MODEL", "--follow", "champion"]):
        assert parse_error(argv) is None, argv


def test_the_collector_reads_continuations_prompts_comments_and_compound_lines(tmp_path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "<!-- not run: needs a GPU -->\n"
        "```bash\n# a comment\nFOO=1 accelerate launch -m tuneloop.train r.yaml \\\n    --set a=1   # why\n"
        "for p in a b; do\n  tuneloop validate $p.yaml\ndone\n```\n\n"
        "```console\n$ tuneloop registry list\nno registered models yet\n```\n\n"
        "```\nnext:\n  tuneloop registry show x\n```\n\n"
        "<!-- no commands: a diagram -->\n```\ntuneloop serve ── traffic ──▶\n```\n"
    )
    commands = collect(doc)
    assert [c.text for c in commands] == [
        "FOO=1 accelerate launch -m tuneloop.train r.yaml --set a=1",
        "for p in a b; do tuneloop validate $p.yaml; done",
        "tuneloop registry list",
        "tuneloop registry show x",
    ]
    assert [c.not_run for c in commands] == ["needs a GPU", "needs a GPU", None, None]
    assert tuneloop_calls(commands[0].text) == [["train", "r.yaml", "--set", "a=1"]]
    assert tuneloop_calls("accelerate launch --config_file $(tuneloop configs path zero3) -m tuneloop.train r.yaml")[
        0
    ] == [
        "configs",
        "path",
        "zero3",
    ]


def test_every_doc_command_is_run_by_a_test_or_marked_not_run() -> None:
    unaccounted = [str(c) for c in COMMANDS if c.text not in RUN_BY and not c.not_run]
    assert not unaccounted, (
        "these documented commands are neither run by a test (RUN_BY in this file) nor in a block marked "
        "`<!-- not run: REASON -->`:\n  " + "\n  ".join(unaccounted)
    )


def test_run_by_names_commands_the_docs_show_and_tests_that_exist() -> None:
    shown = {c.text for c in COMMANDS}
    assert not set(RUN_BY) - shown, f"no longer in the docs: {sorted(set(RUN_BY) - shown)}"
    assert set(CHEAP) <= {k for k, v in RUN_BY.items() if v.endswith("::test_cheap_doc_command_runs")}
    for test_id in set(RUN_BY.values()):
        path, name = test_id.split("::")
        assert re.search(rf"^(async )?def {name}\(", (REPO / path).read_text(), re.M), f"{test_id} does not exist"


def test_every_marker_covers_a_command_and_gives_a_reason() -> None:
    for path in doc_files():
        lines = path.read_text().splitlines()
        for line, kind, reason in markers(path):
            assert len(reason) > 10, f"{path.name}:{line}: say why"
            covered = [c for c in collect(path) if c.line > line and c.not_run == reason]
            if kind == "not run":
                assert covered and any(c.text not in RUN_BY for c in covered), (
                    f"{path.name}:{line}: a `not run` marker over no command that is not run"
                )
            assert lines[line].lstrip().startswith("```"), f"{path.name}:{line}: a marker goes right above a block"


@pytest.mark.parametrize("text", sorted(CHEAP))
def test_cheap_doc_command_runs(text: str, monkeypatch) -> None:
    assert text in {c.text for c in COMMANDS}, f"the docs no longer show {text!r}"
    monkeypatch.chdir(REPO)
    (argv,) = tuneloop_calls(text)
    expanded = [match for a in argv for match in (sorted(glob.glob(a)) if "*" in a else [a])]
    result = CliRunner().invoke(app, expanded)
    assert result.exit_code == 0, f"{text}: exit {result.exit_code}\n{result.output[-2000:]}"
    assert CHEAP[text] in result.output, result.output[-2000:]


def _readme_recipe() -> str:
    """The YAML block of the README's "Your own data and your own model" section, as a reader copies it."""
    section = (REPO / "README.md").read_text().split("## Your own data and your own model", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def _own_project(tmp_path) -> None:
    recipe = _readme_recipe()
    (tmp_path / "my-recipe.yaml").write_text(recipe)
    rows = [{"prompt": f"What is {i} + {i}?", "completion": str(2 * i)} for i in range(24)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_readme_own_data_recipe_validates_offline(tmp_path, monkeypatch) -> None:
    _own_project(tmp_path)
    spec = yaml.safe_load(_readme_recipe())
    assert "/" in spec["base_model"] and spec["data"]["source"] == "data/train.jsonl"  # a hub id, a local file
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, tuneloop_calls("tuneloop validate my-recipe.yaml")[0])
    assert result.exit_code == 0, result.output
    assert "ok my-recipe.yaml" in result.output and "no 'validation' split" in result.output


@pytest.mark.slow
def test_readme_own_data_recipe_smoke_runs_on_the_builtin_model(tmp_path, monkeypatch, workspace) -> None:
    """`--smoke` reads the base model's config and tokenizer, which a hub id offline has not: the built-in model
    stands in (`--set base_model=...`); everything else is the README's recipe and data layout."""
    _own_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["run", "my-recipe.yaml", "--smoke", "--set", "base_model=smollm2-135m-instruct"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output[-3000:]
    (run,) = (workspace / "runs" / "my-recipe").iterdir()
    assert (run / "stages" / "sft" / "model" / "adapter_config.json").is_file()
