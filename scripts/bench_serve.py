"""Serving throughput and latency: raw vLLM, tuneloop's endpoint in front of the same vLLM engine, and transformers
batched generation, at 32 and 128 concurrent clients. A dated section goes to docs/benchmarks.md.

One `tuneloop serve` process is started (real gateway: API key checked, request log on, metrics) and its engine's
own port (from serve.json) is the "raw vLLM" target, so (a) and (b) share one engine and differ only by the
gateway; the two are measured alternately. Every request asks for exactly `--max-tokens` tokens (`ignore_eos`),
so throughput compares equal work. Unloaded added latency is measured separately with one-token requests sent
one at a time, where engine noise is smallest.

    python scripts/bench_serve.py                       # built-in model (CPU here)
    python scripts/bench_serve.py --model /path/to/1b   # any checkpoint, e.g. a random ~1B Llama on a GPU
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_train import machine

REPO = Path(__file__).resolve().parents[1]
TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))


def prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in (REPO / "data/debian-descriptions/test.jsonl").open()]
    return [f"Write a one-line summary of this package description:\n{r['description'][:600]}" for r in rows[:n]]


async def load(url: str, key: str | None, texts: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` concurrent clients, each sending `per_client` chat requests one after another."""
    import aiohttp

    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    latencies: list[float] = []
    tokens = 0
    errors = 0

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal tokens, errors
        for j in range(per_client):
            body = {
                "model": "bench",
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "temperature": 0,
                "messages": [{"role": "user", "content": texts[(i * per_client + j) % len(texts)]}],
            }
            t = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                data = await r.json()
            if r.status != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)
            tokens += data["usage"]["completion_tokens"]

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=1800)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, session) for i in range(clients)))
        wall = time.perf_counter() - start
    return _summary(latencies, tokens, wall, errors)


def _merge(runs: list[dict]) -> dict:
    """Rounds of one target summed: requests, tokens and wall time add; latencies are the rounds' medians."""
    merged = {k: sum(r[k] for r in runs) for k in ("requests", "errors", "tokens", "wall_s")}
    merged["tokens_per_s"] = merged["tokens"] / merged["wall_s"]
    merged["p50_ms"] = statistics.median(r["p50_ms"] for r in runs)
    merged["p95_ms"] = statistics.median(r["p95_ms"] for r in runs)
    return merged


def _summary(latencies: list[float], tokens: int, wall: float, errors: int) -> dict:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "requests": len(latencies),
        "errors": errors,
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "p50_ms": q[49] * 1000,
        "p95_ms": q[94] * 1000,
    }


async def unloaded(url: str, key: str | None, n: int) -> list[float]:
    """Latency of one-token completions sent one at a time."""
    import aiohttp

    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t = time.perf_counter()
            async with session.post(
                f"{url}/v1/completions", headers=headers, json={"model": "bench", "prompt": "Debian", "max_tokens": 1}
            ) as r:
                await r.read()
            out.append((time.perf_counter() - t) * 1000)
    return out


def transformers_batched(model_dir: str, texts: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    """What a user without a server writes: batches of `clients` prompts through `generate()`, left-padded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    latencies: list[float] = []
    tokens = 0
    start = time.perf_counter()
    for b in range(per_client):
        batch = [texts[(i * per_client + b) % len(texts)] for i in range(clients)]
        rendered = [
            tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in batch
        ]
        enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        t = time.perf_counter()
        with torch.no_grad():
            out = lm.generate(
                **enc,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        took = time.perf_counter() - t
        latencies += [took] * clients  # every request in a batch waits for the whole batch
        tokens += (out.shape[1] - enc["input_ids"].shape[1]) * clients
    return _summary(latencies, tokens, time.perf_counter() - start, 0)


def start_endpoint(
    home: Path, model: str, engine_args: list[str], config: Path | None
) -> tuple[subprocess.Popen, dict, str]:
    env = {**os.environ, "TUNELOOP_HOME": str(home)}
    key = subprocess.run(
        [TUNELOOP, "serve", "keys", "create", "bench", "--rpm", "0"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    log = (home / "serve.log").open("w")
    args = [TUNELOOP, "serve", model, "--name", "bench", "--port", "0"]
    for a in engine_args:
        args += ["--engine-arg", a]
    if config is not None:
        args += ["--config", str(config.resolve())]
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        states = list((home / "serve").glob("*/serve.json"))
        if proc.poll() is not None:
            raise SystemExit(f"tuneloop serve exited:\n{(home / 'serve.log').read_text()[-3000:]}")
        if states:
            state = json.loads(states[0].read_text())
            with contextlib.suppress(OSError):  # not listening yet
                if urllib.request.urlopen(f"{state['url']}/health", timeout=2).status == 200:
                    return proc, state, key
        time.sleep(1)
    raise SystemExit("tuneloop serve did not become healthy in 900 s")


def section(a: argparse.Namespace, rows: list[tuple[str, int, dict]], idle: dict, overhead: dict, started: dict) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    argv = " ".join(sys.argv[1:])
    lines = [
        f"\n### Serving throughput and latency — {time.strftime('%Y-%m-%d')} (commit {commit.strip() or 'unknown'})\n",
        f"Machine: {machine()}.  ",
        f"Command: `python scripts/bench_serve.py{' ' + argv if argv else ''}`  ",
        f"Setup: {a.model}; chat requests of Debian package descriptions, exactly {a.max_tokens} output tokens "
        f"each (`ignore_eos`), greedy; each client sends {a.per_client} requests back to back; {a.rounds} rounds per "
        "target, alternating a b b a (throughput: all rounds' tokens over their time; latency: the rounds' median). "
        "(a) the vLLM "
        "engine's own port; (b) `tuneloop serve` in front of that same engine (API key checked, request log on); "
        f"(c) transformers `generate()` in batches of the client count. Engine: {started['engine_line']}.\n",
        "| clients | target | requests | errors | output tokens/s | p50 latency ms | p95 latency ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, clients, r in rows:
        lines.append(
            f"| {clients} | {label} | {r['requests']} | {r['errors']} | **{r['tokens_per_s']:.1f}** | "
            f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} |"
        )
    lines.append("")
    for clients in a.clients:
        raw = next(r for label, c, r in rows if c == clients and label.startswith("(a)"))
        gw = next(r for label, c, r in rows if c == clients and label.startswith("(b)"))
        lines.append(
            f"- {clients} clients: gateway/raw throughput **{gw['tokens_per_s'] / raw['tokens_per_s']:.3f}×**"
            f" (target ≥ 0.95); p95 added {gw['p95_ms'] - raw['p95_ms']:+.0f} ms under load"
        )
    lines.append(
        f"- unloaded one-token requests ({a.idle_requests} each, one at a time): raw p50 "
        f"{idle['raw_p50']:.1f} / p95 {idle['raw_p95']:.1f} ms, gateway p50 {idle['gw_p50']:.1f} / p95 "
        f"{idle['gw_p95']:.1f} ms: **added p95 {idle['gw_p95'] - idle['raw_p95']:+.1f} ms** (target ≤ 10)"
    )
    lines.append(
        f"- the gateway's own time before the engine gets a request "
        f"(`tuneloop_gateway_overhead_seconds`): mean {overhead['mean_ms']:.2f} ms over "
        f"{overhead['count']} requests"
    )
    lines += [
        "",
        "How to read: output tokens/s is completion tokens over the wall time of the whole load; latency "
        "is per request, end to end at the client. Under load on a CPU, the gateway and the engine share the "
        "same cores, so differences under load include that contention; the unloaded line isolates the "
        "gateway's own cost. transformers' latency is the batch's (every request waits for the slowest).",
    ]
    return "\n".join(lines) + "\n"


def _overhead(url: str) -> dict:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("tuneloop_gateway_overhead_seconds_sum"):
            total = float(line.split()[-1])
        if line.startswith("tuneloop_gateway_overhead_seconds_count"):
            count = float(line.split()[-1])
    return {"mean_ms": 1000 * total / max(count, 1), "count": int(count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="what `tuneloop serve` gets")
    parser.add_argument("--clients", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per target, alternating a b b a")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--idle-requests", type=int, default=50)
    parser.add_argument("--engine-arg", action="append", default=[], help="passed to tuneloop serve")
    parser.add_argument("--config", type=Path, help="a configs/serve/*.yaml for tuneloop serve")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-write", action="store_true")
    a = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console()
    texts = prompts(max(a.clients) * a.per_client)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        console.print(f"starting tuneloop serve {a.model} ({machine()})")
        proc, state, key = start_endpoint(home, a.model, a.engine_arg, a.config)
        engine_line = next((ln for ln in (home / "serve.log").read_text().splitlines() if "-m vllm" in ln), "")
        started = {"engine_line": "`" + engine_line.split("-m ", 1)[-1].strip() + "`"}
        model_dir = state["models"]["bench"]["path"]
        raw_url, gw_url = state["engine_url"], state["url"]
        try:
            asyncio.run(load(gw_url, key, texts, max(a.clients), 1, 4))  # warm-up: every batch size once
            rows = []
            targets = {"(a) raw vLLM": (raw_url, None), "(b) tuneloop endpoint": (gw_url, key)}
            for clients in a.clients:
                runs: dict[str, list[dict]] = {label: [] for label in targets}
                order = [label for _ in range(a.rounds) for label in targets]
                order = [x for i in range(0, len(order), 2) for x in (order[i : i + 2][:: 1 if i % 4 == 0 else -1])]
                for label in order:  # a b b a ...: drift in the machine's speed hits both sides alike
                    url, k = targets[label]
                    r = asyncio.run(load(url, k, texts, clients, a.per_client, a.max_tokens))
                    runs[label].append(r)
                    console.print(
                        f"{clients} clients → {label}: {r['tokens_per_s']:.1f} tokens/s, "
                        f"p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms"
                    )
                for label, rs in runs.items():
                    rows.append((label, clients, _merge(rs)))
            raw_idle = asyncio.run(unloaded(raw_url, None, a.idle_requests))
            gw_idle = asyncio.run(unloaded(gw_url, key, a.idle_requests))
            q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1]  # noqa: E731
            idle = {
                "raw_p50": q(raw_idle, 50),
                "raw_p95": q(raw_idle, 95),
                "gw_p50": q(gw_idle, 50),
                "gw_p95": q(gw_idle, 95),
            }
            overhead = _overhead(gw_url)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(120)
        if not a.skip_transformers:
            for clients in a.clients:
                console.print(f"{clients} prompts per batch → (c) transformers generate()")
                r = transformers_batched(model_dir, texts, clients, a.per_client, a.max_tokens)
                rows.append(("(c) transformers batched", clients, r))
                console.print(f"  {r['tokens_per_s']:.1f} tokens/s, p50 {r['p50_ms']:.0f} ms")
    rows.sort(key=lambda r: (r[1], r[0]))
    table = Table(title="serving")
    for col in ("clients", "target", "tokens/s", "p50 ms", "p95 ms", "errors"):
        table.add_column(col)
    for label, clients, r in rows:
        table.add_row(
            str(clients),
            label,
            f"{r['tokens_per_s']:.1f}",
            f"{r['p50_ms']:.0f}",
            f"{r['p95_ms']:.0f}",
            str(r["errors"]),
        )
    console.print(table)
    text = section(a, rows, idle, overhead, started)
    console.print(text)
    if not a.no_write:
        with a.output.open("a") as f:
            f.write(text)
        console.print(f"appended to {a.output}")


if __name__ == "__main__":
    main()
