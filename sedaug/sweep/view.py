"""The live view of a sweep: a Ray Tune callback that counts trials (running, done, stopped early, diverged,
failed, retried) and keeps the best score so far per recipe, drawn with rich while the sweep runs. It also records
what only the driver learns, a trial stopped early, diverged or given up, in `<out>/trials.jsonl` (sedaug.sweep.select).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sedaug.files import append_jsonl
from sedaug.sweep.select import JOURNAL, short_value
from sedaug.sweep.trial import setting_id, trial_spec

_ACTIVE: SweepView | None = None


def _active_view() -> SweepView:
    """What an unpickled view becomes: the view of this process's sweep (Ray pickles run_config into tuner.pkl)."""
    return _ACTIVE if _ACTIVE is not None else SweepView(out=None, epochs={})


def _error_line(error_file: str | None) -> str:
    """The exception's message from Ray's error.txt of a trial (a sedaug UserError as its one line)."""
    try:
        lines = [line for line in Path(error_file).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except (OSError, TypeError):
        return ""
    last = lines[-1] if lines else ""
    for prefix in ("sedaug.errors.UserError: ", "sedaug.train.Diverged: ", "sedaug.errors.Interrupted: "):
        last = last.removeprefix(prefix)
    return f"{last} ({error_file})" if last else str(error_file)


@dataclass
class RecipeCounts:
    trials: int = 0  # planned in the current stage
    done: int = 0
    stopped: int = 0
    diverged: int = 0
    failed: int = 0
    best: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)


class SweepView(Callback):
    def __init__(self, out: Path | None, epochs: dict[str, int], title: str = "sweep"):
        self.out, self.epochs, self.title = out, epochs, title
        self.stage = ""
        self.recipes: dict[str, RecipeCounts] = {}
        self.running: dict[str, str] = {}  # trial id -> recipe
        self.retries = 0
        self.totals = {"done": 0, "stopped": 0, "diverged": 0, "failed": 0}
        self.started = time.monotonic()
        self._live: Live | None = None

    def __reduce__(self):
        return (_active_view, ())

    # ------------------------------------------------------------------------------------------ stages

    def begin_stage(self, stage: str, planned: dict[str, int], skipped: dict[str, int]) -> None:
        """A new stage: `planned` trials per recipe, `skipped` of them already complete on disk."""
        self.stage = stage
        self.totals = {"done": sum(skipped.values()), "stopped": 0, "diverged": 0, "failed": 0}
        for name, n in planned.items():
            counts = self.recipes.setdefault(name, RecipeCounts())
            counts.trials, counts.done, counts.stopped, counts.diverged, counts.failed = n, skipped.get(name, 0), 0, 0, 0
        self._refresh()

    # ------------------------------------------------------------------------------------------ Tune hooks

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.trial_id] = trial_spec(trial.config)["recipe"]
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        spec, score = trial_spec(trial.config), result.get("score")
        if spec["stage"] == "search" and isinstance(score, int | float) and math.isfinite(score):
            counts = self.recipes.setdefault(spec["recipe"], RecipeCounts())
            if counts.best is None or score > counts.best:
                counts.best, counts.best_params = float(score), spec["params"]
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        recipe = self.running.pop(trial.trial_id, trial_spec(trial.config)["recipe"])
        last = trial.last_result or {}
        if last.get("diverged"):  # a result, not a failure (sedaug.sweep.trial)
            self._count(recipe, "diverged")
            self._journal(trial, "diverged", epoch=last.get("diverged_epoch"), step=last.get("diverged_step"))
            return
        status = "stopped" if last.get("epoch", 0) < self.epochs.get(recipe, 0) else "done"
        self._count(recipe, status)
        self._journal(trial, status)

    def on_trial_error(self, iteration, trials, trial, **info):
        recipe = self.running.pop(trial.trial_id, trial_spec(trial.config)["recipe"])
        self._count(recipe, "failed")
        self._journal(trial, "failed", error=_error_line(getattr(trial, "error_file", None)))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.running.pop(trial.trial_id, None)
        self.retries += 1
        self._refresh()

    # ------------------------------------------------------------------------------------------ record

    def _count(self, recipe: str, status: str) -> None:
        counts = self.recipes.setdefault(recipe, RecipeCounts())
        setattr(counts, status, getattr(counts, status) + 1)
        self.totals[status] += 1
        self._refresh()

    def _journal(self, trial, status: str, error: str = "", **where) -> None:
        if self.out is None:
            return
        spec = trial_spec(trial.config)
        row = {"stage": spec["stage"], "recipe": spec["recipe"],
               "setting": spec.get("setting") or setting_id(spec["params"]) if spec["stage"] == "search" else "final",
               "seed": spec["seed"], "status": status, **{k: v for k, v in where.items() if v is not None}}
        if error:
            row["error"] = error
        append_jsonl(Path(self.out) / JOURNAL, row)

    # ------------------------------------------------------------------------------------------ drawing

    @contextmanager
    def shown(self, enabled: bool, console: Console | None = None):
        """Make this the process's active view and, when enabled, draw it live until the block ends."""
        global _ACTIVE
        previous, _ACTIVE = _ACTIVE, self
        try:
            if not enabled:
                yield self
                return
            with Live(get_renderable=self.render, console=console or Console(stderr=True), refresh_per_second=2,
                      transient=True) as live:
                self._live = live
                yield self
        finally:
            self._live = None
            _ACTIVE = previous

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def render(self):
        elapsed = int(time.monotonic() - self.started)
        head = Text.assemble(
            (f"{self.title}", "bold"), f" — {self.stage or 'starting'} · ",
            (f"{len(self.running)} running", "cyan"), f" · {self.totals['done']} done · ",
            f"{self.totals['stopped']} stopped · {self.totals['diverged']} diverged · ",
            (f"{self.totals['failed']} failed", "red" if self.totals["failed"] else ""),
            f" · {self.retries} retried · {elapsed // 60}m{elapsed % 60:02d}s",
        )
        table = Table(box=None, pad_edge=False)
        for col in ("recipe", "trials", "running", "done", "stopped", "diverged", "failed", "best so far", "setting"):
            table.add_column(col, justify="right" if col not in ("recipe", "setting") else "left")
        running = {}
        for name in self.running.values():
            running[name] = running.get(name, 0) + 1
        for name, c in self.recipes.items():
            best = "" if c.best is None else f"{c.best:.3f}"
            setting = ", ".join(f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in c.best_params.items())
            cells = [name, c.trials, running.get(name, 0), c.done, c.stopped, c.diverged, c.failed, best, setting]
            table.add_row(*(Text(str(cell)) for cell in cells))  # text, not markup: a setting `locations=[cnn1]`
        return Group(head, table)
