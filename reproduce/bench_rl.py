"""Environment steps per second of the RL sampler on half-cheetah, beside raw Gymnasium stepping.

`sampler_benchmark()` returns a list of dicts {"name", "env_steps_per_second", ...}:
  * sampler: the meta-batch-shaped vectorised rollout (meta_batch x trajectories sub-environments of
    maml/HalfCheetahVel-v0 in one SyncVectorEnv; the Gaussian MLP policy, per-task parameters, runs
    once per time step for all of them), rollouts only and rollouts + advantage processing;
  * raw: one Gymnasium HalfCheetah-v5 (frame_skip 5, its default) stepping random actions, and one
    maml/HalfCheetahVel-v0 (frame_skip 1 as rllab, the env the sampler steps), on this one process.
Run with one thread (OMP_NUM_THREADS=1) for the one-core numbers.
"""
from __future__ import annotations

import time

import gymnasium as gym
import tensorflow as tf

ENV = "maml/HalfCheetahVel-v0"


def _raw(env_id: str, steps: int, seed: int = 0, **kwargs) -> dict:
    env = gym.make(env_id, **kwargs)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    dt = time.perf_counter() - t0
    frame_skip = getattr(env.unwrapped, "frame_skip", None)
    env.close()
    return {"name": f"raw {env_id}, 1 env, random actions", "env_steps_per_second": steps / dt,
            "steps": steps, "seconds": dt, "frame_skip": frame_skip, "num_envs": 1}


def sampler_benchmark(meta_batch: int = 40, trajectories: int = 20, horizon: int = 50,
                      raw_steps: int = 5000, repeats: int = 2) -> list[dict]:
    """Env steps per second of the half-cheetah sampler (meta_batch x trajectories envs, `horizon`
    steps per rollout; best of `repeats` after one warm-up) and of single raw environments."""
    import maml_tf.envs  # noqa: F401  (registers the ids)
    from maml_tf import nets, rl

    obs_dim, act_dim = rl.env_dims(ENV)
    model = nets.gaussian_mlp(obs_dim, act_dim)
    t0 = time.perf_counter()
    sampler = rl.Sampler(model, ENV, meta_batch, trajectories, horizon)
    make_s = time.perf_counter() - t0
    tasks = rl.task_sampler(ENV)(meta_batch, 0)
    params = maml_tf_per_task(model, meta_batch)
    sampler.rollout(params, tasks, seed=0)  # warm-up (traces the policy)
    n_steps = meta_batch * trajectories * horizon
    best_roll, best_full = float("inf"), float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        sampler.rollout(params, tasks, seed=1 + r)
        best_roll = min(best_roll, time.perf_counter() - t0)
        t0 = time.perf_counter()
        sampler.sample(params, tasks, seed=1 + r)
        best_full = min(best_full, time.perf_counter() - t0)
    sampler.close()
    common = {"num_envs": meta_batch * trajectories, "meta_batch": meta_batch, "trajectories": trajectories,
              "horizon": horizon, "steps": n_steps, "frame_skip": 1, "make_envs_s": make_s}
    out = [
        {"name": f"sampler {ENV}, {meta_batch}x{trajectories} envs, policy per step (rollout only)",
         "env_steps_per_second": n_steps / best_roll, "seconds": best_roll, **common},
        {"name": f"sampler {ENV}, {meta_batch}x{trajectories} envs, rollout + baseline/GAE/advantages",
         "env_steps_per_second": n_steps / best_full, "seconds": best_full, **common},
        _raw("HalfCheetah-v5", raw_steps),
        _raw(ENV, raw_steps),
    ]
    return out


def maml_tf_per_task(model, n_tasks: int) -> dict:
    """Per-task copies of the initial policy (the post-update sampling case)."""
    from maml_tf import maml
    return maml.per_task(model, model.init(0), n_tasks)


if __name__ == "__main__":
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    for row in sampler_benchmark():
        print(f"{row['env_steps_per_second']:10.0f} steps/s  {row['name']}")
