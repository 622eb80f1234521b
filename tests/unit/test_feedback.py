"""The feedback store and campaigns, against SQLite and a real PostgreSQL (pgserver): migrations, a campaign
whose answers come from two tiny models, blind queues with overlap, idempotent votes, gold-item reliability,
statistics, exports that TRL trains on, and what a bad campaign file gets told."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

runner = CliRunner()

CAMPAIGN = """
name: tiny-campaign
data: {{source: debian-descriptions, task: synopsis}}
split: test
max_items: 6
models:
  - {{name: first, model: {first}}}
  - {{name: second, model: {second}}}
generation: {{max_new_tokens: 4, batch_size: 8}}
tasks:
  pairwise: true
  rating: [{{name: accurate, text: "Is it accurate?"}}]
  rewrite: true
overlap: 3
gold_share: 0.34
gold_min_items: 2
guidelines: guide.md
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path, monkeypatch):
    """The workspace database: the default SQLite file, or a PostgreSQL 16 server started for this test."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    import pgserver

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", server.get_uri().replace("postgresql://", "postgresql+psycopg://"))
    yield "postgresql"
    from tuneloop import db

    for eng in db._engines.values():
        eng.dispose()
    db._engines.clear()
    server.cleanup()


@pytest.fixture
def campaign_file(write, tiny_model, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(tiny_model, second)
    from safetensors.torch import load_file, save_file

    weights = load_file(second / "model.safetensors")
    save_file({k: v * 1.5 if v.ndim == 2 else v for k, v in weights.items()}, second / "model.safetensors")
    write("guide.md", "# Prefer the accurate synopsis\n")
    return write("campaign.yaml", CAMPAIGN.format(first=tiny_model, second=second))


def invoke(*args: str, stdin: str | None = None):
    return runner.invoke(app, list(args), input=stdin)


def test_migrations_reach_the_schema_the_code_queries(database):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tuneloop import db
    from tuneloop.feedback import store as _feedback  # noqa: F401  (each store declares its tables on db.metadata)
    from tuneloop.loop import store as _loop  # noqa: F401
    from tuneloop.monitor import store as _monitor  # noqa: F401
    from tuneloop.serve import store as _serve  # noqa: F401

    with db.engine().connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": db.VERSION_TABLE})
        assert ctx.get_current_revision() == "0006"
        assert compare_metadata(ctx, db.metadata) == []


def test_anonymous_ratings_stored_twice_before_0006_keep_the_newest_and_stay_one_per_request(workspace):
    """Without keys, key_id is NULL and the (request_id, key_id) constraint let two first ratings in at once."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    workspace.mkdir(parents=True, exist_ok=True)
    old = sa.create_engine(f"sqlite:///{workspace / 'tuneloop.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", "tuneloop:migrations")
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        rows = [("r1", None, "up"), ("r1", None, "down"), ("r2", None, "up"), ("r1", "k1", "up"), ("r1", "k2", "up")]
        add = sa.text("INSERT INTO served_feedback (request_id, key_id, rating, ts) VALUES (:r, :k, :v, '2026-01-01')")
        for request_id, key_id, rating in rows:
            conn.execute(add, {"r": request_id, "k": key_id, "v": rating})
    old.dispose()
    from tuneloop import db
    from tuneloop.feedback import store as _feedback  # noqa: F401  (each store declares its tables on db.metadata)
    from tuneloop.loop import store as _loop  # noqa: F401
    from tuneloop.monitor import store as _monitor  # noqa: F401
    from tuneloop.serve import store as _serve  # noqa: F401

    with db.engine().connect() as conn:
        kept = conn.execute(sa.text("SELECT request_id, key_id, rating FROM served_feedback ORDER BY id")).all()
    assert [tuple(r) for r in kept] == [
        ("r1", None, "down"),
        ("r2", None, "up"),
        ("r1", "k1", "up"),
        ("r1", "k2", "up"),
    ]
    with pytest.raises(sa.exc.IntegrityError), db.engine().begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO served_feedback (request_id, key_id, rating, ts) VALUES ('r2', NULL, 'down', '2026-01-02')"
            )
        )


def test_a_database_from_before_migrations_keeps_its_rows(workspace):
    import sqlalchemy as sa

    workspace.mkdir(parents=True, exist_ok=True)
    old = sa.create_engine(f"sqlite:///{workspace / 'tuneloop.db'}")
    from tuneloop.serve.store import api_keys

    api_keys.create(old)  # what `metadata.create_all` made before there were migrations
    with old.begin() as conn:
        conn.execute(sa.text("INSERT INTO api_keys VALUES ('k1','ci','s','d',NULL,'2026-01-01','me',NULL)"))
    old.dispose()
    from tuneloop import db
    from tuneloop.feedback import store as _feedback  # noqa: F401  (each store declares its tables on db.metadata)
    from tuneloop.loop import store as _loop  # noqa: F401
    from tuneloop.monitor import store as _monitor  # noqa: F401
    from tuneloop.serve import store as _serve  # noqa: F401

    with db.engine().connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM api_keys")).scalars().all() == ["ci"]
        assert "feedback_votes" in sa.inspect(conn).get_table_names()


def _vote(name: str, rater: str, task: str, choose) -> list[int]:
    """Vote on everything the rater's queue offers; `choose(assignment)` gives the value."""
    from tuneloop.feedback import queue

    seen, ids = [], []
    while (a := queue.next_assignment(name, rater, task)) is not None:
        assert a.item_id not in seen, "a rater must never get the same item twice"
        seen.append(a.item_id)
        ids.append(queue.record_vote(a.id, rater, choose(a), f"{rater}-{task}-{a.id}"))
    return ids


def test_campaign_from_create_to_export(database, campaign_file, tmp_path):
    from tuneloop.feedback import campaigns, queue, store
    from tuneloop.feedback.campaigns import GOLD_REFERENCE

    result = invoke("feedback", "create", str(campaign_file))
    assert result.exit_code == 0, result.output
    assert "9 items (3 gold)" in result.output  # 6 prompts + ceil(0.34 × 6) gold items
    items = store.item_rows("tiny-campaign")
    assert all(len(it["responses"]) == 2 for it in items.values())
    assert {r["model"] for it in items.values() if not it["gold"] for r in it["responses"].values()} == {
        "first",
        "second",
    }
    for name in ("ann", "bob", "cat"):
        assert invoke("feedback", "raters", "add", name, "--password-stdin", stdin="correct horse\n").exit_code == 0
    assert store.check_password("ann", "correct horse") and not store.check_password("ann", "wrong horse")
    from tuneloop import db
    from tuneloop.feedback import store as _feedback  # noqa: F401  (each store declares its tables on db.metadata)
    from tuneloop.loop import store as _loop  # noqa: F401
    from tuneloop.monitor import store as _monitor  # noqa: F401
    from tuneloop.serve import store as _serve  # noqa: F401

    with db.engine().connect() as conn:
        hashes = conn.execute(store.raters.select()).all()
    assert all(h.password_hash.startswith("$argon2id$") for h in hashes)

    by_id = {rid: r for it in items.values() for rid, r in it["responses"].items()}

    def honest(a):  # prefers the reference on gold items, the first model elsewhere
        left = by_id[a.left_id]
        if items[a.item_id]["gold"]:
            return {"choice": "left" if left["model"] == GOLD_REFERENCE else "right"}
        return {"choice": "left" if left["model"] == "first" else "right"}

    flipped = []

    def mostly_honest(a):  # as honest, except on one item
        vote = honest(a)
        if not items[a.item_id]["gold"] and not flipped:
            flipped.append(a.item_id)
            vote = {"choice": "right" if vote["choice"] == "left" else "left"}
        return vote

    def careless(a):  # the decoy on gold items, the left answer elsewhere
        if items[a.item_id]["gold"]:
            return {"choice": "right" if honest(a)["choice"] == "left" else "left"}
        return {"choice": "left"}

    ann = _vote("tiny-campaign", "ann", "pairwise", honest)
    bob = _vote("tiny-campaign", "bob", "pairwise", mostly_honest)
    cat = _vote("tiny-campaign", "cat", "pairwise", careless)
    assert len(ann) == len(bob) == len(cat) == 9
    assert queue.next_assignment("tiny-campaign", "ann", "pairwise") is None  # seen everything
    # the same vote again (double click, retried request) is the stored one, not a second row
    a_vote = store.all_votes("tiny-campaign")[0]
    again = queue.record_vote(a_vote["assignment_id"], a_vote["rater"], {"choice": "tie"}, "another-key")
    assert again == a_vote["id"] and len(store.all_votes("tiny-campaign")) == 27
    from tuneloop.errors import TuneloopError

    with pytest.raises(TuneloopError, match="is not cat's"):
        queue.record_vote(a_vote["assignment_id"], "cat", {"choice": "left"}, "cat-steals")
    # the sides were swapped at random: both models appear on the left
    lefts = {by_id[v["value"]["left"]]["model"] for v in store.all_votes("tiny-campaign") if not v["gold"]}
    assert lefts == {"first", "second"}

    def rate(score_first: int, score_second: int):
        return lambda a: {
            "ratings": {"accurate": score_first if by_id[a.left_id]["model"] == "first" else score_second}
        }

    _vote("tiny-campaign", "ann", "rating", rate(5, 1))
    _vote("tiny-campaign", "bob", "rating", rate(4, 2))
    _vote("tiny-campaign", "ann", "rewrite", lambda a: {"rewrite": f"better synopsis {a.item_id}"})

    rep = campaigns.report("tiny-campaign", resamples=200)
    assert rep["excluded_raters"] == ["cat"]  # 0 of 3 gold items right
    assert rep["raters_gold"]["cat"]["flagged"] and rep["raters_gold"]["ann"]["correct"] == 3
    ranking = {r["name"]: r for r in rep["ranking"]}
    assert ranking["first"]["rank"] == 1 and (ranking["first"]["wins"], ranking["first"]["losses"]) == (11, 1)
    agreement = rep["agreement"]["pairwise"]
    assert agreement["n"] == 6 and agreement["ci_low"] <= agreement["value"] <= agreement["ci_high"] < 1
    assert agreement["observed"] == pytest.approx(5 / 6)  # ann and bob agree on five of the six items
    status = invoke("feedback", "status", "tiny-campaign", "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["tasks"]["pairwise"]["complete_items"] == 9

    out = tmp_path / "dpo"
    result = invoke("feedback", "export", "tiny-campaign", "--format", "dpo", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "excluded flagged raters: cat" in result.output
    rows = [json.loads(line) for line in (out / "train.jsonl").open()]
    assert len(rows) == 5  # six items, one without a majority (ann and bob split), gold items never exported
    stored = {v["id"]: v for v in store.all_votes("tiny-campaign")}
    for row in rows:
        assert row["chosen_model"] == "first" and row["agreement"] == 1.0
        assert row["chosen"][0]["role"] == "assistant" and row["prompt"][-1]["role"] == "user"
        assert {stored[i]["rater"] for i in row["vote_ids"]} == set(row["raters"]) == {"ann", "bob"}
        assert all(stored[i]["item_id"] == row["item_id"] for i in row["vote_ids"])
    assert flipped[0] not in {row["item_id"] for row in rows}
    manifest = (out / "export.yaml").read_text()
    assert "fingerprint:" in manifest and (out / "dataset" / "dataset_info.json").is_file()

    kto = tmp_path / "kto"
    assert invoke("feedback", "export", "tiny-campaign", "-f", "kto", "-o", str(kto)).exit_code == 0
    kto_rows = [json.loads(line) for line in (kto / "train.jsonl").open()]
    assert kto_rows and all(r["label"] == (r["model"] == "first") for r in kto_rows)  # 5/4 desirable, 1/2 not
    sft = tmp_path / "sft"
    assert invoke("feedback", "export", "tiny-campaign", "-f", "sft", "-o", str(sft)).exit_code == 0
    completions = [json.loads(line)["completion"][0]["content"] for line in (sft / "train.jsonl").open()]
    assert len(completions) == 6 and all(c.startswith("better synopsis") for c in completions)

    rw = tmp_path / "reward"
    assert invoke("feedback", "export", "tiny-campaign", "-f", "reward", "-o", str(rw)).exit_code == 0
    if database == "sqlite":  # every TRL trainer trains on its export (once: the backend does not matter here)
        _train_one_step_on(tmp_path, {"dpo": out, "reward": rw, "kto": kto, "sft": sft}, campaign_file.parent)

    store.disable_rater("bob")
    assert not store.check_password("bob", "correct horse")
    assert invoke("feedback", "close", "tiny-campaign").exit_code == 0
    with pytest.raises(TuneloopError, match="closed"):
        queue.next_assignment("tiny-campaign", "ann", "pairwise")


def _train_one_step_on(tmp_path: Path, exports: dict[str, Path], here: Path) -> None:
    from safetensors.torch import load_file

    from tuneloop import pipeline
    from tuneloop.recipes import load_recipe

    tiny = tmp_path / "second"  # one of the campaign's two tiny models
    for method, source in exports.items():
        recipe = here / f"train-{method}.yaml"
        recipe.write_text(
            f"""
name: from-feedback-{method}
base_model: {tiny}
data: {{source: {source}, eval_split: null}}
stages:
  - name: {method}
    method: {method}
    args: {{max_steps: 1, per_device_train_batch_size: 2, max_length: 512, learning_rate: 1.0e-2, save_steps: 10}}
"""
        )
        result = pipeline.run(load_recipe(recipe), recipe)
        (stage,) = result.stages
        assert stage.steps == 1 and stage.loss_first is not None, method
        assert load_file(Path(stage.model_dir) / "model.safetensors"), method


BAD = [
    ("overlap: 3", "overlap: 0", "overlap", "greater than or equal to 1"),
    ("  - {name: second", "  - {name: first", "models", "repeated: first"),
    ("guidelines: guide.md", "guidelines: missing.md", "guidelines", "no guidelines file"),
    ("split: test", "split: tset", "split", "no split 'tset'"),
    ("tasks:", "taks:", "taks", "unknown key (did you mean tasks?)"),
]


@pytest.mark.parametrize(("old", "new", "key", "message"), BAD)
def test_bad_campaign_file_is_refused_with_file_and_line(campaign_file, old, new, key, message):
    text = campaign_file.read_text()
    assert old in text
    campaign_file.write_text(text.replace(old, new, 1))
    result = invoke("feedback", "validate", str(campaign_file))
    assert result.exit_code == 2
    assert message in result.output
    assert re.search(rf"campaign\.yaml:\d+ {key}", result.output), result.output


TRAFFIC_CAMPAIGN = """
name: from-traffic
requests: {{model: synopsis, since: 1h, sample: 4}}
models:
  - {{name: champion, logged: true}}
  - {{name: challenger, model: {model}}}
generation: {{max_new_tokens: 4, batch_size: 8}}
overlap: 1
guidelines: "Prefer the accurate synopsis."
"""


def _log_requests(records: list[dict]) -> None:
    """Rows written by the gateway's own request log (the code `tuneloop serve` runs)."""
    from datetime import UTC, datetime, timedelta

    from tuneloop.serve.store import RequestLog

    log = RequestLog()
    for i, r in enumerate(records):
        chat = "messages" in r["body"]
        text = r.get("output", f"answer {i}")
        raw = {"choices": [{"message": {"role": "assistant", "content": text}} if chat else {"text": text}]}
        log.append(
            {
                "request_id": f"req-{i}",
                "ts": datetime.now(UTC) - timedelta(minutes=r.get("age_min", 1)),
                "key_id": "k1",
                "endpoint": "chat.completions" if chat else "completions",
                "model": r.get("model", "synopsis"),
                "version": "3",
                "stream": False,
                "status": r.get("status", 200),
                "latency_ms": 5.0,
                "ttft_ms": None,
                "body": r["body"],
                "raw": json.dumps(raw).encode(),
            }
        )
    log.close()


def test_campaign_prompts_sampled_from_served_traffic(database, write, tiny_model):
    from tuneloop.feedback import store

    def chat(text: str) -> dict:
        return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}

    _log_requests(
        [
            {"body": chat("Describe package foo")},
            {"body": chat("Describe package foo"), "output": "again"},  # an exact repeat: dropped
            {"body": {"prompt": "Describe package bar"}},
            {"body": chat("Describe package baz"), "status": 400},  # failed: passed over
            {"body": chat("Describe package old"), "age_min": 180},  # outside `since: 1h`
            {"body": chat("Describe package other-model"), "model": "other"},
            {"body": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}},
            {"body": chat("Describe package qux")},
            {"body": {"prompt": [1, 2, 3]}},  # token ids: not replayable as text
        ]
    )
    path = write("traffic.yaml", TRAFFIC_CAMPAIGN.format(model=tiny_model))
    result = invoke("feedback", "create", str(path))
    assert result.exit_code == 0, result.output
    assert "passed over: 1 failed, 2 not replayable" in result.output
    assert "dedup: train 4 -> 3" in result.output
    items = list(store.item_rows("from-traffic").values())
    assert len(items) == 3 and not any(it["gold"] for it in items)
    by_request = {it["source"]["requests"]["request_id"]: it for it in items}
    assert set(by_request) == {"req-0", "req-2", "req-7"}
    foo = by_request["req-0"]
    assert foo["prompt"] == chat("Describe package foo")["messages"]  # the turns the model saw, system included
    assert by_request["req-2"]["prompt"] == "Describe package bar"  # a completion's text stays text
    logged = {r["model"]: r for r in foo["responses"].values()}
    assert logged["champion"]["text"] == "answer 0" and logged["champion"]["model_version"] == "3"
    assert logged["challenger"]["model_version"]  # generated now, by the tiny model


TRAFFIC_BAD = [
    ("sample: 4}", "sample: 4}\ndata: {source: debian-descriptions, task: synopsis}", "requests", "exactly one prompt"),
    ("since: 1h", "since: yesterday", "requests.since", "neither a duration"),
    ("overlap: 1", "overlap: 1\ngold_share: 0.2", "gold_share", "logged requests have none"),
    ("sample: 4}", "sample: 4, prepare: [{step: split, fractions: {a: 1}}]}", "requests.prepare[0]", "makes no sense"),
]


@pytest.mark.parametrize(("old", "new", "key", "message"), TRAFFIC_BAD)
def test_bad_traffic_campaign_is_refused(write, tiny_model, old, new, key, message):
    text = TRAFFIC_CAMPAIGN.format(model=tiny_model)
    assert old in text
    path = write("traffic.yaml", text.replace(old, new, 1))
    result = invoke("feedback", "validate", str(path))
    assert result.exit_code == 2
    assert message in result.output, result.output
    assert re.search(rf"traffic\.yaml:\d+ {re.escape(key)}", result.output), result.output


def test_a_recipe_can_carry_its_campaign(write, tiny_model):
    write("guide.md", "Prefer accurate synopses.\n")
    path = write(
        "recipe.yaml",
        f"""
name: with-campaign
base_model: {tiny_model}
data: {{source: debian-descriptions, task: synopsis}}
stages: [{{name: sft, method: sft, args: {{max_steps: 1}}}}]
feedback:
  name: with-recipe
  data: {{source: debian-descriptions, task: synopsis}}
  models: [{{name: a, model: {tiny_model}}}, {{name: b, model: {tiny_model}}}]
  guidelines: guide.md
""",
    )
    assert invoke("feedback", "validate", str(path)).exit_code == 0
    assert invoke("validate", str(path)).exit_code == 0
    path.write_text(path.read_text().replace("guidelines: guide.md", "guidelines: gone.md"))
    for verb in (("feedback", "validate"), ("validate",)):
        result = invoke(*verb, str(path))
        assert result.exit_code == 2
        assert re.search(r"recipe\.yaml:\d+ feedback\.guidelines: no guidelines file", result.output), result.output


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs/feedback").glob("*.yaml")), ids=str)
def test_every_shipped_campaign_validates(path):
    from tuneloop.recipes import load_campaign

    assert load_campaign(path).models
