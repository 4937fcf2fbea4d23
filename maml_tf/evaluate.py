"""The test protocol: a fixed set of tasks drawn with a fixed seed, the metric of every task after
0..S adaptation steps, and the mean with its 95% confidence interval, 1.96 * std / sqrt(n)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from maml_tf import maml, tasks
from maml_tf.nets import Model


def fixed_tasks(source, n_tasks: int, seed: int):
    """Task j of the set is drawn from its own generator (seed, j): the set does not depend on how
    it is batched, and the first n tasks of a larger set are the same tasks."""
    for j in range(n_tasks):
        yield source.sample(tasks.stream_rng(seed, j), 1)


def _batches(source, n_tasks: int, seed: int, batch: int):
    chunk = []
    for task in fixed_tasks(source, n_tasks, seed):
        chunk.append(task)
        if len(chunk) == batch:
            yield {k: np.concatenate([c[k] for c in chunk]) for k in tasks.MODEL_KEYS}
            chunk = []
    if chunk:
        yield {k: np.concatenate([c[k] for c in chunk]) for k in tasks.MODEL_KEYS}


def summarize(per_task: np.ndarray) -> dict:
    """per_task [steps + 1, n] -> mean and 95% CI half-width per step."""
    n = per_task.shape[1]
    return {"mean": per_task.mean(axis=1), "ci95": 1.96 * per_task.std(axis=1) / np.sqrt(n),
            "per_task": per_task}


_compiled = {}


def compiled_steps(model: Model, loss_fn, metric_fn, steps: int, xla: bool | None = None):
    """The compiled `maml.evaluate_steps` that `evaluate` runs on each batch of tasks, with XLA
    when `xla` (default: as the model prefers, `Model.xla`); one per setting, reused."""
    xla = model.xla if xla is None else xla
    key = (model, loss_fn, metric_fn, steps, xla)
    if key not in _compiled:
        _compiled[key] = tf.function(
            lambda p, b, a: maml.evaluate_steps(model, p, b, loss_fn, metric_fn, steps, a),
            jit_compile=xla)
    return _compiled[key]


def evaluate(model: Model, params: dict, source, loss_fn, metric_fn, steps: int, alpha,
             n_tasks: int = 600, seed: int = 12345, batch: int = 50, xla: bool | None = None) -> dict:
    """Metric of each of `n_tasks` fixed test tasks after 0..steps inner steps of size `alpha`,
    compiled with XLA when `xla` (default: as the model prefers, `Model.xla`)."""
    fn = compiled_steps(model, loss_fn, metric_fn, steps, xla)
    params = {k: tf.convert_to_tensor(v) for k, v in params.items()}
    a = {k: tf.convert_to_tensor(v) for k, v in alpha.items()} if isinstance(alpha, dict) \
        else tf.constant(alpha, tf.float32)
    out = [fn(params, b, a).numpy() for b in _batches(source, n_tasks, seed, batch)]
    return summarize(np.concatenate(out, axis=1))
