"""Text from outside tuneloop on an operator's terminal: client prompts and model outputs from the request log, rater,
campaign and model names, registry tags, descriptions and reasons, dataset rows. Rich reads `[/bold]` in a string as
markup (a stray closing tag raises MarkupError, `[link=...]` makes a link) and a terminal obeys what reaches it raw
(ESC/CSI colours, OSC 8 links and window titles, `\\r` that rewrites the line, BEL, 8-bit C1 codes such as `\\x9b`).
So every view prints such text through `safe` (inside markup) or `visible` (where markup is off, or in a
`rich.text.Text`): the operator sees the characters that were sent, escape sequences written out as `\\x1b[31m`."""

from __future__ import annotations

import re

from rich.markup import escape

# C0 but newline and tab, DEL, C1, and the bidirectional overrides that reorder what a line appears to say
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: object) -> str:
    """`text` with every control character but newline and tab written out as Python writes it (`\\x1b`, `\\r`,
    `\\x9b`): for `print(..., markup=False)` and `Text(...)`, where markup is not read but a terminal would obey."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], str(text))


def safe(text: object) -> str:
    """`text` for a string rich reads as markup (an f-string with styles, a table cell, a tree label): control
    characters written out, `[...]` escaped, so it prints as the characters it is."""
    return escape(visible(text))
