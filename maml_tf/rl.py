"""Policy-gradient MAML with a TRPO meta-optimizer (paper §5.3), and its baselines and evaluation.

Pieces, all batched over the tasks of a meta-batch (leading axis T):
  * diagonal Gaussian log-likelihood and KL (`gaussian_log_prob`, `gaussian_kl`), the policy's output
    split into mean and log-std (`split_dist`);
  * the inner loss `vpg_loss`: -mean(log pi(a|s) * A) over each task's valid (unpadded) steps, what
    `maml.inner_step` differentiates (the official inner step: plain gradient descent on all policy
    parameters, step alpha);
  * `Sampler`: all tasks of a meta-batch rolled out at once in one vectorised environment (n_traj
    sub-environments per task); the policy runs once per time step for every sub-environment, with
    per-task parameters (observations shaped [T, n_traj, obs_dim]); seeded; returns padded per-task
    arrays and the advantages of `advantages.process_paths`;
  * `PolicyLearner`: the meta-parameters as variables and one meta-iteration:
      maml:       pre-update samples -> inner step (alpha) -> post-update samples -> one TRPO step on
                  the post-update surrogate -mean(ratio * A) averaged over tasks, differentiated
                  through the inner step (second order), KL (old post-update policy || new) pooled over
                  all valid samples of all tasks (as the official `mean_kl`), bound 0.01, Hessian-vector
                  products by finite differences (`trpo.trpo_step`);
      pretrained: TRPO on the pre-update surrogate of all tasks (no inner step), the official
                  `use_maml=False`; the oracle is the same on the oracle environment;
      random:     no training;
    the gradient, the KL and the CG search direction are compiled by `tf.function`;
  * `evaluate`: fixed test tasks, 0..S adaptation steps (`maml.adapt`) with fresh rollouts per step,
    step alpha for the first update and alpha/2 after (`maml.halving`), mean return and 95% CI
    per step (`maml_tf.evaluate.ci95`).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import gymnasium as gym
import numpy as np
import tensorflow as tf

import maml_tf.envs as menvs
from maml_tf import advantages, maml, nets, trpo
from maml_tf.evaluate import ci95

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- distributions

def split_dist(out: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The policy output [..., 2A] -> (mean [..., A], log_std [..., A])."""
    mean, log_std = tf.split(out, 2, axis=-1)
    return mean, log_std


def gaussian_log_prob(mean, log_std, x):
    """log N(x; mean, diag(exp(log_std)^2)), summed over the last axis."""
    z = (x - mean) * tf.exp(-log_std)
    return tf.reduce_sum(-0.5 * tf.square(z) - log_std, axis=-1) - 0.5 * LOG_2PI * tf.cast(
        tf.shape(x)[-1], x.dtype)


def gaussian_kl(mean0, log_std0, mean1, log_std1):
    """KL(N0 || N1) of diagonal Gaussians, summed over the last axis (rllab's `kl_sym` order:
    old distribution first)."""
    var0, var1 = tf.exp(2.0 * log_std0), tf.exp(2.0 * log_std1)
    return tf.reduce_sum(log_std1 - log_std0 + (var0 + tf.square(mean0 - mean1)) / (2.0 * var1) - 0.5,
                         axis=-1)


def masked_task_mean(x, mask):
    """Mean of x [T, N] over the valid entries of each task -> [T]."""
    return tf.reduce_sum(x * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def vpg_loss(out, y):
    """Inner (policy-gradient) loss per task [T]: -mean over valid steps of log pi(a|s) * A.
    `y` = (actions [T, N, A], advantages [T, N], mask [T, N])."""
    actions, adv, mask = y
    mean, log_std = split_dist(out)
    return -masked_task_mean(gaussian_log_prob(mean, log_std, actions) * adv, mask)


def surrogate_loss(out, y):
    """TRPO surrogate per task [T]: -mean over valid steps of exp(logp - old_logp) * A.
    `y` = (actions, advantages, mask, old_logp [T, N])."""
    actions, adv, mask, old_logp = y
    mean, log_std = split_dist(out)
    ratio = tf.exp(gaussian_log_prob(mean, log_std, actions) - old_logp)
    return -masked_task_mean(ratio * adv, mask)


def pooled_kl(out, old_mean, old_log_std, mask):
    """KL(old || new) averaged over all valid samples of all tasks (the official mean_kl)."""
    mean, log_std = split_dist(out)
    kl = gaussian_kl(old_mean, old_log_std, mean, log_std)
    return tf.reduce_sum(kl * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


# ----------------------------------------------------------------------------- seeding

def seed_of(*keys: int) -> int:
    """A 31-bit seed derived from integer keys (e.g. (run seed, iteration, phase))."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


def task_sampler(env_id: str, env_kwargs: dict | None = None) -> Callable:
    """`sample(n, rng_or_seed) -> tasks` of the environment's task distribution."""
    env = gym.make(env_id, **(env_kwargs or {}))
    fn = env.unwrapped.sample_tasks
    return fn


# ----------------------------------------------------------------------------- the sampler

def make_vec_env(env_id: str, num_envs: int, env_kwargs: dict | None = None):
    """Point: the native numpy vector env; MuJoCo: a SyncVectorEnv of `num_envs` sub-envs."""
    kwargs = dict(env_kwargs or {})
    if env_id in menvs.POINT_IDS:
        return gym.make_vec(env_id, num_envs=num_envs, **kwargs)
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", **kwargs)


class Sampler:
    """Rollouts of n_tasks x n_traj trajectories of `horizon` steps at once.

    `sample(policy_params, tasks, seed)`: sub-env i * n_traj + j runs trajectory j of task i; the
    policy runs once per time step on observations [n_tasks, n_traj, obs_dim] (shared or per-task
    parameters). A trajectory ends at termination, truncation or the horizon; later steps are
    padding (mask 0). Same seed, same parameters -> same rollouts (environment resets seeded with
    `seed` + sub-env index, action noise from a generator seeded with `seed`)."""

    def __init__(self, model: nets.Model, env_id: str, n_tasks: int, n_traj: int, horizon: int,
                 env_kwargs: dict | None = None, discount: float = advantages.DISCOUNT,
                 gae_lambda: float = advantages.GAE_LAMBDA):
        self.model, self.env_id = model, env_id
        self.n_tasks, self.n_traj, self.horizon = n_tasks, n_traj, horizon
        self.discount, self.gae_lambda = discount, gae_lambda
        self.vec = make_vec_env(env_id, n_tasks * n_traj, env_kwargs)
        self.obs_dim = int(np.prod(self.vec.single_observation_space.shape))
        self.act_dim = int(np.prod(self.vec.single_action_space.shape))
        self._dist = tf.function(lambda p, x: model.apply(p, x))
        self.env_steps = 0

    def set_model(self, model: nets.Model) -> None:
        """Roll out another policy model (same observation and action sizes) with these envs."""
        self.model = model
        self._dist = tf.function(lambda p, x: model.apply(p, x))

    def close(self):
        self.vec.close()

    def _step(self, obs, act, alive):
        """One step of every live sub-env: (obs, rewards, done). A SyncVectorEnv's sub-envs are
        stepped directly, and only while their trajectory lasts: its own step() costs more than the
        MuJoCo step itself (per-env info merging, autoreset bookkeeping), and a finished
        trajectory's later steps would be padding anyway. The native point vector env steps all."""
        if not hasattr(self.vec, "envs"):
            obs, rew, term, trunc, _ = self.vec.step(act)
            return obs, rew, np.asarray(term) | np.asarray(trunc)
        obs = np.array(obs, copy=True)
        rew = np.zeros(len(act))
        done = np.zeros(len(act), bool)
        for i in np.flatnonzero(alive):
            o, r, term, trunc, _ = self.vec.envs[i].step(act[i])
            obs[i], rew[i], done[i] = o, r, term or trunc
        return obs, rew, done

    def rollout(self, params: dict, tasks: list, seed: int) -> dict:
        """Padded raw rollouts: obs [T, n, H, d], actions [T, n, H, A], rewards and mask [T, n, H],
        lengths [T, n] (numpy)."""
        T, n, H = self.n_tasks, self.n_traj, self.horizon
        if len(tasks) != T:
            raise ValueError(f"the sampler rolls out {T} tasks at once, got {len(tasks)}")
        N = T * n
        menvs.set_tasks(self.vec, [task for task in tasks for _ in range(n)])
        obs, _ = self.vec.reset(seed=int(seed))
        rng = np.random.default_rng([int(seed), 7])
        params = {k: tf.convert_to_tensor(v) for k, v in params.items()}
        o_buf = np.zeros((N, H, self.obs_dim), np.float32)
        a_buf = np.zeros((N, H, self.act_dim), np.float32)
        r_buf = np.zeros((N, H), np.float64)
        m_buf = np.zeros((N, H), np.float64)
        alive = np.ones(N, bool)
        for t in range(H):
            o = np.asarray(obs, np.float32).reshape(N, self.obs_dim)
            out = self._dist(params, tf.constant(o.reshape(T, n, self.obs_dim))).numpy()
            mean, log_std = out[..., :self.act_dim], out[..., self.act_dim:]
            act = (mean + np.exp(log_std) * rng.standard_normal(mean.shape)).astype(np.float32)
            act = act.reshape(N, self.act_dim)
            o_buf[:, t], a_buf[:, t], m_buf[:, t] = o, act, alive
            obs, rew, done = self._step(obs, act, alive)
            self.env_steps += int(alive.sum())
            r_buf[:, t] = np.where(alive, rew, 0.0)
            alive = alive & ~done
            if not alive.any():
                break
        shape = (T, n, H)
        return dict(obs=o_buf.reshape(shape + (self.obs_dim,)), actions=a_buf.reshape(shape + (self.act_dim,)),
                    rewards=r_buf.reshape(shape), mask=m_buf.reshape(shape),
                    lengths=m_buf.sum(-1).reshape(T, n).astype(np.int64))

    def sample(self, params: dict, tasks: list, seed: int) -> dict:
        """Rollouts plus processed advantages and the flat per-task tensors the losses take:
        obs [T, n*H, d], actions [T, n*H, A], adv and mask [T, n*H] (float32 tf tensors), and the
        numpy `returns` [T] (mean undiscounted return per task) and raw arrays."""
        raw = self.rollout(params, tasks, seed)
        proc = advantages.process_paths(raw["obs"], raw["rewards"], mask=raw["mask"], gamma=self.discount,
                                        lam=self.gae_lambda)
        T, n, H = raw["rewards"].shape
        flat = lambda x, *tail: tf.constant(np.reshape(x, (T, n * H) + tail), tf.float32)
        return dict(obs=flat(raw["obs"], self.obs_dim), actions=flat(raw["actions"], self.act_dim),
                    adv=flat(proc["advantages"]), mask=flat(raw["mask"]),
                    returns=raw["rewards"].sum(-1).mean(-1), raw=raw)


def loss_inputs(batch: dict) -> dict:
    """The tensors of a batch that the compiled losses take."""
    return {k: batch[k] for k in ("obs", "actions", "adv", "mask")}


def inner_targets(batch: dict) -> tuple:
    """What the inner loss `vpg_loss` compares the policy's output with: (actions, advantages,
    mask), the `y` of `maml.adapt` (whose `x` is batch["obs"])."""
    return batch["actions"], batch["adv"], batch["mask"]


# ----------------------------------------------------------------------------- the learner

class PolicyLearner:
    """Policy parameters as variables, and the (compiled) meta-iteration of MAML-TRPO or TRPO.

    `inner_steps` = 1 for MAML (the official num_grad_updates), 0 for the pretrained / oracle
    baselines (TRPO on the pre-update samples of all tasks)."""

    def __init__(self, model: nets.Model, seed: int, inner_lr: float, inner_steps: int = 1,
                 first_order: bool = False, max_kl: float = trpo.MAX_KL, cg_iters: int = trpo.CG_ITERS,
                 cg_damping: float = trpo.DAMPING, backtrack_ratio: float = trpo.BACKTRACK_RATIO,
                 max_backtracks: int = trpo.MAX_BACKTRACKS, fd_base_eps: float = trpo.FD_BASE_EPS,
                 xla: bool = False):
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
            return maml.adapt(model, params, d0["obs"], inner_targets(d0), vpg_loss, self.inner_steps,
                              inner_lr, first_order)

        def loss(params, d0, d1):
            out = model.apply(adapt(params, d0), d1["obs"])
            y = (d1["actions"], d1["adv"], d1["mask"], d1["old_logp"])
            return tf.reduce_mean(surrogate_loss(out, y))

        def kl(params, d0, d1):
            out = model.apply(adapt(params, d0), d1["obs"])
            return pooled_kl(out, d1["old_mean"], d1["old_log_std"], d1["mask"])

        def loss_grad(params, d0, d1):
            return trpo.value_and_grad(lambda p: loss(p, d0, d1), params)

        def loss_kl(params, d0, d1):
            return loss(params, d0, d1), kl(params, d0, d1)

        def direction(params, g, d0, d1):
            fn = trpo.make_direction_fn(kl_fn=lambda p: kl(p, d0, d1), cg_iters=cg_iters, damping=cg_damping,
                                        base_eps=fd_base_eps)
            return fn(params, g)

        compile_ = lambda f: tf.function(f, jit_compile=xla)
        self._loss, self._kl = compile_(loss), compile_(kl)
        self._loss_grad, self._loss_kl = compile_(loss_grad), compile_(loss_kl)
        self._direction = compile_(direction)
        self._adapt = compile_(adapt)
        self._dist = compile_(lambda p, x: model.apply(p, x))

    def param_values(self) -> dict:
        return {k: v.value() for k, v in self.params.items()}

    def old_dist(self, policy_params: dict, d1: dict) -> dict:
        """The sampling policy's distribution on its own samples (constants of the TRPO step)."""
        mean, log_std = split_dist(self._dist(policy_params, d1["obs"]))
        d = dict(loss_inputs(d1))
        d["old_mean"], d["old_log_std"] = mean, log_std
        d["old_logp"] = gaussian_log_prob(mean, log_std, d1["actions"])
        return d

    def iteration(self, sample: Callable[[dict, int], dict]) -> dict:
        """One meta-iteration. `sample(policy_params, phase) -> batch` rolls out the current tasks
        (phase 0 pre-update, 1 post-update). Updates the variables in place; returns the metrics."""
        t0 = time.perf_counter()
        theta = self.param_values()
        b0 = sample(theta, 0)
        info = {"pre_return": float(np.mean(b0["returns"]))}
        if self.inner_steps:
            d0 = loss_inputs(b0)
            fast = self._adapt(theta, d0)
            b1 = sample(fast, 1)
            info["post_return"] = float(np.mean(b1["returns"]))
            d1 = self.old_dist(fast, b1)
        else:
            d0 = loss_inputs(b0)
            d1 = self.old_dist(theta, b0)
            info["post_return"] = info["pre_return"]
        t1 = time.perf_counter()
        new, step_info = trpo.trpo_step(
            theta, loss_fn=lambda p: self._loss(p, d0, d1), kl_fn=lambda p: self._kl(p, d0, d1),
            loss_grad_fn=lambda p: self._loss_grad(p, d0, d1), loss_kl_fn=lambda p: self._loss_kl(p, d0, d1),
            direction_fn=lambda p, g: self._direction(p, g, d0, d1), **self.trpo_args)
        for k, v in new.items():
            self.params[k].assign(v)
        self.step.assign_add(1)
        t2 = time.perf_counter()
        info.update({k: step_info[k] for k in ("loss_before", "loss_after", "kl_after", "accepted",
                                               "n_backtracks", "grad_norm")})
        info["accepted"] = bool(info["accepted"])
        info.update(time_sample_s=t1 - t0, time_optimize_s=t2 - t1)
        return info


# ----------------------------------------------------------------------------- evaluation

def evaluate(model: nets.Model, params: dict, sampler: Sampler, tasks: list, steps: int, alpha: float,
             seed: int) -> dict:
    """Mean return of every task after 0..steps adaptation steps, fresh rollouts at every step
    (seeded by (seed, step)). Returns {"returns": [steps+1], "ci95": [...], "per_task": [[T]...]}."""
    fast = maml.per_task(model, {k: tf.convert_to_tensor(v) for k, v in params.items()}, len(tasks))
    per_step = []
    for s in range(steps + 1):
        batch = sampler.sample(fast, tasks, seed_of(seed, s))
        per_step.append(np.asarray(batch["returns"], np.float64))
        if s < steps:
            fast = maml.adapt(model, fast, batch["obs"], inner_targets(batch), vpg_loss, 1,
                              maml.halving(alpha), shared=False, first_step=s)
    return {"returns": [float(r.mean()) for r in per_step],
            "ci95": [float(c) for c in ci95(np.stack(per_step))],
            "per_task": [r.tolist() for r in per_step]}
