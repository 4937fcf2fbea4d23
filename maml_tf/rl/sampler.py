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
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit
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


_CHECKING_WRAPPERS = (OrderEnforcing, PassiveEnvChecker)


def _sub_env_steps(vec) -> tuple[list, int | None] | None:
    """How `Sampler.rollout` steps a vector env: None for a native vector env (stepped whole); for
    a SyncVectorEnv, the step functions of its sub-envs and the time limit to apply to them.

    `gym.make_vec(..., vectorization_mode="sync")` builds every sub-env with `gym.make`, which wraps
    it in TimeLimit(OrderEnforcing(PassiveEnvChecker(env))). The two checkers only check: the call
    order (a rollout always resets before it steps) and, on the first step ever, the types of what
    step returns; neither changes anything. TimeLimit only sets `truncated` once
    `max_episode_steps` steps have passed since the reset, which the rollout applies itself (every
    sub-env is reset at t = 0, so it is step t with t + 1 >= limit). With exactly these wrappers
    the unwrapped envs are stepped: same observations, rewards and ends, without three Python calls
    per env step. With any other wrapper, the wrapped envs are stepped (limit None: the wrappers
    apply theirs)."""
    envs = getattr(vec, "envs", None)
    if envs is None:
        return None
    steps, limits = [], set()
    for env in envs:
        limit, inner = None, env
        while isinstance(inner, gym.Wrapper):
            if type(inner) is TimeLimit and limit is None:
                limit = int(inner._max_episode_steps)
            elif type(inner) not in _CHECKING_WRAPPERS:
                return [e.step for e in envs], None
            inner = inner.env
        steps.append(inner.step)
        limits.add(limit)
    if len(limits) != 1:
        return [e.step for e in envs], None
    return steps, limits.pop()


def _many_step(found) -> Callable | None:
    """`step_many(envs, actions)` of the sub-envs' class where it steps them all as their own
    `step` would (the locomotion bodies': `MetaHalfCheetahEnv.step_many`, `MetaAntEnv.step_many`),
    with the unwrapped sub-envs it is called on; None otherwise (each sub-env's step in turn).
    `found`: what `_sub_env_steps` made of the vector env."""
    if found is None or found[1] is None:  # a native vector env, or wrappers beyond the checkers
        return None
    envs = [step.__self__ for step in found[0]]
    cls = type(envs[0])
    if not hasattr(cls, "step_many") or not cls.can_step_many(envs):
        return None
    return lambda live, actions: cls.step_many([envs[i] for i in live], actions)


class Sampler:
    """Rollouts of n_tasks x n_traj trajectories of `horizon` steps at once.

    `sample(policy_params, tasks, seed)`: sub-env i * n_traj + j runs trajectory j of task i; the
    policy runs once per time step on observations [n_tasks, n_traj, obs_dim] (shared or per-task
    parameters). A trajectory ends at termination, truncation or the horizon; later steps are
    padding (mask 0). Same seed, same parameters -> same rollouts (environment resets seeded with
    `seed` + sub-env index, action noise from a generator seeded with `seed`). With `batch_step`
    (default) sub-envs whose class has a `step_many` (the locomotion bodies) are stepped by it, all live
    ones in one call: the same rollouts bit for bit (tested), without each env's Python step."""

    def __init__(self, model: nets.Model, env_id: str, n_tasks: int, n_traj: int, horizon: int,
                 env_kwargs: dict | None = None, discount: float = advantages.DISCOUNT,
                 gae_lambda: float = advantages.GAE_LAMBDA, vec=None, batch_step: bool = True):
        self.model, self.env_id = model, env_id
        self.n_tasks, self.n_traj, self.horizon = n_tasks, n_traj, horizon
        self.discount, self.gae_lambda = discount, gae_lambda
        self.vec = vec if vec is not None else make_vec_env(env_id, n_tasks * n_traj, env_kwargs)
        self.obs_dim = int(np.prod(self.vec.single_observation_space.shape))
        self.act_dim = int(np.prod(self.vec.single_action_space.shape))
        self._dist = tf.function(lambda p, x: model.apply(p, x))
        self._sub_envs = _sub_env_steps(self.vec)
        self._many = _many_step(self._sub_envs) if batch_step else None
        self.env_steps = 0

    def close(self):
        self.vec.close()

    def _step(self, act):
        """One step of the native point vector env (it steps every sub-env): (obs, rewards, done)."""
        obs, rew, term, trunc, _ = self.vec.step(act)
        return obs, rew, np.asarray(term) | np.asarray(trunc)

    def rollout(self, params: dict, tasks: list, seed: int) -> Rollouts:
        """Padded raw rollouts (`Rollouts`).

        The sub-envs of a SyncVectorEnv are stepped one by one, and only while their trajectory
        lasts: the vector env's own step() costs more than the MuJoCo step itself (per-env info
        merging, autoreset bookkeeping), and a finished trajectory's later steps would be padding
        anyway. Where `_sub_env_steps` allows it they are stepped unwrapped, their time limit
        applied here. The native point vector env steps all at once (`_step`)."""
        T, n, H = self.n_tasks, self.n_traj, self.horizon
        if len(tasks) != T:
            raise ValueError(f"the sampler rolls out {T} tasks at once, got {len(tasks)}")
        N, d = T * n, self.obs_dim
        menvs.set_tasks(self.vec, [task for task in tasks for _ in range(n)])
        obs, _ = self.vec.reset(seed=int(seed))
        rng = np.random.default_rng([int(seed), 7])
        params = {k: tf.convert_to_tensor(v) for k, v in params.items()}
        o_buf = np.zeros((N, H, d), np.float32)
        a_buf = np.zeros((N, H, self.act_dim), np.float32)
        r_buf = np.zeros((N, H), np.float64)
        m_buf = np.zeros((N, H), np.float64)
        alive = np.ones(N, bool)
        if self._sub_envs is not None:
            steps, limit = self._sub_envs
            # every sub-env's latest observation (a finished trajectory keeps its last one), in the
            # vector env's dtype, written in place; the sub-envs still running
            obs, live = np.array(obs, copy=True).reshape(N, d), list(range(N))
        for t in range(H):
            o = o_buf[:, t]
            o[...] = np.reshape(obs, (N, d))  # cast to float32 (as the policy takes them)
            out = self._dist(params, tf.constant(o.reshape(T, n, d))).numpy()
            mean, log_std = split_dist(out)
            act = (mean + np.exp(log_std) * rng.standard_normal(mean.shape)).astype(np.float32)
            act = act.reshape(N, self.act_dim)
            a_buf[:, t], m_buf[:, t] = act, alive
            if self._sub_envs is None:
                obs, rew, done = self._step(act)
                self.env_steps += int(alive.sum())
                r_buf[:, t] = np.where(alive, rew, 0.0)
                alive = alive & ~done
                if not alive.any():
                    break
                continue
            self.env_steps += len(live)
            rew, ended = r_buf[:, t], []
            if self._many is not None:  # every live sub-env in one call (the same numbers)
                obs[live], rew[live], term = self._many(live, act[live])
                ended = [i for i, e in zip(live, term) if e]
            else:
                for i in live:
                    obs_i, rew[i], term, trunc, _ = steps[i](act[i])
                    obs[i] = obs_i
                    if term or trunc:
                        ended.append(i)
            if limit is not None and t + 1 >= limit:
                ended = live  # TimeLimit: truncated once max_episode_steps steps have passed
            if ended:
                alive[ended] = False
                live = np.flatnonzero(alive).tolist()
                if not live:
                    break
        shape = (T, n, H)
        return Rollouts(obs=o_buf.reshape(shape + (d,)), actions=a_buf.reshape(shape + (self.act_dim,)),
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
