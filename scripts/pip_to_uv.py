"""Print the `uv pip install` flags that make uv see the package sources pip is configured with.

`make install` installs the extras with uv (about 20 s where pip takes about 3.5 minutes on 2 cores: uv resolves,
downloads and unpacks in parallel). uv reads none of pip's configuration, so on a machine whose pip.conf or PIP_*
variables add a local wheelhouse, a mirror, constraints or a CA bundle, uv alone would resolve against a different
world than pip does. This reads pip's effective configuration (`pip config list`: files and environment) and
translates the keys that decide what gets installed; `--index-strategy unsafe-best-match` gives uv pip's rule of
taking the best version across all indexes (uv's default takes the first index that has the package at all).
"""

from __future__ import annotations

import shlex
import subprocess
import sys

# pip key -> uv flag; keys whose value is a whitespace-separated list repeat the flag
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraints",
    "cert": "--cert",
}


def pip_config(python: str) -> dict[str, str]:
    """pip's settings as `pip config list` prints them (`global.key='v'`, `:env:.key='v'`), later scopes winning."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False).stdout
    settings: dict[str, str] = {}
    for line in out.splitlines():
        scoped, _, value = line.partition("=")
        key = scoped.rpartition(".")[2]
        if key in FLAGS:
            settings[key] = value.strip().strip("'\"")
    return settings


def uv_flags(settings: dict[str, str]) -> list[str]:
    flags = ["--index-strategy", "unsafe-best-match"]
    for key, flag in FLAGS.items():
        for value in settings.get(key, "").split():
            flags += [flag, value]
    return flags


if __name__ == "__main__":
    print(shlex.join(uv_flags(pip_config(sys.argv[1] if len(sys.argv) > 1 else sys.executable))))
