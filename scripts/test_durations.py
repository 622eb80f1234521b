"""Per-file test durations from a JUnit XML report, for tests/durations.json.

`make test` hands pytest-xdist whole files, longest first (tests/conftest.py), so that the minutes-long cluster and
server files start early instead of after 500 quick unit tests and leave one worker alone at the end. The order comes
from a measured run; refresh it when test files are added or change a lot:

    .venv/bin/python -m pytest -n 3 --dist loadfile --junitxml=/tmp/junit.xml
    .venv/bin/python scripts/test_durations.py /tmp/junit.xml > tests/durations.json
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict


def file_seconds(junit: str) -> dict[str, float]:
    """Seconds per test file (setup, call and teardown of all its tests), longest first."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit).iter("testcase"):
        path = case.get("classname", "").split("::")[0]
        # pytest writes a module's path dotted (tests.unit.test_x), with a class name appended for test classes
        parts = path.split(".")
        module = next(i for i in range(len(parts), 0, -1) if parts[i - 1].startswith("test_"))
        totals["/".join(parts[:module]) + ".py"] += float(case.get("time", 0))
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    json.dump(file_seconds(sys.argv[1]), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
