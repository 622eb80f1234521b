"""YAML loading that remembers where every key came from (file and line), for error messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tuneloop.config.errors import Problem, RecipeError

KeyPath = tuple[str | int, ...]


class Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float, as YAML 1.2 does (PyYAML's YAML 1.1 reads it as a string)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse(text: str):
    """Parse YAML text with tuneloop's loader (used for files and for `--set` values alike)."""
    return yaml.load(text, Loader=Loader)


Where = tuple[str, int]


def display_path(path: Path) -> str:
    """Relative to the working directory when possible: that is what the user typed."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_located(path: Path) -> tuple[Any, dict[KeyPath, Where]]:
    """Parse one YAML file; return the data and a map from key path to (file, line) of each key."""
    shown = display_path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError([Problem(shown, None, "", "file not found")]) from None
    except OSError as e:
        raise RecipeError([Problem(shown, None, "", f"cannot read file: {e.strerror}")]) from None
    try:
        node = yaml.compose(text, Loader=Loader)
        data = parse(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        reason = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise RecipeError([Problem(shown, line, "", f"YAML syntax error: {reason}")]) from None
    locations: dict[KeyPath, Where] = {}
    problems: list[Problem] = []
    if node is not None:
        _walk(node, (), shown, locations, problems)
    if problems:
        raise RecipeError(problems)
    return data, locations


def _walk(node: yaml.Node, path: KeyPath, shown: str, out: dict[KeyPath, Where], problems: list[Problem]) -> None:
    out.setdefault(path, (shown, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                dotted = ".".join(str(p) for p in (*path, key))
                problems.append(Problem(shown, key_node.start_mark.line + 1, dotted, "key appears twice"))
            seen.add(key)
            out[(*path, key)] = (shown, key_node.start_mark.line + 1)
            _walk(value_node, (*path, key), shown, out, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = (shown, item.start_mark.line + 1)
            _walk(item, (*path, i), shown, out, problems)
