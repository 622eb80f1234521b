"""The optional jobs and what each needs: `pip install tuneloop` trains, evaluates, tracks and registers; serving,
the rater app, sweeps, monitoring, data inspection and PostgreSQL stores come with extras (`tuneloop[serve]`, ...,
`tuneloop[all]`). A command whose extra is missing stops at its start with one line that names the extra, never a
traceback from deep inside a library.

`EXTRAS` mirrors pyproject's `[project.optional-dependencies]`; tests/e2e/test_extras.py fails when they differ."""

from __future__ import annotations

import importlib.util

from tuneloop.errors import UsageError

# extra: {requirement as pyproject names it (without its version): the module tuneloop imports from it}
EXTRAS: dict[str, dict[str, str]] = {
    "serve": {
        "starlette": "starlette",
        "uvicorn[standard]": "uvicorn",
        "aiohttp": "aiohttp",
        "prometheus-client": "prometheus_client",
        "transformers[serving]": "fastapi",  # what `transformers serve` (the engine where vLLM is missing) adds
    },
    "feedback": {
        "gradio": "gradio",
        "argon2-cffi": "argon2",
        "krippendorff": "krippendorff",
        "choix": "choix",
    },
    "sweep": {"optuna": "optuna"},
    "monitor": {"lingua-language-detector": "lingua"},
    "data": {"datasketch": "datasketch", "lingua-language-detector": "lingua"},
    "postgres": {"psycopg[binary]": "psycopg"},
}


class MissingExtra(UsageError):
    """A job's packages are not installed: the message says which extra brings them."""


def missing(extra: str) -> str | None:
    """The first module of `extra` that cannot be found, or None when all are installed. Only looked up, not
    imported: gradio alone takes seconds to import, and the command imports what it uses anyway."""
    for module in EXTRAS[extra].values():
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a parent package that is itself missing or broken
            found = False
        if not found:
            return module
    return None


def hint(extra: str) -> str:
    """How to install an extra, as users paste it."""
    return f"pip install 'tuneloop[{extra}]'"


def need(extra: str, job: str) -> None:
    """Raise MissingExtra ("`job` needs the 'serve' extra: pip install 'tuneloop[serve]'") unless every package of
    `extra` is installed; call it where the job starts, before any heavy work."""
    if missing(extra) is not None:
        raise MissingExtra(f"{job} needs the '{extra}' extra: {hint(extra)}")
