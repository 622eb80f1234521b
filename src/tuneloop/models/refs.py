"""One grammar for model references, in every command and recipe key that names a model:

    models:/NAME/VERSION   models:/NAME@ALIAS     a registered version (MLflow's own URIs)
    smollm2-135m-instruct                          a built-in model
    ./path/to/checkpoint   /abs/path   ~/path      a local checkpoint, adapter or run directory
    org/name                                       a Hugging Face hub id

`reference_problems` says what is wrong with one without loading anything: syntax, built-in names (with a
did-you-mean), local paths, and lookalikes of a registry reference (`quickstart@champion` is not a hub id: it gets
`did you mean models:/quickstart@champion?`). `validate` uses it offline; commands that are about to use a model
(`eval`, `serve`, `run`) call `check_reference`, which also asks the registry whether the version exists and the
hub whether it has the model (or, offline, whether the local cache does) — before an engine starts, a tracking run
opens or any data loads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tuneloop.config.trainer_fields import closest
from tuneloop.errors import UsageError
from tuneloop.models.builtin import BUILTIN_MODELS
from tuneloop.models.uri import PREFIX, parse_model_uri
from tuneloop.rundir import SUMMARY

_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
GRAMMAR = "models:/NAME/VERSION, models:/NAME@ALIAS, a built-in name, a local path or a hub id (org/name)"


def _local(name: str, base_dir: Path) -> Path | None:
    """The directory a path-like reference names, if it is one (relative to the recipe or the current directory)."""
    path = Path(name).expanduser()
    for candidate in (path, base_dir / path):  # base_dir / an absolute path is that path
        if candidate.exists():
            return candidate
    return None


def _is_registry_lookalike(name: str) -> bool:
    """`quickstart@champion`, `quickstart/3`: what the registry grammar accepts after `models:/`, written without it."""
    try:
        parse_model_uri(name)  # without the prefix, it needs a version or an alias to parse
    except ValueError:
        return False
    return True


def reference_problems(name: str, base_dir: Path) -> list[str]:
    """What is wrong with a model reference, checked offline and without loading it (empty: nothing found)."""
    if name.startswith(PREFIX):
        try:
            parse_model_uri(name)
        except ValueError as e:
            return [str(e)]
        return []
    if name in BUILTIN_MODELS:
        return []
    local = _local(name, base_dir)
    if local is not None or name.startswith((".", "/", "~")):
        if local is None or not local.is_dir():
            return [f"model directory {name!r} does not exist"]
        if not any((local / f).is_file() for f in ("config.json", "adapter_config.json", SUMMARY)):
            return [f"{name!r} holds no model (no config.json or adapter_config.json) and no run summary"]
        return []
    if _is_registry_lookalike(name):
        return [f"{name!r} is not a model reference; did you mean {PREFIX}{name}? (a registered version)"]
    if "/" not in name and _HUB_NAME.match(name):
        hint = closest(name, list(BUILTIN_MODELS))  # else a hub id without an organisation (gpt2)
        return [f"unknown built-in model {name!r} (did you mean {hint}?)"] if hint else []
    if not _HUB_ID.match(name):
        return [f"{name!r} is not a model reference: a model is {GRAMMAR}"]
    return []


def check_reference(name: str, base_dir: Path) -> None:
    """`reference_problems`, then what only a lookup can tell: the registered version exists, the hub has the
    model (or, with HF_HUB_OFFLINE set, the local cache does). Raises UsageError (exit 2) naming the fix."""
    problems = reference_problems(name, base_dir)
    if problems:
        raise UsageError(problems[0])
    if name.startswith(PREFIX):
        from tuneloop.models.registered import get_version

        get_version(name)  # lists what exists when the name, version or alias is wrong
    elif name not in BUILTIN_MODELS and _local(name, base_dir) is None:
        _check_hub(name)


def _check_hub(repo_id: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # cached: usable offline
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UsageError(
            f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it where the "
            f"hub is reachable (`hf download {repo_id}`), or give a local path or a registered version"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        return  # exists; loading will ask for a token with the hub's own message
    except RepositoryNotFoundError:
        raise UsageError(
            f"no model {repo_id!r} on the Hugging Face hub, in its local cache or as a local directory; a model is "
            f"{GRAMMAR}"
        ) from None
    except Exception as e:  # no network: say so now, not after transformers' retries
        raise UsageError(
            f"cannot reach the Hugging Face hub to find {repo_id!r} ({type(e).__name__}), and it is not in the local "
            "cache: set HF_HUB_OFFLINE=1 and use a cached or local model, or a registered version"
        ) from None
