"""Recipe configuration: schema, YAML loading with line numbers, overrides and checks."""

# schema.py and evaluation.py build on each other; importing schema first resolves the cycle whichever is asked for.
from tuneloop.config import schema as _schema  # noqa: F401
