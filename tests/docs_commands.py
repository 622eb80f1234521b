"""The shell commands that README.md and docs/*.md show, as a reader would copy them, for the tests that parse and
run them (tests/unit/test_docs_commands.py).

A command is a line of a ```bash/sh/shell block (comments dropped), a `$ ` line of a ```console block (the lines
after it are its output), or a `$ ` or `tuneloop ...` line of an untagged block (the "next:" hints a run prints).
A line ending in `\\` or inside an open quote goes on with the next line. A marker on the line before a block says
what the block's commands are:

    <!-- not run: REASON -->      the block's commands that no test runs are not run, and why
    <!-- no commands: REASON -->  the block is no shell at all (a diagram with command names in it)
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL = {"bash", "sh", "shell", "console", "zsh"}
COMMAND_START = re.compile(r"(tuneloop|make|accelerate|python3?|pip|curl|torchrun|sbatch) ")
MARKER = re.compile(r"<!--\s*(not run|no commands):\s*(.+?)\s*-->")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w-]*)")
# a shell compound statement runs as one command: its lines stay together until the word that closes it
COMPOUND = {"for": "done", "while": "done", "until": "done", "if": "fi", "case": "esac"}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", "$", ";;"}
REDIRECTS = {">", ">>", ">&", "<", "&>", "2>"}


@dataclass(frozen=True)
class DocCommand:
    file: str  # relative to the repository
    line: int  # where the command starts
    text: str  # continuations joined, `$ ` prompt and trailing comment dropped
    not_run: str | None  # the reason of the block's `not run` marker, if it has one

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def collect_all() -> list[DocCommand]:
    return [c for path in doc_files() for c in collect(path)]


def collect(path: Path) -> list[DocCommand]:
    """Every command of one markdown file, in order."""
    name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    lines = path.read_text().splitlines()
    commands: list[DocCommand] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence.group(1))), len(lines))
        marker = _marker_before(lines, i)
        if marker is None or marker[0] != "no commands":
            reason = marker[1] if marker else None
            for line, text in _block_commands(lines[i + 1 : end], fence.group(2).lower()):
                commands.append(DocCommand(name, i + 2 + line, text, reason))
        i = end + 1
    return commands


def markers(path: Path) -> list[tuple[int, str, str]]:
    """(line, kind, reason) of every marker in a file, for the test that finds markers over no command."""
    return [
        (n, m.group(1), m.group(2))
        for n, text in enumerate(path.read_text().splitlines(), 1)
        if (m := MARKER.search(text))
    ]


def _marker_before(lines: list[str], fence: int) -> tuple[str, str] | None:
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    found = MARKER.search(lines[j]) if j >= 0 else None
    return (found.group(1), found.group(2)) if found else None


def _block_commands(body: list[str], lang: str) -> list[tuple[int, str]]:
    """(index in the block, command) for each command in a fenced block's lines."""
    if lang not in SHELL and lang not in ("", "text"):
        return []
    prompt_only = lang == "console"
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(body):
        raw = body[i].strip()
        start = i
        i += 1
        if raw.startswith("$ "):
            raw = raw[2:]
        elif prompt_only or (lang in ("", "text") and not COMMAND_START.match(raw)):
            continue
        parts = [raw]
        # a continued line, an open quote or an open compound statement takes the next lines
        while i < len(body) and (_continues(parts) or _open_compound(parts)):
            parts.append(body[i].strip())
            i += 1
        text = _join(parts)
        if text:
            out.append((start, text))
    return out


def _continues(parts: list[str]) -> bool:
    return parts[-1].endswith("\\") or _unclosed_quote("\n".join(p.removesuffix("\\") for p in parts))


def _open_compound(parts: list[str]) -> bool:
    words = parts[0].split()
    closer = COMPOUND.get(words[0]) if words else None
    return closer is not None and not any(re.search(rf"(^|[;\s]){closer}\s*$", strip_comment(p)) for p in parts)


def _join(parts: list[str]) -> str:
    """The logical command: `\\`-continuations joined by a space, quoted newlines kept, each line's comment dropped."""
    text = ""
    for part in parts:
        if text.endswith("\\"):
            text = text[:-1].rstrip() + " "
        elif text:
            text += "\n" if _unclosed_quote(text) else "; " if not text.rstrip().endswith(("do", "then")) else " "
        text += part if _unclosed_quote(text) else strip_comment(part)
    return text.strip()


def _unclosed_quote(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return True
    return False


def strip_comment(line: str) -> str:
    """The line without its shell comment: a `#` that starts a word outside quotes, as bash reads it."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip()
    return line.rstrip()


def tuneloop_calls(text: str) -> list[list[str]]:
    """The arguments of every `tuneloop` call in a command: `tuneloop ARGS`, `python -m tuneloop ARGS`, and the
    `-m tuneloop.train ARGS` of `accelerate launch`/`torchrun` (which is `tuneloop train ARGS`), also after `&&`,
    inside `$(...)` or before a pipe."""
    text = re.sub(r"<([\w-]+)>", r"\1", text)  # a placeholder such as `<run>`, not a redirection
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    tokens = list(lexer)
    k = 0
    while k < len(tokens):
        token = tokens[k]
        if token in SEPARATORS:
            segments.append([])
        elif token in REDIRECTS or token.startswith((">", "<")):
            if segments[-1] and segments[-1][-1].isdigit():  # the `2` of `2>&1`
                segments[-1].pop()
            k += 1  # the target
        else:
            segments[-1].append(token)
        k += 1
    calls = []
    for words in segments:
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):  # VAR=value before the command
            words = words[1:]
        if not words:
            continue
        if words[0] == "tuneloop" or words[0].endswith("/tuneloop"):
            calls.append(words[1:])
        elif "-m" in words:
            module = words.index("-m") + 1
            if module < len(words) and words[module] == "tuneloop":
                calls.append(words[module + 1 :])
            elif module < len(words) and words[module] == "tuneloop.train":
                calls.append(["train", *words[module + 1 :]])
    return calls
