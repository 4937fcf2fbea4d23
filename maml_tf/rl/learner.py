"""MAML-TRPO (paper §5.3) and the TRPO baselines: `PolicyLearner` holds the policy parameters as
variables and runs one meta-iteration,
    maml:       pre-update samples -> inner step (alpha) -> post-update samples -> one TRPO step on
                the post-update surrogate -mean(ratio * A) averaged over tasks, differentiated through
                the inner step (second order), KL (old post-update policy || new) pooled over all valid
                samples of all tasks (as the official `mean_kl`), bound 0.01, Hessian-vector products
                by finite differences (`trpo.trpo_step`);
    pretrained: TRPO on the pre-update surrogate of all tasks (no inner step), the official
                `use_maml=False`; the oracle is the same on the oracle environment;
    random:     no training;
with the gradient, the KL and the CG search direction compiled by `tf.function`. `RLRun` is the
learner that the run loop (`maml_tf.loop`) trains: the iteration's tasks and rollouts from
(seed, iteration), the best-checkpoint score, the log.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from maml_tf import maml, nets, trpo
from maml_tf.config import RLConfig, RLTrain
from maml_tf.loop import Score
from maml_tf.rl.distributions import (TRPOSamples, gaussian_log_prob, inner_targets, loss_inputs, pooled_kl,
                                      split_dist, surrogate_loss, valid_count, vpg_loss)
from maml_tf.rl.sampler import RolloutBatch, env_dims, sampler, seed_of, task_sampler


def build_model(cfg: RLConfig) -> nets.Model:
    """The config's policy network, sized by its environment."""
    obs_dim, act_dim = env_dims(cfg.env, cfg.env_kwargs)
    return nets.build({**cfg.model, "obs_dim": obs_dim, "act_dim": act_dim})


class PolicyLearner:
    """Policy parameters as variables, and the (compiled) meta-iteration of MAML-TRPO or TRPO.

    `inner_steps` = 1 for MAML (the official num_grad_updates), 0 for the pretrained / oracle
    baselines (TRPO on the pre-update samples of all tasks). `task_chunk`: the tasks whose loss and
    KL gradients are computed at once (0: all; `maml.chunk_size`), which bounds the memory: the
    ant's peak fell from 2.9 to 2.3 GB with 10 of its 40 tasks at a time, at the same speed."""

    def __init__(self, model: nets.Model, seed: int, inner_lr: float, inner_steps: int = 1,
                 first_order: bool = False, max_kl: float = trpo.MAX_KL, cg_iters: int = trpo.CG_ITERS,
                 cg_damping: float = trpo.DAMPING, backtrack_ratio: float = trpo.BACKTRACK_RATIO,
                 max_backtracks: int = trpo.MAX_BACKTRACKS, fd_base_eps: float = trpo.FD_BASE_EPS,
                 xla: bool = False, task_chunk: int = RLTrain.task_chunk):
        self.model, self.inner_lr, self.inner_steps = model, inner_lr, inner_steps
        self.first_order = first_order
        self.trpo_args = dict(max_kl=max_kl, backtrack_ratio=backtrack_ratio, max_backtracks=max_backtracks)
        self.params = {k: tf.Variable(v, name=k) for k, v in model.init(seed).items()}
        self.step = tf.Variable(0, dtype=tf.int64, name="step")
        self.wall_time = tf.Variable(0.0, dtype=tf.float64, name="wall_time")
        self.env_steps = tf.Variable(0, dtype=tf.int64, name="env_steps")
        self.checkpoint = tf.train.Checkpoint(params=self.params, step=self.step, wall_time=self.wall_time,
                                              env_steps=self.env_steps)

        def adapt(params, d0):  # the post-update parameters of every task
            if self.inner_steps == 0:
                return params
            return maml.adapt(model, params, d0.obs, inner_targets(d0), vpg_loss, self.inner_steps,
                              inner_lr, first_order)

        # The loss, the KL and their gradients are sums over tasks, computed `task_chunk` tasks at
        # a time (`maml.sum_over_tasks`): the memory of one chunk's second-order graph at a time.
        # Each piece takes one chunk and the normalisers of all the tasks (their number, and the
        # valid samples that the pooled KL divides by).
        def over_tasks(piece, params, d0, d1):
            n, count = d1.obs.shape[0], valid_count(d1.mask)
            return maml.sum_over_tasks(lambda d: piece(params, *d, n, count), (d0, d1), task_chunk)

        def loss_part(params, d0, d1, n_tasks, count):  # these tasks' share of the mean surrogate
            out = model.apply(adapt(params, d0), d1.obs)
            return tf.reduce_sum(surrogate_loss(out, (d1.actions, d1.adv, d1.mask, d1.old_logp))) / n_tasks

        def kl_part(params, d0, d1, n_tasks, count):  # these tasks' share of the pooled KL
            out = model.apply(adapt(params, d0), d1.obs)
            return pooled_kl(out, d1.old_mean, d1.old_log_std, d1.mask, count)

        grad_of = lambda part: lambda params, *chunk: trpo.value_and_grad(lambda p: part(p, *chunk), params)
        loss, kl = functools.partial(over_tasks, loss_part), functools.partial(over_tasks, kl_part)
        loss_grad = functools.partial(over_tasks, grad_of(loss_part))
        kl_grad = functools.partial(over_tasks, grad_of(kl_part))
        loss_kl = functools.partial(over_tasks, lambda *a: (loss_part(*a), kl_part(*a)))

        def direction(params, g, d0, d1):
            fn = trpo.make_direction_fn(grad_fn=lambda p: kl_grad(p, d0, d1)[1], cg_iters=cg_iters,
                                        damping=cg_damping, base_eps=fd_base_eps)
            return fn(params, g)

        compile_ = lambda f: tf.function(f, jit_compile=xla)
        self._kl_grad = compile_(kl_grad)  # (`make bench` times one: a finite-difference HVP takes two)
        self._loss, self._kl = compile_(loss), compile_(kl)
        self._loss_grad, self._loss_kl = compile_(loss_grad), compile_(loss_kl)
        self._direction = compile_(direction)
        self._adapt = compile_(adapt)
        self._dist = compile_(lambda p, x: model.apply(p, x))

    def param_values(self) -> dict:
        return {k: v.value() for k, v in self.params.items()}

    def old_dist(self, policy_params: dict, b1) -> TRPOSamples:
        """The sampling policy's distribution on its own samples (constants of the TRPO step)."""
        mean, log_std = split_dist(self._dist(policy_params, b1.obs))
        return TRPOSamples(*loss_inputs(b1), old_mean=mean, old_log_std=log_std,
                           old_logp=gaussian_log_prob(mean, log_std, b1.actions))

    def trpo_step(self, theta: dict, d0, d1) -> tuple[dict, dict]:
        """One TRPO step from `theta` on the pre-update inputs d0 and the post-update samples d1
        (with their sampling distribution): `trpo.trpo_step` with the compiled pieces."""
        return trpo.trpo_step(
            theta, loss_fn=lambda p: self._loss(p, d0, d1), kl_fn=lambda p: self._kl(p, d0, d1),
            loss_grad_fn=lambda p: self._loss_grad(p, d0, d1), loss_kl_fn=lambda p: self._loss_kl(p, d0, d1),
            direction_fn=lambda p, g: self._direction(p, g, d0, d1), **self.trpo_args)

    def iteration(self, sample: Callable[[dict, int], RolloutBatch], clock: Callable | None = None) -> dict:
        """One meta-iteration. `sample(policy_params, phase) -> RolloutBatch` rolls out the current tasks
        (phase 0 pre-update, 1 post-update). Updates the variables in place; returns the metrics.
        `clock(name, fn, *args)`, if given, runs each phase (sample_pre, adapt, sample_post,
        old_dist, trpo_step) and returns its result: `make bench` times them with it."""
        run = clock or (lambda name, fn, *args: fn(*args))
        t0 = time.perf_counter()
        theta = self.param_values()
        b0 = run("sample_pre", sample, theta, 0)
        info = {"pre_return": float(np.mean(b0.returns))}
        d0 = loss_inputs(b0)
        if self.inner_steps:
            fast = run("adapt", self._adapt, theta, d0)
            b1 = run("sample_post", sample, fast, 1)
            info["post_return"] = float(np.mean(b1.returns))
            d1 = run("old_dist", self.old_dist, fast, b1)
        else:
            d1 = run("old_dist", self.old_dist, theta, b0)
            info["post_return"] = info["pre_return"]
        t1 = time.perf_counter()
        new, step_info = run("trpo_step", self.trpo_step, theta, d0, d1)
        for k, v in new.items():
            self.params[k].assign(v)
        self.step.assign_add(1)
        t2 = time.perf_counter()
        info.update({k: step_info[k] for k in ("loss_before", "loss_after", "kl_after", "accepted",
                                               "n_backtracks", "grad_norm")})
        info["accepted"] = bool(info["accepted"])
        info.update(time_sample_s=t1 - t0, time_optimize_s=t2 - t1)
        return info


def make_learner(cfg: RLConfig, model: nets.Model | None = None) -> PolicyLearner:
    t = cfg.train
    return PolicyLearner(model or build_model(cfg), cfg.seed, t.inner_lr, t.inner_steps, t.first_order,
                            t.max_kl, t.cg_iters, t.cg_damping, t.backtrack_ratio, t.max_backtracks,
                            t.fd_base_eps, t.xla, t.task_chunk)


class RLRun:
    """The RL learner of the run loop (`maml_tf.loop`): one meta-iteration of `rl.PolicyLearner`
    (MAML-TRPO, or TRPO for the baselines) on the tasks and rollouts of iteration i, which depend
    only on (seed, i) and the parameters. Its score is the average post-update training return
    (pre-update for the TRPO baselines) of the parameters *before* the iteration's update, which
    is what the best checkpoint keeps."""

    fix_hint = "Lower train.max_kl or train.inner_lr"
    guarded = ("pre_return", "post_return", "loss_before")

    def __init__(self, cfg: RLConfig):
        self.cfg = cfg
        self.policy = make_learner(cfg)
        self.model, self.params, self.alpha = self.policy.model, self.policy.params, {}
        self.step, self.wall_time = self.policy.step, self.policy.wall_time
        self.env_steps, self.checkpoint = self.policy.env_steps, self.policy.checkpoint
        self.budget = 0 if cfg.method == "random" else cfg.train.iterations
        self._sampler = self._tasks = self._theta = None

    def param_values(self) -> dict:
        return self.policy.param_values()

    def restored(self) -> None:
        pass  # inner_lr and max_kl are read from the config

    def same_start(self, start: int) -> None:
        pass  # one process

    def agreed_stop(self, requested: bool) -> bool:
        return requested

    def begin(self, start: int, stop: int) -> None:
        t = self.cfg.train
        self._sampler = sampler(self.model, self.cfg, t.meta_batch, t.trajectories)
        self._tasks = task_sampler(self.cfg.env, self.cfg.env_kwargs)

    def end(self) -> None:
        pass

    def iterate(self, step: int) -> dict:
        cfg, s = self.cfg, self._sampler
        tasks = self._tasks(cfg.train.meta_batch, seed_of(cfg.seed, step, 0))
        steps0 = s.env_steps
        self._theta = {k: tf.identity(v) for k, v in self.params.items()}
        info = self.policy.iteration(lambda p, phase: s.sample(p, tasks, seed_of(cfg.seed, step, 1 + phase)))
        self.env_steps.assign_add(s.env_steps - steps0)
        return {**info, "accepted": float(info["accepted"])}

    def score(self, step: int, values: dict) -> Score:
        metric = "post_return" if self.cfg.train.inner_steps else "return"
        return Score(values["post_return"], step, metric, True, self._theta, {}, {})

    def extras(self, rate: float) -> dict:
        return {"iteration_s": 1.0 / rate if rate > 0 else float("nan"),
                "env_steps": int(self.env_steps.numpy())}

    def progress(self, step: int, means: dict, rate: float) -> str:
        eta = (self.budget - step) / rate if rate > 0 else float("nan")
        return (f"[{step:>5d}/{self.budget}] return pre {means['pre_return']:8.2f} "
                f"post {means['post_return']:8.2f}  kl {means['kl_after']:.4f}  "
                f"{1.0 / rate if rate > 0 else float('nan'):5.1f} s/it  eta {eta / 60:6.1f} min")
