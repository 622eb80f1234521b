"""Real vLLM on the built-in model: the offline engine agrees with transformers under greedy decoding, and
`tuneloop eval --endpoint` scores a real vLLM OpenAI-compatible server end to end through the CLI.

One server for the module (started once, its whole process group killed at the end). The transformers answers
are computed once and are the reference for both the offline engine and the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SHARED_MODELS
from tuneloop.config.evaluation import Generation

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
NAME = "smollm2-135m-instruct"
MODEL = SHARED_MODELS / NAME
ROWS = 16  # 24 agreed 24/24; each row costs a greedy transformers generation on one thread under `-n 2`
GREEDY = Generation(max_new_tokens=24, batch_size=8)

SUITE = """
name: endpoint-check
tasks:
  - name: synopsis
    data: {source: debian-descriptions, task: synopsis}
    split: test
    max_rows: 8
    metrics: [rougeL, bleu, chrf]
    generation: {max_new_tokens: 24, batch_size: 8}
"""
PERPLEXITY_TASK = """
  - name: synopsis-perplexity
    kind: perplexity
    data: {source: debian-descriptions, task: synopsis}
    split: test
    max_rows: 8
"""


@dataclass
class Server:
    url: str
    log: Path

    def chat_requests(self) -> int:
        return self.log.read_text(errors="replace").count("POST /v1/chat/completions")


@pytest.fixture(scope="module")
def prompts() -> list:
    from tuneloop.eval.tasks import load_task
    from tuneloop.recipes import load_suite

    task = load_suite(REPO / "configs/eval/synopsis.yaml").tasks[0]
    assert task.name == "synopsis"
    return load_task(task.model_copy(update={"max_rows": ROWS}), None, REPO).prompts


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    assert (MODEL / "config.json").is_file(), "make test pulls the built-in model first"
    return AutoTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def transformers_texts(prompts, tokenizer) -> list[str]:
    """The reference answers: the transformers backend, float32, greedy."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.eval.backends import TransformersBackend

    lm = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    answers = TransformersBackend(str(MODEL), tokenizer, lm).generate(prompts, GREEDY)
    assert len(answers) == ROWS and all(a.tokens > 0 for a in answers)
    return [a.text for a in answers]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    """`vllm.entrypoints.openai.api_server` on the built-in model, in its own process group."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(MODEL),
        "--served-model-name",
        NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.3",
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
    ]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="2", PYTHONUNBUFFERED="1")
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_serving(url, proc, log, timeout=400)
        yield Server(url, log)
    finally:
        _stop(proc)


def test_vllm_offline_engine_agrees_with_transformers_under_greedy_decoding(
    prompts, tokenizer, transformers_texts, monkeypatch
):
    from tuneloop.eval.backends import VllmBackend

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")
    engine = VllmBackend(str(MODEL), tokenizer)
    try:
        answers = engine.generate(prompts, GREEDY)
    finally:
        engine.llm.llm_engine.engine_core.shutdown()  # frees its memory before the server starts
    assert len(answers) == ROWS and all(a.tokens > 0 for a in answers)
    vllm_texts = [a.text for a in answers]

    rate = _agreement(transformers_texts, vllm_texts)
    print(f"\ngreedy exact-match agreement, transformers vs vLLM offline: {rate:.3f} ({ROWS} rows)")
    assert rate >= 0.75, _differences(transformers_texts, vllm_texts)
    _assert_differences_are_numerical(transformers_texts, vllm_texts, tokenizer)


def test_eval_endpoint_scores_a_vllm_server_through_the_cli(server, transformers_texts, tokenizer, write, tmp_path):
    suite = write("suite.yaml", SUITE)
    out = tmp_path / "out"
    before = server.chat_requests()
    proc = _tuneloop("eval", "--endpoint", server.url, "--model", NAME, "--suite", str(suite), "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert server.chat_requests() - before == 8  # one chat request per row (and the request count works)

    (model,) = json.loads((out / "results.json").read_text())["models"]
    assert model["backend"] == "endpoint" and model["served_model"] == NAME
    task = model["tasks"]["synopsis"]
    assert task["rows"] == 8
    for name in ("rougeL", "bleu", "chrf"):
        metric = task["metrics"][name]
        low, high = metric["ci"]
        assert low <= metric["value"] <= high, (name, metric)
    assert task["serving"]["generated_tokens"] > 0 and task["serving"]["tokens_per_s"] > 0

    rows = [json.loads(line) for line in (out / f"examples-{NAME}.jsonl").read_text().splitlines()]
    served = [r["prediction"] for r in sorted(rows, key=lambda r: r["index"])]
    reference = transformers_texts[: len(served)]
    rate = _agreement(reference, served)
    # the server applied the chat template itself (from the model's tokenizer config): a different template
    # would change nearly every answer, numerical noise only a few
    print(
        f"\ngreedy exact-match agreement, transformers vs vLLM server via --endpoint: {rate:.3f} ({len(served)} rows)"
    )
    assert rate >= 0.75, _differences(reference, served)
    _assert_differences_are_numerical(reference, served, tokenizer)


def test_eval_endpoint_refuses_a_suite_it_cannot_score_before_generating_anything(server, write, tmp_path):
    """A suite of log-probability tasks only: each is skipped with its reason, then nothing is left (exit 1)."""
    suite = write("suite.yaml", "name: ppl-only\ntasks:" + PERPLEXITY_TASK)
    out = tmp_path / "out"
    before = server.chat_requests()
    proc = _tuneloop("eval", "--endpoint", server.url, "--model", NAME, "--suite", str(suite), "--output", str(out))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "skipped task synopsis-perplexity (perplexity): it needs token log-probabilities" in said
    assert "nothing in this suite can be scored through an endpoint" in said and "--backend transformers" in said
    assert "Traceback" not in proc.stderr
    assert server.chat_requests() == before, "something was generated before the refusal"
    assert not (out / "results.json").exists()


def _agreement(a: list[str], b: list[str]) -> float:
    assert len(a) == len(b)
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def _assert_differences_are_numerical(a: list[str], b: list[str], tokenizer, min_tokens: int = 4) -> None:
    """Where greedy answers differ, they should diverge part-way (a near-tie between two tokens), not from the
    first token on, which is what a different prompt or chat template would cause."""
    differing = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    early = [(x, y) for x, y in differing if _common_prefix_tokens(x, y, tokenizer) < min_tokens]
    assert len(early) <= len(differing) // 4, f"answers diverge within {min_tokens} tokens: {early}"


def _common_prefix_tokens(x: str, y: str, tokenizer) -> int:
    ids_x = tokenizer(x, add_special_tokens=False)["input_ids"]
    ids_y = tokenizer(y, add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(ids_x), len(ids_y)) and ids_x[n] == ids_y[n]:
        n += 1
    return n


def _differences(a: list[str], b: list[str]) -> str:
    return "\n".join(f"{i}: {x!r}\n   {y!r}" for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)


def _tuneloop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneloop", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
            if NAME in r.read().decode():
                return
        time.sleep(2)
    pytest.fail(f"vLLM server not serving after {timeout:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (API server, engine core, workers), then SIGKILL to whatever
    of the group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _tail(log: Path, chars: int = 4000) -> str:
    return textwrap.indent(log.read_text(errors="replace")[-chars:], "  ")
