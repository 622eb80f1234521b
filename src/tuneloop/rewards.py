"""Reward functions for `grpo`/`rloo` stages, and the same checks as evaluation metrics.

Each reward has TRL's signature, `f(prompts, completions, completion_ids, **columns) -> list[float | None]`:
completions are strings (plain prompts) or lists of chat messages, and every other dataset column arrives as a
keyword argument with one value per completion.

The synopsis rules are Debian's own, for the one-line package synopsis: Debian Policy 3.4.1 ("should be kept
brief — certainly under 80 characters", "do not include the package name") and the Developer's Reference 6.2.2
(an appositive phrase, not a sentence: no leading article, no final full stop). Real synopses in the built-in
data follow all of them 98.5% of the time; capitalisation, which the Developer's Reference also mentions, is left
out because half of Debian's own synopses start with a capital (names of programs and languages).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

SYNOPSIS_MAX_CHARS = 80
_ARTICLE = re.compile(r"^(a|an|the)\b", re.IGNORECASE)


def text_of(completion: Any) -> str:
    """The answer text of a completion: the string itself, or the assistant turns of a chat completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def synopsis_violations(text: str, package: str | None = None) -> list[str]:
    """The Debian synopsis rules `text` breaks; empty when it follows all of them."""
    broken = []
    line = text.strip()
    if not line:
        return ["empty"]
    if "\n" in line:
        broken.append("one_line")
    if len(line) >= SYNOPSIS_MAX_CHARS:
        broken.append("under_80_chars")
    if _ARTICLE.match(line):
        broken.append("no_leading_article")
    if line.endswith(".") and not line.endswith(".."):
        broken.append("no_full_stop")
    if package and re.search(rf"(?<![\w.+-]){re.escape(package.lower())}(?![\w+-])", line.lower()):
        broken.append("no_package_name")
    return broken


SYNOPSIS_RULES = ("one_line", "under_80_chars", "no_leading_article", "no_full_stop", "no_package_name")


def follows_synopsis_rules(text: str, package: str | None = None) -> bool:
    return not synopsis_violations(text, package)


def _column(columns: dict[str, Any], name: str | None, n: int) -> Sequence[Any]:
    values = columns.get(name) if name else None
    return values if values is not None else [None] * n


def debian_synopsis_rules(prompts: list, completions: list, completion_ids: list | None = None, **columns: Any):
    """Share of the five rules followed (0..1): dense enough that a group of samples rarely ties, and 1.0 only
    for a synopsis Debian would accept. Uses the `package` column when the data has one."""
    packages = _column(columns, "package", len(completions))
    out = []
    for completion, package in zip(completions, packages, strict=True):
        broken = synopsis_violations(text_of(completion), package)
        out.append(0.0 if broken == ["empty"] else 1.0 - len(broken) / len(SYNOPSIS_RULES))
    return out


def rouge_l(reference: str) -> Callable[..., list[float | None]]:
    """ROUGE-L F (0..1) of each completion against the `reference` column; None where a row has no reference,
    which TRL skips rather than counting as zero."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def rougeL(prompts: list, completions: list, completion_ids: list | None = None, **columns: Any):
        refs = _column(columns, reference, len(completions))
        return [
            None if ref is None else scorer.score(str(ref), text_of(c))["rougeL"].fmeasure
            for c, ref in zip(completions, refs, strict=True)
        ]

    rougeL.__name__ = "rougeL"
    return rougeL


def length(max_chars: int) -> Callable[..., list[float]]:
    """1 up to `max_chars` characters, falling linearly to 0 at twice that: a brevity prior."""

    def length_reward(prompts: list, completions: list, completion_ids: list | None = None, **columns: Any):
        return [max(0.0, min(1.0, 2.0 - len(text_of(c).strip()) / max_chars)) for c in completions]

    length_reward.__name__ = "length"
    return length_reward


def build_builtin(name: str, reference: str | None, max_chars: int) -> Callable[..., list[float | None]]:
    """The reward function a recipe's `builtin:` names (config.schema.BUILTIN_REWARDS lists them)."""
    if name == "debian_synopsis_rules":
        return debian_synopsis_rules
    if name == "rougeL":
        if not reference:
            raise ValueError("the rougeL reward needs a reference column")
        return rouge_l(reference)
    if name == "length":
        return length(max_chars)
    raise KeyError(name)
