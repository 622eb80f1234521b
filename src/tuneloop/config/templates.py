"""`{column}` templates in recipes (data formats, prompts): which columns they name. Plain string work, so the data
package can use it as well as the recipe checks."""

from __future__ import annotations

import re


def template_fields(template: str) -> list[str]:
    """Column names a `{column}` template refers to."""
    import string

    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            names.append(re.split(r"[.\[!:]", field, maxsplit=1)[0])
    return names
