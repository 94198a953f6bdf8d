"""The pipelines the farm can render with: one file each, and one line each in the
registry below. Each file declares a descriptor (farm/pipelines/_base.py: what the driver,
the window keys and the renderer stack need to know) and a renderer class (the loaded
diffusers pipeline; see farm/renderers.py for its interface). Generic code looks a
pipeline up here and never asks for its name."""

from __future__ import annotations

from farm.pipelines._base import Pipeline
from farm.pipelines.animatediff import AnimateDiff
from farm.pipelines.controlnet import AnimateDiffControlNet
from farm.pipelines.svd import Svd
from farm.pipelines.wan import Wan
from farm.pipelines.wan_i2v import WanI2V

REGISTRY: dict[str, Pipeline] = {p.name: p for p in (
    AnimateDiff(),
    AnimateDiffControlNet(),
    Svd(),
    Wan(),
    WanI2V(),
)}


def descriptor(name: str) -> Pipeline:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(REGISTRY)}") from None
