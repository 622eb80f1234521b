"""Data preparation and inspection: planted duplicates and contamination are found, counts add up, the cache
is hit and missed when it should be, bad steps fail at validation with file:line, and the built-in splits leak
nothing across source packages."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tuneloop.config.errors import RecipeError
from tuneloop.data import dedup as dd
from tuneloop.data.prepare import prepare
from tuneloop.errors import TuneloopError
from tuneloop.recipes import load_recipe

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "data/debian-descriptions"


def _rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DEBIAN / f"{split}.jsonl").open()]


def _edit(text: str, rng: random.Random, edits: int) -> str:
    """Replace `edits` words with new ones: a near copy whose shingle overlap we then measure exactly."""
    words = text.split()
    for i in rng.sample(range(len(words)), min(edits, len(words))):
        words[i] = f"w{rng.randrange(10**6)}"
    return " ".join(words)


def _planted(n_base: int = 600, n_near: int = 150, n_exact: int = 50, seed: int = 0):
    """Real descriptions (long enough that a one-word edit keeps Jaccard >= 0.8), plus planted copies."""
    rng = random.Random(seed)
    base = [r["description"] for r in _rows("train") if len(r["description"].split()) >= 60][:n_base]
    texts, pairs = list(base), []
    for k in range(n_near):
        src = k % len(base)
        copy = _edit(base[src], rng, 1)
        assert dd.jaccard(copy, base[src]) >= 0.8
        pairs.append((src, len(texts)))
        texts.append(copy)
    for k in range(n_exact):
        src = (k * 7) % len(base)
        pairs.append((src, len(texts)))
        texts.append("  " + base[src].upper() + " ")  # same text after normalisation
    return texts, pairs


def test_near_duplicates_are_found_with_high_recall_and_few_false_positives(capsys):
    texts, pairs = _planted()
    clusters = dd.near_clusters(texts, threshold=0.8)
    cluster_of = {i: c[0] for c in clusters for i in c}
    found = sum(1 for a, b in pairs if a in cluster_of and cluster_of.get(a) == cluster_of.get(b))
    recall = found / len(pairs)
    # every reported pair (member, cluster representative) checked against the exact Jaccard
    reported = [(c[0], i) for c in clusters for i in c[1:]]
    false = [p for p in reported if dd.jaccard(texts[p[0]], texts[p[1]]) < 0.8]
    fp_rate = len(false) / max(1, len(reported))
    with capsys.disabled():
        print(
            f"\nnear-dup: recall {recall:.3f} on {len(pairs)} planted pairs, {len(reported)} reported, "
            f"false-positive rate {fp_rate:.3f} (exact Jaccard < 0.8)"
        )
    assert recall >= 0.95
    assert fp_rate <= 0.1


def test_cross_matches_finds_planted_copies_only():
    rng = random.Random(1)
    train = [r["description"] for r in _rows("train")[:800]]
    tests = [r["description"] for r in _rows("test") if len(r["description"].split()) >= 60][:40]
    planted = {len(train) + k: j for k, j in enumerate(range(0, 40, 2))}  # every other test row, lightly edited
    rows = train + [_edit(tests[j], rng, 1) for j in planted.values()]
    matches = dd.cross_matches(rows, tests, threshold=0.8)
    assert {i: j for i, (j, _s) in matches.items()} == planted


def _recipe(write, steps: str, tasks: str = "") -> Path:
    """Steps start on line 7 (error tests check the line); `steps` lines are indented by four spaces."""
    lines = [
        "name: prep",
        "base_model: smollm2-135m-instruct",
        "data:",
        "  source: {train: train.jsonl, validation: validation.jsonl, test: test.jsonl}",
        '  format: {prompt: "{description}", completion: "{synopsis}"}',
        "  prepare:",
        *[line for line in steps.splitlines() if line.strip()],
        "stages:",
        "  - {name: sft, method: sft}",
    ]
    if tasks:
        lines += ["evaluation:", "  tasks:", tasks.rstrip()]
    return write("r.yaml", "\n".join(lines) + "\n")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def files(tmp_path):
    """Real rows with planted problems: exact and near copies inside train, and test rows copied into train."""
    rng = random.Random(2)
    train, test = _rows("train")[:300], _rows("test")[:60]
    long_tests = [r for r in test if len(r["description"].split()) >= 60][:10]
    planted = [dict(train[i], package=f"copy{i}") for i in range(5)]  # exact duplicates
    planted += [
        dict(train[i], package=f"near{i}", description=_edit(train[i]["description"], rng, 1))
        for i in range(10, 40)
        if len(train[i]["description"].split()) >= 60
    ][:5]
    leaked = [
        dict(r, package=f"leak-{r['package']}", description=_edit(r["description"], rng, 1)) for r in long_tests[:6]
    ]
    leaked += [dict(r, package=f"same-{r['package']}") for r in long_tests[6:9]]
    _write_jsonl(tmp_path / "train.jsonl", train + planted + leaked)
    _write_jsonl(tmp_path / "validation.jsonl", _rows("validation")[:40])
    _write_jsonl(tmp_path / "test.jsonl", test)
    return {"train": len(train), "dupes": len(planted), "leaked": len(leaked)}


def _adds_up(report: dict) -> None:
    for split, c in report["splits"].items():
        removed, added = sum(c.get("removed", {}).values()), sum(c.get("added", {}).values())
        assert c["before"] - removed + added == c["after"], (report["step"], split, c)


def test_steps_remove_what_was_planted_and_counts_add_up(write, files):
    steps = """
    - {step: dedup, threshold: 0.8}
    - {step: decontaminate}
    - {step: filter, drop_regex: "(?i)haskell"}
    - {step: sample, fraction: 0.5, seed: 3}
    """
    path = _recipe(write, steps, tasks="    - {name: synopsis, split: test, metrics: [rougeL]}")
    recipe = load_recipe(path)
    decont = recipe.data.prepare[1]
    assert [(a.split, a.data) for a in decont.against] == [("validation", None), ("test", None)]
    done = prepare(recipe.data, path.parent)
    dedup, decon, filt, sample = done.steps
    for r in done.steps:
        _adds_up(r)
    assert sum(dedup["splits"]["train"]["removed"].values()) >= files["dupes"]
    assert dedup["splits"]["train"]["removed"]["exact duplicate"] >= 5
    assert sum(decon["splits"]["train"]["removed"].values()) == files["leaked"]
    assert decon["splits"]["train"]["removed"]["exact copy of an evaluation row"] == 3
    assert all("haskell" not in t.lower() for t in done.splits["train"]["description"])
    assert sample["splits"]["train"]["after"] == round(filt["splits"]["train"]["after"] * 0.5)
    assert len(done.splits["test"]) == 60  # evaluation rows are never touched by train-only steps


def test_cache_is_hit_on_rerun_and_missed_after_a_change(write, files):
    steps = "    - {step: dedup, method: exact}\n    - {step: sample, rows: 100, seed: 1}\n"
    path = _recipe(write, steps)
    first = prepare(load_recipe(path).data, path.parent)
    assert [r["cached"] for r in first.steps] == [False, False]
    again = prepare(load_recipe(path).data, path.parent)
    assert [r["cached"] for r in again.steps] == [True, True] and again.fingerprint == first.fingerprint
    assert again.splits["train"]["package"] == first.splits["train"]["package"]
    new_steps = json.dumps([{"step": "dedup", "method": "exact"}, {"step": "sample", "rows": 90, "seed": 1}])
    changed = prepare(load_recipe(path, [f"data.prepare={new_steps}"]).data, path.parent)
    assert [r["cached"] for r in changed.steps] == [True, False]  # only the changed step re-ran
    assert changed.fingerprint != first.fingerprint and len(changed.splits["train"]) == 90
    (path.parent / "train.jsonl").write_text((path.parent / "train.jsonl").read_text().splitlines()[0] + "\n")
    after_edit = prepare(load_recipe(path).data, path.parent)
    assert [r["cached"] for r in after_edit.steps] == [False, False]  # the source changed: everything re-runs


def test_grouped_split_keeps_each_group_in_one_split(write, files):
    path = _recipe(
        write, "    - {step: split, by: section, seed: 5, fractions: {train: 0.6, validation: 0.2, test: 0.2}}\n"
    )
    done = prepare(load_recipe(path).data, path.parent)
    _adds_up(done.steps[0])
    owner = {}
    for split, ds in done.splits.items():
        for section in ds["section"]:
            assert owner.setdefault(section, split) == split
    assert sum(len(ds) for ds in done.splits.values()) == done.steps[0]["pooled"]


def test_mix_draws_the_weighted_shares(write, files, tmp_path):
    _write_jsonl(tmp_path / "extra.jsonl", [dict(r, package=f"x-{r['package']}") for r in _rows("validation")[:50]])
    path = _recipe(
        write, "    - {step: mix, rows: 200, weight: 3, seed: 1, sources: [{source: extra.jsonl, weight: 1}]}\n"
    )
    done = prepare(load_recipe(path).data, path.parent)
    report = done.steps[0]
    _adds_up(report)
    packages = done.splits["train"]["package"]
    assert len(packages) == 200 and sum(p.startswith("x-") for p in packages) == 50
    assert report["upsampled"] == []


def test_a_step_that_removes_every_row_stops_with_the_counts(write, files):
    path = _recipe(write, '    - {step: dedup, method: exact}\n    - {step: filter, keep_regex: "^NEVER$"}\n')
    with pytest.raises(TuneloopError) as e:
        prepare(load_recipe(path).data, path.parent)
    text = str(e.value)
    assert "step 2 (filter) left no rows in train" in text and "does not match keep_regex" in text
    total = files["train"] + files["dupes"] + files["leaked"]
    assert f"dedup: train {total} -> {total - 5} (-5 exact duplicate)" in text


def test_filter_by_tokens_language_and_function(write, files, tiny_model, tmp_path, monkeypatch):
    (tmp_path / "keepers.py").write_text("def short_synopsis(row):\n    return len(row['synopsis']) < 40\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    rows[0]["description"] = "Dieses Paket enthält die Werkzeuge für die Verwaltung der Datenbank und der Benutzer."
    _write_jsonl(tmp_path / "train.jsonl", rows)
    steps = f"""
    - {{step: filter, max_tokens: 150, tokenizer: {tiny_model}}}
    - {{step: filter, languages: [en]}}
    - {{step: filter, function: "keepers:short_synopsis"}}
    """
    path = _recipe(write, steps)
    done = prepare(load_recipe(path).data, path.parent)
    tokens, language, _function = done.steps
    assert set(tokens["splits"]["train"]["removed"]) == {"more than 150 tokens"}
    assert language["splits"]["train"]["removed"].get("language not en", 0) >= 1
    assert rows[0]["package"] not in done.splits["train"]["package"]
    assert all(len(s) < 40 for s in done.splits["train"]["synopsis"])


@pytest.mark.parametrize(
    ("steps", "line", "key", "message"),
    [
        ("    - {step: dedupe}\n", 7, "data.prepare[0].step", "unknown step 'dedupe'; did you mean dedup?"),
        ("    - {step: dedup, threshold: 1.5}\n", 7, "data.prepare[0].threshold", "less than or equal to 1"),
        (
            "    - {step: dedup, columns: [descripton]}\n",
            7,
            "data.prepare[0].columns",
            "no column 'descripton' (did you mean description?)",
        ),
        ("    - {step: split, by: pkg}\n", 7, "data.prepare[0].by", "no column 'pkg'"),
        ("    - {step: sample, rows: 5, splits: [dev]}\n", 7, "data.prepare[0].splits", "no split 'dev' at this step"),
        ("    - {step: filter, drop_regex: '(unclosed'}\n", 7, "data.prepare[0].drop_regex", "not a valid regular"),
        ("    - {step: filter, languages: [english]}\n", 7, "data.prepare[0].languages", "ISO 639-1"),
        (
            "    - {step: filter, function: 'no_such_module_xyz:f'}\n",
            7,
            "data.prepare[0].function",
            "cannot find module 'no_such_module_xyz'",
        ),
        (
            "    - {step: mix, sources: [{source: missing.jsonl, weight: 1}]}\n",
            7,
            "data.prepare[0].sources[0].source",
            "does not exist",
        ),
        ("    - {step: split, fractions: {train: 0.5}}\n", 7, "data.prepare[0].fractions", "shares sum to 0.5"),
        ("    - {step: split, fractions: {a: 0.5, b: 0.5}}\n", 3, "data.train_split", "no split 'train' after the"),
        (
            "    - {step: dedup, treshold: 0.5}\n",
            7,
            "data.prepare[0].treshold",
            "unknown key (did you mean threshold?)",
        ),
    ],
)
def test_bad_steps_fail_at_validation_with_file_line_and_key(write, files, steps, line, key, message):
    path = _recipe(write, steps)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    problems = [p for p in e.value.problems if p.key == key]
    assert problems, [str(p) for p in e.value.problems]
    assert problems[0].line == line and problems[0].file.endswith("r.yaml") and message in problems[0].message


def test_missing_source_fails_at_validation(write):
    path = write(
        "r.yaml",
        """
        name: nosrc
        base_model: smollm2-135m-instruct
        data: {source: nothere.jsonl, prepare: [{step: dedup}]}
        stages: [{name: sft, method: sft}]
        """,
    )
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(path)


def test_builtin_splits_do_not_leak_across_source_packages():
    """The shipped splits are grouped: no validation/test row shares its source package, a near-duplicate
    description or its synopsis with a training row."""
    train = _rows("train")
    sources = {r["source"] for r in train}
    info = json.loads((DEBIAN / "tasks.json").read_text())
    for split in ("validation", "test"):
        rows = _rows(split)
        assert not [r["package"] for r in rows if r["source"] in sources]
        near = dd.cross_matches([r["description"] for r in rows], [r["description"] for r in train], 0.8)
        assert not near
        assert info["leakage"][split] == {"same_source": 0, "near_description": 0, "same_synopsis": 0}


def test_load_data_applies_the_steps_and_records_the_fingerprint(write, files):
    from tuneloop.data import load_data

    path = _recipe(write, "    - {step: dedup, method: exact}\n")
    recipe = load_recipe(path)
    data = load_data(recipe.data, path.parent)
    assert data.prepare and data.prepare["fingerprint"] and data.prepare["steps"][0]["step"] == "dedup"
    assert len(data.train) == files["train"] + files["dupes"] + files["leaked"] - 5


def test_inspect_reports_problems_overlap_labels_and_escapes_html(tmp_path):
    from typer.testing import CliRunner

    from tuneloop.cli import app

    rows = _rows("train")[:120]
    rows[3]["synopsis"] = "   "  # empty completion
    del rows[5]["synopsis"]  # missing field
    rows[10]["description"] = "<script>alert('x')</script> " + rows[10]["description"]
    rows.append(dict(rows[10], package="again"))  # an exact duplicate
    test = [*_rows("test")[:30], dict(rows[10], package="leaked")]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    _write_jsonl(tmp_path / "test.jsonl", test)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "inspect",
            str(tmp_path),
            "--column",
            "description",
            "--label",
            "section",
            "--tokenizer",
            "none",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    train, tst = report["splits"]["train"], report["splits"]["test"]
    assert train["rows"] == 121 and train["duplicates"]["exact_rows"] == 1
    assert tst["overlap_with_train"]["exact_rows"] == 1 and tst["overlap_with_train"]["examples"][0]["row"] == 31
    assert train["labels"]["column"] == "section" and sum(train["labels"]["counts"].values()) == 121
    assert set(train["languages"]) >= {"en"}
    page = (out / "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "<svg" in page
    assert "train" in result.output and "report:" in result.output


def test_inspect_max_rows_looks_at_a_seeded_sample_and_says_of_how_many(tmp_path):
    from typer.testing import CliRunner

    from tuneloop.cli import app

    _write_jsonl(tmp_path / "train.jsonl", _rows("train")[:120])
    _write_jsonl(tmp_path / "test.jsonl", _rows("test")[:30])
    args = ["data", "inspect", str(tmp_path), "--column", "description", "--tokenizer", "none", "--max-rows", "40"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["splits"]["train"]["rows"] == 40 and report["splits"]["test"]["rows"] == 30  # 30 < 40: all
    assert report["sampled_from"] == {"train": 120}
    assert "40 of 120" in result.output and "40 of 120" in (tmp_path / "a" / "report.html").read_text()
    assert CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b")]).exit_code == 0
    assert json.loads((tmp_path / "b" / "report.json").read_text())["splits"] == report["splits"]  # seeded


def test_inspect_finds_format_problems_with_row_numbers(tmp_path):
    from tuneloop.config.schema import Data, Format
    from tuneloop.data.inspect import Target, inspect
    from tuneloop.data.sources import raw_splits

    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(10)]
    rows[2]["a"] = ""
    rows[4]["q"] = None
    chats = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    chats.append({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
    chats.append({"messages": [{"role": "assistant", "content": "first"}]})
    _write_jsonl(tmp_path / "qa.jsonl", rows)
    _write_jsonl(tmp_path / "chat.jsonl", chats)
    qa = Data(source=str(tmp_path / "qa.jsonl"), format=Format(prompt="{q}", completion="{a}"), eval_split=None)
    report = inspect(Target(qa, tmp_path, None, None), raw_splits(qa, tmp_path), say=lambda _m: None)
    problems = report["splits"]["train"]["problems"]
    assert problems["empty completion"]["rows"] == [3] and problems["missing or null q"]["rows"] == [5]
    chat = Data(source=str(tmp_path / "chat.jsonl"), eval_split=None)
    report = inspect(Target(chat, tmp_path, None, None), raw_splits(chat, tmp_path), say=lambda _m: None)
    problems = report["splits"]["train"]["problems"]
    assert problems["chat turns out of order (two in a row from one role)"]["rows"] == [4]
    assert problems["chat does not start with a user turn"]["rows"] == [5]


def test_data_prepare_command_writes_the_dataset(write, files):
    from datasets import load_from_disk
    from typer.testing import CliRunner

    from tuneloop.cli import app

    path = _recipe(write, "    - {step: dedup, method: exact}\n")
    dest = path.parent / "out"
    result = CliRunner().invoke(app, ["data", "prepare", str(path), "-o", str(dest)])
    assert result.exit_code == 0, result.output
    assert "1. dedup: train" in result.output and "fingerprint" in result.output
    assert len(load_from_disk(str(dest))["train"]) == files["train"] + files["dupes"] + files["leaked"] - 5
    assert json.loads((dest / "prepare.json").read_text())["steps"][0]["splits"]["train"]["removed"]


def test_a_run_tracks_the_prepared_fingerprint_into_lineage(tiny_recipe):
    from tuneloop import pipeline
    from tuneloop.registry.lineage import facts
    from tuneloop.tracking import store

    path = tiny_recipe("prepped")
    recipe = load_recipe(path, ["data.prepare=[{step: dedup, method: exact}, {step: decontaminate}]"])
    result = pipeline.run(recipe, path, say=lambda _m: None)
    stage = result.stages[0]
    assert [s["step"] for s in stage.data_prepare["steps"]] == ["dedup", "decontaminate"]
    fingerprint = stage.data_prepare["fingerprint"]
    version = store.client().get_model_version("prepped", "1")
    assert version.tags["tuneloop.data.sft.prepare"] == fingerprint
    assert any(f"sft.prepare {fingerprint}" in line for line in facts(version))
    run = store.client().get_run(version.run_id) if version.run_id else None
    assert run is None or run.data.tags.get("tuneloop.data.sft.prepare") == fingerprint


def test_a_second_writer_of_the_same_cache_entry_keeps_the_first(tmp_path):
    """Ranks of one launch prepare the same data at once; the loser of the rename leaves the winner's entry."""
    from datasets import Dataset, DatasetDict

    from tuneloop.data.prepare import _store

    dest = tmp_path / "cache" / "key"
    _store(dest, DatasetDict({"train": Dataset.from_dict({"x": [1, 2]})}), [{"step": "a"}])
    _store(dest, DatasetDict({"train": Dataset.from_dict({"x": [3]})}), [{"step": "b"}])
    assert json.loads((dest / "report.json").read_text())["steps"] == [{"step": "a"}]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["key"]  # no temporary directory left behind
