"""Bad data fails like a bad recipe: at `validate`, exit 2, `data-file:line` plus the recipe key that names it,
no traceback; and the same at train time, offline, and in `data inspect`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config.schema import Data
from tuneloop.data import load_data
from tuneloop.data.sources import check_hub_dataset
from tuneloop.errors import TuneloopError, UsageError

OK = {"prompt": "What does apt do?", "completion": "Installs packages."}
RECIPE = """
name: broken
base_model: smollm2-135m-instruct
data:
  source: {source}
{extra}stages:
  - name: main
    method: {method}
"""


def jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


# name: (file name, content, recipe `source`, extra data keys, method, expected message after `r.yaml:4 data.source: `)
CORPUS = {
    "malformed json line": (
        "train.jsonl",
        jsonl(OK, '{"prompt": "a" "completion": "b"}'),
        "train.jsonl",
        "",
        "sft",
        "train.jsonl:2: malformed JSON line (Expecting ',' delimiter, column 16)",
    ),
    "empty file": ("train.jsonl", "", "train.jsonl", "", "sft", "train.jsonl: no rows (the file is empty)"),
    "row is a list": (
        "train.jsonl",
        jsonl(OK, ["a", "b"]),
        "train.jsonl",
        "",
        "sft",
        "train.jsonl:2: the row is a list of str, not an object of columns",
    ),
    "missing column in a row": (
        "train.jsonl",
        jsonl(OK, {"prompt": "p"}),
        "train.jsonl",
        "",
        "sft",
        "train.jsonl:2: no `completion` (the row has prompt)",
    ),
    "null prompt": (
        "train.jsonl",
        jsonl(OK, OK, {"prompt": None, "completion": "c"}),
        "train.jsonl",
        "",
        "sft",
        "train.jsonl:3: `prompt` is null",
    ),
    "empty completion": (
        "train.jsonl",
        jsonl(OK, {"prompt": "p", "completion": "  "}),
        "train.jsonl",
        "",
        "sft",
        "train.jsonl:2: `completion` is an empty string",
    ),
    "completion as a list of strings": (
        "train.jsonl",
        jsonl(OK, {"prompt": "p", "completion": ["a", "b"]}),
        "train.jsonl",
        "",
        "sft",
        "train.jsonl:2: `completion` is a list of str; it must be a string or a list of {role, content} turns",
    ),
    "messages not a list": (
        "chat.jsonl",
        jsonl({"messages": [{"role": "user", "content": "hi"}]}, {"messages": "hello"}),
        "chat.jsonl",
        "",
        "sft",
        "chat.jsonl:2: `messages` is a string; `messages` is a list of {role, content} turns",
    ),
    "messages turn without role": (
        "chat.jsonl",
        jsonl({"messages": [{"role": "user", "content": "hi"}, {"content": "hello"}]}),
        "chat.jsonl",
        "",
        "sft",
        "chat.jsonl:1: `messages` turn 2 has no role (each turn is {role, content})",
    ),
    "bad kto label": (
        "kto.jsonl",
        jsonl({**OK, "label": True}, {**OK, "label": "maybe"}),
        "kto.jsonl",
        "",
        "kto",
        "kto.jsonl:2: `label` is 'maybe', not a label (use true/false, 1/0, good/bad or up/down)",
    ),
    "csv empty value": (
        "train.csv",
        "prompt,completion\nWhat is apt?,A tool.\nWhat is dpkg?,\n",
        "train.csv",
        "",
        "sft",
        "train.csv:3: `completion` is an empty string",
    ),
    "csv short row": (
        "train.csv",
        "prompt,completion\nWhat is apt?,A tool.\nWhat is dpkg?\n",
        "train.csv",
        "",
        "sft",
        "train.csv:3: `completion` is null",
    ),
    "parquet null": (
        "train.parquet",
        [OK, {"prompt": None, "completion": "c"}],
        "train.parquet",
        "",
        "sft",
        "train.parquet row 2: `prompt` is null",
    ),
    "json array with a non-object": (
        "train.json",
        json.dumps([OK, "just text"]),
        "train.json",
        "",
        "sft",
        "train.json row 2: the row is a str, not an object of columns",
    ),
    "template field null": (
        "qa.jsonl",
        jsonl({"q": "a?", "a": "b"}, {"q": None, "a": "b"}),
        "qa.jsonl",
        "  format: {prompt: '{q}', completion: '{a}'}\n",
        "sft",
        "qa.jsonl:2: `q` is null",
    ),
    "template field a list": (
        "qa.jsonl",
        jsonl({"q": "a?", "a": "b"}, {"q": "a?", "a": ["b", "c"]}),
        "qa.jsonl",
        "  format: {prompt: 'Q: {q}', completion: '{a}'}\n",
        "sft",
        "qa.jsonl:2: `a` is a list of str; a template field needs text (it would render as ['b', 'c'])",
    ),
    "dpo rejected empty": (
        "pairs.jsonl",
        jsonl({"prompt": "p", "chosen": "good", "rejected": ""}),
        "pairs.jsonl",
        "",
        "dpo",
        "pairs.jsonl:1: `rejected` is an empty string",
    ),
}


def _write_case(tmp_path: Path, name: str, content: object) -> None:
    if name.endswith(".parquet"):
        parquet(tmp_path / name, content)
    else:
        (tmp_path / name).write_text(content)


@pytest.mark.parametrize("case", list(CORPUS), ids=list(CORPUS))
def test_validate_reports_bad_data_with_file_and_line(tmp_path, write, monkeypatch, case):
    file, content, source, extra, method, expected = CORPUS[case]
    _write_case(tmp_path, file, content)
    write("r.yaml", RECIPE.format(source=source, extra=extra, method=method))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"r.yaml:4 data.source: {expected}" in result.output.splitlines()


def test_good_data_of_every_file_type_validates(tmp_path, write, monkeypatch):
    (tmp_path / "a.jsonl").write_text(jsonl(OK, {"prompt": "p", "completion": [{"role": "assistant", "content": "c"}]}))
    (tmp_path / "b.csv").write_text("prompt,completion\np,c\n")
    parquet(tmp_path / "c.parquet", [OK])
    (tmp_path / "d.json").write_text(json.dumps([OK]))
    (tmp_path / "e.jsonl").write_text(jsonl({**OK, "label": "thumbs_up"}, {**OK, "label": 0}))
    monkeypatch.chdir(tmp_path)
    for source, method in [("a.jsonl", "sft"), ("b.csv", "sft"), ("c.parquet", "sft"), ("d.json", "sft")]:
        write("r.yaml", RECIPE.format(source=source, extra="", method=method))
        result = CliRunner().invoke(app, ["validate", "r.yaml"])
        assert result.exit_code == 0, (source, result.output)
    write("r.yaml", RECIPE.format(source="e.jsonl", extra="", method="kto"))
    assert CliRunner().invoke(app, ["validate", "r.yaml"]).exit_code == 0


def test_a_million_row_style_systematic_error_is_capped(tmp_path, write, monkeypatch):
    rows = [OK] + [{"prompt": None, "completion": "c"}] * 998 + [{"prompt": "p"}]
    (tmp_path / "train.jsonl").write_text(jsonl(*rows))
    write("r.yaml", RECIPE.format(source="train.jsonl", extra="", method="sft"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 6, result.output
    assert lines[0] == "r.yaml:4 data.source: train.jsonl:2: `prompt` is null"
    assert lines[-1] == (
        "r.yaml:4 data.source: train.jsonl: and 994 more like these (prompt is null: 993, no completion: 1)"
    )


def test_misspelt_builtin_dataset_suggests_the_name_and_not_the_task_rule(write, monkeypatch, tmp_path):
    write("r.yaml", RECIPE.format(source="debian-descripions", extra="  task: synopsis\n", method="sft"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "r.yaml:4 data.source: unknown dataset 'debian-descripions'; did you mean debian-descriptions?"
    )


def test_task_on_a_local_file_says_to_use_format(tmp_path, write, monkeypatch):
    (tmp_path / "train.jsonl").write_text(jsonl(OK))
    write("r.yaml", RECIPE.format(source="train.jsonl", extra="  task: synopsis\n", method="sft"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 2
    assert "r.yaml:5 data.task: `task` applies to built-in datasets only" in result.output
    assert "this source is local files: describe its rows with `format:` instead" in result.output


def test_validate_in_a_real_process_prints_the_line_without_traceback(tmp_path, write):
    (tmp_path / "train.jsonl").write_text(jsonl(OK, OK, "{not json"))
    path = write("r.yaml", RECIPE.format(source="train.jsonl", extra="", method="sft"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "tuneloop", "validate", str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "train.jsonl:3: malformed JSON line (Expecting property name enclosed in double quotes" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_training_loader_says_the_line_of_a_malformed_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(jsonl(OK, OK, '{"prompt": "x", }'))
    with pytest.raises(TuneloopError, match=r"train\.jsonl:3: malformed JSON line \(Expecting property name"):
        load_data(Data(source=str(path), eval_split=None), tmp_path)
    path.write_text("")
    with pytest.raises(TuneloopError, match=r"train\.jsonl: no rows \(the file is empty\)"):
        load_data(Data(source=str(path), eval_split=None), tmp_path)


def test_offline_hub_dataset_fails_at_once_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing of the dataset is there
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "inspect", "someorg/some-dataset", "--tokenizer", "none"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert (
        "hub dataset 'someorg/some-dataset' is not in the local cache and HF_HUB_OFFLINE=1 (offline)" in result.output
    )
    assert "use a local file" in result.output
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE=1"):  # the offline branch: no request, no retries
        check_hub_dataset("someorg/some-dataset")


def test_hub_check_names_the_datasets_variable_and_the_misspelt_builtin(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UsageError, match=r"HF_DATASETS_OFFLINE=1 \(offline\): use a local file"):
        check_hub_dataset("someorg/some-dataset")
    with pytest.raises(UsageError, match="did you mean debian-descriptions"):
        check_hub_dataset("debian-descripton")


def _split_dir(tmp_path: Path, *splits: str) -> None:
    (tmp_path / "d").mkdir()
    for split in splits:
        (tmp_path / "d" / f"{split}.jsonl").write_text(jsonl(OK, {"prompt": f"{split}?", "completion": "c"}))


def test_missing_validation_split_falls_back_to_test_and_says_so(tmp_path, write, monkeypatch):
    _split_dir(tmp_path, "train", "test")
    path = write("r.yaml", RECIPE.format(source="d", extra="", method="sft"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 0, result.output
    assert (
        "note: r.yaml data.eval_split: no 'validation' split (splits: test, train); evaluating on 'test' instead "
        "(set data.eval_split to choose)"
    ) in result.output
    said: list[str] = []
    data = load_data(Data(source=str(tmp_path / "d")), path.parent, say=said.append)
    assert data.eval_split == "test" and data.eval is not None and data.eval[1]["prompt"] == "test?"
    assert said == [  # the note the run prints, word for word
        "data: no 'validation' split (splits: test, train); evaluating on 'test' instead (set data.eval_split to "
        "choose)"
    ]


def test_no_eval_candidate_is_a_note_and_an_explicit_split_an_error(tmp_path, write, monkeypatch):
    _split_dir(tmp_path, "train")
    write("r.yaml", RECIPE.format(source="d", extra="", method="sft"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 0
    assert "the stage trains without evaluation (no eval loss)" in result.output
    assert load_data(Data(source=str(tmp_path / "d")), tmp_path).eval is None
    write("r.yaml", RECIPE.format(source="d", extra="  eval_split: validation\n", method="sft"))
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 2 and "r.yaml:5 data.eval_split: no split 'validation'; splits: train" in result.output
    text = RECIPE.format(source="d", extra="", method="sft") + "evaluation:\n  tasks:\n    - {name: qa, split: test}\n"
    write("r.yaml", text)
    result = CliRunner().invoke(app, ["validate", "r.yaml"])
    assert result.exit_code == 2 and "evaluation.tasks[0].split: no split 'test'; splits: train" in result.output


def test_inspect_reports_null_and_empty_fields_not_a_duplicate_cluster(tmp_path):
    from tuneloop.data.inspect import Target, inspect
    from tuneloop.data.sources import raw_splits

    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(12)]
    for i in (2, 5, 7):
        rows[i]["prompt"] = None
    for i in (3, 9):
        rows[i]["prompt"] = ""
    (tmp_path / "train.jsonl").write_text(jsonl(*rows))
    spec = Data(source=str(tmp_path / "train.jsonl"), eval_split=None)
    report = inspect(Target(spec, tmp_path, None, None), raw_splits(spec, tmp_path), say=lambda _m: None)
    train = report["splits"]["train"]
    assert train["problems"]["missing or null prompt"] == {"count": 3, "rows": [3, 6, 8]}
    assert train["problems"]["empty prompt"] == {"count": 2, "rows": [4, 10]}
    assert train["duplicates"]["exact_rows"] == 0 and train["duplicates"]["largest"] == []
