"""Multi-task parameter averaging (paper Appendix C, Table 2): many regressors, each trained from a
random initialisation on its own sinusoid task until its MSE is below a target, and their
parameters averaged.

The regressors are trained side by side: their parameters carry a leading task axis, which the
pure models of `maml_tf.nets` take as they are (every layer one batched matmul over tasks), and
one compiled Adam step updates all of them (the per-entry Adam update of independent parameter
sets is independent). Each step draws fresh inputs for every task ("plenty of data"). A
regressor is done the first time its MSE on a fixed grid of the input range falls below the
target; its parameters are kept from that moment. A regressor still far from the target (MSE
above `stuck_mse`) after `restart_after` steps is started again from a new random initialisation
(a stuck ReLU net), and the number of restarts is reported.

Regularisation (each with a strength `strength`, added to the regressor's MSE):
  none  no penalty;
  l2    weight decay: strength * sum of the squared parameters;
  mean  toward the running mean of the regressors trained so far: the regressors are trained in
        `chunks` groups one after the other, and group k is pulled toward the mean of the
        parameters of groups 0..k-1 (strength * squared distance); group 0 has no mean to go to.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf

from maml_tf import nets


@dataclasses.dataclass
class Settings:
    regressors: int = 500
    sizes: tuple = (1, 40, 40, 1)
    amplitude: tuple = (0.1, 5.0)
    phase: tuple = (0.0, math.pi)
    x_range: tuple = (-5.0, 5.0)
    points: int = 100              # fresh inputs per task and step
    grid: int = 200                # the fixed inputs the target is checked on
    target: float = 0.02           # MSE on the grid below which a regressor is done
    learning_rate: float = 3e-3    # Adam
    max_steps: int = 60000
    check_every: int = 250
    restart_after: int = 10000     # steps after which a regressor still above stuck_mse restarts
    stuck_mse: float = 0.5
    max_restarts: int = -1         # >= 0: give up (the strength is too strong) past this many
    chunks: int = 10               # groups trained one after the other (regularisation "mean")


def task_parameters(n: int, seed: int, s: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes and phases of `n` training tasks, drawn from the sinusoid distribution."""
    rng = np.random.default_rng([seed, 7])
    return (rng.uniform(*s.amplitude, size=n).astype(np.float32),
            rng.uniform(*s.phase, size=n).astype(np.float32))


def _stack_init(model: nets.Model, seeds) -> dict:
    inits = [model.init(int(k)) for k in seeds]
    return {k: tf.stack([p[k] for p in inits]) for k in inits[0]}


class _Trainer:
    """One compiled Adam step and one compiled check for a group of `n` regressors."""

    def __init__(self, model: nets.Model, s: Settings, reg: str, strength: float):
        self.model, self.s, self.reg, self.strength = model, s, reg, float(strength)
        grid = np.linspace(*s.x_range, s.grid, dtype=np.float32)
        self.grid = tf.constant(grid[None, :, None])

        def target_fn(x, amp, phase):
            return amp[:, None, None] * tf.sin(x - phase[:, None, None])

        def penalty(p, anchor, strength):
            if self.reg == "l2":
                return strength * tf.add_n([tf.reduce_sum(tf.reshape(v, [v.shape[0], -1]) ** 2, 1)
                                                 for v in p.values()])
            if self.reg == "mean":
                return strength * tf.add_n([tf.reduce_sum(tf.reshape(v - anchor[k][None], [v.shape[0], -1]) ** 2, 1)
                                                 for k, v in p.items()])
            return 0.0

        def step(p, m, v, t, amp, phase, anchor, strength, key):
            n = amp.shape[0]
            x = tf.random.stateless_uniform([n, s.points, 1], key, *s.x_range)
            with tf.GradientTape() as tape:
                tape.watch(p)
                mse = tf.reduce_mean((model.apply(p, x) - target_fn(x, amp, phase)) ** 2, axis=[1, 2])
                loss = tf.reduce_sum(mse + penalty(p, anchor, strength))
            g = tape.gradient(loss, p)
            t = t + 1.0  # per regressor: a restarted one starts its Adam state again
            c1, c2 = 1.0 - 0.9 ** t, 1.0 - 0.999 ** t
            new_p, new_m, new_v = {}, {}, {}
            for k in p:
                shape = [-1] + [1] * (p[k].shape.rank - 1)
                new_m[k] = 0.9 * m[k] + 0.1 * g[k]
                new_v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
                update = (new_m[k] / tf.reshape(c1, shape)) / (tf.sqrt(new_v[k] / tf.reshape(c2, shape)) + 1e-8)
                new_p[k] = p[k] - s.learning_rate * update
            return new_p, new_m, new_v, t

        def check(p, amp, phase):
            n = amp.shape[0]
            x = tf.tile(self.grid, [n, 1, 1])
            return tf.reduce_mean((model.apply(p, x) - target_fn(x, amp, phase)) ** 2, axis=[1, 2])

        self.step = tf.function(step, jit_compile=True)
        self.check = tf.function(check, jit_compile=True)

    def train(self, amp: np.ndarray, phase: np.ndarray, seed: int, anchor: dict | None) -> dict:
        s, n = self.s, len(amp)
        seeds = np.arange(n) + seed * 100_000
        p = _stack_init(self.model, seeds)
        m = {k: tf.zeros_like(v) for k, v in p.items()}
        v = {k: tf.zeros_like(x) for k, x in p.items()}
        t = tf.zeros([n])
        # the first group of the "mean" variant has no mean to go to: no penalty
        strength = tf.constant(self.strength if (anchor is not None or self.reg != "mean") else 0.0)
        anchor = anchor or {k: tf.zeros(x.shape[1:]) for k, x in p.items()}
        amp_t, phase_t = tf.constant(amp), tf.constant(phase)
        kept = {k: x.numpy() for k, x in p.items()}
        done = np.zeros(n, bool)
        steps_to_target = np.full(n, -1)
        since = np.zeros(n, int)
        restarts = np.zeros(n, int)
        mse = np.full(n, np.inf, np.float32)
        for i in range(1, s.max_steps + 1):
            p, m, v, t = self.step(p, m, v, t, amp_t, phase_t, anchor, strength, tf.constant([seed, i], tf.int64))
            if i % s.check_every:
                continue
            since += s.check_every
            mse = self.check(p, amp_t, phase_t).numpy()
            newly = (mse < s.target) & ~done
            if newly.any():
                for k in kept:
                    kept[k][newly] = p[k].numpy()[newly]
                steps_to_target[newly] = i
                done |= newly
            if done.all():
                break
            stuck = ~done & (since >= s.restart_after) & (mse > s.stuck_mse)
            if stuck.any():  # a new random initialisation for each stuck regressor
                idx = np.flatnonzero(stuck)
                restarts[idx] += 1
                if 0 <= s.max_restarts < restarts.max():
                    break
                fresh = _stack_init(self.model, seeds[idx] + 10_000 * restarts[idx])
                mask = tf.constant(stuck)
                def put(x, y):
                    full = np.zeros(x.shape, np.float32)
                    full[idx] = y.numpy() if hasattr(y, "numpy") else y
                    shape = [-1] + [1] * (x.shape.rank - 1)
                    return tf.where(tf.reshape(mask, shape), full, x)
                p = {k: put(p[k], fresh[k]) for k in p}
                m = {k: put(m[k], np.zeros(fresh[k].shape, np.float32)) for k in m}
                v = {k: put(v[k], np.zeros(fresh[k].shape, np.float32)) for k in v}
                t = tf.where(mask, 0.0, t)
                since[idx] = 0
        for k in kept:  # a regressor that never reached the target: its last parameters
            kept[k][~done] = p[k].numpy()[~done]
        final = np.where(done, 0.0, mse)
        return {"params": kept, "done": done, "steps": steps_to_target, "restarts": restarts,
                "mse_not_done": final}


def train_regressors(s: Settings, reg: str, strength: float, seed: int, n: int | None = None,
                     log=None) -> dict:
    """Train `n` (default s.regressors) regressors on tasks drawn with `seed`; returns the average
    parameters and what training took (how many reached the target, steps, restarts)."""
    if reg not in ("none", "l2", "mean"):
        raise ValueError(f"regularisation must be none, l2 or mean, got {reg!r}")
    n = n or s.regressors
    model = nets.mlp(list(s.sizes))
    amp, phase = task_parameters(n, seed, s)
    trainer = _Trainer(model, s, reg, strength)
    chunks = s.chunks if reg == "mean" else 1
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    parts, t0 = [], time.perf_counter()
    for c in range(chunks):
        lo, hi = bounds[c], bounds[c + 1]
        anchor = None
        if parts:
            anchor = {k: tf.constant(np.concatenate([q["params"][k] for q in parts]).mean(0)) for k in parts[0]["params"]}
        parts.append(trainer.train(amp[lo:hi], phase[lo:hi], seed * 1000 + c, anchor))
        if log:
            log(f"  {reg} (strength {strength:g}): group {c + 1}/{chunks}: "
                f"{int(sum(q['done'].sum() for q in parts))} of {hi} at MSE < {s.target}")
    cat = lambda key: np.concatenate([q[key] for q in parts])
    params = {k: np.concatenate([q["params"][k] for q in parts]) for k in parts[0]["params"]}
    done, steps = cat("done"), cat("steps")
    return {"average": {k: v.mean(0) for k, v in params.items()}, "reached": int(done.sum()), "n": n,
            "median_steps": float(np.median(steps[done])) if done.any() else None,
            "max_steps": int(steps.max()), "restarts": int(cat("restarts").sum()),
            "worst_mse_not_reached": float(cat("mse_not_done").max()),
            "param_norm": float(np.sqrt(sum((v ** 2).sum() for v in params.values()) / n)),
            "spread": float(np.sqrt(sum(((v - v.mean(0)) ** 2).sum() for v in params.values()) / n)),
            "seconds": round(time.perf_counter() - t0, 1)}
