"""The progress bar of long work (header reads, synthesis, extraction, PSDS, prediction), on stderr (stdout is a
command's output: a table piped into a file) and only where stderr is a terminal (a log gets the commands' summary
lines, not a bar's last frame before each error line)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

STDERR = Console(stderr=True)


def shown(enabled: bool) -> bool:
    # The file itself, not rich's is_terminal, which FORCE_COLOR (often set in CI) turns on for a log file too.
    isatty = getattr(sys.stderr, "isatty", None)
    return enabled and isatty is not None and isatty()


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields `advance(n=1)`."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not shown(enabled), console=STDERR) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance
