"""What the gateway's answers share with vLLM's: OpenAI's error shape, bodies read up to a limit, the served model
name in bodies, the checks vLLM makes itself that the transformers engine does not, and which client request ids the
log can keep."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from tuneloop.serve.engine import Engine


def error(
    status: int,
    message: str,
    type_: str,
    code: str | int | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error shape (what the `openai` client parses into its exceptions)."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code if code is not None else status}}
    return JSONResponse(body, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes | JSONResponse:
    """The request body, or the 413 that refuses it: by its Content-Length before reading anything, and while it
    streams in (a chunked upload declares no length), so the gateway never holds more than `limit` bytes of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _too_large(f"is {int(declared)} bytes", limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _too_large(f"is over {limit} bytes", limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: str, limit: int) -> JSONResponse:
    message = f"The request body {size}; this endpoint accepts at most {limit} bytes (serve config max_body_bytes)."
    return error(413, message, "invalid_request_error", "request_too_large", "body")


def client_request_id(value: str | None) -> str | None:
    """A client's own x-request-id is kept when it fits the log's column (64 printable characters); a longer one
    would make the whole batch of log rows fail on PostgreSQL, so the request gets an id of its own instead."""
    return value if value and len(value) <= 64 and value.isprintable() else None


_MODEL_FIELD = re.compile(rb'"model":\s*"(?:[^"\\]|\\.)*"')


def rename_model(raw: bytes, name: str) -> bytes:
    """The transformers engine names models by path; clients see the served name."""
    return _MODEL_FIELD.sub(b'"model":' + json.dumps(name).encode(), raw)


def check_limits(payload: dict[str, Any], engine: Engine) -> Response | None:
    """What vLLM checks itself, for the transformers engine: output length against the context."""
    limit = context_length(engine.deployment.base)
    asked = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if limit and isinstance(asked, int) and asked > limit:
        return error(
            400,
            f"max_tokens={asked} cannot be greater than max_model_len={limit}. Please request fewer output tokens.",
            "BadRequestError",
            400,
            "max_tokens",
        )
    return None


_context_cache: dict[Path, int | None] = {}


def context_length(path: Path) -> int | None:
    if path not in _context_cache:
        try:
            config = json.loads((path / "config.json").read_text())
            _context_cache[path] = config.get("max_position_embeddings")
        except (OSError, ValueError):
            _context_cache[path] = None
    return _context_cache[path]
