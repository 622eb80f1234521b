"""Registry references as users write them: `models:/NAME/VERSION`, `models:/NAME@ALIAS` (MLflow's own URIs),
and on the command line also `NAME/VERSION`, `NAME@VERSION` and `NAME@ALIAS`. Parsing imports nothing heavy,
so `tuneloop validate` can check a `base_model: models:/...` without contacting a registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "models:/"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF = re.compile(rf"^(?P<name>{_NAME})(?:(?:/(?P<version>\d+))|(?:@(?P<alias>[A-Za-z0-9_-]+)))?$")


@dataclass(frozen=True)
class ModelUri:
    """A registered model and either a version number or an alias (resolved against the registry later)."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version:
            return f"{PREFIX}{self.name}/{self.version}"
        if self.alias:
            return f"{PREFIX}{self.name}@{self.alias}"
        return f"{PREFIX}{self.name}"

    @property
    def short(self) -> str:
        """`name/3` or `name@champion`: how tables and lineage trees name a version."""
        return str(self)[len(PREFIX) :]


def parse_model_uri(text: str, *, need_version: bool = True) -> ModelUri:
    """Parse a registry reference; `NAME@3` means version 3 (aliases are never all digits in MLflow)."""
    body = text[len(PREFIX) :] if text.startswith(PREFIX) else text
    m = _REF.match(body)
    if not m:
        raise ValueError(
            f"{text!r} is not a registry reference; write models:/NAME/VERSION or models:/NAME@ALIAS "
            "(e.g. models:/quickstart@champion)"
        )
    name, version, alias = m.group("name"), m.group("version"), m.group("alias")
    if alias and alias.isdigit():
        version, alias = alias, None
    if need_version and not version and not alias:
        raise ValueError(f"{text!r} names no version: write {PREFIX}{name}/VERSION or {PREFIX}{name}@champion")
    return ModelUri(name, version, alias)


def is_model_uri(text: str) -> bool:
    return text.startswith(PREFIX)
