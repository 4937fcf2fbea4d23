"""Tasks and rollouts: the seeds of an iteration's tasks and rollouts, the task distribution of an
environment, its observation and action sizes, and the `Sampler` that rolls out all tasks of a
meta-batch at once in one vectorised environment (n_traj sub-environments per task; the policy runs
once per time step for every sub-environment, with per-task parameters), returning padded per-task
arrays and the advantages of `advantages.process_paths`.
"""
from __future__ import annotations

import json
from typing import Callable, NamedTuple

import gymnasium as gym
import numpy as np
import tensorflow as tf

import maml_tf.envs as menvs
from maml_tf import advantages, nets
from maml_tf.config import RLConfig
from maml_tf.rl.distributions import split_dist

def seed_of(*keys: int) -> int:
    """A 31-bit seed derived from integer keys (e.g. (run seed, iteration, phase))."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


def task_sampler(env_id: str, env_kwargs: dict | None = None) -> Callable:
    """`sample(n, rng_or_seed) -> tasks` of the environment's task distribution."""
    env = gym.make(env_id, **(env_kwargs or {}))
    fn = env.unwrapped.sample_tasks
    return fn


class Rollouts(NamedTuple):
    """Padded raw rollouts of T tasks x n trajectories x H steps (NumPy): observations [T, n, H, d],
    actions [T, n, H, A], rewards and the valid-step mask [T, n, H] (0 after a trajectory ended),
    lengths [T, n]."""
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray


class RolloutBatch(NamedTuple):
    """Rollouts as the losses take them, flat per task (float32 tensors): obs [T, n*H, d], actions
    [T, n*H, A], advantages and mask [T, n*H]; with the mean undiscounted return of each task
    (NumPy [T]) and the raw `Rollouts`."""
    obs: tf.Tensor
    actions: tf.Tensor
    adv: tf.Tensor
    mask: tf.Tensor
    returns: np.ndarray
    raw: Rollouts


def make_vec_env(env_id: str, num_envs: int, env_kwargs: dict | None = None, share_model: bool = True):
    """Point: the native numpy vector env; MuJoCo: a SyncVectorEnv of `num_envs` sub-envs.

    With `share_model` (default), the sub-envs of the package's MuJoCo ids step one `MjModel`
    (loaded once, by a probe env built with the same kwargs), each its own `MjData`: ~0.6 MB less
    per sub-env for the ant, same rollouts bit for bit (nothing writes to the model after
    construction; see `locomotion._MetaLocomotionMixin._initialize_simulation`)."""
    kwargs = dict(env_kwargs or {})
    if env_id in menvs.POINT_IDS:
        return gym.make_vec(env_id, num_envs=num_envs, **kwargs)
    if share_model and env_id in menvs.MUJOCO_IDS and "mj_model" not in kwargs:
        probe = gym.make(env_id, **kwargs)
        kwargs["mj_model"] = probe.unwrapped.model
        probe.close()
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
                 gae_lambda: float = advantages.GAE_LAMBDA, vec=None):
        self.model, self.env_id = model, env_id
        self.n_tasks, self.n_traj, self.horizon = n_tasks, n_traj, horizon
        self.discount, self.gae_lambda = discount, gae_lambda
        self.vec = vec if vec is not None else make_vec_env(env_id, n_tasks * n_traj, env_kwargs)
        self.obs_dim = int(np.prod(self.vec.single_observation_space.shape))
        self.act_dim = int(np.prod(self.vec.single_action_space.shape))
        self._dist = tf.function(lambda p, x: model.apply(p, x))
        self.env_steps = 0

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

    def rollout(self, params: dict, tasks: list, seed: int) -> Rollouts:
        """Padded raw rollouts (`Rollouts`)."""
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
            mean, log_std = split_dist(out)
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
        return Rollouts(obs=o_buf.reshape(shape + (self.obs_dim,)), actions=a_buf.reshape(shape + (self.act_dim,)),
                        rewards=r_buf.reshape(shape), mask=m_buf.reshape(shape),
                        lengths=m_buf.sum(-1).reshape(T, n).astype(np.int64))

    def sample(self, params: dict, tasks: list, seed: int) -> RolloutBatch:
        """Rollouts with their advantages, as the losses take them (`RolloutBatch`)."""
        raw = self.rollout(params, tasks, seed)
        proc = advantages.process_paths(raw.obs, raw.rewards, mask=raw.mask, gamma=self.discount,
                                        lam=self.gae_lambda)
        T, n, H = raw.rewards.shape
        flat = lambda x, *tail: tf.constant(np.reshape(x, (T, n * H) + tail), tf.float32)
        return RolloutBatch(obs=flat(raw.obs, self.obs_dim), actions=flat(raw.actions, self.act_dim),
                            adv=flat(proc["advantages"]), mask=flat(raw.mask),
                            returns=raw.rewards.sum(-1).mean(-1), raw=raw)


_VEC_ENVS: dict = {}  # vector environments, reused by the samplers of one process (building 800 takes seconds)


def env_dims(env_id: str, env_kwargs: dict | None = None) -> tuple[int, int]:
    import gymnasium as gym
    env = gym.make(env_id, **(env_kwargs or {}))
    dims = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    env.close()
    return dims


def sampler(model: nets.Model, cfg: RLConfig, n_tasks: int, n_traj: int) -> Sampler:
    """A sampler of `model` on the config's environment, with the config's discount and GAE
    lambda. The vector environment (the expensive part) is shared by the samplers of the same
    environment and shape in this process; each sampler has its own policy and settings."""
    key = (cfg.env, json.dumps(cfg.env_kwargs, sort_keys=True), n_tasks * n_traj)
    if key not in _VEC_ENVS:
        _VEC_ENVS[key] = make_vec_env(cfg.env, n_tasks * n_traj, cfg.env_kwargs)
    return Sampler(model, cfg.env, n_tasks, n_traj, cfg.train.horizon, cfg.env_kwargs, cfg.train.discount,
                   cfg.train.gae_lambda, vec=_VEC_ENVS[key])
