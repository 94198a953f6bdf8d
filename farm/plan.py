"""The job compiler: a pure function from a spec to its windows. No Ray, no torch.

A video of `frames` frames is cut into windows of `length` frames; each window starts
`length - overlap` frames after the one before. The last window is never short: when
the regular stride would run past the end, the last window is moved back so it ends
exactly at the last frame, and its overlap with the one before grows instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the spec imports the planner (to check window indices), not the reverse
    from farm.spec import JobSpec


@dataclass(frozen=True)
class Window:
    """Frames [start, end) of the video, rendered in one pipeline call."""

    index: int
    start: int
    end: int
    overlap_prev: int  # frames shared with the window before (0 for the first)
    overlap_next: int  # frames shared with the window after (0 for the last)

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Plan:
    frames: int
    windows: tuple[Window, ...]
    steps: int
    #: The windows in latent frames, where a latent frame holds more than one frame (a video
    #: VAE) and the windows are denoised together; None: the same as `windows`.
    latent: tuple[Window, ...] | None = None

    @property
    def latent_windows(self) -> tuple[Window, ...]:
        return self.latent if self.latent is not None else self.windows

    @property
    def rendered_frames(self) -> int:
        """Frames the pipelines render, overlaps counted twice."""
        return sum(w.length for w in self.windows)

    @property
    def denoise_frame_steps(self) -> int:
        """Total denoising work: frame-steps summed over every window."""
        return self.rendered_frames * self.steps

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "steps": self.steps,
            "windows": [asdict(w) | {"length": w.length} for w in self.windows],
            "rendered_frames": self.rendered_frames,
            "overlap_frames": self.rendered_frames - self.frames,
            "denoise_frame_steps": self.denoise_frame_steps,
        }


def split(frames: int, length: int, overlap: int) -> tuple[Window, ...]:
    """Cut [0, frames) into windows of `length` that overlap by at least `overlap`."""
    if not 0 <= overlap < length <= frames:
        raise ValueError(f"need 0 <= overlap < length <= frames; got {overlap=}, {length=}, {frames=}")
    stride = length - overlap
    starts = [0]
    while starts[-1] + length < frames:
        starts.append(min(starts[-1] + stride, frames - length))
    windows = []
    for i, s in enumerate(starts):
        prev_end = starts[i - 1] + length if i else s
        next_start = starts[i + 1] if i + 1 < len(starts) else s + length
        windows.append(Window(i, s, s + length, prev_end - s, s + length - next_start))
    return tuple(windows)


def plan_windows(spec: "JobSpec") -> Plan:
    """Compile a job spec into its windows: one continuous video (a job, or one run of
    a film's fused shots; farm.shots.compile_film plans a film run by run). With a video
    VAE (`t` frames per latent frame) and `window.reconcile: latent`, the windows are cut
    from the video's latent frames
    (`(frames - 1) / t + 1` of them; a window of `length` frames holds `(length - 1) / t + 1`
    and shares `overlap / t` with its neighbour), and each window's frames are those its
    latent frames decode to: latent frame 0 is frame 0 alone, latent frame j is frames
    t·j − t + 1 … t·j."""
    if spec.shots:
        raise ValueError("a film of shots is planned run by run: farm.shots.compile_film(spec).plan")
    t, w = spec.temporal_compression, spec.window
    if t == 1 or w.reconcile != "latent":
        return Plan(spec.frames, split(spec.frames, w.length, w.overlap), spec.steps)
    latent = split((spec.frames - 1) // t + 1, (w.length - 1) // t + 1, w.overlap // t)
    return Plan(spec.frames, tuple(_in_frames(lw, t) for lw in latent), spec.steps, latent)


def _in_frames(w: Window, t: int) -> Window:
    start = 0 if w.start == 0 else t * w.start - t + 1
    return Window(w.index, start, t * (w.end - 1) + 1, t * w.overlap_prev, t * w.overlap_next)
