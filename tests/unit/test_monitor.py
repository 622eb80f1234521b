"""The drift monitor: its recipe section, the drift tests on their own, and whole checks on the real request log,
the real embedding model (all-MiniLM-L6-v2 from its wheel), the real database and MLflow store: triggers, cooldown,
schedule, thumbs-down and vote signals, the champion's training data as reference, reports and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config.errors import RecipeError
from tuneloop.monitor import drift as D
from tuneloop.recipes import load_recipe

runner = CliRunner()
DATA = Path(__file__).resolve().parents[2] / "data" / "debian-descriptions"
SYSTEM = "You write the one-line synopsis of a Debian package from its long description."


def _debian(sections: tuple[str, ...], split: str = "train") -> list[dict]:
    return [r for line in (DATA / f"{split}.jsonl").open() if (r := json.loads(line))["section"] in sections]


def _libraries() -> list[dict]:
    """Library packages in a seeded order (the files are sorted by package name, and neighbours look alike)."""
    rows = _debian(("libs", "libdevel"))
    return [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]


def _log(rows: list[dict], prefix: str = "r", age_min: float = 1, answer=None) -> list[str]:
    """Requests as the gateway logs them (its own RequestLog): chat prompts with the package description."""
    from tuneloop.serve.store import RequestLog

    log = RequestLog()
    ids = []
    for i, r in enumerate(rows):
        body = {
            "model": "synopsis",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["description"]}],
        }
        text = answer(i, r) if answer else r["synopsis"]
        raw = {"choices": [{"message": {"role": "assistant", "content": text}}]}
        ids.append(f"{prefix}-{i}")
        log.append(
            {
                "request_id": ids[-1],
                "ts": datetime.now(UTC) - timedelta(minutes=age_min),
                "key_id": None,
                "endpoint": "chat.completions",
                "model": "synopsis",
                "version": "1",
                "stream": False,
                "status": 200,
                "latency_ms": 5.0,
                "ttft_ms": None,
                "body": body,
                "raw": json.dumps(raw).encode(),
            }
        )
    log.close()
    return ids


MONITORED = """
name: watch
base_model: {model}
data: {{source: libs.jsonl}}
stages: [{{name: sft, method: sft}}]
monitor:
  model: watch
  reference: {{from: recipe, max_rows: 150}}
  window: {{since: 1h, min_requests: {min_requests}}}
  drift: {{descriptors: [prompt_length, output_length, refusal_rate, empty_rate]}}
  cooldown: 1h
{extra}"""


@pytest.fixture
def monitored(write, tiny_model):
    """A recipe whose monitor compares served traffic with its own training data: library packages."""
    with (write("libs.jsonl", "")).open("w") as f:
        for r in _libraries()[:300]:
            f.write(json.dumps({"prompt": r["description"], "completion": r["synopsis"]}) + "\n")

    def _recipe(min_requests: int = 40, extra: str = "") -> Path:
        return write("watch.yaml", MONITORED.format(model=tiny_model, min_requests=min_requests, extra=extra))

    return _recipe


def _check(path: Path, now: datetime | None = None, sets: list[str] | None = None) -> dict:
    from tuneloop.monitor.check import run_check

    return run_check(load_recipe(path, sets), path, now=now, say=lambda _m: None)


def test_monitor_section_errors_name_the_key_and_line(write, tiny_model):
    path = write(
        "bad.yaml",
        f"""
        name: bad
        base_model: {tiny_model}
        data: {{source: debian-descriptions, task: synopsis}}
        stages: [{{name: sft, method: sft}}]
        monitor:
          window: {{since: yesterday, min_requests: 200, max_requests: 100}}
          reference: {{from: traffic}}
          drift: {{descriptors: [prompt_length, toxicity], embedding_auc: 0.4}}
          triggers: {{every: weekly}}
        """,
    )
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    text = str(e.value)
    for expected in (
        "monitor.window.since",
        "'yesterday' is not a duration",
        "monitor.reference",
        "needs `since`",
        "monitor.drift.descriptors",
        "toxicity",
        "monitor.drift.embedding_auc",
        "monitor.triggers.every",
        "'weekly'",
    ):
        assert expected in text, (expected, text)
    assert "bad.yaml:6 monitor.window.since" in text  # the line of the key
    path = write(
        "nomodel.yaml",
        f"""
        name: nomodel
        base_model: {tiny_model}
        data: {{source: debian-descriptions, task: synopsis}}
        stages: [{{name: sft, method: sft}}]
        monitor: {{}}
        """,
    )
    with pytest.raises(RecipeError, match=r"nomodel.yaml:5 monitor: name the registered model"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"monitor.window: max_requests \(50\) is below min_requests \(100\)"):
        load_recipe(path, ["monitor.model=x", "monitor.window.max_requests=50"])


def test_embedding_drift_finds_a_shift_and_rarely_cries_wolf():
    rng = np.random.default_rng(0)
    dim = 64

    def sample(n: int, shift: float = 0.0) -> np.ndarray:
        x = rng.normal(size=(n, dim))
        x[:, :8] += shift
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    reference = sample(600)
    alarms = sum(D.embedding_drift(reference, sample(100), 0.55, 0.01, seed=s)["drift"] for s in range(30))
    assert alarms <= 2  # p < 0.01 over 30 same-distribution windows
    shifted = D.embedding_drift(reference, sample(100, shift=0.6), 0.55, 0.01, seed=0)
    assert shifted["drift"] and shifted["roc_auc"] > 0.8 and shifted["p_value"] < 1e-4
    assert shifted["reference_rows"] == 400  # at most REFERENCE_RATIO × the window
    assert len(shifted["window_scores"]) == 100
    # a lucky AUC on a tiny window is above 0.55 but not significant
    small = D.embedding_drift(reference, sample(10), 0.55, 0.01, seed=3)
    assert small["p_value"] > 0.01 or not small["drift"]


def test_descriptors_test_lengths_and_rates_and_skip_what_they_cannot_compare():
    reference = D.Texts(["a library for parsing xml"] * 200, ["XML parsing library"] * 200)
    refusals = ["I'm sorry, I can't help with that."] * 30
    window = D.Texts(
        ["a library for parsing xml"] * 60 + ["play chess " * 30] * 40,
        refusals + [""] * 20 + ["XML parsing library"] * 50,
    )
    names = ["prompt_length", "output_length", "refusal_rate", "empty_rate"]
    rows = {r["descriptor"]: r for r in D.descriptor_drift(reference, window, names, 0.05)}
    assert all(rows[n]["drift"] for n in rows), rows
    assert rows["refusal_rate"]["window"] == pytest.approx(0.3) and rows["refusal_rate"]["reference"] == 0
    assert rows["empty_rate"]["window"] == pytest.approx(0.2)
    verdict = D.verdict(None, list(rows.values()), 0.5)
    assert verdict["drift"] and "4 of 4 descriptors drifted" in verdict["reasons"][0]
    same = D.descriptor_drift(
        reference, D.Texts(reference.prompts[:50], reference.outputs[:50]), ["prompt_length", "refusal_rate"], 0.05
    )
    assert not any(r["drift"] for r in same)
    skipped = D.descriptor_drift(D.Texts(["x y"] * 20), window, ["output_length"], 0.05)
    assert "skipped" in skipped[0] and "drift" not in skipped[0]
    chat = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "u2"},
    ]
    assert D.last_user_turn(chat) == "u2"


def test_drifted_traffic_fires_then_the_cooldown_holds_and_everything_is_recorded(monitored, workspace):
    from tuneloop.monitor import store
    from tuneloop.tracking import store as tracking

    path = monitored()
    games = _debian(("games", "science"))[:60]
    _log(games, prefix="games")
    libraries = _libraries()[300:312]  # library traffic the reference did not include: it must not look unlike
    _log(libraries, prefix="libs")
    first = _check(path)
    assert first["decision"] == "fired", first["reasons"]
    assert first["embedding"]["drift"] and first["embedding"]["roc_auc"] > 0.8
    assert first["reference"] == {"what": "this recipe's training data", "rows": 150}
    # the least library-like prompts shown are games/science ones, most unlike first
    shown = first["embedding"]["most_unlike_reference"]
    assert len(shown) == D.EXAMPLES
    assert {e["prompt"] for e in shown} <= {r["description"][:500] for r in games}
    assert not {e["prompt"] for e in shown} & {r["description"][:500] for r in libraries}
    assert [e["score"] for e in shown] == sorted((e["score"] for e in shown), reverse=True)
    second = _check(path)
    assert second["decision"] == "held" and second["reasons"] == first["reasons"]
    assert datetime.fromisoformat(second["held_until"]) > datetime.now(UTC) + timedelta(minutes=55)
    later = _check(path, now=datetime.now(UTC) + timedelta(hours=2), sets=["monitor.window.since=3h"])
    assert later["decision"] == "fired"
    history = store.history("watch")
    assert [h["decision"] for h in history] == ["fired", "held", "fired"]
    assert all(h["drift"] and h["embedding_auc"] > 0.8 for h in history)
    html = (Path(first["path"]) / "report.html").read_text()
    assert "Decision: fired" in html and "<svg" in html and "Embedding drift" in html
    saved = json.loads((Path(first["path"]) / "report.json").read_text())
    assert saved["decision"] == "fired" and saved["window"]["requests"] == 72
    client = tracking.client()
    run = client.search_runs(
        [client.get_experiment_by_name("watch").experiment_id], "tags.`tuneloop.monitor` = 'watch'"
    )
    assert len(run) == 1  # one long-lived run, a step per check
    assert len(client.get_metric_history(run[0].info.run_id, "embedding_auc")) == 3


def test_same_distribution_traffic_does_not_fire(monitored):
    path = monitored()
    _log(_libraries()[300:380], prefix="libs")  # libraries the reference did not include
    report = _check(path)
    assert report["decision"] == "none", report["reasons"]
    assert not report["embedding"]["drift"] and report["embedding"]["roc_auc"] < 0.7


def test_too_little_traffic_judges_nothing_but_a_schedule_still_fires(monitored):
    path = monitored(min_requests=50, extra="  triggers: {drift: true, every: 1h}\n")
    _log(_debian(("games",))[:5])
    now = datetime.now(UTC)
    first = _check(path, now=now)
    assert first["decision"] == "no traffic" and first["drift"] is None and first["embedding"] is None
    assert _check(path, now=now + timedelta(minutes=30))["decision"] == "no traffic"  # not due yet
    due = _check(path, now=now + timedelta(minutes=61), sets=["monitor.window.since=2h"])
    assert due["decision"] == "fired" and due["reasons"][0].startswith("schedule: every 1h")
    after = _check(path, now=now + timedelta(minutes=62), sets=["monitor.window.since=2h"])
    assert after["decision"] == "no traffic"  # the schedule counts from the round it started


def test_thumbs_down_from_applications_fires(monitored):
    from tuneloop.serve.store import rate_request

    path = monitored(min_requests=1000, extra="  triggers: {thumbs_down: {above: 0.3, min_ratings: 20}}\n")
    ids = _log(_debian(("libs",))[:30])
    for i, request_id in enumerate(ids[:25]):
        assert rate_request(request_id, None, "down" if i < 10 else "up", None)
    report = _check(path)
    assert report["signals"]["thumbs"] == {"up": 15, "down": 10, "down_share": 0.4}
    assert report["decision"] == "fired" and "thumbs down: 40% of 25 ratings" in report["reasons"][0]
    rate_request(ids[0], None, "up", None)  # a user changed their mind: 9 of 25
    rate_request(ids[1], None, "up", None)  # 8 of 25 = 32%, still above 30%
    rate_request(ids[2], None, "up", None)  # 7 of 25 = 28%
    report = _check(path, sets=["monitor.cooldown=1s"])
    assert report["signals"]["thumbs"]["down"] == 7 and report["decision"] == "no traffic"


def test_new_votes_on_the_watched_model_fire(monitored):
    from sqlalchemy import insert

    from tuneloop import db
    from tuneloop.feedback import store as fb

    path = monitored(min_requests=1000, extra="  triggers: {drift: false, new_votes: 3}\n")
    now = datetime.now(UTC)
    with db.engine().begin() as c:
        c.execute(insert(fb.raters).values(name="ann", password_hash="x", role="rater", created_at=now))
        c.execute(
            insert(fb.campaigns).values(
                name="c1", spec="{}", guidelines="", guidelines_sha="0", status="open", created_at=now, created_by="t"
            )
        )
        for i, ref in enumerate(
            ["models:/watch@champion", "models:/other@champion", "models:/watch/3", "request-log#synopsis"]
        ):
            item = c.execute(insert(fb.items).values(campaign="c1", position=i, prompt="p", source="{}", gold=False))
            item_id = item.inserted_primary_key[0]
            resp = c.execute(insert(fb.responses).values(item_id=item_id, model="m", model_ref=ref, text="t"))
            a = c.execute(
                insert(fb.assignments).values(
                    item_id=item_id,
                    rater="ann",
                    task="rating",
                    left_id=resp.inserted_primary_key[0],
                    swapped=False,
                    shown_at=now,
                )
            )
            c.execute(
                insert(fb.votes).values(
                    idempotency_key=f"k{i}",
                    assignment_id=a.inserted_primary_key[0],
                    campaign="c1",
                    item_id=item_id,
                    rater="ann",
                    task="rating",
                    value="{}",
                    guidelines_sha="0",
                    shown_at=now,
                    submitted_at=now,
                )
            )
    assert _check(path)["signals"]["new_votes"] == 2  # watch@champion and watch/3; not other@champion
    served = ["monitor.window.model=synopsis"]  # ... and answers sampled from the traffic of the served name
    report = _check(path, sets=served)
    assert report["signals"]["new_votes"] == 3 and report["decision"] == "fired"
    again = _check(path, sets=[*served, "monitor.cooldown=1s"])
    assert again["signals"]["new_votes"] == 0 and again["decision"] == "no traffic"  # counted since that round


def test_the_champions_training_data_is_the_default_reference(tiny_recipe, write, tiny_model):
    result = runner.invoke(app, ["run", str(tiny_recipe("first"))])
    assert result.exit_code == 0, result.output
    path = write(
        "watch-first.yaml",
        f"""
        name: watch-first
        base_model: {tiny_model}
        data: {{source: debian-descriptions, task: synopsis}}
        stages: [{{name: sft, method: sft}}]
        monitor:
          model: first
          window: {{since: 1h, min_requests: 10}}
          drift: {{descriptors: [prompt_length]}}
        """,
    )
    _log(_debian(("games",))[:12])
    report = _check(path)
    assert report["reference"] == {"what": "training data of first/1 (@champion)", "rows": 16}  # max_train_rows
    missing = write("watch-none.yaml", path.read_text().replace("model: first", "model: nobody"))
    with pytest.raises(Exception, match=r"nobody@champion.*promote a version, or set `monitor.reference.from"):
        _check(missing)


def test_cli_once_json_and_history(monitored):
    path = monitored()
    _log(_debian(("games", "science"))[:50])
    result = runner.invoke(
        app, ["monitor", str(path), "--once", "--json", "--set", "monitor.drift.descriptors=[language, prompt_length]"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["decision"] == "fired"
    assert [d["descriptor"] for d in report["descriptors"]] == ["language", "prompt_length"]
    assert report["descriptors"][0]["window"] == {"en": 50}
    result = runner.invoke(app, ["monitor", "history", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "fired" in result.output and "embedding drift" in result.output
    result = runner.invoke(app, ["monitor", str(path), "--once", "--watch"])
    assert result.exit_code == 2 and "exclude each other" in result.output
    plain = path.with_name("plain.yaml")
    plain.write_text(path.read_text().split("monitor:")[0])
    result = runner.invoke(app, ["monitor", str(plain)])
    assert result.exit_code == 2 and "has no `monitor:` section" in result.output


def test_a_watch_embeds_each_request_once(monkeypatch):
    from tuneloop.monitor import reference as R

    embedded: list[str] = []
    real = R.embed
    monkeypatch.setattr(R, "embed", lambda texts: embedded.extend(texts) or real(texts))
    monkeypatch.setattr(R, "_SEEN", {})
    first = [r["description"] for r in _libraries()[:6]]
    later = [*first[2:], "a new request about a game", first[3]]  # the window slid; one prompt repeats
    a, b = R.window_embeddings(first), R.window_embeddings(later)
    assert embedded == [*first, "a new request about a game"]  # the second check embedded only the new prompt
    assert b.shape == (6, 384) and np.allclose(b[:4], a[2:]) and np.allclose(b[5], a[3])
    assert np.allclose(b[4], real(["a new request about a game"])[0], atol=1e-5)
