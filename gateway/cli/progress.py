"""Progress bars for the CLI's long runs (sim sweeps, `results`, `deploy`, `loadgen`, benchmarks), on stderr.

Who calls it: the verbs in `gateway/cli/` and `gpufaas results`. What it changes: nothing but what it
draws on stderr, and only when `shown()` says so; stdout (the report, the JSON) is never touched.

NOTE: progress is drawn only when stderr is a terminal and `--json` is not given. A bar that is off is a
rich `Progress(disable=True)`: callers update it the same way and it writes nothing at all (not even the
final frame or the blank line a non-interactive rich console prints on stop), so piped and scripted
runs see exactly what they saw before. stdout being redirected to a file does not switch it off: that
is when a user watching a long run has nothing else to look at.
"""

from __future__ import annotations

import sys
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn


def shown(as_json: bool = False) -> bool:
    """True when progress is drawn: no `--json`, and stderr is a terminal."""
    return not as_json and sys.stderr.isatty()


def make(as_json: bool, *, counts: bool = True, transient: bool = False) -> Progress:
    """A rich `Progress` on stderr; disabled (draws and writes nothing) unless `shown(as_json)`.
    Columns: spinner, description, bar, done/total (with `counts`), elapsed time, and the `info` field
    that every task carries (`add_task(..., info="")`)."""
    cols: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if counts:
        cols.append(MofNCompleteColumn())
    cols += [TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
    return Progress(*cols, console=Console(stderr=True), disable=not shown(as_json), transient=transient)


def live_load(bar: Progress, label: str, planned_s: float) -> Callable[[float, int, int, int], None]:
    """Add a task for a live load run of `planned_s` seconds to `bar` (made with counts=False); returns the
    `progress(elapsed_s, sent, completed, errors)` callback the live `Driver` calls about twice a second.
    Who calls it: `gpufaas loadgen` and `gpufaas bench loadgen`."""
    task = bar.add_task(label, total=planned_s, info="")

    def on_progress(elapsed_s: float, sent: int, completed: int, errors: int) -> None:
        phase = "" if elapsed_s <= planned_s else ", draining"
        bar.update(task, completed=min(elapsed_s, planned_s),
                   info=f"{elapsed_s:.1f}/{planned_s:g} s{phase}  sent {sent}  completed {completed}  errors {errors}")
    return on_progress
