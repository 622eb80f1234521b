"""Training progress for people: a rich progress bar on a terminal, plain log lines elsewhere, and a summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from transformers import TrainerCallback

console = Console(stderr=False)


class RichProgress(TrainerCallback):
    """Shows steps, loss and throughput while a stage trains (main process only)."""

    def __init__(self, stage: str):
        self.stage = stage
        self.progress: Progress | None = None
        self.task = None
        self.live = sys.stdout.isatty()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.live:
            self.progress = Progress(
                TextColumn(f"[bold]{self.stage}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.stage, total=state.max_steps, completed=state.global_step, info="")
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        parts = [
            f"{k.removeprefix('train_')} {_fmt(v)}"
            for k, v in logs.items()
            if k in ("loss", "eval_loss", "learning_rate", "grad_norm") or k.startswith("gen_")
        ]
        if not parts:
            return
        info = "  ".join(parts)
        if self.progress is not None:
            self.progress.update(self.task, info=info)
        else:
            console.print(f"{self.stage} step {state.global_step}/{state.max_steps}  {info}", highlight=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()


class StepClock(TrainerCallback):
    """Times each optimizer step (evaluation and checkpointing between steps excluded), so throughput can leave
    out the first step, which pays one-off costs (allocator warm-up, lazy initialisation)."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int]] = []  # (seconds, tokens) of each step
        self._begin = (0.0, 0)

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = (time.perf_counter(), int(state.num_input_tokens_seen or 0))

    def on_step_end(self, args, state, control, **kwargs):
        t0, n0 = self._begin
        self.steps.append((time.perf_counter() - t0, int(state.num_input_tokens_seen or 0) - n0))

    def steady_tokens_per_s(self) -> float | None:
        later = self.steps[1:]
        seconds = sum(t for t, _ in later)
        return sum(n for _, n in later) / seconds if seconds > 0 else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    return table
