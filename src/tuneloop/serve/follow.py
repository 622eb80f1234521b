"""`--follow ALIAS`: which versions the alias names now, for every registered model being served."""

from __future__ import annotations

from tuneloop.errors import TuneloopError
from tuneloop.registry.aliases import current
from tuneloop.serve.engine import Deployment
from tuneloop.tracking import store


def check_followable(deployment: Deployment, alias: str) -> None:
    """Following needs registered models: a path has no alias to follow."""
    local = [s.ref for s in deployment.served if not s.registered]
    if local:
        raise TuneloopError(
            f"--follow {alias}: {', '.join(local)} is not a registered model; serve models:/NAME@{alias} to follow it"
        )


def target_versions(deployment: Deployment, alias: str) -> dict[str, str]:
    """{served name: version} the alias points at; models whose alias is unset are left out (keep serving)."""

    c = store.client()
    out = {}
    for s in deployment.served:
        version = current(c, s.registered, alias) if s.registered else None
        if version is not None:
            out[s.name] = version
    return out
