"""The transformers engine (`transformers serve`) behind the same gateway, on the tiny model: the endpoint for
machines where vLLM cannot be installed answers the same routes, streams, names models the same way, refuses
over-long outputs like vLLM does and over-large bodies with 413, and logs requests with token counts the gateway
makes itself; applications rate the answers they showed (`POST /v1/feedback`) with the key that asked."""

from __future__ import annotations

import sqlite3
import time

import httpx
import openai
import pytest

from tests.integration.test_serve import _kill, _start

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_transformers_engine_behind_the_gateway(tiny_model, workspace, tmp_path):
    ep = _start(
        workspace,
        [str(tiny_model), "--engine", "transformers", "--name", "tiny", "--no-auth"],
        tmp_path / "serve.log",
        timeout=180,
    )
    try:
        client = openai.OpenAI(base_url=f"{ep.url}/v1", api_key="none", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["tiny"]
        hello = [{"role": "user", "content": "A package"}]
        chat = client.chat.completions.create(model="tiny", messages=hello, max_tokens=6)
        assert chat.model == "tiny" and chat.choices[0].message.content is not None
        chunks = list(client.chat.completions.create(model="tiny", messages=hello, max_tokens=6, stream=True))
        assert chunks and all(c.model == "tiny" for c in chunks)
        text = client.completions.create(model="tiny", prompt="The editor", max_tokens=5)
        assert text.model == "tiny"
        with pytest.raises(openai.BadRequestError, match="max_model_len=1024"):
            client.chat.completions.create(model="tiny", messages=hello, max_tokens=5000)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="svc", messages=hello, max_tokens=5)
        assert "starting the transformers engine" in ep.output()
        over = b"x" * (8 * 1024 * 1024 + 1)  # the default max_body_bytes, through uvicorn, declared and chunked
        for content in (over, iter([over[: 1 << 20]] * 9)):
            refused = httpx.post(f"{ep.url}/v1/completions", content=content, timeout=60)
            assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"
    finally:
        _kill(ep.proc)
    time.sleep(0.5)
    rows = (
        sqlite3.connect(workspace / "tuneloop.db")
        .execute(
            "select endpoint, stream, status, prompt_tokens, completion_tokens, usage_source, key_id from requests"
        )
        .fetchall()
    )
    ok = [r for r in rows if r[2] == 200]
    assert len(ok) == 3 and all(r[3] and r[4] is not None for r in ok)
    assert {r[2] for r in rows} == {200, 400, 404, 413} and all(r[6] is None for r in rows)  # --no-auth: no key id


def test_an_application_rates_an_answer_with_the_key_that_asked_for_it(tiny_model, workspace, tmp_path):
    from tuneloop.serve.store import create_key

    key, made = create_key("app")
    other, _ = create_key("other-app")
    ep = _start(
        workspace, [str(tiny_model), "--engine", "transformers", "--name", "tiny"], tmp_path / "serve.log", timeout=180
    )

    def rate(secret: str | None, body: dict) -> httpx.Response:
        headers = {"authorization": f"Bearer {secret}"} if secret else {}
        return httpx.post(f"{ep.url}/v1/feedback", json=body, headers=headers, timeout=30)

    try:
        client = openai.OpenAI(base_url=f"{ep.url}/v1", api_key=key, max_retries=0, timeout=60)
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": "A package"}], max_tokens=4
        )
        assert raw.parse().choices[0].message.content is not None
        request_id = raw.headers["x-request-id"]
        answer = rate(key, {"request_id": request_id, "rating": "down", "comment": "not a synopsis"})  # at once
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"object": "feedback", "request_id": request_id, "rating": "down"}
        db = sqlite3.connect(workspace / "tuneloop.db")
        stored = db.execute("select request_id, key_id, rating, comment from served_feedback").fetchall()
        assert stored == [(request_id, made.id, "down", "not a synopsis")]
        for secret, rated in ((key, "no-such-request"), (other, request_id)):
            refused = rate(secret, {"request_id": rated, "rating": "up"})
            assert refused.status_code == 404 and refused.json()["error"]["param"] == "request_id"
        assert rate(None, {"request_id": request_id, "rating": "up"}).status_code == 401
    finally:
        _kill(ep.proc)
    assert db.execute("select endpoint from requests").fetchall() == [("chat.completions",)]  # ratings: not logged
