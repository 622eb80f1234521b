"""`POST /v1/feedback`: the thumbs up or down an application sends about an answer it showed, stored beside the
request log (`served_feedback`), where the monitor's thumbs-down trigger and `tuneloop loop` read it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse, Response

from tuneloop.serve.http import error
from tuneloop.serve.store import RequestLog, rate_request

RATINGS = ("up", "down")
COMMENT_MAX = 2000  # characters of a rating's comment
LOG_WAIT_S = 10.0  # how long a rating waits for its request's row (the log is written in the background)


def parse(body: bytes) -> tuple[str, str, str | None] | Response:
    """(request_id, rating, comment) of a feedback body, or the 400 naming the first field that is wrong."""

    def bad(message: str, param: str) -> Response:
        return error(400, message, "BadRequestError", 400, param)

    try:
        payload = json.loads(body)
    except ValueError as e:
        return bad(f"The request body is not valid JSON: {e}", "body")
    if not isinstance(payload, dict):
        return bad('The body must be a JSON object: {"request_id": "...", "rating": "up"}.', "body")
    for field in payload:
        if field not in ("request_id", "rating", "comment"):
            return bad(f"Unknown field `{field}`: feedback takes request_id, rating and comment.", field)
    request_id, rating, comment = payload.get("request_id"), payload.get("rating"), payload.get("comment")
    if request_id is None:
        return bad("`request_id` is missing: send the x-request-id header of the response being rated.", "request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 64:
        return bad(
            "`request_id` must be the x-request-id header of the response being rated (1 to 64 characters), "
            f"not {json.dumps(request_id)[:80]}.",
            "request_id",
        )
    if rating not in RATINGS:
        shown = "missing" if rating is None else json.dumps(rating)[:80]
        return bad(f'`rating` must be "up" or "down", not {shown}.', "rating")
    if comment is not None and not isinstance(comment, str):
        return bad(f"`comment` must be a string (or left out), not {json.dumps(comment)[:80]}.", "comment")
    if comment is not None and len(comment) > COMMENT_MAX:
        return bad(f"`comment` has {len(comment)} characters; at most {COMMENT_MAX} are taken.", "comment")
    return request_id, rating, comment or None


async def rate(body: bytes, log: RequestLog | None, key: dict[str, Any] | None) -> Response:
    """Store a rating against the logged request; the rating itself is neither logged nor forwarded (it is not model
    traffic). Keys may rate only their own requests."""
    parsed = parse(body)
    if isinstance(parsed, Response):
        return parsed
    request_id, rating, comment = parsed
    if log is None:
        return error(
            404,
            "This endpoint runs without a request log (--no-request-log): it has no request to rate.",
            "NotFoundError",
            404,
            "request_id",
        )
    if not await asyncio.to_thread(log.wait_written, request_id, LOG_WAIT_S):
        return error(
            503,
            f"Request {request_id!r} is not in the request log yet (the database is slow); retry in a few seconds.",
            "ServiceUnavailable",
            503,
            headers={"retry-after": "5"},
        )
    try:
        found = await asyncio.to_thread(rate_request, request_id, key["id"] if key else None, rating, comment)
    except SQLAlchemyError as e:
        return error(503, f"The rating could not be stored: {e}", "ServiceUnavailable", 503)
    if not found:
        made = " made with this key" if key else ""
        return error(
            404,
            f"No request {request_id!r}{made} in the request log: send the x-request-id header of "
            "the response being rated.",
            "NotFoundError",
            404,
            "request_id",
        )
    return JSONResponse({"object": "feedback", "request_id": request_id, "rating": rating})
