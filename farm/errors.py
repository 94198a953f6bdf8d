"""The farm's errors, one tree, so callers can catch as broadly or as narrowly as they need.

    FarmError                 base of everything the farm raises on purpose
      SpecError               the job spec is invalid; the message names each bad field
      WindowError             a window could not be rendered
        WindowRetryable       the actor or its node was lost; the window may run elsewhere
        WindowFatal           the pipeline itself raised; running it again will not help
      EncodeError             ffmpeg failed or the output could not be written
      ClusterError            Ray could not be started or reached, or no actor could be placed

Ray's own exceptions are translated into these at the edge of the dispatcher, so the
CLI and library users never need to import Ray to handle a failed job.
"""

from __future__ import annotations


class FarmError(Exception):
    """Base class for every error the farm raises on purpose."""


class SpecError(FarmError):
    """The job spec is invalid. `problems` lists one `field: rule` line per issue."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid job spec{where}:\n" + "\n".join(f"  - {p}" for p in self.problems))


class WindowError(FarmError):
    """A window could not be rendered."""

    def __init__(self, index: int, message: str):
        self.index = index
        super().__init__(f"window {index}: {message}")


class WindowRetryable(WindowError):
    """The actor or node holding the window was lost; the window can run again elsewhere."""


class WindowFatal(WindowError):
    """The pipeline raised while rendering the window; retrying unchanged will not help."""


class EncodeError(FarmError):
    """ffmpeg failed, or the output could not be written."""


class ClusterError(FarmError):
    """Ray could not be started or reached, or the actors could not be placed."""
