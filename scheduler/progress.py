"""What the driver tells the person watching: rich progress bars, or nothing.

The driver only calls these methods; it never prints. `NullProgress` is used for
`--quiet`, `--json` and library callers.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class NullProgress:
    def stage(self, name: str) -> None: ...
    def windows_total(self, n: int) -> None: ...
    def window_done(self, result) -> None: ...
    def window_cached(self, index: int) -> None: ...
    def window_failed(self, index: int, error: str, retrying: bool) -> None: ...
    def frames_total(self, n: int) -> None: ...
    def frames_written(self, n: int) -> None: ...
    def steps_done(self, done: int, total: int) -> None: ...
    def notice(self, text: str) -> None: ...
    def close(self) -> None: ...


class RichProgress(NullProgress):
    """Two bars, windows rendered (co-denoising: steps done) and frames encoded, plus a line
    for the current stage."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._bars = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._stage = self._bars.add_task("stage", total=None, note="")
        self._windows = self._steps = None
        self._frames = None
        self._bars.start()

    def stage(self, name: str) -> None:
        self._bars.update(self._stage, description=f"[bold]{name}", note="")

    def windows_total(self, n: int) -> None:
        self._windows = self._bars.add_task("windows rendered", total=n, note="")

    def window_done(self, result) -> None:
        if self._windows is not None:
            self._bars.update(
                self._windows, advance=1, note=f"last: #{result.index} in {result.seconds:.1f}s"
            )

    def window_cached(self, index: int) -> None:
        if self._windows is not None:
            self._bars.update(self._windows, advance=1, note=f"#{index} from the store")

    def window_failed(self, index: int, error: str, retrying: bool) -> None:
        what = "retrying" if retrying else "FAILED"
        self.console.print(f"[yellow]window {index}: {error} ({what})")

    def frames_total(self, n: int) -> None:
        self._frames = self._bars.add_task("frames encoded", total=n, note="")

    def steps_done(self, done: int, total: int) -> None:
        """Co-denoising: the steps every shard has finished."""
        if self._steps is None:
            self._steps = self._bars.add_task("steps (all windows)", total=total, note="")
        self._bars.update(self._steps, completed=done)

    def notice(self, text: str) -> None:
        self.console.print(f"[yellow]{text}")

    def frames_written(self, n: int) -> None:
        if self._frames is not None:
            self._bars.update(self._frames, completed=n)

    def close(self) -> None:
        self._bars.update(self._stage, description="[bold]done", total=1, completed=1)
        self._bars.stop()
