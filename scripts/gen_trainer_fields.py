"""Regenerate src/tuneloop/config/trainer_fields.json from the installed TRL (run after upgrading TRL)."""

from __future__ import annotations

import json

from tuneloop.config.trainer_fields import SNAPSHOT, snapshot

if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
