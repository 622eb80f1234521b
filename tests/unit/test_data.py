"""Data sources and TRL formatting: built-in tasks, local files of each type, hub ids, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.config.schema import Data
from tuneloop.data import builtin, load_data
from tuneloop.data.sources import source_kind


def test_builtin_synopsis_task_is_chat_prompt_completion():
    data = load_data(Data(source="debian-descriptions", task="synopsis", max_train_rows=5, max_eval_rows=3), Path())
    assert len(data.train) == 5 and len(data.eval) == 3
    row = data.train[0]
    assert [t["role"] for t in row["prompt"]] == ["system", "user"]
    assert row["completion"][0]["role"] == "assistant"
    first = json.loads(builtin.split_file("debian-descriptions", "train").open().readline())
    assert row["completion"][0]["content"] == first["synopsis"]
    assert row["prompt"][1]["content"] == first["description"]


def test_builtin_section_task_keeps_only_labelled_rows():
    data = load_data(Data(source="debian-descriptions", task="section"), Path())
    labels = set(builtin.task("debian-descriptions", "section").labels)
    assert len(labels) == 8
    answers = {r["completion"][0]["content"] for r in data.train}
    assert answers == labels
    assert len(data.train) == builtin.info("debian-descriptions")["tasks"]["section"]["rows"]["train"]


def test_builtin_splits_share_no_description():
    seen = {}
    for split in ("train", "validation", "test"):
        for line in builtin.split_file("debian-descriptions", split).open():
            text = " ".join(json.loads(line)["description"].lower().split())
            assert seen.setdefault(text, split) == split


def test_fingerprint_is_stable_and_content_sensitive():
    spec = Data(source="debian-descriptions", task="synopsis", max_train_rows=20, eval_split=None)
    a, b = load_data(spec, Path()), load_data(spec, Path())
    assert a.fingerprints == b.fingerprints and a.eval is None
    c = load_data(spec.model_copy(update={"max_train_rows": 21}), Path())
    assert c.fingerprints["train"] != a.fingerprints["train"]


ROWS = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(6)]


def _write_rows(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    df = pd.DataFrame(rows)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_file_with_plain_format(tmp_path, suffix):
    path = tmp_path / f"qa{suffix}"
    _write_rows(path, ROWS)
    fmt = {"style": "plain", "prompt": "Q: {question}\nA:", "completion": " {answer}"}
    data = load_data(Data(source=path.name, format=fmt), tmp_path)
    assert data.eval is None
    assert data.train[2] == {"prompt": "Q: What is 2+2?\nA:", "completion": " 4"}


def test_directory_source_maps_files_to_splits(tmp_path):
    (tmp_path / "d").mkdir()
    _write_rows(tmp_path / "d/train.jsonl", ROWS[:4])
    _write_rows(tmp_path / "d/validation.jsonl", ROWS[4:])
    fmt = {"prompt": "{question}", "completion": "{answer}", "system": "Be brief."}
    data = load_data(Data(source="d", format=fmt), tmp_path)
    assert (len(data.train), len(data.eval)) == (4, 2)
    assert data.train[0]["prompt"][0] == {"role": "system", "content": "Be brief."}


def test_split_mapping_and_messages_column(tmp_path):
    chats = [{"conv": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    _write_rows(tmp_path / "a.jsonl", chats)
    _write_rows(tmp_path / "b.jsonl", chats[:1])
    spec = Data(source={"train": "a.jsonl", "dev": "b.jsonl"}, eval_split="dev", format={"messages": "conv"})
    data = load_data(spec, tmp_path)
    assert data.train.column_names == ["messages"] and len(data.eval) == 1


def test_rows_already_in_trl_format_pass_through(tmp_path):
    _write_rows(tmp_path / "pc.jsonl", [{"prompt": "a", "completion": "b", "id": 1}])
    data = load_data(Data(source="pc.jsonl"), tmp_path)
    assert data.train.column_names == ["prompt", "completion"]


def test_source_kinds():
    assert source_kind("debian-descriptions", Path()) == "builtin"
    assert source_kind("data/x.jsonl", Path()) == "files"
    assert source_kind({"train": "a.csv"}, Path()) == "files"
    assert source_kind("HuggingFaceH4/ultrachat_200k", Path()) == "hub"


def test_hub_source_goes_through_datasets_load_dataset(monkeypatch):
    """The hub path is the real `datasets.load_dataset` call; offline it fails with the library's own error."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(Exception) as info:
        load_data(Data(source="someorg/no-such-dataset", eval_split=None), Path())
    assert "someorg/no-such-dataset" in str(info.value)
