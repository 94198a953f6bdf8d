"""Run a co-denoised job's shards in turn in this process, with the actors' own code.

`lockstep(renderer, spec, shards)` spreads the job's windows over `shards` shards
(farm.codenoise.partition), each run by `renderer` (or by its own renderer, when
`renderer` is a list of one per shard, as each actor holds its own pipeline), runs each step's `evaluate` on every shard, hands each peer
exactly what an actor's `latent_step` call returns, `apply`s, and decodes in order, each
shard continuing the decoder's state the shard before handed over (as
scheduler/codenoise.py does for a causal decoder). Only the transport differs from the
farm's: the tests that render through Ray compare the farm's frames with these.
"""

from __future__ import annotations

import numpy as np

from farm.codenoise import LatentJob, checkpoint_steps, fuse_weights, partition
from farm.latent import ShardRunner
from farm.pipelines import descriptor
from farm.plan import plan_windows
from farm.tasks import WindowTask


def lockstep(renderer, spec, shards: int) -> np.ndarray:
    renderers = renderer if isinstance(renderer, list) else [renderer] * shards
    plan = plan_windows(spec)
    pipeline = descriptor(spec.model.pipeline)
    windows = plan.latent_windows
    job = LatentJob(windows, fuse_weights(windows, spec.window.blend), spec.steps, spec.seed, spec.height,
                    spec.width, checkpoint_steps(spec.steps, spec.window.checkpoint_every),
                    causal_decode=pipeline.causal_decode)
    tasks = [pipeline.window_inputs(spec, WindowTask.from_spec(spec, w), None) for w in plan.windows]
    cut = partition(windows, shards)
    runners = [ShardRunner(r, job, s, [tasks[w] for w in s.windows], 0) for r, s in zip(renderers, cut)]
    for _ in range(job.steps):
        sent = [r.evaluate() for r in runners]
        for s, r in zip(cut, runners):
            r.apply([sent[k][cut[k].peers.index(s.index)] for k in s.peers])
    frames, carry = [], None
    for r in runners:
        got, carry = r.decode(*r.shard.owns, carry=carry, hand_over=True)
        frames.append(got)
    return np.concatenate(frames)
