"""Prompt schedules: `prompts: {0: "a fox in snow", 48: "a fox in a forest"}`.

Each frame is conditioned on its own text embedding. After a change at frame k, the
embedding moves from the old prompt's to the new one's over `prompt_transition` frames,
starting at k: frame k + i gets weight (i + 1) / transition of the new prompt. So a window
that spans a change does not jump, and a change at frame k never touches a frame before
k: windows that end before k keep their keys and are reused from the store.

Pure: this module only says which texts, mixed how, condition each frame.
"""

from __future__ import annotations

#: One frame's conditioning: (old text, new text, weight of the new text in [0, 1]).
#: A frame with a single prompt is (text, text, 1.0).
Conditioning = tuple[str, str, float]


def frame_conditioning(schedule: dict[int, str], transition: int, start: int, end: int) -> tuple[Conditioning, ...]:
    """The conditioning of frames [start, end) under `schedule` (must contain frame 0)."""
    keys = sorted(schedule)
    out = []
    for f in range(start, end):
        at = max(k for k in keys if k <= f)
        new = schedule[at]
        i = keys.index(at)
        weight = 1.0 if i == 0 else min(1.0, (f - at + 1) / transition)
        out.append((new, new, 1.0) if weight >= 1.0 else (schedule[keys[i - 1]], new, round(weight, 6)))
    return tuple(out)


def window_prompts(conditioning: tuple[Conditioning, ...], start: int) -> list[dict]:
    """The report's view of a window's prompts: one entry per run of equal conditioning."""
    runs: list[dict] = []
    for offset, (old, new, weight) in enumerate(conditioning):
        if runs and (runs[-1]["_old"], runs[-1]["prompt"]) == (old, new) and (weight >= 1.0) == runs[-1]["_whole"]:
            runs[-1]["to_frame"] = start + offset
            continue
        runs.append({"from_frame": start + offset, "to_frame": start + offset, "prompt": new,
                     "_old": old, "_whole": weight >= 1.0})
    for r in runs:
        old, whole = r.pop("_old"), r.pop("_whole")
        if not whole:
            r["blending_from"] = old
    return runs
