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
# expansion about the normal quantile (within 2.1e-3 at 11 degrees of freedom, exact as df grows)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"t975 needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


# against_seeds's verdict needs this many runs: with two, one degree of freedom for the seeds'
# spread, its coverage fell to 0.88 in simulations where the seed effect is as large as the test
# noise or larger (three runs: 0.93, five: 0.95; tests/test_fewshot.py simulates it)
SEEDS_FOR_A_VERDICT = 3


def against_seeds(per_task, other: float, other_ci95: float | None = None) -> tuple[float, float, int]:
    """How far a published number `other` lies from the mean of our runs with different seeds,
    and the 95% half-width that seed variance and the test samples allow: the published run is
    one more seed, evaluated on its own test tasks (95% CI `other_ci95`; when the paper gives
    none, our runs' own test CI stands in for it: the same protocol and number of tasks).
    `per_task` [n seeds >= 2, T tasks]: each run's metric on the same T test tasks.

    With run i's result x_i = mu + a_i + e_i (a_i its seed's effect, variance s_a^2; e_i its error
    on our test sample, variance s_t^2 = var over tasks / T, covariance c between two runs, since
    one task is hard for every run) and the paper's y = mu + a + e' (e' from other tasks, variance
    s_p^2): var(y - mean x) = s_a^2 (1 + 1/n) + s_p^2 + c + (s_t^2 - c) / n. The spread of our n
    results, S^2 = var(x_i), estimates s_a^2 + s_t^2 - c; so the variance is estimated as
    S^2 (1 + 1/n) + s_p^2 + 2 c - s_t^2, with s_t^2 and c from the per-task results (neither the
    sum of all test variances, which counts the part of our test error already in S^2 twice, nor
    S^2 alone, which misses the part our runs share). Student's t at the Welch-Satterthwaite
    degrees of freedom (n - 1 for S^2, T - 1 for the test parts), rounded down.
    Returns (other - mean, half-width, degrees of freedom)."""
    x = np.asarray(per_task, dtype=np.float64)
    n, t = x.shape
    if n < 2 or t < 2:
        raise ValueError(f"against_seeds needs at least two seeds on at least two tasks, got {x.shape}")
    cov = np.cov(x) / t                          # [n, n]: the runs' test errors' (co)variances
    s_t2 = float(np.mean(np.diag(cov)))
    c = float((cov.sum() - np.trace(cov)) / (n * (n - 1)))
    s_p2 = s_t2 if other_ci95 is None else (other_ci95 / 1.96) ** 2
    seeds = float(x.mean(axis=1).var(ddof=1)) * (1 + 1 / n)
    var = max(seeds + s_p2 + 2 * c - s_t2, s_p2)   # never below the paper's own test variance
    test = var - seeds
    parts = [(seeds, n - 1), (abs(test), t - 1)]
    df = max(1, int(var ** 2 / sum(v ** 2 / d for v, d in parts if v > 0))) if var > 0 else n - 1
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
