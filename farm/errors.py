"""The farm's errors, one tree, so callers can catch as broadly or as narrowly as they need.

    FarmError                 base of everything the farm raises on purpose
      SpecError               the job spec is invalid; the message names each bad field
      WindowError             a window could not be rendered
        WindowFatal           the window failed every attempt; the job fails
      EncodeError             ffmpeg failed or the output could not be written
      InterpolationError      a RIFE chunk failed on every attempt; the job fails
      LatentError             co-denoising (`window.reconcile: latent`) lost actors more often than
                              `retries` allows, or every actor; its checkpoints are kept
      ClusterError            Ray could not be started or reached, or no actor could be placed
      WeightsError            the RIFE weights are missing or are not the file we expect
      BackendError            an interpolation backend cannot be used here (says what is missing)
      SeamCheckFailed         the video was made, but a seam jumps more than `--check-seams` allows

Ray's own exceptions are translated into these at one edge, the actor pool
(scheduler/pool.py), so the CLI and library users never need to import Ray to handle a
failed job. Inside the actors a few exceptions carry meaning to the pool and never reach
the caller: `RenderGaveUp` (farm/fallbacks.py: `retryable = False`, the window fails at
once) and `InjectedFault` (farm/faults.py, fault injection in tests).
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


class WindowFatal(WindowError):
    """The window failed 1 + retries attempts, so the job failed. Windows that did finish
    are in the window store and will not be rendered again."""


class EncodeError(FarmError):
    """ffmpeg failed, or the output could not be written."""


class InterpolationError(FarmError):
    """A chunk of frames could not be interpolated on any RIFE actor, so the job failed."""


class LatentError(FarmError):
    """Co-denoising failed more often than `retries` allows, or lost every actor."""


class ClusterError(FarmError):
    """Ray could not be started or reached, or the actors could not be placed."""


class WeightsError(FarmError):
    """The RIFE weights are missing or are not the file we expect."""


class BackendError(FarmError):
    """An interpolation backend cannot be used here; the message says exactly what is missing."""


class SeamCheckFailed(FarmError):
    """The job finished, but its worst seam's jump ratio is above the `--check-seams` limit."""

    def __init__(self, frame: int, ratio: float, limit: float):
        self.frame, self.ratio, self.limit = frame, ratio, limit
        super().__init__(f"seam check failed: the seam at frame {frame} jumps {ratio:.3f}× the motion "
                         f"inside its windows (limit {limit:g})")
