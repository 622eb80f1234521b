"""`tuneloop serve` for real: vLLM's CPU build serving registered versions of the built-in model, called with the
official `openai` client through tuneloop's gateway — chat, completion, streaming, the error cases, keys, rate
limits, the request log, metrics, a hot swap under load, multi-LoRA, and an engine crash.

Two versions are registered once for the module (two short LoRA runs of the built-in model); one endpoint that
follows @champion serves the ordered tests, the swap test moves the alias under a steady stream of requests, and the
last test kills the engine. Each server runs in its own process group, killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))
RECIPE = """
name: svc
base_model: smollm2-135m-instruct
data: {source: debian-descriptions, task: synopsis, max_train_rows: 8, max_eval_rows: 4}
stages:
  - name: sft
    method: sft
    peft: {type: lora, r: 4, alpha: 8}
    args: {learning_rate: 1e-3, max_steps: 2, per_device_train_batch_size: 4, max_length: 256, logging_steps: 1,
           save_steps: 100}
evaluation:
  tasks:
    - {name: ppl, kind: perplexity, split: validation, max_rows: 4}
  gate:
    - {metric: perplexity, max_drop: 1000}
registry: {name: svc}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Endpoint:
    proc: subprocess.Popen
    url: str
    log: Path
    home: Path

    def state(self) -> dict:
        """This endpoint's serve.json (its directory ends with the serve process's pid; others share the home)."""
        return json.loads(next((self.home / "serve").glob(f"*-{self.proc.pid}/serve.json")).read_text())

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNELOOP_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([TUNELOOP, *args], env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"tuneloop {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def _start(home: Path, args: list[str], log: Path, timeout: float = 420) -> Endpoint:
    port = _free_port()
    env = {**os.environ, "TUNELOOP_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [TUNELOOP, "serve", *args, "--port", str(port)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tuneloop serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                return Endpoint(proc, url, log, home)
        time.sleep(1)
    _kill(proc)
    raise RuntimeError(f"tuneloop serve not healthy after {timeout} s:\n{log.read_text()[-4000:]}")


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A workspace with models:/svc/1 (@champion) and models:/svc/2 (@challenger), and an API key."""
    root = tmp_path_factory.mktemp("serve")
    ws = root / "ws"
    ws.mkdir()
    recipe = root / "svc.yaml"
    recipe.write_text(RECIPE)
    _cli(ws, "run", str(recipe))
    _cli(ws, "run", str(recipe), "--set", "stages.sft.args.seed=7", "--set", "registry.promote=manual")
    return ws


@pytest.fixture(scope="module")
def key(home) -> str:
    return _cli(home, "serve", "keys", "create", "tests", "--rpm", "0").stdout.strip()


@pytest.fixture(scope="module")
def endpoint(home, key, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    ep = _start(home, ["models:/svc@champion", "--follow", "champion", "--poll", "1"], log)
    yield ep
    _kill(ep.proc)


def _client(endpoint: Endpoint, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{endpoint.url}/v1", api_key=key, max_retries=0, timeout=120)


def _raw(endpoint: Endpoint, path: str, body: bytes, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{endpoint.url}{path}",
        data=body,
        method="POST",
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_chat_completion_and_streaming_through_the_openai_client(endpoint, key):
    client = _client(endpoint, key)
    assert [m.id for m in client.models.list()] == ["svc"]
    raw = client.chat.completions.with_raw_response.create(
        model="svc", messages=[{"role": "user", "content": "Describe the package bash."}], max_tokens=12
    )
    assert raw.headers["x-tuneloop-model-version"] == "svc/1"
    chat = raw.parse()
    assert chat.choices[0].message.content.strip()
    assert chat.usage.completion_tokens == 12 and chat.usage.prompt_tokens > 5
    text = client.completions.create(model="svc", prompt="The bash package provides", max_tokens=8)
    assert text.choices[0].text and text.usage.completion_tokens == 8
    chunks = list(
        client.chat.completions.create(
            model="svc", messages=[{"role": "user", "content": "Name a text editor."}], max_tokens=10, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 10 and streamed.strip()
    assert chunks[-1].choices[0].finish_reason == "length"
    pieces = [
        c.choices[0].text for c in client.completions.create(model="svc", prompt="Debian is", max_tokens=6, stream=True)
    ]
    assert "".join(pieces)


def test_bad_requests_get_openai_errors(endpoint, key):
    client = _client(endpoint, key)
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=hello, max_tokens=4)
    assert "`gpt-4` does not exist" in e.value.message and "svc" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="svc", messages=hello, max_tokens=10**6)
    assert "max_model_len=8192" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="svc", prompt="word " * 9000, max_tokens=4)
    assert "maximum context length is 8192 tokens" in e.value.message
    status, body = _raw(endpoint, "/v1/chat/completions", b'{"model": "svc", "messages": [', key)
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    # vLLM answers /tokenize without a key: the gateway does not forward it
    status, body = _raw(endpoint, "/tokenize", b'{"model": "svc", "prompt": "x"}', key)
    assert status == 404 and body["error"]["code"] == "not_found"
    # the engine's own port wants the key only the gateway knows (a local user cannot go around the gateway)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{endpoint.state()['engine_url']}/v1/models", timeout=10)
    assert e.value.code == 401


def test_keys_rate_limits_and_the_request_log(endpoint, key, home):
    with pytest.raises(openai.AuthenticationError):
        _client(endpoint, "tlk_00000000_nope").models.list()
    no_key = urllib.request.Request(f"{endpoint.url}/v1/models")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(no_key, timeout=10)
    assert e.value.code == 401 and "didn't provide an API key" in json.loads(e.value.read())["error"]["message"]

    limited = _cli(home, "serve", "keys", "create", "limited", "--rpm", "2").stdout.strip()
    time.sleep(3)  # running gateways re-read the keys every 2 s
    client = _client(endpoint, limited)
    client.models.list()
    client.models.list()
    with pytest.raises(openai.RateLimitError) as e:
        client.models.list()
    assert "2 requests per minute" in e.value.message and int(e.value.response.headers["retry-after"]) >= 1

    doomed = _cli(home, "serve", "keys", "create", "doomed").stdout.strip()
    time.sleep(3)
    _client(endpoint, doomed).completions.create(model="svc", prompt="Hello", max_tokens=2)
    _cli(home, "serve", "keys", "revoke", doomed.split("_")[1])
    time.sleep(3)
    with pytest.raises(openai.AuthenticationError) as e:
        _client(endpoint, doomed).models.list()
    assert "was revoked" in e.value.message

    time.sleep(1)  # the log is written in the background, in batches
    db = sqlite3.connect(home / "tuneloop.db")
    rows = db.execute(
        "select key_id, model, version, endpoint, stream, status, prompt_tokens, completion_tokens, "
        "request, output from requests"
    ).fetchall()
    ok = [r for r in rows if r[5] == 200]
    assert {r[3] for r in ok} == {"chat.completions", "completions"} and any(r[4] for r in ok)
    assert all(r[1] == "svc" and r[2] == "1" and r[6] and r[7] and r[9] for r in ok)
    assert any("Describe the package bash." in r[8] for r in ok)
    assert {r[5] for r in rows} >= {200, 400, 404}
    doomed_id = doomed.split("_")[1]
    assert any(r[0] == doomed_id for r in rows)
    raw_db = (home / "tuneloop.db").read_bytes() + (home / "tuneloop.db-wal").read_bytes()
    for secret in (key, limited, doomed):
        assert secret.split("_", 2)[2].encode() not in raw_db  # only salted hashes are stored
    shown = _cli(home, "serve", "requests", "--limit", "3").stdout
    assert "svc/1" in shown


def test_health_and_metrics(endpoint, key):
    health = json.loads(urllib.request.urlopen(f"{endpoint.url}/health", timeout=10).read())
    assert health == {"status": "ok", "engine": "vllm", "models": {"svc": "1"}, "swapping": False}
    metrics = urllib.request.urlopen(f"{endpoint.url}/metrics", timeout=10).read().decode()
    assert 'tuneloop_gateway_requests_total{endpoint="chat.completions",status="200"}' in metrics
    assert 'tuneloop_gateway_model_version_info{model="svc",version="1"} 1.0' in metrics
    assert "vllm:num_requests_running" in metrics  # the engine's own metrics, behind the gateway


ENDPOINT_SUITE = """
name: through-the-gateway
tasks:
  - {name: synopsis, data: {source: debian-descriptions, task: synopsis}, split: test, max_rows: 2,
     metrics: [rougeL], generation: {max_new_tokens: 8}}
  - {name: synopsis-perplexity, kind: perplexity, data: {source: debian-descriptions, task: synopsis}, split: test}
"""


def test_eval_endpoint_with_a_gateway_key_skips_what_it_cannot_score(endpoint, key, home, tmp_path, monkeypatch):
    """docs/evaluation.md's `eval --endpoint`, against tuneloop's own gateway, which wants a key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = tmp_path / "suite.yaml"
    suite.write_text(ENDPOINT_SUITE)
    out = tmp_path / "eval"
    done = _cli(home, "eval", "--endpoint", endpoint.url, "--api-key", key, "--suite", str(suite), "-o", str(out))
    said = " ".join(done.stdout.split())
    assert "skipped task synopsis-perplexity (perplexity): it needs token log-probabilities" in said
    (model,) = json.loads((out / "results.json").read_text())["models"]
    assert model["served_model"] == "svc" and list(model["tasks"]) == ["synopsis"]
    assert model["tasks"]["synopsis"]["rows"] == 2 and "synopsis-perplexity" in model["skipped"]
    refused = _cli(home, "eval", "--endpoint", endpoint.url, "--suite", str(suite), check=False)
    assert refused.returncode == 1 and "401" in refused.stderr  # no key: the gateway's answer, in one line
    assert "give --api-key, or set OPENAI_API_KEY" in refused.stderr and "MLflow run" not in refused.stdout


def test_hot_swap_drops_no_request(endpoint, key, home):
    old_engine = endpoint.state()["engine_pid"]
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def traffic(stream: bool) -> None:
        client = _client(endpoint, key)
        while not stop.is_set():
            try:
                if stream:
                    with client.chat.completions.with_streaming_response.create(
                        model="svc",
                        messages=[{"role": "user", "content": "Say something."}],
                        max_tokens=16,
                        stream=True,
                    ) as r:
                        versions.append(r.headers["x-tuneloop-model-version"])
                        body = "".join(r.iter_lines())
                        if "[DONE]" not in body or '"error"' in body:
                            failures.append(f"stream: {body[-300:]}")
                else:
                    r = client.completions.with_raw_response.create(model="svc", prompt="Debian", max_tokens=8)
                    versions.append(r.headers["x-tuneloop-model-version"])
                    if not r.parse().choices[0].text:
                        failures.append("empty completion")
            except Exception as e:
                failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.3)  # steady, not saturating: on 2 CPU cores the new engine starts beside the old one

    threads = [threading.Thread(target=traffic, args=(s,)) for s in (False, True)]
    for t in threads:
        t.start()
    time.sleep(3)
    _cli(home, "registry", "promote", "svc", "--version", "2", "--force", "--reason", "hot swap test")
    deadline = time.monotonic() + 400
    # traffic on the new engine while the old one drains and stops: a count, not a fixed sleep (a loaded CI machine
    # answered only 3 requests in 5 s once)
    while time.monotonic() < deadline and versions.count("svc/2") <= 6:
        time.sleep(1)
    stop.set()
    for t in threads:
        t.join(120)
    assert not failures, failures[:5]
    assert versions.count("svc/1") > 3 and versions.count("svc/2") > 3, versions[-20:]
    switched = versions.index("svc/2")
    assert "svc/1" not in versions[switched + 3 :]  # once switched, traffic stays on the new version
    deadline = time.monotonic() + 90  # vLLM's own shutdown takes a few seconds after the drain
    while "previous engine stopped" not in endpoint.output() and time.monotonic() < deadline:
        time.sleep(1)
    out = endpoint.output()
    assert "@champion moved (svc 1 → 2)" in out and "now serving svc (svc/2)" in out
    assert "previous engine stopped" in out and "cut at drain_timeout_s" not in out
    assert endpoint.state()["engine_pid"] != old_engine
    with pytest.raises(ProcessLookupError):
        os.kill(old_engine, 0)
    health = json.loads(urllib.request.urlopen(f"{endpoint.url}/health", timeout=10).read())
    assert health["models"] == {"svc": "2"}


def test_multi_lora_serves_both_versions_from_one_engine(home, key, tmp_path):
    ep = _start(
        home,
        ["models:/svc/1", "models:/svc/2", "--mode", "multi-lora", "--name", "svc-a", "--name", "svc-b"],
        tmp_path / "multi.log",
    )
    try:
        client = _client(ep, key)
        assert sorted(m.id for m in client.models.list()) == ["svc-a", "svc-b"]
        for name, version in (("svc-a", "svc/1"), ("svc-b", "svc/2")):
            r = client.completions.with_raw_response.create(model=name, prompt="Debian is", max_tokens=4)
            assert r.headers["x-tuneloop-model-version"] == version and r.parse().choices[0].text
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="tuneloop-base", prompt="x", max_tokens=2)
        assert "--enable-lora" in ep.output() and "--max-lora-rank 8" in ep.output()
    finally:
        _kill(ep.proc)


def test_engine_crash_is_503_then_a_nonzero_exit_with_the_engine_log(endpoint, key):
    engine = endpoint.state()["engine_pid"]  # the API server, leader of the engine's process group
    os.kill(engine, signal.SIGKILL)
    status, body = None, None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status, body = _raw(endpoint, "/v1/completions", b'{"model": "svc", "prompt": "x", "max_tokens": 2}', key)
        except OSError:
            break  # the gateway already exited
        if status == 503:
            break
        time.sleep(0.1)
    assert status == 503, (status, body)
    assert endpoint.proc.wait(60) == 1
    out = endpoint.output()
    assert "error: the vllm engine exited with code -9; last lines of" in out
    # no EngineCore or worker left alive in the engine's group (SIGKILL is asynchronous, and the dead wait as
    # zombies until init reaps them: those hold neither memory nor a core)
    deadline = time.monotonic() + 20
    while _alive_in_group(engine) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive_in_group(engine) == []


def _alive_in_group(pgid: int) -> list[str]:
    """Processes of a process group that are not zombies, as `pid name` (from /proc: Linux only, as vLLM is)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            alive.append(f"{stat.parent.name} {name}")
    return alive
