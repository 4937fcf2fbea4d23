"""Task distributions. A task source has `sample(rng, n_tasks) -> batch`, a dict of NumPy arrays
with a leading task axis: `xs`, `ys` (support set) and `xq`, `yq` (query set), plus per-task
descriptors that the model never sees (for the sinusoid: `amplitude`, `phase`).

The batch of meta-iteration i is drawn from `np.random.default_rng([seed, i])`, so the data stream
depends only on (seed, iteration): a resumed run sees exactly the tasks it would have seen.
"""
from __future__ import annotations

import math
import typing

import numpy as np

MODEL_KEYS = ("xs", "ys", "xq", "yq")


class Sinusoid:
    """y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5] (paper §5.1).

    `oracle_inputs` appends (A, phase) to every input, for the oracle baseline.
    `support_range` draws the support inputs from a sub-interval (e.g. one half of the range,
    as in Figure 2's right panels); query inputs always cover the whole range."""

    def __init__(self, support: int = 10, query: int = 10, amplitude: list[float] = (0.1, 5.0),
                 phase: list[float] = (0.0, math.pi), x_range: list[float] = (-5.0, 5.0),
                 support_range: typing.Optional[list[float]] = None, oracle_inputs: bool = False,
                 split: str = "train"):
        self.support, self.query = support, query
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.support_range = support_range or x_range
        self.oracle_inputs = oracle_inputs

    @property
    def input_dim(self) -> int:
        return 3 if self.oracle_inputs else 1

    def inputs(self, x: np.ndarray, amplitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """Model inputs for points x [T, n]: [T, n, 1], or [T, n, 3] with the oracle's (A, phase)."""
        x = x[..., None]
        if not self.oracle_inputs:
            return x.astype(np.float32)
        a = np.broadcast_to(amplitude[:, None, None], x.shape)
        p = np.broadcast_to(phase[:, None, None], x.shape)
        return np.concatenate([x, a, p], axis=-1).astype(np.float32)

    def sample(self, rng: np.random.Generator, n_tasks: int) -> dict:
        amp = rng.uniform(*self.amplitude, size=n_tasks)
        phase = rng.uniform(*self.phase, size=n_tasks)
        xs = rng.uniform(*self.support_range, size=(n_tasks, self.support))
        xq = rng.uniform(*self.x_range, size=(n_tasks, self.query))
        f = lambda x: (amp[:, None] * np.sin(x - phase[:, None]))[..., None].astype(np.float32)
        return {"xs": self.inputs(xs, amp, phase), "ys": f(xs), "xq": self.inputs(xq, amp, phase),
                "yq": f(xq), "amplitude": amp, "phase": phase}


BUILDERS: dict[str, type] = {"sinusoid": Sinusoid}


def build(spec: dict, split: str = "train"):
    """Task source from a config's `task` section, for the split 'train', 'val' or 'test'."""
    spec = dict(spec)
    return BUILDERS[spec.pop("kind")](**spec, split=split)


def stream_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of batch `index` of the stream `seed` (independent of every other batch)."""
    return np.random.default_rng([seed, index])
