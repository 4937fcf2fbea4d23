"""Task distributions. A task source has `sample(rng, n_tasks) -> batch`, a dict of NumPy arrays
with a leading task axis: `xs`, `ys` (support set) and `xq`, `yq` (query set), plus per-task
descriptors that the model never sees (for the sinusoid: `amplitude`, `phase`). What the model
takes is a `TaskBatch` (`TaskBatch.of(batch)`).

The batch of meta-iteration i is drawn from `np.random.default_rng([seed, i])`, so the data stream
depends only on (seed, iteration): a resumed run sees exactly the tasks it would have seen.
"""
from __future__ import annotations

import math
import typing
import zipfile

import numpy as np


class TaskBatch(typing.NamedTuple):
    """A batch of tasks as the model takes it (leading task axis T): support inputs `xs` [T, K, ...]
    and targets `ys`, query inputs `xq` [T, Q, ...] and targets `yq`; NumPy arrays or tensors."""
    xs: typing.Any
    ys: typing.Any
    xq: typing.Any
    yq: typing.Any

    @classmethod
    def of(cls, batch: dict, convert=None) -> "TaskBatch":
        """The model's part of a sampled batch (a dict with descriptors), each array passed
        through `convert` (e.g. tf.convert_to_tensor) when given."""
        convert = convert or (lambda v: v)
        return cls(*(convert(batch[k]) for k in cls._fields))


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


class MissingData(FileNotFoundError):
    """A dataset file is absent; the message says which make target or command produces it."""


class FewShot:
    """N-way K-shot episodes from images held in memory, [classes, examples, H, W, C].

    Each task draws `way` classes of the split, labels them 0..way-1 in a random order, and draws
    `shot` support and `query` query examples of each class, all distinct. With `rotate`, each
    class of a task gets one random rotation by a multiple of 90 degrees, applied to all its images
    (Omniglot: the rotated characters are new classes; in training and testing alike)."""

    def __init__(self, images: np.ndarray, way: int, shot: int, query: int, rotate: bool, scale: float = 1.0):
        self.images, self.way, self.shot, self.query = images, way, shot, query
        self.rotate, self.scale = rotate, np.float32(scale)
        n_classes, n_examples = images.shape[:2]
        if way > n_classes or shot + query > n_examples:
            raise ValueError(f"{way}-way {shot}-shot with {query} queries needs {way} classes of "
                             f"{shot + query} examples; this split has {n_classes} of {n_examples}")

    def sample(self, rng: np.random.Generator, n_tasks: int) -> dict:
        n_classes, n_examples = self.images.shape[:2]
        classes = np.argsort(rng.random((n_tasks, n_classes)), axis=1)[:, :self.way]       # [T, N]
        picks = np.argsort(rng.random((n_tasks, self.way, n_examples)), axis=2)[..., :self.shot + self.query]
        x = self.images[classes[..., None], picks]                                         # [T, N, K+Q, H, W, C]
        if self.rotate:
            turns = rng.integers(0, 4, size=(n_tasks, self.way))
            for k in (1, 2, 3):
                x[turns == k] = np.rot90(x[turns == k], k, axes=(2, 3))
        x = x.astype(np.float32) * self.scale
        labels = np.broadcast_to(np.arange(self.way, dtype=np.int32)[None, :, None],
                                 (n_tasks, self.way, self.shot + self.query))
        flat = lambda a, lo, hi: a[:, :, lo:hi].reshape((n_tasks, -1) + a.shape[3:])
        k = self.shot
        return {"xs": flat(x, 0, k), "ys": flat(labels, 0, k), "xq": flat(x, k, None),
                "yq": flat(labels, k, None), "classes": classes}


OMNIGLOT_SPLIT = {"train": 1100, "val": 100, "test": 423}   # official sizes, characters


def omniglot_split(n_characters: int, split: str, seed: int) -> np.ndarray:
    """Character indices of a split: a seeded permutation of all characters, cut 1100/100/423."""
    order = np.random.default_rng(seed).permutation(n_characters)
    a, b = OMNIGLOT_SPLIT["train"], OMNIGLOT_SPLIT["train"] + OMNIGLOT_SPLIT["val"]
    return {"train": order[:a], "val": order[a:b], "test": order[b:]}[split]


_cache: dict = {}


def _load_once(key, loader):
    if key not in _cache:
        try:
            _cache[key] = loader()
        except MissingData:
            raise
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise MissingData(f"dataset file {key[1]} cannot be read ({type(e).__name__}: {e}): it is "
                              f"truncated or corrupt. Delete it and prepare it again (make data-{key[0]})") from None
    return _cache[key]


class Omniglot(FewShot):
    """Omniglot episodes (28x28, ink = 1). The 1623 characters are split 1100 / 100 / 423 by a
    seeded permutation (official sizes; the official shuffle depended on file-system order and
    cannot be replayed), irrespective of alphabet."""

    def __init__(self, way: int, shot: int, query: int, path: str = "data/omniglot/omniglot28.npz",
                 rotate: bool = True, split_seed: int = 1, split: str = "train"):
        from data_prep.omniglot import load_omniglot
        path = _resolve(path, "make data-omniglot")
        images = _load_once(("omniglot", str(path)), lambda: load_omniglot(path)[0][..., None])
        super().__init__(images[omniglot_split(len(images), split, split_seed)], way, shot, query, rotate)


class MiniImagenet(FewShot):
    """MiniImagenet episodes (84x84x3, pixels / 255), the Ravi & Larochelle class split."""

    def __init__(self, way: int, shot: int, query: int, path: str = "data/miniimagenet",
                 split: str = "train"):
        from data_prep.miniimagenet import load_split
        file = _resolve(f"{path}/{split}.npz", "make data-miniimagenet")
        images = _load_once(("miniimagenet", str(file)), lambda: load_split(file, raw=True)[0])
        super().__init__(images, way, shot, query, rotate=False, scale=1.0 / 255.0)


def _resolve(path, how: str):
    from pathlib import Path
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = Path(__file__).resolve().parent.parent / p
    if not p.exists():
        raise MissingData(f"dataset file {path} not found: run `{how}` first (see README, Data)")
    return p


BUILDERS: dict[str, type] = {"sinusoid": Sinusoid, "omniglot": Omniglot, "miniimagenet": MiniImagenet}


def build(spec: dict, split: str = "train"):
    """Task source from a config's `task` section, for the split 'train', 'val' or 'test'."""
    spec = dict(spec)
    return BUILDERS[spec.pop("kind")](**spec, split=split)


def stream_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of batch `index` of the stream `seed` (independent of every other batch)."""
    return np.random.default_rng([seed, index])
