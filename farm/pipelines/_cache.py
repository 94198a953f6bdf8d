"""Step caching that survives windows: diffusers' cache hooks, one cache state per window.

diffusers' cache hooks (FirstBlockCache, MagCache, TaylorSeer, Pyramid Attention Broadcast)
skip or reuse a transformer's work on a step whose output barely changes, judged from the
previous call of the same module. Under windows that previous call is another window's: an
actor renders many windows in turn, and in latent mode evaluates each window of its shard
at every step. So every denoiser call here is made under its own cache context,
`window <index> <branch>`: a window's decisions depend on its own calls only, whichever
actor runs it and whatever that actor ran before. FirstBlockCache, MagCache and TaylorSeer
keep their state per context themselves; Pyramid Attention Broadcast keeps one state per
hook, so `scope` swaps in the context's own.

`counts()` measures the work the cache saved: the calls of every Linear layer inside the
transformer blocks, against the calls there would have been had every block computed.

Torch and diffusers are imported inside: the descriptors that import this module's users
must not load them on the driver.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from farm.spec import CacheSpec


def diffusers_config(spec: "CacheSpec", steps: int, timestep: Callable[[], float], modules: str):
    """The diffusers config of `spec` for a job of `steps` steps; `timestep` tells the
    hooks that read the current timestep (Pyramid Attention Broadcast) where the loop is;
    `modules` (a regex of module names) are those TaylorSeer predicts: the pipeline's
    (diffusers' default patterns miss some transformers' names, such as `attn1`)."""
    import torch
    from diffusers.hooks import (FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                                 TaylorSeerCacheConfig)

    s = spec.settings()
    if spec.kind == "first_block":
        return FirstBlockCacheConfig(threshold=s["threshold"])
    if spec.kind == "mag":
        return MagCacheConfig(threshold=s["threshold"], max_skip_steps=s["max_skip_steps"],
                              retention_ratio=s["retention_ratio"], num_inference_steps=steps,
                              mag_ratios=list(s["mag_ratios"]))
    if spec.kind == "taylorseer":
        # fp32 factors: the prediction stays as exact as the model (diffusers' default is bf16)
        return TaylorSeerCacheConfig(cache_interval=s["cache_interval"],
                                     disable_cache_before_step=s["disable_cache_before_step"],
                                     disable_cache_after_step=s["disable_cache_after_step"],
                                     max_order=s["max_order"], taylor_factors_dtype=torch.float32,
                                     cache_identifiers=[modules])
    if spec.kind == "pab":
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=s["spatial_attention_block_skip_range"],
            cross_attention_block_skip_range=s["cross_attention_block_skip_range"],
            spatial_attention_timestep_skip_range=tuple(s["spatial_attention_timestep_skip_range"]),
            cross_attention_timestep_skip_range=tuple(s["cross_attention_timestep_skip_range"]),
            current_timestep_callback=timestep)
    raise ValueError(f"model.cache.kind {spec.kind!r} has no renderer support")  # refused by the spec first


class StepCache:
    """The cache hooks on a pipeline's denoisers (each of a two-expert checkpoint's keeps
    its own states), their per-window contexts, and the work they skipped."""

    def __init__(self, spec: "CacheSpec", denoisers: list, steps: int, timestep: Callable[[], float],
                 modules: str):
        self.spec, self.kind = spec, spec.kind
        self.denoisers = denoisers
        self._timestep, self._modules = timestep, modules
        self._swapped: dict[str, dict[int, object]] = {}  # context → {hook: its state} (per-hook states)
        self.evaluated = 0  # Linear calls made inside the blocks
        self.possible = 0  # Linear calls there would have been with every block computed
        for model in denoisers:
            self._count(model)
        self.steps = None
        self.set_steps(steps)

    def set_steps(self, steps: int) -> None:
        """Configure the hooks for windows of `steps` steps (MagCache reads its ratios per
        step; a farm actor's pipeline serves jobs of any step count, and its warm-up one)."""
        if steps == self.steps or (self.steps is not None and self.kind != "mag"):
            return
        for model in self.denoisers:
            if model.is_cache_enabled:
                model.disable_cache()
            model.enable_cache(diffusers_config(self.spec, steps, self._timestep, self._modules))
        self._hooks = {id(model): list(_per_hook_states(model)) for model in self.denoisers}
        self._swapped.clear()
        self.steps = steps

    # -- scoping -------------------------------------------------------------------------------
    @contextmanager
    def scope(self, model, window: int, branch: str):
        """Make the calls inside under window `window`'s own state for `branch` ("cond",
        "uncond")."""
        name = f"window {window} {branch}"
        self._swap(model, name)
        with model.cache_context(name):
            yield

    def reset(self) -> None:
        """Forget every window's state (a new shard, or a window rendered on its own)."""
        for model in self.denoisers:
            model._reset_stateful_cache()
        self._swapped.clear()

    def _swap(self, model, name: str) -> None:
        states = self._swapped.setdefault(name, {})
        for hook in self._hooks[id(model)]:
            if id(hook) not in states:
                states[id(hook)] = type(hook.state)()
            hook.state = states[id(hook)]

    # -- what it saved ---------------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        """(Linear calls made in the blocks, Linear calls with every block computed), since load."""
        return self.evaluated, self.possible

    def _count(self, model) -> None:
        import torch

        for block in _blocks(model):
            linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]

            def called(module, args, n=len(linears)):
                self.possible += n

            def evaluated(module, args):
                self.evaluated += 1

            block.register_forward_pre_hook(called)
            for linear in linears:
                linear.register_forward_pre_hook(evaluated)


def _blocks(model) -> list:
    for name in ("blocks", "transformer_blocks"):
        blocks = getattr(model, name, None)
        if blocks is not None:
            return list(blocks)
    raise ValueError(f"{type(model).__name__} has no transformer blocks (`blocks`) to cache")


def _per_hook_states(model):
    """The cache hooks under `model` that keep one `state` per hook, not one per context."""
    from diffusers.hooks.hooks import StateManager

    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for hook in registry.hooks.values():
            state = getattr(hook, "state", None)
            if hook._is_stateful and state is not None and not isinstance(state, StateManager):
                yield hook
