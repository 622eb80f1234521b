"""Feedback rounds on the tiny model with the real pieces: the request log the gateway writes, the feedback store
and its queue (the code the rater app calls to assign and record votes), the export, DPO training, evaluation
against the champion, the gate, the MLflow registry and its promotion; plus the round's bookkeeping: waiting for
votes, the deadline, resuming after an interruption, and the one-round-per-model lock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config.errors import RecipeError
from tuneloop.errors import TuneloopError
from tuneloop.recipes import load_recipe

runner = CliRunner()

LOOP = """loop:
  campaign:
    name: loopy
    requests: {model: synopsis, since: 1h, sample: 6}
    models:
      - {name: champion, logged: true}
      - {name: candidate, model: "models:/loopy@champion"}
    generation: {max_new_tokens: 6, batch_size: 8}
    overlap: 1
    gold_share: 0
    guidelines: Prefer the accurate synopsis.
  votes: {min: 4, wait: 1h, poll: 1s, price: 0.05}
  export: dpo
  retrain:
    - name: dpo
      method: dpo
      args: {learning_rate: 1.0e-3, max_steps: 2, per_device_train_batch_size: 2, max_length: 128,
             logging_steps: 1, save_steps: 100}
"""


def _traffic(n: int, tag: str) -> None:
    from tuneloop.serve.store import RequestLog

    log = RequestLog()
    for i in range(n):
        body = {"model": "synopsis", "messages": [{"role": "user", "content": f"Describe package {tag}-{i} for me"}]}
        raw = {"choices": [{"message": {"role": "assistant", "content": f"tool {i}"}}]}
        log.append(
            {
                "request_id": f"{tag}-{i}",
                "ts": datetime.now(UTC) - timedelta(seconds=1),
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


def _vote_all(campaign: str, rater: str = "ann") -> int:
    """A rater works through the queue (the rater app's own calls), always preferring the left answer."""
    from tuneloop.feedback import queue
    from tuneloop.feedback import store as fb

    if rater not in {r["name"] for r in fb.list_raters()}:
        fb.add_rater(rater, "password-123")
    n = 0
    while (a := queue.next_assignment(campaign, rater, "pairwise")) is not None:
        queue.record_vote(a.id, rater, {"choice": "left"}, f"{rater}-{a.id}")
        n += 1
    return n


@pytest.fixture
def looped(tiny_recipe):
    """A recipe whose first run made models:/loopy/1 the champion, and whose `loop:` retrains it."""
    path = tiny_recipe("loopy", tail=LOOP)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    return path


def _round(path, sets=None, **kw):
    from tuneloop.loop.round import run_round

    return run_round(load_recipe(path, sets), path, overrides=sets, say=lambda _m: None, **kw)


def test_rounds_wait_for_votes_retrain_promote_and_refuse(looped):
    from tuneloop.models.registered import get_version
    from tuneloop.tracking import store as tracking

    _traffic(6, "first")
    lenient = ["evaluation.gate=[{metric: perplexity, max_drop: 1000}]"]
    waiting = _round(looped, lenient, wait=False)
    assert waiting["status"] == "waiting" and waiting["step"] == "votes" and waiting["state"]["votes"] == 0
    assert _vote_all("loopy-r1") == 6
    said: list[str] = []
    from tuneloop.loop.round import run_round

    done = run_round(load_recipe(looped, lenient), looped, overrides=lenient, wait=False, say=said.append)
    # ... continuing the same round from its votes step; the champion, evaluated as the round's baseline, is not
    # evaluated again by the promotion that judges the challenger against it
    assert not [m for m in said if "evaluating loopy/1" in m], said
    assert done["number"] == 1 and done["status"] == "done", done
    state = done["state"]
    assert state["campaign"] == "loopy-r1" and state["votes"] == 6
    assert state["rows"] == 5 and state["held_out_rows"] == 1  # loop.held_out: 0.2 of the pairs
    assert state["version"] == "2" and state["decision"] == "promoted"
    from pathlib import Path

    resolved = load_recipe(Path(state["run_dir"]) / "recipe.yaml")  # what `registry promote` reads back later
    assert resolved.base_model.name == "models:/loopy@champion" and resolved.stages[0].name == "dpo"
    assert tracking.client().get_registered_model("loopy").aliases["champion"] == 2
    tags = get_version("models:/loopy/2").tags
    assert tags["tuneloop.parent"] == "loopy/1"  # trained from the champion
    assert tags["tuneloop.campaign"] == "loopy-r1" and tags["tuneloop.loop_round"] == "1"
    assert json.loads(tags["tuneloop.traffic"])["model"] == "synopsis"
    held_out = next(d for d in state["deltas"] if d["metric"] == "preference_accuracy")
    assert held_out["task"] == "feedback" and len(held_out["ci"]) == 2  # both models judged by held-out votes
    delta = next(d for d in state["deltas"] if d["metric"] == "perplexity")
    assert delta["a"] == "models:/loopy@champion" and delta["b"] == "fine-tuned" and len(delta["ci"]) == 2
    assert state["gate"] == "passed" and state["cost"]["raters"]["money"] == pytest.approx(0.3)
    assert state["cost"]["total"]["money"] == pytest.approx(0.3 + state["cost"]["compute"]["money"])
    client = tracking.client()
    parent = client.get_run(state["mlflow_run_id"])  # the round's run, its training run a child
    assert parent.info.status == "FINISHED" and parent.data.tags["tuneloop.decision"] == "promoted"
    assert parent.data.metrics["votes"] == 6 and "delta/ppl/perplexity" in parent.data.metrics
    child = client.get_run(tags["tuneloop.run_id"])
    assert child.data.tags["mlflow.parentRunId"] == state["mlflow_run_id"]

    # round 2 judges only traffic after round 1 started, and its challenger (learning rate 0: no better) is refused
    _traffic(5, "second")
    strict = [
        "evaluation.gate=[{metric: perplexity, must_improve: true, p_value: 0.05}]",
        "loop.retrain=[{name: dpo, method: dpo, args: {learning_rate: 0.0, max_steps: 1, max_length: 128, "
        "per_device_train_batch_size: 2, save_steps: 100}}]",
    ]
    second = _round(looped, strict, wait=False)
    assert second["number"] == 2 and second["status"] == "waiting"
    from tuneloop.feedback import store as fb

    prompts = [
        json.loads(it["prompt"]) if isinstance(it["prompt"], str) else it["prompt"]
        for it in fb.item_rows("loopy-r2").values()
    ]
    assert len(prompts) == 5 and all("second-" in p[-1]["content"] for p in prompts)
    _vote_all("loopy-r2")
    refused = _round(looped, strict)
    assert refused["status"] == "done" and refused["state"]["decision"] == "refused", refused["state"]
    assert refused["state"]["version"] == "3"
    assert tracking.client().get_registered_model("loopy").aliases["champion"] == 2  # the champion stays

    result = runner.invoke(app, ["loop", "status", "loopy"], env={"COLUMNS": "200"})
    assert "ppl/perplexity: fine-tuned − models:/loopy@champion = " in result.output and "cost: " in result.output
    result = runner.invoke(app, ["loop", "history", "loopy"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "promoted" in result.output and "refused" in result.output
    result = runner.invoke(app, ["loop", "status", str(looped), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["number"] == 2


def test_a_round_trains_under_its_launcher_and_judges_in_its_own_process(looped, monkeypatch):
    """`loop.launch`: two accelerate processes train the challenger (gloo on CPU, as on GPUs with NCCL); the
    round's process evaluates, registers and promotes it, and the training run joins the round's run."""
    from tuneloop.models.registered import get_version
    from tuneloop.tracking import store as tracking

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _traffic(6, "launch")
    launcher = (
        "loop.launch=accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
        "--dynamo_backend no --main_process_port 29563"
    )
    sets = ["evaluation.gate=[{metric: perplexity, max_drop: 1000}]", launcher]
    _round(looped, sets, wait=False)
    _vote_all("loopy-r1")
    said: list[str] = []
    from tuneloop.loop.round import run_round

    done = run_round(load_recipe(looped, sets), looped, overrides=sets, wait=False, say=said.append)
    assert done["status"] == "done" and done["state"]["decision"] == "promoted", done["state"]
    assert any(m.startswith("launching the training: accelerate launch --multi_gpu") for m in said), said
    from pathlib import Path

    stage = json.loads((Path(done["state"]["run_dir"]) / "stages" / "dpo" / "stage.json").read_text())
    assert stage["world_size"] == 2 and stage["ranks_in_sync"] is True
    tags = get_version("models:/loopy/2").tags
    assert tags["tuneloop.loop_round"] == "1" and tags["tuneloop.parent"] == "loopy/1"
    run = tracking.client().get_run(tags["tuneloop.run_id"])  # begun by the launched rank 0, reopened here
    assert run.data.tags["mlflow.parentRunId"] == done["state"]["mlflow_run_id"]
    assert run.data.tags["tuneloop.campaign"] == "loopy-r1" and run.info.status == "FINISHED"


def test_a_bad_launcher_is_refused_at_validation(tiny_recipe):
    path = tiny_recipe("loopy", tail=LOOP)
    for value, message in (
        ("''", "an empty launcher"),
        ("accelerate launch -m tuneloop.train", "the launcher only"),
        ("'accelerate \"launch'", "cannot split"),
    ):
        with pytest.raises(RecipeError) as e:
            load_recipe(path, [f"loop.launch={value}"])
        assert "loop.launch" in str(e.value) and message in str(e.value), str(e.value)


def test_a_round_without_enough_votes_by_the_deadline_stops(looped):
    _traffic(6, "quiet")
    slept = []
    rnd = _round(looped, ["loop.votes.wait=2s"], sleep=lambda s: slept.append(s) or __import__("time").sleep(1.0))
    assert rnd["status"] == "stopped" and "too few votes: 0 usable of the 4 needed" in rnd["state"]["reason"]
    assert slept  # it polled before giving up
    nxt = _round(looped, ["loop.votes.wait=1h"], wait=False)  # a stopped round is over: the next one starts ...
    assert nxt["number"] == 2 and nxt["status"] == "waiting"
    from tuneloop.feedback import store as fb

    assert len(fb.item_rows("loopy-r2")) == 6  # ... and offers the traffic nobody judged again


def test_an_interrupted_round_continues_where_it_stopped(looped, monkeypatch):
    from tuneloop import pipeline
    from tuneloop.feedback import campaigns

    _traffic(6, "crash")
    _round(looped, wait=False)
    _vote_all("loopy-r1")
    real = pipeline.run

    def crash(*a, **k):
        raise KeyboardInterrupt  # killed while training

    monkeypatch.setattr(pipeline, "run", crash)
    with pytest.raises(KeyboardInterrupt):
        _round(looped)
    from tuneloop.loop import store

    rnd = store.history("loopy")[0]
    assert rnd["step"] == "train" and rnd["status"] == "running" and rnd["state"]["rows"] == 5
    monkeypatch.setattr(pipeline, "run", real)
    created = []
    monkeypatch.setattr(campaigns, "create", lambda *a, **k: created.append(a))
    done = _round(looped, ["evaluation.gate=[{metric: perplexity, max_drop: 1000}]"])
    assert done["number"] == 1 and done["status"] == "done" and not created  # no second campaign, same export
    assert done["state"]["data_fingerprint"] == rnd["state"]["data_fingerprint"]


def test_a_round_killed_while_exporting_exports_again_from_scratch(looped, monkeypatch):
    from tuneloop.loop import round as R

    _traffic(6, "export")
    _round(looped, wait=False)
    _vote_all("loopy-r1")

    def killed(*a, **k):
        raise KeyboardInterrupt  # after the export was written, before the split finished

    real = R._split
    monkeypatch.setattr(R, "_split", killed)
    with pytest.raises(KeyboardInterrupt):
        _round(looped, ["loop.retrain.dpo.args.max_steps=1"])
    partial = R.round_dir("loopy", 1) / "data.partial"
    assert partial.is_dir() and not (R.round_dir("loopy", 1) / "data").exists()  # nothing half-made is used
    monkeypatch.setattr(R, "_split", real)
    done = _round(looped, ["loop.retrain.dpo.args.max_steps=1"])
    assert done["status"] == "done" and done["state"]["rows"] + done["state"]["held_out_rows"] == 6
    assert not partial.exists()


def test_one_round_per_model_at_a_time(looped):
    from tuneloop.loop import store

    with store.locked("loopy") as holder:
        with pytest.raises(TuneloopError, match=r"a round of loopy is already running \(.*:\d+:"):
            _round(looped, wait=False)
        assert holder
    with store.locked("loopy", heartbeat_s=0.05):
        pass  # released on exit
    # a holder that stopped heartbeating (killed) loses the lock after `stale_s`
    from sqlalchemy import insert

    from tuneloop import db

    old = datetime.now(UTC) - timedelta(hours=1)
    with db.engine().begin() as conn:
        conn.execute(insert(store.locks).values(model="loopy", holder="gone:1:x", acquired_at=old, heartbeat_at=old))
    with store.locked("loopy") as holder:
        assert holder != "gone:1:x"


def test_loop_section_errors(write, tiny_model):
    path = write(
        "bad-loop.yaml",
        f"""
        name: bad-loop
        base_model: {tiny_model}
        data: {{source: debian-descriptions, task: synopsis}}
        stages: [{{name: sft, method: sft}}]
        registry: {{name: bad-loop}}
        loop:
          campaign: {{name: c, requests: {{since: 1h}}, models: [{{name: a, logged: true}}],
                     tasks: {{pairwise: false, rating: []}}}}
          votes: {{min: 0, wait: soon}}
          retrain: []
        """,
    )
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    text = str(e.value)
    for expected in ("loop.votes.min", "loop.votes.wait", "'soon' is not a duration", "loop.retrain"):
        assert expected in text, (expected, text)
    plain = write("plain.yaml", path.read_text().split("loop:")[0])
    result = runner.invoke(app, ["loop", "status", str(plain)])
    assert result.exit_code == 2 and "has no `loop:` section (see docs/loop.md)" in result.output


def test_the_monitor_starts_a_round_and_later_checks_finish_it(tiny_recipe):
    """`tuneloop monitor RECIPE --once` from cron drives the loop: a fired trigger starts a round, which waits for
    votes; the next checks move it on without waiting, until the challenger is judged."""
    from tuneloop.serve.store import rate_request

    monitor = (
        "monitor:\n  window: {since: 1h, model: synopsis, min_requests: 1000}\n"
        "  triggers: {drift: false, thumbs_down: {above: 0.5, min_ratings: 3}}\n"
    )
    path = tiny_recipe("loopy", tail=LOOP + monitor)
    assert runner.invoke(app, ["run", str(path)]).exit_code == 0
    _traffic(6, "rated")
    for i in range(4):
        assert rate_request(f"rated-{i}", None, "down", None)
    lenient = ["--set", "evaluation.gate=[{metric: perplexity, max_drop: 1000}]"]
    first = runner.invoke(app, ["monitor", str(path), "--once", *lenient], env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    assert "decision: fired" in first.output and "thumbs down: 100% of 4 ratings" in first.output
    assert "round 1: waiting (next step votes)" in first.output
    _vote_all("loopy-r1")
    second = runner.invoke(app, ["monitor", str(path), "--once", *lenient], env={"COLUMNS": "200"})
    assert second.exit_code == 0, second.output
    assert "decision: held" in second.output  # the cooldown holds the trigger ...
    assert "round 1: done (next step done)" in second.output  # ... and the open round is finished
    from tuneloop.loop import store

    assert store.history("loopy")[0]["state"]["decision"] == "promoted"
    third = runner.invoke(app, ["monitor", str(path), "--once", "--no-round", *lenient], env={"COLUMNS": "200"})
    assert third.exit_code == 0 and "round" not in third.output.split("report:")[-1]


def test_the_demos_simulated_raters_prefer_rule_following_then_closer_synopses():
    import random

    from tuneloop.feedback.simulate import choose, judge

    rng = random.Random(0)
    reference = "library for parsing XML documents"
    assert judge("The XML library.", reference) < 1 <= judge("XML parsing library", reference)  # rules first
    assert judge("library for parsing XML documents", reference) == pytest.approx(2.0)
    assert choose("A library for XML.", "library for XML", reference, "rules", 0.0, rng) == "right"
    assert choose("library for parsing XML", "tool for XML", reference, "rules", 0.0, rng) == "left"
    # with the package known, naming it breaks a rule (Debian Policy 3.4.1), however close the words are
    named, plain = "libxml2 library for parsing XML documents", "library for XML"
    assert choose(named, plain, reference, "rules", 0.0, rng) == "left"
    assert choose(named, plain, reference, "rules", 0.0, rng, package="libxml2") == "right"
    picks = {choose("library for parsing XML", "tool", reference, "rules", 1.0, rng) for _ in range(40)}
    assert picks == {"left", "right"}  # noise 1.0: a coin


def test_simulated_raters_know_each_debian_prompts_package_and_synopsis(workspace):
    """`scripts/simulate_raters.py --prefer rules` reads what its raters know through `prompt_facts`: a Debian
    description sampled from the request log (no reference of its own) gets its package and the dataset's synopsis;
    a prompt of another kind keeps only its own reference."""
    import random

    from tuneloop.data import builtin
    from tuneloop.feedback import store
    from tuneloop.feedback.simulate import choose, prompt_facts

    rows = [json.loads(line) for line in builtin.split_file("debian-descriptions", "test").open()][:2]
    answer = {"model": "m", "model_ref": "r", "model_version": None, "tokens": 2, "correct": None}
    items = [
        {
            "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": rows[0]["description"]}],
            "reference": None,
            "source": {"requests": {"id": 1}},
            "gold": False,
            "responses": [{**answer, "text": "a"}, {**answer, "model": "n", "text": "b"}],
        },
        {
            "prompt": rows[1]["description"],
            "reference": "own reference",
            "source": {"row": 1},
            "gold": False,
            "responses": [{**answer, "text": "a"}, {**answer, "model": "n", "text": "b"}],
        },
        {
            "prompt": "not a Debian description",
            "reference": "ref",
            "source": {"row": 2},
            "gold": False,
            "responses": [{**answer, "text": "a"}, {**answer, "model": "n", "text": "b"}],
        },
    ]
    spec = {"name": "facts", "overlap": 1, "tasks": {"pairwise": True, "rating": [], "rewrite": False}}
    store.save_campaign(spec, "guidelines", "tests", items)
    references, packages = prompt_facts("facts")
    first, second = rows[0]["description"], rows[1]["description"]
    assert references == {first: rows[0]["synopsis"], second: "own reference", "not a Debian description": "ref"}
    assert packages == {first: rows[0]["package"], second: rows[1]["package"]}
    named = f"{rows[0]['package']} {rows[0]['synopsis']}"
    pick = choose(named, "tool for it", references[first], "rules", 0.0, random.Random(0), package=packages[first])
    assert pick == "right"  # naming the package breaks the rule the rater now knows to check
