"""The gateway in front of the engine: API keys, rate limits, the request log, metrics and hot swaps.

It does not speak the OpenAI protocol itself: request bodies go to the engine byte for byte and responses (and
streams, chunk by chunk) come back unchanged, so the endpoint behaves exactly as vLLM does. The gateway only adds
what vLLM lacks: keys checked against the workspace database, 429s per key, one log row per request, version
headers, an allow-list of routes (vLLM's `/tokenize`, `/invocations` and admin routes stay unreachable), a limit on
body size (413), the engine's own key on what it forwards (vLLM's /v1 routes refuse anyone else), and switching
engines when the followed alias moves — in-flight requests finish on the engine they started on. One route
is its own: `POST /v1/feedback`, the thumbs up or down an application sends about an answer it showed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tuneloop.serve import ratings
from tuneloop.serve.config import ServeConfig
from tuneloop.serve.engine import Deployment, Engine, resolve
from tuneloop.serve.follow import target_versions
from tuneloop.serve.http import check_limits, client_request_id, error, read_body, rename_model
from tuneloop.serve.meters import Metrics, RateLimiter

ENDPOINTS = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions"}
LOG_CAP = 1 << 20  # bytes of a streamed response kept for the request log
VERSION_HEADER = "x-tuneloop-model-version"


class Gateway:
    def __init__(
        self,
        config: ServeConfig,
        engine: Engine,
        keyring: Any | None,
        request_log: Any | None,
        say: Callable[[str], None] = print,
        on_change: Callable[[Gateway], None] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.keyring = keyring
        self.log = request_log
        self.say = say
        self.on_change = on_change
        self.limiter = RateLimiter()
        self.metrics = Metrics()
        self.failure: str | None = None  # set when the serving engine died: every request is a 503
        self.exit_code = 0
        self.swapping = False
        self.server: Any = None  # the uvicorn.Server, told to exit on an engine crash
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        self._draining: set[Engine] = set()
        self._set_served(engine.deployment)

    # --- app -------------------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            *(Route(path, self.proxy, methods=["POST"]) for path in ENDPOINTS),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
            Route("/{path:path}", self.unknown, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ]
        return Starlette(routes=routes, lifespan=contextlib.asynccontextmanager(self._lifespan))

    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        self._tasks.append(asyncio.create_task(self._watch_engine()))
        if self.keyring is not None:
            self._tasks.append(asyncio.create_task(self._refresh_keys()))
        if self.config.follow:
            self._tasks.append(asyncio.create_task(self._follow()))
        try:
            yield
        finally:
            for t in self._tasks:
                t.cancel()
            await self.session.close()

    # --- routes ----------------------------------------------------------------------------------------------
    async def health(self, _request: Request) -> Response:
        body = {
            "status": "ok" if self.failure is None and self.engine.alive() else "unavailable",
            "engine": self.engine.kind,
            "models": self.engine.deployment.versions(),
            "swapping": self.swapping,
        }
        if self.failure:
            body["error"] = self.failure
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    async def prometheus(self, _request: Request) -> Response:
        text = generate_latest(self.metrics.registry)
        if self.engine.kind == "vllm" and self.engine.alive() and self.session is not None:
            with contextlib.suppress(aiohttp.ClientError):  # the gateway's own metrics still answer
                async with self.session.get(f"{self.engine.url}/metrics", headers=self.engine.headers) as r:
                    if r.status == 200:
                        text += await r.read()
        return Response(text, media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> Response:
        denied, _key = self._authorize(request)
        if denied:
            return denied
        engine = self.engine
        names = engine.deployment.names
        if engine.kind == "vllm" and self.failure is None:
            try:
                async with self.session.get(  # type: ignore[union-attr]
                    f"{engine.url}/v1/models", headers=engine.headers
                ) as r:
                    data = await r.json()
                data["data"] = [m for m in data.get("data", []) if m.get("id") in names]
                for m in data["data"]:
                    m.pop("root", None)  # a local path on the serving machine
                    if m.get("parent") is not None:
                        m["parent"] = None
                return JSONResponse(data)
            except (aiohttp.ClientError, ValueError):  # engine busy or gone: the names are known here too
                pass
        now = int(time.time())
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "created": now, "owned_by": "tuneloop"} for n in names],
            }
        )

    async def unknown(self, request: Request) -> Response:
        return error(
            404,
            f"Unknown route {request.method} {request.url.path}; this endpoint serves /v1/models, "
            "/v1/chat/completions, /v1/completions, /v1/feedback, /health and /metrics",
            "invalid_request_error",
            "not_found",
        )

    async def feedback(self, request: Request) -> Response:
        """A rating of an answer, by the application that showed it (see `ratings`)."""
        denied, key = self._authorize(request)
        if denied:
            return denied
        body = await read_body(request, self.config.max_body_bytes)
        return body if isinstance(body, Response) else await ratings.rate(body, self.log, key)

    def _authorize(self, request: Request) -> tuple[Response | None, dict[str, Any] | None]:
        if self.keyring is None:
            return None, None
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            message = (
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (keys come from "
                "`tuneloop serve keys create NAME`)."
            )
            return error(401, message, "invalid_request_error", "invalid_api_key"), None
        row, why = self.keyring.check(presented.strip())
        if row is None:
            return error(401, why, "invalid_request_error", "invalid_api_key"), None
        rpm = row["rpm"] if row["rpm"] is not None else self.config.rate_limit_rpm
        wait = self.limiter.take(row["id"], rpm)
        if wait:
            return error(
                429,
                f"Rate limit reached for key tlk_{row['id']} ({row['name']}): {rpm} requests per "
                f"minute. Retry in {wait:.1f} s.",
                "requests",
                "rate_limit_exceeded",
                headers={"retry-after": str(max(1, round(wait)))},
            ), row
        return None, row

    async def proxy(self, request: Request) -> Response:
        """Authorize → parse and route the body → forward it to the engine → answer (relaying a stream as it
        comes); every request, refused or answered, is logged and counted."""
        t0 = time.perf_counter()
        path = request.url.path
        endpoint = ENDPOINTS[path]
        denied, key = self._authorize(request)
        if denied:
            self.metrics.requests.labels(endpoint, str(denied.status_code)).inc()
            return denied
        body = await read_body(request, self.config.max_body_bytes)
        request_id = client_request_id(request.headers.get("x-request-id")) or uuid.uuid4().hex
        record = {
            "request_id": request_id,
            "ts": datetime.now(UTC),
            "key_id": key["id"] if key else None,
            "endpoint": endpoint,
            "model": None,
            "version": None,
            "stream": False,
            "body": None,
            "tokenizer": None,
        }
        if isinstance(body, Response):  # too large: logged without its body, which was never read whole
            record["body"] = {"unparsed": ""}
            return self._reject(record, endpoint, t0, body)
        admitted = self._admit(body, record, endpoint, t0)
        if isinstance(admitted, Response):
            return admitted
        served, body = admitted
        return await self._forward(path, body, served, record, endpoint, t0)

    def _admit(self, body: bytes, record: dict[str, Any], endpoint: str, t0: float) -> Response | tuple[Any, bytes]:
        """The served model the body names and the body to forward, or the OpenAI-shaped error that refuses it."""
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as e:
            record["body"] = {"unparsed": body[:10000].decode("utf-8", errors="replace")}
            problem = error(400, f"The request body is not valid JSON: {e}", "BadRequestError", 400, "body")
            return self._reject(record, endpoint, t0, problem)
        record["body"] = payload
        engine = self.engine
        deployment = engine.deployment
        served = deployment.get(payload.get("model"))
        if served is None:
            record["model"] = str(payload.get("model"))
            valid = ", ".join(deployment.names)
            message = f"The model `{payload.get('model')}` does not exist. Valid models: {valid}."
            return self._reject(record, endpoint, t0, error(404, message, "NotFoundError", 404, "model"))
        record.update(
            model=served.name, version=served.version, stream=bool(payload.get("stream")), tokenizer=str(served.path)
        )
        if self.failure is not None or not engine.alive():
            message = f"The engine is not running: {self.failure or 'exited'}"
            return self._reject(record, endpoint, t0, error(503, message, "ServiceUnavailable", 503))
        if engine.kind == "transformers":
            problem = check_limits(payload, engine)
            if problem:
                return self._reject(record, endpoint, t0, problem)
            body = json.dumps({**payload, "model": str(deployment.base)}).encode()
        elif "model" not in payload and deployment.mode == "multi-lora":
            body = json.dumps({**payload, "model": served.name}).encode()  # not the (hidden) base
        return served, body

    async def _forward(
        self, path: str, body: bytes, served: Any, record: dict[str, Any], endpoint: str, t0: float
    ) -> Response:
        """Send the request to the engine, counting it in flight until its answer (or stream) is done."""
        engine = self.engine
        headers = {VERSION_HEADER: served.label, "x-request-id": record["request_id"]}
        engine.inflight += 1
        self.metrics.inflight.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                engine.inflight -= 1
                self.metrics.inflight.dec()

        try:
            self.metrics.overhead.observe(time.perf_counter() - t0)
            upstream = await self.session.post(  # type: ignore[union-attr]
                f"{engine.url}{path}", data=body, headers={"content-type": "application/json", **engine.headers}
            )
        except (aiohttp.ClientError, OSError) as e:
            release()
            return self._finish_error(record, endpoint, t0, 503, f"The engine did not answer: {e}")
        if not record["stream"] or upstream.status != 200:
            try:
                raw = await upstream.read()
            except (aiohttp.ClientError, OSError) as e:
                release()
                return self._finish_error(record, endpoint, t0, 503, f"The engine dropped the request: {e}")
            finally:
                upstream.release()
            release()
            if engine.kind == "transformers":
                raw = rename_model(raw, served.name)
            self._done(record, endpoint, t0, upstream.status, raw, None)
            return Response(
                raw,
                status_code=upstream.status,
                headers=headers,
                media_type=upstream.headers.get("content-type", "application/json"),
            )
        rename = served.name if engine.kind == "transformers" else None
        return StreamingResponse(
            self._relay(upstream, record, endpoint, t0, release, rename),
            status_code=200,
            headers={**headers, "cache-control": "no-cache"},
            media_type="text/event-stream",
        )

    async def _relay(
        self,
        upstream: aiohttp.ClientResponse,
        record: dict[str, Any],
        endpoint: str,
        t0: float,
        release: Callable[[], None],
        rename: str | None,
    ) -> AsyncIterator[bytes]:
        kept: list[bytes] = []
        size = 0
        first: float | None = None
        status = 200
        pending = b""
        try:
            async for chunk in upstream.content.iter_any():
                if first is None:
                    first = time.perf_counter()
                if size < LOG_CAP:
                    kept.append(chunk)
                    size += len(chunk)
                if rename is not None:  # whole lines only, so a model name is never split across chunks
                    pending += chunk
                    cut = pending.rfind(b"\n") + 1
                    chunk, pending = rename_model(pending[:cut], rename), pending[cut:]
                    if not chunk:
                        continue
                yield chunk
            if pending:
                yield rename_model(pending, rename or "")
        except (aiohttp.ClientError, OSError) as e:  # the engine died mid-stream: say so the way vLLM does
            status = 503
            message = f"The engine dropped the stream: {e}"
            event = {"error": {"message": message, "type": "ServiceUnavailable", "param": None, "code": 503}}
            kept.append(f"data: {json.dumps(event)}\n\n".encode())
            yield f"data: {json.dumps(event)}\n\n".encode()
        finally:
            upstream.release()
            release()
            ttft = None if first is None else (first - t0) * 1000
            self._done(record, endpoint, t0, status, b"".join(kept), ttft)

    def _reject(self, record: dict[str, Any], endpoint: str, t0: float, response: Response) -> Response:
        """An answer the gateway gives itself (bad JSON, unknown model, engine down): logged like the rest."""
        self._done(record, endpoint, t0, response.status_code, bytes(response.body), None)
        return response

    def _finish_error(self, record: dict[str, Any], endpoint: str, t0: float, status: int, message: str) -> Response:
        raw = json.dumps({"error": {"message": message, "type": "ServiceUnavailable", "code": status}}).encode()
        self._done(record, endpoint, t0, status, raw, None)
        return Response(raw, status_code=status, media_type="application/json")

    def _done(
        self, record: dict[str, Any], endpoint: str, t0: float, status: int, raw: bytes, ttft_ms: float | None
    ) -> None:
        elapsed = time.perf_counter() - t0
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(elapsed)
        if self.log is not None:
            self.log.append({**record, "status": status, "latency_ms": elapsed * 1000, "ttft_ms": ttft_ms, "raw": raw})

    # --- background work -------------------------------------------------------------------------------------
    async def _refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(self.keyring.refresh_s)
            try:
                await asyncio.to_thread(self.keyring.reload)
            except Exception as e:  # keep the keys we have; say why the database could not be read
                self.say(f"warning: could not re-read API keys: {e}")

    async def _watch_engine(self) -> None:
        """An engine that dies while serving ends the process (non-zero, with its last log lines): a supervisor
        (systemd, Kubernetes, Slurm) restarts a process; it cannot fix one that answers 503 forever."""
        while True:
            await asyncio.sleep(0.5)
            engine = self.engine
            if engine.alive() or engine.stopping or self.failure is not None:
                continue
            self.failure = f"the {engine.kind} engine exited with code {engine.returncode}"
            self.exit_code = 1
            self.say(f"error: {self.failure}; last lines of {engine.log_path}:\n{engine.tail()}")
            await asyncio.sleep(1.0)  # let the 503s already being written reach their clients
            if self.server is not None:
                self.server.should_exit = True
            return

    async def _follow(self) -> None:

        failed: set[tuple] = set()
        warned = False
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            if self.failure is not None:
                return
            deployment = self.engine.deployment
            try:
                targets = await asyncio.to_thread(target_versions, deployment, self.config.follow)
                warned = False
            except Exception as e:  # the registry being away must not stop serving
                if not warned:
                    self.say(
                        f"warning: cannot read @{self.config.follow} from the registry (still serving "
                        f"{deployment.describe()}): {e}"
                    )
                    warned = True
                continue
            current = {n: v for n, v in deployment.versions().items() if n in targets}
            if not targets or targets == current or tuple(sorted(targets.items())) in failed:
                continue
            try:
                ok = await self.swap(targets)
            except Exception as e:  # a bug here must not silently end following
                self.say(f"error: swap to {targets} failed: {type(e).__name__}: {e}")
                ok = False
            if not ok:
                failed.add(tuple(sorted(targets.items())))

    async def swap(self, targets: dict[str, str]) -> bool:
        """Start an engine with the new versions, move traffic when it is healthy, drain and stop the old one."""

        old = self.engine
        moves = ", ".join(f"{n} {old.deployment.versions().get(n)} → {v}" for n, v in targets.items())
        self.say(f"@{self.config.follow} moved ({moves}): starting an engine for the new version")
        self.swapping = True
        new: Engine | None = None
        try:
            d = old.deployment
            deployment = await asyncio.to_thread(
                resolve, [s.ref for s in d.served], d.mode, [s.name for s in d.served], targets, self.say
            )
            new = Engine(old.kind, deployment, self.config, old.log_dir)
            new.start()
            await new.wait_ready(self.config.startup_timeout_s, self.say)
        except Exception as e:
            if new is not None:
                await asyncio.to_thread(new.stop)
            self.metrics.swaps.labels("failed").inc()
            self.say(f"error: swap failed, still serving {old.deployment.describe()}: {e}")
            self.swapping = False
            return False
        self.engine = new
        self._set_served(new.deployment)
        self.swapping = False
        self.metrics.swaps.labels("ok").inc()
        self.say(f"now serving {new.deployment.describe()}; draining the previous engine ({old.inflight} in flight)")
        if self.on_change:
            self.on_change(self)
        self._draining.add(old)
        self._tasks.append(asyncio.create_task(self._drain(old)))
        return True

    async def _drain(self, old: Engine) -> None:
        old.stopping = True
        deadline = time.monotonic() + self.config.drain_timeout_s
        while old.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        left = old.inflight
        await asyncio.to_thread(old.stop)
        self._draining.discard(old)
        note = f" ({left} request(s) cut at drain_timeout_s)" if left else ""
        self.say(f"previous engine stopped{note}")

    def _set_served(self, deployment: Deployment) -> None:
        self.metrics.served.clear()
        for s in deployment.served:
            self.metrics.served.labels(s.name, s.version or "local").set(1)

    async def stop_engines(self) -> None:
        for e in [self.engine, *self._draining]:
            await asyncio.to_thread(e.stop)
