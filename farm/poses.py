"""OpenPose skeletons for ControlNet jobs: a folder of pose frames that `control.video` can name.

`extract_poses` runs controlnet_aux's OpenposeDetector on every frame of a video. The farm
does not depend on controlnet_aux and never downloads annotator weights: the package must
be installed and the three weight files of the hub repo lllyasviel/Annotators must already
be in a local folder (`from_pretrained(folder)` loads all three, whatever it detects).

`draw_stick_figure` and `write_pose_frames` draw an OpenPose-style skeleton (the 18 COCO
keypoints, the standard limb colours, on black) without any detector, for tests and the
tiny example.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from farm.errors import FarmError

#: The files OpenposeDetector.from_pretrained(folder) opens: body, hand and face models.
ANNOTATOR_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
ANNOTATOR_REPO = "lllyasviel/Annotators"

# OpenPose's 18 keypoints: 0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7 left
# shoulder/elbow/wrist, 8-10 right hip/knee/ankle, 11-13 left hip/knee/ankle, 14/15 right/left
# eye, 16/17 right/left ear. Limbs and colours in the order the OpenPose renderer uses.
_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
          (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
            (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
            (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


def check_annotator(annotator_dir: str | Path):
    """The OpenposeDetector class, if controlnet_aux is installed and the weights are in
    `annotator_dir`; else FarmError saying what is missing and where to put it."""
    folder = Path(annotator_dir).expanduser().resolve()
    problems = []
    detector_class = None
    try:
        from controlnet_aux import OpenposeDetector as detector_class
    except ImportError as err:
        problems.append(f"the controlnet_aux package is not importable ({err}): pip install controlnet_aux")
    missing = [name for name in ANNOTATOR_FILES if not (folder / name).is_file()]
    if missing:
        problems.append(f"annotator weights missing in {folder}: {', '.join(missing)}; download "
                        f"{'it' if len(missing) == 1 else 'them'} from the hub repo {ANNOTATOR_REPO} "
                        f"(https://huggingface.co/{ANNOTATOR_REPO}) into {folder}")
    if problems:
        raise FarmError("farm poses cannot run: " + "; ".join(problems))
    return detector_class


def extract_poses(video: str | Path, out_dir: str | Path, annotator_dir: str | Path) -> int:
    """Detect the pose in every frame of `video` and write the skeletons to `out_dir` as
    00000.png, 00001.png, … at the video's size. Returns the number of frames."""
    from PIL import Image

    from farm.video import iter_frames

    detector_class = check_annotator(annotator_dir)
    out_dir = Path(out_dir)
    _check_free(out_dir)
    detector = detector_class.from_pretrained(str(Path(annotator_dir).expanduser().resolve()))
    with _staging(out_dir) as tmp:
        count = 0
        try:
            for array in iter_frames(video):
                h, w = array.shape[:2]
                frame = Image.fromarray(array)
                pose = detector(frame, detect_resolution=min(512, max(64, min(w, h))), image_resolution=min(w, h))
                pose = pose.resize((w, h), Image.Resampling.NEAREST)
                pose.save(tmp / f"{count:05d}.png")
                count += 1
        except ValueError as err:  # ffmpeg cannot open it
            raise FarmError(str(err)) from None
        if count == 0:
            raise FarmError(f"{str(video)!r} has no frames")
    return count


def draw_stick_figure(width: int, height: int, t: float, x: float = 0.5) -> np.ndarray:
    """An OpenPose-style skeleton, (height, width, 3) uint8 on black, mid-stride at gait
    phase `t` (one stride per unit of t), standing at `x` (0 = left edge, 1 = right edge)."""
    from PIL import Image, ImageDraw

    points = _walking_keypoints(t, x)
    scale = np.array([width, height], dtype=np.float64)
    pixels = [tuple(p * scale) for p in points]
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    thickness = max(1, round(min(width, height) / 32))
    for (a, b), colour in zip(_LIMBS, _COLOURS):
        draw.line([pixels[a], pixels[b]], fill=tuple(int(c * 0.6) for c in colour), width=thickness)
    radius = max(1, thickness * 0.8)
    for (px, py), colour in zip(pixels, _COLOURS):
        draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
    return np.asarray(image, dtype=np.uint8)


def write_pose_frames(out_dir: str | Path, frames: int, width: int, height: int) -> Path:
    """A folder of `frames` pose images (00000.png, …) of a figure walking left to right,
    one stride every 8 frames. Returns the folder; it must not exist yet (or be empty)."""
    from PIL import Image

    if frames < 1:
        raise ValueError(f"frames must be >= 1; got {frames}")
    out_dir = Path(out_dir)
    _check_free(out_dir)
    with _staging(out_dir) as tmp:
        for i in range(frames):
            x = 0.3 + 0.4 * i / max(frames - 1, 1)
            Image.fromarray(draw_stick_figure(width, height, i / 8, x)).save(tmp / f"{i:05d}.png")
    return out_dir


def _walking_keypoints(t: float, x: float) -> list[tuple[float, float]]:
    """The 18 keypoints in [0, 1]² of a side-on walker: legs swing in antiphase, arms
    against the legs, and the body bobs twice per stride."""
    swing = math.sin(2 * math.pi * t)
    bob = 0.01 * math.cos(4 * math.pi * t)
    neck = (x, 0.28 + bob)
    nose = (x + 0.02, 0.18 + bob)
    hip_y = 0.55 + bob

    def limb(top, length, angle):  # angle from straight down, in radians
        return (top[0] + length * math.sin(angle), top[1] + length * math.cos(angle))

    r_shoulder, l_shoulder = (x - 0.07, neck[1] + 0.01), (x + 0.07, neck[1] + 0.01)
    r_elbow = limb(r_shoulder, 0.13, -0.5 * swing)
    l_elbow = limb(l_shoulder, 0.13, 0.5 * swing)
    r_wrist = limb(r_elbow, 0.12, -0.5 * swing + 0.3)
    l_wrist = limb(l_elbow, 0.12, 0.5 * swing + 0.3)
    r_hip, l_hip = (x - 0.04, hip_y), (x + 0.04, hip_y)
    r_knee = limb(r_hip, 0.18, 0.45 * swing)
    l_knee = limb(l_hip, 0.18, -0.45 * swing)
    r_ankle = limb(r_knee, 0.18, 0.45 * swing - 0.25 * max(0.0, -swing))
    l_ankle = limb(l_knee, 0.18, -0.45 * swing - 0.25 * max(0.0, swing))
    r_eye, l_eye = (nose[0] - 0.015, nose[1] - 0.02), (nose[0] + 0.015, nose[1] - 0.02)
    r_ear, l_ear = (nose[0] - 0.035, nose[1] - 0.01), (nose[0] + 0.035, nose[1] - 0.01)
    return [nose, neck, r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow, l_wrist, r_hip, r_knee, r_ankle,
            l_hip, l_knee, l_ankle, r_eye, l_eye, r_ear, l_ear]


def _check_free(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FarmError(f"{str(out_dir)!r} already exists and is not an empty folder; remove it or pick another")
    if not out_dir.resolve().parent.is_dir():
        raise FarmError(f"the folder {str(out_dir.resolve().parent)!r} does not exist; create it first")


@contextmanager
def _staging(out_dir: Path):
    """Write into a hidden temp folder beside `out_dir`, and rename it into place only when
    everything was written: a crash never leaves a half folder under the final name."""
    out_dir = out_dir.resolve()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty, as _check_free made sure
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
