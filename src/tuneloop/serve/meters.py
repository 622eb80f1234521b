"""What the gateway counts and limits: requests per key per minute (429s), and the Prometheus metrics behind
`GET /metrics`. Kept apart from the gateway's routing so each can be read, and tested, alone."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RateLimiter:
    """A token bucket per key: `rpm` requests per minute, bursts up to `rpm`. Per gateway process."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key_id: str, rpm: int) -> float:
        """0 when allowed, else the seconds until the next request would be."""
        if rpm <= 0:
            return 0.0
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (float(rpm), now))
        tokens = min(float(rpm), tokens + (now - last) * rpm / 60.0)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) * 60.0 / rpm


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tuneloop_gateway_requests", "Requests by endpoint and HTTP status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "tuneloop_gateway_request_duration_seconds",
            "Whole request, to the last byte.",
            ["endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.overhead = Histogram(
            "tuneloop_gateway_overhead_seconds",
            "Time spent in the gateway before the engine got the request.",
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05),
            registry=r,
        )
        self.inflight = Gauge("tuneloop_gateway_requests_in_flight", "Requests being answered.", registry=r)
        self.swaps = Counter("tuneloop_gateway_swaps", "Engine swaps by result.", ["result"], registry=r)
        self.served = Gauge(
            "tuneloop_gateway_model_version_info",
            "1 for each model and version being served.",
            ["model", "version"],
            registry=r,
        )
