"""The serving pieces that need no engine: serve configs and their errors, vLLM flags, engine command lines, API
keys in the real workspace database, rate limits, reading responses and streams for the request log, the checks
`tuneloop serve` makes before it starts an engine, and the ratings applications send (`POST /v1/feedback`)."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.unit.test_feedback import database  # noqa: F401  (the SQLite and PostgreSQL workspace databases)
from tuneloop.cli import app
from tuneloop.config.errors import RecipeError
from tuneloop.errors import TuneloopError
from tuneloop.serve.config import ServeConfig, engine_flags, load_serve_config
from tuneloop.serve.engine import Deployment, Engine, Served, resolve
from tuneloop.serve.gateway import Gateway
from tuneloop.serve.http import rename_model
from tuneloop.serve.meters import RateLimiter
from tuneloop.serve.store import (
    KeyRing,
    RequestLog,
    _output_and_usage,
    create_key,
    list_keys,
    rate_request,
    revoke_key,
)
from tuneloop.serve.traffic import feedback_counts

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_shipped_serve_configs_load():
    for path in sorted((REPO / "configs/serve").glob("*.yaml")):
        config = load_serve_config(path, {}, [])
        assert config.engine in ("vllm", "auto")
    cpu = load_serve_config(REPO / "configs/serve/cpu.yaml", {}, [])
    assert cpu.engine_args["enforce_eager"] is True and cpu.engine_env["VLLM_CPU_KVCACHE_SPACE"]


def test_serve_config_problems_name_file_line_and_key(write):
    path = write(
        "serve.yaml",
        """
        engine: vllm
        folow: champion
        poll_interval_s: -1
        engine_args:
          max_model_len: 4096
          port: 9000
    """,
    )
    with pytest.raises(RecipeError) as e:
        load_serve_config(path, {}, [])
    shown = [str(p) for p in e.value.problems]
    assert any("serve.yaml:2 folow: unknown key (did you mean follow?)" in s for s in shown), shown
    assert any("serve.yaml:3 poll_interval_s" in s and "greater than 0" in s for s in shown), shown
    fixed = write("ok.yaml", "engine_args:\n  max_model_len: 4096\n  port: 9000\n")
    with pytest.raises(RecipeError) as e:
        load_serve_config(fixed, {}, [])
    assert "ok.yaml:3 engine_args.port: the engine's port is chosen free" in str(e.value.problems[0])


def test_command_line_values_override_the_file_and_engine_args_are_typed(write):
    path = write("serve.yaml", "port: 9000\nengine_args: {max_model_len: 2048}\n")
    config = load_serve_config(path, {"port": 8123, "follow": None}, ["max_model_len=4096", "dtype=bfloat16"])
    assert config.port == 8123 and config.engine_args == {"max_model_len": 4096, "dtype": "bfloat16"}
    with pytest.raises(RecipeError) as e:
        load_serve_config(None, {}, ["max_model_len"])
    assert "--engine-arg max_model_len: expected key=value" in str(e.value.problems[0])


def test_engine_args_become_vllm_flags():
    flags = engine_flags(
        {
            "tensor_parallel_size": 4,
            "enforce_eager": True,
            "enable-prefix-caching": False,
            "lora_modules": ["a=/x", "b=/y"],
            "override_generation_config": {"temperature": 0.2},
        }
    )
    assert flags == [
        "--tensor-parallel-size",
        "4",
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--lora-modules",
        "a=/x",
        "b=/y",
        "--override-generation-config",
        '{"temperature": 0.2}',
    ]


def _deployment(tmp_path: Path, mode: str = "merged", n: int = 1) -> Deployment:
    served = [Served(f"m{i}", f"models:/m{i}/3", "3", tmp_path / f"m{i}", f"m{i}") for i in range(n)]
    return Deployment(served, mode, tmp_path / "base", lora_rank=8 if mode == "multi-lora" else None)


def test_engine_command_lines(tmp_path):
    config = ServeConfig(engine_args={"max_model_len": 1024})
    merged = Engine("vllm", _deployment(tmp_path), config, tmp_path).command()
    assert merged[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(merged)
    assert f"--model {tmp_path / 'base'}" in joined and "--served-model-name m0" in joined
    assert "--host 127.0.0.1" in joined and "--max-model-len 1024" in joined and "--enforce-eager" in joined
    lora = " ".join(Engine("vllm", _deployment(tmp_path, "multi-lora", 2), config, tmp_path).command())
    assert "--served-model-name tuneloop-base --enable-lora --max-lora-rank 8 --max-loras 2" in lora
    assert f"--lora-modules m0={tmp_path / 'm0'} m1={tmp_path / 'm1'}" in lora
    hf = Engine("transformers", _deployment(tmp_path), ServeConfig(), tmp_path).command()
    assert hf[1:5] == ["-m", "transformers.cli.transformers", "serve", str(tmp_path / "base")]


def test_resolve_refuses_what_cannot_be_served(tiny_model):
    with pytest.raises(TuneloopError, match="merged mode serves one; several adapters of one base need --mode"):
        resolve([str(tiny_model), str(tiny_model)], "merged", say=lambda m: None)
    with pytest.raises(TuneloopError, match="holds full weights, not a LoRA adapter"):
        resolve([str(tiny_model)], "multi-lora", say=lambda m: None)
    with pytest.raises(TuneloopError, match="--name given 2 time"):
        resolve([str(tiny_model)], "merged", ["a", "b"], say=lambda m: None)
    d = resolve([str(tiny_model)], "merged", ["tiny"], say=lambda m: None)
    assert d.names == ["tiny"] and d.base == Path(tiny_model) and d.served[0].version is None


def test_keys_are_stored_as_salted_hashes_and_revocation_is_seen_on_reload(workspace):
    secret, key = create_key("app-one", rpm=30)
    assert secret.startswith(f"tlk_{key.id}_") and len(secret) > 40
    other, _ = create_key("app-two")
    ring = KeyRing()
    assert ring.active() == 2
    row, why = ring.check(secret)
    assert row["name"] == "app-one" and row["rpm"] == 30 and why == ""
    assert ring.check(secret[:-1] + ("A" if secret[-1] != "A" else "B"))[0] is None
    assert "look like tlk_" in ring.check("sk-not-ours")[1]
    db = (workspace / "tuneloop.db").read_bytes() + (workspace / "tuneloop.db-wal").read_bytes()
    assert secret.split("_", 2)[2].encode() not in db
    revoke_key(key.id)
    assert ring.check(secret)[0] is not None  # until the ring re-reads the table
    ring.reload()
    assert "was revoked" in ring.check(secret)[1] and ring.check(other)[0] is not None
    assert [k.revoked_at is not None for k in list_keys()] == [True, False]
    with pytest.raises(TuneloopError, match="no API key with id 'ffff'"):
        revoke_key("ffff")


def test_rate_limiter_allows_a_minutes_burst_then_says_when():
    limiter = RateLimiter()
    assert limiter.take("k", 2) == 0 and limiter.take("k", 2) == 0
    wait = limiter.take("k", 2)
    assert 29 < wait <= 30
    assert limiter.take("other", 2) == 0  # per key
    assert all(limiter.take("free", 0) == 0 for _ in range(1000))


def test_responses_and_streams_are_read_for_the_log():
    chat = {"choices": [{"message": {"role": "assistant", "content": "Hello"}}], "usage": {"prompt_tokens": 3}}
    assert _output_and_usage(json.dumps(chat).encode(), False, 200) == ("Hello", {"prompt_tokens": 3})
    events = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hi"}}]},
        {"choices": [{"delta": {"content": " there"}}]},
        {"error": {"message": "engine died"}},
    ]
    stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    text, usage = _output_and_usage(stream.encode(), True, 200)
    assert text == "Hi there\n[stream error: engine died]" and usage is None
    completion = "data: " + json.dumps({"choices": [{"text": "abc"}], "usage": {"completion_tokens": 1}}) + "\n\n"
    assert _output_and_usage(completion.encode(), True, 200) == ("abc", {"completion_tokens": 1})
    assert _output_and_usage(b'{"error": {"message": "nope"}}', False, 404) == ("nope", None)


def test_request_log_writes_in_the_background_and_counts_tokens_when_the_engine_did_not(workspace):
    import sqlite3
    from datetime import UTC, datetime

    log = RequestLog(count_tokens=lambda r: (len(r["body"]["prompt"].split()), len(r["output"].split())))
    base = {
        "ts": datetime.now(UTC),
        "key_id": "k1",
        "endpoint": "completions",
        "model": "m",
        "version": "2",
        "latency_ms": 5.0,
        "ttft_ms": 1.0,
        "tokenizer": "unused",
    }
    stream = b'data: {"choices": [{"text": "one two"}]}\n\ndata: [DONE]\n\n'
    log.append({**base, "request_id": "a", "stream": True, "status": 200, "body": {"prompt": "x y z"}, "raw": stream})
    log.append(
        {
            **base,
            "request_id": "b",
            "stream": False,
            "status": 400,
            "body": {"prompt": "q"},
            "raw": b'{"error": {"message": "too long"}}',
        }
    )
    log.close()
    rows = (
        sqlite3.connect(workspace / "tuneloop.db")
        .execute(
            "select request_id, status, output, error, prompt_tokens, completion_tokens, usage_source, request "
            "from requests order by id"
        )
        .fetchall()
    )
    assert rows[0] == ("a", 200, "one two", None, 3, 2, "gateway", '{"prompt": "x y z"}')
    assert rows[1][:4] == ("b", 400, None, "too long") and rows[1][6] is None
    assert log.written == 2 and log.failed == 0


def test_transformers_engine_names_are_rewritten_to_the_served_name():
    raw = b'data: {"id":"1","model":"/models/x@main","choices":[]}\n\n'
    assert rename_model(raw, "svc") == b'data: {"id":"1","model":"svc","choices":[]}\n\n'


def test_serve_refuses_to_start_without_keys_and_says_how(tiny_model):
    result = runner.invoke(app, ["serve", str(tiny_model)])
    assert result.exit_code == 1
    assert "no API keys in sqlite:///" in result.output and "tuneloop serve keys create NAME" in result.output
    assert "--no-auth" in result.output


def test_a_taken_port_fails_before_an_engine_starts(tiny_model, workspace):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = runner.invoke(app, ["serve", str(tiny_model), "--no-auth", "--port", str(port)])
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert not (workspace / "serve").exists()  # no engine was started


def test_bad_serve_config_exits_2_and_follow_needs_a_registered_model(write, tiny_model):
    bad = write("bad.yaml", "mode: multi\n")
    result = runner.invoke(app, ["serve", str(tiny_model), "--config", str(bad)])
    assert result.exit_code == 2 and "bad.yaml:1 mode" in result.output
    result = runner.invoke(app, ["serve", str(tiny_model), "--no-auth", "--follow", "champion", "--port", "0"])
    assert result.exit_code == 1 and "is not a registered model" in result.output


def test_keys_verbs(workspace):
    created = runner.invoke(app, ["serve", "keys", "create", "ci", "--rpm", "5"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    listed = runner.invoke(app, ["serve", "keys", "list", "--json"])
    assert json.loads(listed.stdout)[0]["rpm"] == 5 and secret not in listed.stdout
    key_id = secret.split("_")[1]
    assert "revoked" in runner.invoke(app, ["serve", "keys", "revoke", f"tlk_{key_id}"]).output
    assert json.loads(runner.invoke(app, ["serve", "keys", "list", "--json"]).stdout)[0]["revoked"] is True
    assert runner.invoke(app, ["serve", "keys", "create", " "]).exit_code == 2


def _served(request_id: str, key_id: str | None = None, model: str = "m", ts: datetime | None = None) -> dict:
    """A request record as the gateway hands it to the request log."""
    raw = json.dumps({"choices": [{"message": {"content": "an answer"}}]}).encode()
    return {
        "request_id": request_id,
        "ts": ts or datetime.now(UTC),
        "key_id": key_id,
        "endpoint": "chat.completions",
        "model": model,
        "version": "1",
        "stream": False,
        "status": 200,
        "latency_ms": 5.0,
        "ttft_ms": None,
        "body": {"messages": [{"role": "user", "content": "hi"}]},
        "raw": raw,
        "tokenizer": None,
    }


@pytest.fixture
def gateway(workspace, tmp_path):
    """A gateway with two keys and a real request log, without an engine (its routes are called in-process)."""
    from starlette.testclient import TestClient

    first, first_key = create_key("app")
    second, _ = create_key("other-app")
    log = RequestLog()
    engine = Engine("transformers", _deployment(tmp_path), ServeConfig(), tmp_path)
    client = TestClient(Gateway(ServeConfig(), engine, KeyRing(), log).app())
    yield client, log, {"first": first, "first_id": first_key.id, "second": second}
    log.close()


def _rate(client, key: str | None, body) -> tuple[int, dict]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/v1/feedback", content=data, headers=headers)
    return r.status_code, r.json()


def test_bad_feedback_gets_a_400_naming_the_field(gateway):
    client, _log, keys = gateway
    cases = [
        (b'{"request_id": "a", ', "body", "not valid JSON"),
        (b'["a", "up"]', "body", "must be a JSON object"),
        ({"request_id": "a", "rating": "up", "score": 1}, "score", "Unknown field `score`"),
        ({"rating": "up"}, "request_id", "`request_id` is missing"),
        ({"request_id": 7, "rating": "up"}, "request_id", "not 7"),
        ({"request_id": "x" * 65, "rating": "up"}, "request_id", "1 to 64 characters"),
        ({"request_id": "a"}, "rating", '`rating` must be "up" or "down", not missing'),
        ({"request_id": "a", "rating": "thumbs_up"}, "rating", 'not "thumbs_up"'),
        ({"request_id": "a", "rating": "up", "comment": 5}, "comment", "must be a string"),
        ({"request_id": "a", "rating": "up", "comment": "x" * 2001}, "comment", "2001 characters; at most 2000"),
    ]
    for body, param, message in cases:
        status, answer = _rate(client, keys["first"], body)
        assert status == 400 and answer["error"]["param"] == param and message in answer["error"]["message"], body
        assert answer["error"]["type"] == "BadRequestError"
    status, answer = _rate(client, None, {"request_id": "a", "rating": "up"})
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"


def test_a_rating_sent_with_the_answer_finds_its_request_and_a_second_one_replaces_it(gateway, workspace):
    import sqlite3

    client, log, keys = gateway
    log.append(_served("req-1", keys["first_id"]))  # no wait: the log's thread has not written it yet
    assert _rate(client, keys["first"], {"request_id": "req-1", "rating": "up"}) == (
        200,
        {"object": "feedback", "request_id": "req-1", "rating": "up"},
    )
    import openai  # the second rating as docs/serving.md sends it

    app = openai.OpenAI(base_url="http://testserver/v1", api_key=keys["first"], http_client=client, max_retries=0)
    body = {"request_id": "req-1", "rating": "down", "comment": "wrong package"}
    assert app.post("/feedback", body=body, cast_to=object)["rating"] == "down"
    db = sqlite3.connect(workspace / "tuneloop.db")
    assert db.execute("select request_id, key_id, rating, comment from served_feedback").fetchall() == [
        ("req-1", keys["first_id"], "down", "wrong package")
    ]
    assert db.execute("select count(*) from requests").fetchone() == (1,)  # ratings are not model traffic
    for key, request_id in ((keys["second"], "req-1"), (keys["first"], "nope")):  # another key's id looks unknown
        status, answer = _rate(client, key, {"request_id": request_id, "rating": "up"})
        assert (
            status == 404
            and answer["error"]["param"] == "request_id"
            and "made with this key" in answer["error"]["message"]
        )


@pytest.mark.usefixtures("database")
def test_feedback_counts_rate_requests_by_their_model_and_time():
    log = RequestLog()
    old = datetime.now(UTC) - timedelta(days=3)
    for request_id, model, ts in (("a", "m", None), ("b", "m", None), ("c", "m", old), ("d", "other", None)):
        log.append(_served(request_id, model=model, ts=ts))
    log.append(_served("a", model="m"))  # a request id the client reused: still one rating
    log.close()
    assert rate_request("a", None, "up", None) and rate_request("b", None, "up", None)
    assert rate_request("b", None, "down", "changed my mind")  # no keys: one rating per request all the same
    assert rate_request("c", None, "down", None) and rate_request("d", None, "down", None)
    assert not rate_request("e", None, "up", None)
    assert not rate_request("a", "k1", "up", None)  # logged without a key: no key made it
    assert feedback_counts() == {"up": 1, "down": 3}
    assert feedback_counts("m") == {"up": 1, "down": 2}
    assert feedback_counts("m", datetime.now(UTC) - timedelta(days=1)) == {"up": 1, "down": 1}
    assert feedback_counts("m", datetime.now() - timedelta(days=1)) == {"up": 1, "down": 1}  # naive: UTC
    assert feedback_counts("nothing") == {"up": 0, "down": 0}


@pytest.mark.usefixtures("database")
def test_a_keys_first_ratings_sent_at_once_leave_one_row():
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from tuneloop import db
    from tuneloop.serve.store import served_feedback

    log = RequestLog()
    log.append(_served("r", "k1"))
    log.close()
    ratings = ["up", "down"] * 4
    with ThreadPoolExecutor(len(ratings)) as pool:
        assert all(pool.map(lambda rating: rate_request("r", "k1", rating, None), ratings))
    with db.engine().connect() as conn:
        assert len(conn.execute(select(served_feedback)).all()) == 1


def test_a_client_request_id_too_long_for_the_log_is_replaced() -> None:
    from tuneloop.serve.http import client_request_id

    assert client_request_id("trace-42") == "trace-42"
    assert client_request_id("x" * 65) is None  # would fail the log's batch insert on PostgreSQL
    assert client_request_id("bad\nid") is None
    assert client_request_id(None) is None


def test_each_vllm_engine_has_its_own_key_in_its_environment_never_in_its_command_log_or_serve_json(
    tmp_path, monkeypatch
):
    import hashlib
    import sys

    from tuneloop.serve.endpoint import _write_state

    monkeypatch.setenv("VLLM_API_KEY", "from-the-users-shell")
    engine = Engine("vllm", _deployment(tmp_path), ServeConfig(), tmp_path)
    key = engine.key
    assert key and len(key) >= 40 and key != Engine("vllm", _deployment(tmp_path), ServeConfig(), tmp_path).key
    assert key not in " ".join(engine.command())  # /proc/PID/cmdline is readable by every local user
    assert engine.env()["VLLM_API_KEY"] == key and engine.headers == {"authorization": f"Bearer {key}"}
    hf = Engine("transformers", _deployment(tmp_path), ServeConfig(), tmp_path)  # `transformers serve` takes no key
    assert hf.key is None and hf.headers == {} and "VLLM_API_KEY" not in hf.env()
    with pytest.raises(RecipeError, match=r"engine_env\.VLLM_API_KEY: the gateway"):
        load_serve_config(None, {"engine_env": {"VLLM_API_KEY": "mine"}}, [])

    # a real child process started the way the engine is, told only a hash of the key to compare with
    check = (
        "import hashlib, os, sys; "
        "print('same key:', hashlib.sha256(os.environ['VLLM_API_KEY'].encode()).hexdigest() == sys.argv[1])"
    )
    digest = hashlib.sha256(key.encode()).hexdigest()
    monkeypatch.setattr(Engine, "command", lambda self: [sys.executable, "-c", check, digest])
    engine.start()
    assert engine.proc.wait(30) == 0
    logged = engine.log_path.read_text()
    assert logged.startswith(f"$ {sys.executable} -c") and "same key: True" in logged and key not in logged
    _write_state(Gateway(ServeConfig(), engine, None, None), "http://127.0.0.1:8000", tmp_path / "serve.json")
    assert json.loads((tmp_path / "serve.json").read_text())["engine_pid"] == engine.proc.pid
    assert key not in (tmp_path / "serve.json").read_text()


def test_a_body_over_max_body_bytes_is_a_413_with_or_without_content_length(workspace, tmp_path):
    import sqlite3

    from starlette.testclient import TestClient

    config = ServeConfig(max_body_bytes=1000)
    log = RequestLog()
    engine = Engine("transformers", _deployment(tmp_path), config, tmp_path)  # not started: a body that passes is a 503
    client = TestClient(Gateway(config, engine, None, log).app())

    def chunked(data: bytes):  # no Content-Length: httpx sends it chunked, the gateway counts as it reads
        yield from (data[i : i + 300] for i in range(0, len(data), 300))

    big = b'{"model": "m0", "prompt": "' + b"x" * 1000 + b'"}'
    fits = json.dumps({"model": "m0", "prompt": "hi"}).encode().ljust(1000)  # exactly the limit
    for path in ("/v1/completions", "/v1/feedback"):
        for content in (big, chunked(big)):
            r = client.post(path, content=content)
            assert r.status_code == 413 and r.json() == {
                "error": {
                    "message": r.json()["error"]["message"],
                    "type": "invalid_request_error",
                    "param": "body",
                    "code": "request_too_large",
                }
            }
            assert "at most 1000 bytes (serve config max_body_bytes)" in r.json()["error"]["message"]
        assert "content-length" not in r.request.headers
    assert "is 1029 bytes" in client.post("/v1/completions", content=big).json()["error"]["message"]
    for content in (fits, chunked(fits)):
        r = client.post("/v1/completions", content=content)
        assert r.status_code == 503 and "engine is not running" in r.json()["error"]["message"]
    log.close()
    statuses = sqlite3.connect(workspace / "tuneloop.db").execute("select status from requests").fetchall()
    assert sorted(s for (s,) in statuses) == [413, 413, 413, 503, 503]  # refused ones are logged too
