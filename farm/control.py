"""Control frames for ControlNet jobs: `control.video` is an mp4 or a folder of images.

A folder's frames are its image files sorted by name (00000.png, 00001.png, …); files
with other suffixes are ignored. A video's frames are decoded by ffmpeg (imageio-ffmpeg).
Either way a window reads only the frames it needs, resized with PIL to the job's
width × height, in RGB.

Pure numpy/PIL/imageio-ffmpeg: farm.spec calls `count_control_frames` while validating,
so this module imports neither torch nor ray, nor farm.spec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


#: The image files a control folder may hold (compared lower-case).
CONTROL_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def control_images(folder: str | Path) -> list[Path]:
    """The image files of a control folder, sorted by name. ValueError when there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in CONTROL_IMAGE_SUFFIXES]
    if not images:
        if files:
            raise ValueError(f"folder {str(folder)!r} holds no images ({', '.join(CONTROL_IMAGE_SUFFIXES)}), "
                             f"only e.g. {files[0].name!r}")
        raise ValueError(f"folder {str(folder)!r} is empty; it should hold one image per frame (00000.png, …)")
    return images


def count_control_frames(path: str | Path) -> int:
    """How many frames `control.video` has. ValueError, with the reason, when it cannot say."""
    path = Path(path)
    if path.is_dir():
        return len(control_images(path))
    if not path.is_file():
        raise ValueError(f"nothing at {str(path)!r}")
    from farm.video import count_frames

    frames = count_frames(path)
    if frames <= 0:
        raise ValueError(f"video {str(path)!r} has no frames")
    return int(frames)


def read_control_frames(path: str | Path, start: int, end: int, width: int, height: int) -> np.ndarray:
    """Frames [start, end) of `control.video` as (end - start, height, width, 3) uint8 RGB."""
    if not 0 <= start < end:
        raise ValueError(f"control frames: need 0 <= start < end; got [{start}, {end})")
    path = Path(path)
    if path.is_dir():
        files = control_images(path)
        if end > len(files):
            raise ValueError(f"control folder {str(path)!r} has {len(files)} images; frames [{start}, {end}) asked")
        frames = [_load_image(f) for f in files[start:end]]
    else:
        frames = _video_frames(path, start, end)
    return np.stack([_fit(frame, width, height) for frame in frames])


def _load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"control image {str(path)!r} cannot be opened: {err}") from None


def _video_frames(path: Path, start: int, end: int) -> list:
    """Decode from the first frame and stop at `end`: ffmpeg is closed as soon as the last
    frame needed has arrived."""
    from PIL import Image

    from farm.video import iter_frames

    frames = []
    for i, frame in enumerate(iter_frames(path)):
        if i >= start:
            frames.append(Image.fromarray(frame))
        if i + 1 >= end:
            break
    if len(frames) < end - start:
        raise ValueError(f"control video {str(path)!r} ended after {start + len(frames)} frames; "
                         f"frames [{start}, {end}) asked")
    return frames


def _fit(image, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
