"""Recipe problems, gathered in one pass and reported together as `file:line key.path: reason`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, located as precisely as the YAML allows."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "key": self.key, "message": self.message}


class RecipeError(Exception):
    """Raised once per recipe with every problem found, so a user fixes them all in one edit."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class AtKey(ValueError):
    """A cross-field rule broken inside a section: raised from a model validator with the key it is about, so the
    problem points at that key's line rather than at the section's first line."""

    def __init__(self, key: str | tuple, message: str):
        self.key = (key,) if isinstance(key, str) else tuple(key)
        super().__init__(message)
