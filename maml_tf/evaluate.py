"""The test protocol, for every domain: a fixed set of tasks drawn with a fixed seed, the metric of
every task after 0..S adaptation steps, the mean with its 95% confidence interval
(1.96 * std / sqrt(n)); the one rule for the test-time step size, the step-size search of the
baselines on training tasks, and the oracle rule (an oracle does not adapt)."""
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
            yield tasks.TaskBatch.of({k: np.concatenate([c[k] for c in chunk]) for k in tasks.TaskBatch._fields})
            chunk = []
    if chunk:
        yield tasks.TaskBatch.of({k: np.concatenate([c[k] for c in chunk]) for k in tasks.TaskBatch._fields})


def ci95(per_task: np.ndarray) -> np.ndarray:
    """Half-width of the 95% confidence interval of the mean over the last axis (the tasks),
    1.96 * std / sqrt(n), in the precision of the values (float32 metrics, float64 returns);
    0 for a single task."""
    per_task = np.asarray(per_task)
    n = per_task.shape[-1]
    return 1.96 * per_task.std(axis=-1) / np.sqrt(n) if n > 1 else np.zeros(per_task.shape[:-1])


# two-sided 95% quantiles of Student's t for 1..10 degrees of freedom; beyond, a Cornish-Fisher
# expansion about the normal quantile (within 2e-3 at 10 degrees of freedom, exact as df grows)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"t975 needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def against_seeds(seed_means, test_ci95: float, other: float, other_ci95: float,
                  test_tasks: int = 600) -> tuple[float, float, int]:
    """How far a published number `other` (95% CI `other_ci95` from its own `test_tasks` test tasks)
    lies from the mean of our runs with different seeds (`seed_means`, n >= 2, all on the same test
    tasks, each with about the test CI `test_ci95`), and the 95% half-width that seed variance and
    both test samples allow: the published run is one more seed, on other tasks. The variance of
    the difference is s^2 (1 + 1/n) (a new seed against our mean of n: n - 1 degrees of freedom)
    plus each test sample's (our seeds share one, so it does not average out; test_tasks - 1 degrees
    of freedom each), with Student's t at the Welch-Satterthwaite degrees of freedom, rounded down.
    Returns (other - mean, half-width, degrees of freedom)."""
    x = np.asarray(seed_means, dtype=np.float64)
    n = len(x)
    if n < 2:
        raise ValueError("against_seeds needs the results of at least two seeds")
    parts = [(x.var(ddof=1) * (1 + 1 / n), n - 1), ((test_ci95 / 1.96) ** 2, test_tasks - 1),
             ((other_ci95 / 1.96) ** 2, test_tasks - 1)]
    var = sum(v for v, _ in parts)
    df = max(1, int(var ** 2 / sum(v ** 2 / d for v, d in parts))) if var > 0 else n - 1
    return float(other - x.mean()), float(t975(df) * np.sqrt(var)), df


def summarize(per_task: np.ndarray) -> dict:
    """per_task [steps + 1, n] -> mean and 95% CI half-width per step."""
    return {"mean": per_task.mean(axis=1), "ci95": ci95(per_task), "per_task": per_task}


def step_size(cfg, learned=None):
    """The test-time step size of a run, decided here only: the meta-learned one (`learned`, when
    the run learns its step sizes), else eval.inner_lr, else the training train.inner_lr. (A
    baseline whose step size is searched on training tasks passes the result of `tune_step_size`
    instead; RL adaptation halves it after the first step, `maml.halving`.)"""
    if learned is not None:
        return learned
    return cfg.train.inner_lr if cfg.eval.inner_lr is None else cfg.eval.inner_lr


def tune_step_size(grid, score, higher_is_better: bool) -> tuple[float, dict]:
    """The value of `grid` with the best `score(alpha)` (measured on training tasks, never on test
    tasks); a score that is not finite (a diverging step size) is the worst. Returns (alpha,
    {alpha: score})."""
    scores = {a: float(score(a)) for a in grid}
    worst = -np.inf if higher_is_better else np.inf
    ranked = {a: v if np.isfinite(v) else worst for a, v in scores.items()}
    return (max if higher_is_better else min)(ranked, key=ranked.get), ranked


def not_adapted(values, steps: int) -> list:
    """The oracle rule: a method that does not adapt reports its step-0 value at every step."""
    return [values[0]] * (steps + 1)


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
