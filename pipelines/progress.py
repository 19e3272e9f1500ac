"""Progress of a stage's tasks, driven by completed futures: a rich bar on a terminal, few lines in a log."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from distributed import Future, as_completed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG_STEPS = 10
"""Without a terminal, one line per tenth of a stage's tasks (never one line per task)."""


def track(futures: Sequence[Future], label: str, console: Console) -> Iterator[Future]:
    """Yield ``futures`` as they finish while showing how many of them are done."""
    total = len(futures)
    if total == 0:
        return
    if console.is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(label, total=total)
            for future in as_completed(futures):
                progress.advance(task)
                yield future
        return
    reported = 0  # plain lines: every tenth of a step of more than LOG_STEPS tasks, else only when it is done
    for done, future in enumerate(as_completed(futures), start=1):
        if (total > LOG_STEPS and done * LOG_STEPS // total > reported) or done == total:
            reported = done * LOG_STEPS // total
            console.print(f"{label}: {done}/{total} tasks", highlight=False)
        yield future
