"""Environment steps per second of the RL sampler on half-cheetah, beside raw Gymnasium stepping.

`sampler_benchmark()` returns a list of dicts {"name", "env_steps_per_second", ...}:
  * sampler: the meta-batch-shaped vectorised rollout (meta_batch x trajectories sub-environments of
    maml/HalfCheetahVel-v0 in one SyncVectorEnv; the Gaussian MLP policy, per-task parameters, runs
    once per time step for all of them), rollouts only and rollouts + advantage processing;
  * raw: one Gymnasium HalfCheetah-v5 (frame_skip 5, its default; another env, for reference) and one
    maml/HalfCheetahVel-v0 (frame_skip 1 as rllab, the env the sampler steps) made by `gym.make`,
    with its wrappers (TimeLimit, OrderEnforcing, PassiveEnvChecker), stepping random actions; the
    same env unwrapped (the class and the call the sampler makes per sub-env step: the baseline of
    the ratios); and the sampler's own meta_batch x trajectories unwrapped sub-envs stepped in turn
    with random actions and no policy (what stepping that many MuJoCo states costs per step, the
    floor of the sampler's env loop). The single envs are reset every `horizon` steps, as the
    sampler's are.
Every row has the wall and CPU (process) seconds of its fastest repeat, `env_steps_per_second`
(wall) and `env_steps_per_cpu_second`, and `ratio_to_raw` / `cpu_ratio_to_raw`: its time per env step
over the unwrapped raw row's, from the same run. The rows are timed in turn, `repeats` rounds
(interleaved, so a change of the machine's load hits all of them); `load_average` is os.getloadavg()
after the last round. On a busy machine compare the CPU ratios.
Run with one thread (OMP_NUM_THREADS=1) for the one-core numbers.
"""
from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np
import tensorflow as tf

ENV = "maml/HalfCheetahVel-v0"


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _raw(env_id: str, steps: int, horizon: int, unwrapped: bool = False, seed: int = 0, **kwargs):
    """(row, run): random-action stepping of one `gym.make` env (or its unwrapped env), reset
    every `horizon` steps (and at termination or truncation); run() steps it `steps` times."""
    env = gym.make(env_id, **kwargs)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    step = env.unwrapped.step if unwrapped else env.step

    def run():
        k, r = 0, 0
        while k < steps:
            env.reset(seed=seed + r)
            r += 1
            for a in actions[k:k + horizon]:
                k += 1
                _, _, term, trunc, _ = step(a)
                if term or trunc:
                    break

    kind = "unwrapped (the sampler's per-env call)" if unwrapped else "gym.make wrappers"
    row = {"name": f"raw {env_id}, 1 env, {kind}, random actions", "steps": steps,
           "frame_skip": getattr(env.unwrapped, "frame_skip", None), "num_envs": 1,
           "wrappers": "none" if unwrapped else _wrappers(env)}
    return row, run


def _wrappers(env) -> str:
    names = []
    while isinstance(env, gym.Wrapper):
        names.append(type(env).__name__)
        env = env.env
    return "/".join(names) or "none"


def _round_robin(vec, steps_per_env: int, seed: int = 0):
    """(row, run): the vector env's unwrapped sub-envs stepped in turn, one step each per round, with
    random actions in [-1, 1] (float32 rows, as the sampler gives them); no policy, no buffers."""
    envs = [e.unwrapped for e in vec.envs]
    shape = vec.single_action_space.shape
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps_per_env, len(envs)) + shape).astype(np.float32)

    def run():
        vec.reset(seed=seed)  # once per run: its cost is not counted per step below (< 1 %)
        for a in actions:
            for env, a_i in zip(envs, a):
                env.step(a_i)

    row = {"name": f"raw {ENV}, {len(envs)} unwrapped sub-envs stepped in turn, random actions, no policy",
           "steps": steps_per_env * len(envs), "frame_skip": getattr(envs[0], "frame_skip", None),
           "num_envs": len(envs), "wrappers": "none"}
    return row, run


def sampler_benchmark(meta_batch: int = 40, trajectories: int = 20, horizon: int = 200,
                      raw_steps: int = 20000, repeats: int = 3) -> list[dict]:
    """Env steps per second of the half-cheetah sampler (meta_batch x trajectories envs, `horizon`
    steps per rollout) and of raw stepping, fastest of `repeats` interleaved rounds after one
    warm-up rollout; ratios to the unwrapped single env from the same run."""
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
    n_envs = meta_batch * trajectories
    n_steps = n_envs * horizon
    common = {"num_envs": n_envs, "meta_batch": meta_batch, "trajectories": trajectories,
              "horizon": horizon, "steps": n_steps, "frame_skip": 1, "make_envs_s": make_s,
              "wrappers": "none (unwrapped sub-envs; the rollout applies the time limit)"}
    seeds = iter(range(1, 1 + 2 * repeats))
    cases = [
        ({"name": f"sampler {ENV}, {meta_batch}x{trajectories} envs, policy per step (rollout only)", **common},
         lambda: sampler.rollout(params, tasks, seed=next(seeds))),
        ({"name": f"sampler {ENV}, {meta_batch}x{trajectories} envs, rollout + baseline/GAE/advantages",
          **common}, lambda: sampler.sample(params, tasks, seed=next(seeds))),
        _raw("HalfCheetah-v5", raw_steps, horizon),
        _raw(ENV, raw_steps, horizon),
        _raw(ENV, raw_steps, horizon, unwrapped=True),
        _round_robin(sampler.vec, max(1, raw_steps // n_envs)),
    ]
    times = [[] for _ in cases]
    for _ in range(repeats):
        for (_, run), t in zip(cases, times):
            t.append(_timed(run))
    sampler.close()
    load = [round(x, 2) for x in os.getloadavg()]
    out = []
    for (row, _), t in zip(cases, times):
        wall, cpu = min(w for w, _ in t), min(c for _, c in t)
        out.append({**row, "env_steps_per_second": row["steps"] / wall, "seconds": wall,
                    "env_steps_per_cpu_second": row["steps"] / cpu, "cpu_seconds": cpu,
                    "repeats": repeats, "load_average": load})
    base = next(r for r in out if r["name"].startswith(f"raw {ENV}, 1 env, unwrapped"))
    for r in out:
        r["ratio_to_raw"] = base["env_steps_per_second"] / r["env_steps_per_second"]
        r["cpu_ratio_to_raw"] = base["env_steps_per_cpu_second"] / r["env_steps_per_cpu_second"]
    return out


def maml_tf_per_task(model, n_tasks: int) -> dict:
    """Per-task copies of the initial policy (the post-update sampling case)."""
    from maml_tf import maml
    return maml.per_task(model, model.init(0), n_tasks)


if __name__ == "__main__":
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rows = sampler_benchmark()
    print(f"load average {rows[-1]['load_average']}; ratios: time per env step / the unwrapped single env's")
    for row in rows:
        print(f"{row['env_steps_per_second']:10.0f} steps/s ({row['ratio_to_raw']:4.2f}x)  "
              f"{row['env_steps_per_cpu_second']:10.0f} steps/CPU-s ({row['cpu_ratio_to_raw']:4.2f}x)  {row['name']}")
