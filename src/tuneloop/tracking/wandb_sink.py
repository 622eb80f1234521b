"""Weights & Biases next to MLflow. With no API key it runs offline into the run directory and says how to
upload later (`wandb sync DIR`); nothing ever waits for a login prompt."""

from __future__ import annotations

import netrc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneloop.config.lifecycle import Wandb
from tuneloop.errors import TuneloopError


def has_credentials() -> bool:
    """An API key in the environment, or one `wandb login` stored in ~/.netrc for the configured host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        found = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(found and found[2])


def resolve_mode(settings: Wandb) -> str:
    """online or offline; an explicit `WANDB_MODE` in the environment wins over the recipe."""
    env = os.environ.get("WANDB_MODE")
    if env in ("offline", "dryrun", "disabled"):
        return "offline" if env == "dryrun" else env
    if settings.mode == "offline":
        return "offline"
    if has_credentials():
        return "online"
    if settings.mode == "online":
        raise TuneloopError(
            "tracking.wandb.mode is online but no W&B API key is configured; run `wandb login`, set "
            "WANDB_API_KEY, or use mode: auto to log offline and `wandb sync` later"
        )
    return "offline"


class WandbRun:
    """A wandb run with one x-axis per training stage (`train/<stage>/step`) and results in its summary."""

    def __init__(self, run: Any, mode: str) -> None:
        self.run = run
        self.offline = mode == "offline"
        self.dir = Path(run.dir).parent if run is not None else None
        self._stages: set[str] = set()

    @classmethod
    def start(
        cls,
        settings: Wandb,
        experiment: str,
        name: str,
        run_dir: Path,
        config: dict[str, Any],
        previous: dict[str, Any] | None,
        say: Callable[[str], None],
    ) -> WandbRun:
        import wandb

        mode = resolve_mode(settings)
        if mode == "disabled":
            return cls(None, mode)
        kwargs = {
            "project": settings.project or experiment,
            "entity": settings.entity,
            "name": name,
            "tags": settings.tags or None,
            "config": config,
            "dir": str(run_dir),
            "id": (previous or {}).get("id"),
            "resume": "allow",
        }
        try:
            run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=60, silent=True), **kwargs)
        except Exception as e:
            if mode != "online":
                raise TuneloopError(f"W&B could not start offline: {e}") from e
            say(f"[yellow]warning:[/] W&B did not answer ({e}); logging offline instead")
            mode = "offline"
            run = wandb.init(mode=mode, settings=wandb.Settings(silent=True), **kwargs)
        sink = cls(run, mode)
        where = f"offline in {sink.dir}" if sink.offline else run.url
        say(f"tracking: W&B {where}")
        return sink

    def record(self) -> dict[str, Any]:
        if self.run is None:
            return {}
        return {"id": self.run.id, "mode": "offline" if self.offline else "online", "dir": str(self.dir)}

    def config(self, params: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.config.update(params, allow_val_change=True)

    def log(self, metrics: dict[str, float], step: int | None) -> None:
        if self.run is None:
            return
        curves = {k: v for k, v in metrics.items() if k.startswith("train/")}
        if curves and step is not None:
            stage = next(iter(curves)).split("/")[1]
            if stage not in self._stages:
                self._stages.add(stage)
                self.run.define_metric(f"train/{stage}/step")
                self.run.define_metric(f"train/{stage}/*", step_metric=f"train/{stage}/step")
            self.run.log({**curves, f"train/{stage}/step": step})
        for k, v in metrics.items():
            if k not in curves:
                self.run.summary[k] = v

    def finish(self, exit_code: int, say: Callable[[str], None] = print) -> None:
        """End the run with everything on disk. `run.finish()` only asks W&B's service to close the run's
        transaction log, and the service writes the log's last 32 KiB block when it does, after finish() has
        returned: on a busy machine the .wandb file still held only its header when `tuneloop run` returned.
        `wandb.teardown()` waits until the service has closed every run and exited."""
        if self.run is None:
            return
        import wandb

        self.run.finish(exit_code=exit_code)
        try:
            wandb.teardown()
        except SystemExit as e:  # the service exited with an error: what it had not written is lost
            where = f"the offline run in {self.dir}" if self.offline else "the run"
            say(f"[yellow]warning:[/] W&B's service exited with code {e.code}; {where} may be incomplete")
