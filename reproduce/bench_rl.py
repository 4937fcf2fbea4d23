"""Environment steps per second of the RL sampler on half-cheetah, beside raw Gymnasium stepping.

`sampler_benchmark()` returns a list of dicts {"name", "env_steps_per_second", ...}:
  * sampler: the meta-batch-shaped vectorised rollout (meta_batch x trajectories sub-environments of
    maml/HalfCheetahVel-v0 in one SyncVectorEnv; the Gaussian MLP policy, per-task parameters, runs
    once per time step for all of them), rollouts only and rollouts + advantage processing;
  * raw: one Gymnasium HalfCheetah-v5 (frame_skip 5, its default; another env, for reference) and one
    maml/HalfCheetahVel-v0 (frame_skip 1 as rllab, the env the sampler steps) made by `gym.make`,
    with its wrappers (TimeLimit, OrderEnforcing, PassiveEnvChecker), stepping random actions; the
    same env unwrapped (its own `step`, the call the sampler made per sub-env step before `step_many`:
    the baseline of the `ratio_to_raw` ratios); and the sampler's own meta_batch x trajectories unwrapped sub-envs stepped in turn
    with random actions and no policy (what stepping that many MuJoCo states costs per step, the
    floor of the sampler's env loop before `step_many`); and the MuJoCo work of one env alone
    (`mj_step` and the derived quantities, no Python env step: the floor of any sampler here,
    `cpu_ratio_to_mujoco`). The single envs are reset every `horizon` steps, as the sampler's are.
Every row has the wall and CPU (process) seconds of its fastest repeat, `env_steps_per_second`
(wall) and `env_steps_per_cpu_second`, and `ratio_to_raw` / `cpu_ratio_to_raw`: its time per env step
over the unwrapped raw row's, from the same run. The rows are timed in turn, `repeats` rounds
(interleaved, so a change of the machine's load hits all of them); `load_average` is os.getloadavg()
after the last round. On a busy machine compare the CPU ratios.
Run with one thread (OMP_NUM_THREADS=1) for the one-core numbers.

`iteration_benchmark()` times one whole MAML-TRPO iteration phase by phase against its floors, and
`side_by_side()` runs it alone and as two processes at once (`python -m reproduce.bench_rl --iteration`).
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Callable

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


def _mujoco_only(env_id: str, steps: int, horizon: int, seed: int = 0, **kwargs):
    """(row, run): the MuJoCo work of `steps` env steps of one unwrapped env alone: random controls
    written to `data.ctrl`, `mj_step` (the env's frame_skip) and the derived quantities its reward
    and observation read (`_update_derived`), reset every `horizon` steps; no Python env step, no
    policy. The floor of any sampler of this env in Python."""
    import mujoco
    env = gym.make(env_id, **kwargs).unwrapped
    m, d, fs = env.model, env.data, env.frame_skip
    ctrl = np.random.default_rng(seed).uniform(*m.actuator_ctrlrange.T, size=(steps, m.nu))

    def run():
        for k in range(steps):
            if k % horizon == 0:
                env.reset(seed=seed + k // horizon)
            d.ctrl[:] = ctrl[k]
            mujoco.mj_step(m, d, nstep=fs)
            env._update_derived()

    row = {"name": f"mujoco {env_id}, 1 env, mj_step and the derived quantities alone (the floor)",
           "steps": steps, "frame_skip": fs, "num_envs": 1, "wrappers": "none"}
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
        _mujoco_only(ENV, raw_steps, horizon),
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
    floor = next(r for r in out if r["name"].startswith(f"mujoco {ENV}"))
    for r in out:
        r["ratio_to_raw"] = base["env_steps_per_second"] / r["env_steps_per_second"]
        r["cpu_ratio_to_raw"] = base["env_steps_per_cpu_second"] / r["env_steps_per_cpu_second"]
        r["cpu_ratio_to_mujoco"] = floor["env_steps_per_cpu_second"] / r["env_steps_per_cpu_second"]
    return out


PHASES = ("sample_pre", "adapt", "sample_post", "old_dist", "trpo_step")


def iteration_benchmark(config: str = "rl/cheetah_vel/maml", rate: float | None = None, repeats: int = 2,
                        sets: tuple = (), ready: Callable[[], None] | None = None) -> dict:
    """One MAML-TRPO meta-iteration of `config` on its real rollouts, phase by phase, beside its floors:
    the iteration training runs (`PolicyLearner.iteration`), each phase timed by its clock.

    Phases (wall seconds, the fastest of `repeats` iterations after a first, tracing one): sampling
    before and after the inner step, the inner step, the sampling policy's distribution, and the
    TRPO step (loss gradient, the CG search direction, the line search). Alone, each piece the TRPO
    step is made of: one loss gradient, one KL gradient (a finite-difference Hessian-vector product
    takes two), the direction (cg_iters + 1 products: the CG iterations and s^T H s) and one
    line-search candidate (loss and KL). Floors: the sampling phases' env steps at the rate of one
    unwrapped environment stepped alone (measured here), and each TensorFlow piece's matmul FLOPs
    (read off its traced graph, as `reproduce.bench`) at `rate`, the one-thread matmul rate.
    `ready()`, if given, is called after the first iteration and returns when the timing may start.
    `iteration_seconds` is the sum of the phases' times."""
    import maml_tf.envs  # noqa: F401
    from maml_tf import rl, trpo
    from reproduce import bench, common

    cfg = common.load(config, sets=list(sets))
    run = rl.RLRun(cfg)
    run.begin(0, 1)
    pol, smp, t = run.policy, run._sampler, cfg.train
    tasks = run._tasks(t.meta_batch, rl.seed_of(cfg.seed, 0, 0))
    sample = lambda p, phase: smp.sample(p, tasks, rl.seed_of(cfg.seed, 0, 1 + phase))

    def one(timed: dict) -> tuple:
        """One iteration as training runs it (`PolicyLearner.iteration`, each phase timed by its
        clock), then the TRPO step's pieces alone on the iteration's own inputs."""
        seen = {}

        def clock(name, fn, *args):
            w, steps = time.perf_counter(), smp.env_steps
            out = fn(*args)
            timed.setdefault(name, []).append(time.perf_counter() - w)
            if name.startswith("sample"):
                phase_steps[name] = smp.env_steps - steps
            seen[name] = (args, out)
            return out
        info = pol.iteration(sample, clock)
        env_steps = sum(phase_steps.values())
        theta, d0, d1 = seen["trpo_step"][0]
        # the pieces alone (eager CPU calls return computed tensors: no .numpy() needed to wait)
        _, grads = clock("loss_gradient", pol._loss_grad, theta, d0, d1)
        g = trpo._flat_grads(grads, theta)
        clock("kl_gradient", pol._kl_grad, theta, d0, d1)
        clock("direction", pol._direction, theta, g, d0, d1)
        clock("line_search_candidate", pol._loss_kl, theta, d0, d1)
        return theta, d0, d1, env_steps, info

    phase_steps: dict = {}  # env steps of each sampling phase (the ant's episodes end early: they differ)
    w = time.perf_counter()
    one({})  # traces and runs every function once
    first_s = time.perf_counter() - w
    if ready is not None:
        ready()  # side by side: the timed iterations start together
    timed: dict = {}
    for _ in range(repeats):
        theta, d0, d1, env_steps, info = one(timed)
    best = {k: min(v) for k, v in timed.items()}
    raw_row, raw_run = _raw(cfg.env, 20000, t.horizon, unwrapped=True, **cfg.env_kwargs)
    raw_s = min(_timed(raw_run)[0] for _ in range(2)) / raw_row["steps"]  # seconds per env step
    if cfg.env in maml_tf.envs.MUJOCO_IDS:
        mj_row, mj_run = _mujoco_only(cfg.env, 20000, t.horizon, **cfg.env_kwargs)
        mj_s = min(_timed(mj_run)[0] for _ in range(2)) / mj_row["steps"]
    else:  # the 2D point: its numpy step is all the work there is
        mj_s = raw_s
    smp.close()

    def flops(fn, *args) -> int:
        return bench.graph_flops(fn.get_concrete_function(*args).graph)
    fl = {"adapt": flops(pol._adapt, theta, d0),
          "old_dist": flops(pol._dist, theta, d1.obs),
          "loss_gradient": flops(pol._loss_grad, theta, d0, d1),
          "kl_gradient": flops(pol._kl_grad, theta, d0, d1),
          "line_search_candidate": flops(pol._loss_kl, theta, d0, d1)}
    if min(fl.values()) <= 0:
        raise RuntimeError(f"no matmul FLOPs found in the traced graphs: {fl}")
    hvps = t.cg_iters + 1
    fl["direction"] = 2 * hvps * fl["kl_gradient"]
    tries = info["n_backtracks"] + 1
    fl["trpo_step"] = fl["loss_gradient"] + fl["direction"] + tries * fl["line_search_candidate"]
    rows = {}
    for name, sec in best.items():
        if name.startswith("sample"):
            floor = phase_steps[name] * mj_s
            what = (f"{phase_steps[name]} env steps at the rate of MuJoCo's work alone ({raw_s / mj_s:.1f}x faster "
                    f"than one unwrapped env's step)" if mj_s != raw_s else f"{phase_steps[name]} env steps at the raw rate")
        else:
            floor = fl[name] / rate if rate else None
            what = f"{fl[name] / 1e9:.2f} GFLOP at the matmul rate"
        rows[name] = {"seconds": sec, "floor_seconds": floor, "floor": what,
                      "ratio_to_floor": sec / floor if floor else None, "flops": fl.get(name)}
    iteration = sum(best[k] for k in PHASES)
    optimisation = sum(best[k] for k in ("adapt", "old_dist", "trpo_step"))
    sampling = best["sample_pre"] + best["sample_post"]
    return {"name": f"MAML-TRPO iteration, {config}", "config": config, "overrides": list(sets), "meta_batch": t.meta_batch,
            "trajectories": t.trajectories, "horizon": t.horizon, "env_steps": env_steps,
            "cg_iters": t.cg_iters, "line_search_candidates": tries, "xla": t.xla,
            "iteration_seconds": iteration, "sampling_seconds": sampling,
            "optimisation_seconds": optimisation, "optimisation_to_sampling": optimisation / sampling,
            "raw_stepping_seconds": env_steps * raw_s, "iteration_to_raw_stepping": iteration / (env_steps * raw_s),
            "mujoco_seconds": env_steps * mj_s, "iteration_to_mujoco": iteration / (env_steps * mj_s),
            "direction_to_its_kl_gradients": best["direction"] / (2 * hvps * best["kl_gradient"]),
            "first_iteration_seconds": first_s, "matmul_flops_per_second": rate, "phases": rows,
            "peak_resident_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "repeats": repeats, "load_average": [round(x, 2) for x in os.getloadavg()]}


def maml_tf_per_task(model, n_tasks: int) -> dict:
    """Per-task copies of the initial policy (the post-update sampling case)."""
    from maml_tf import maml
    return maml.per_task(model, model.init(0), n_tasks)


def in_children(rate: float, config: str, n: int = 1, repeats: int = 1) -> list[dict]:
    """`iteration_benchmark` in `n` child processes at once, each on one thread (its own peak
    memory); their timed iterations start together, once every child has traced its functions."""
    import json
    import subprocess
    import sys
    import tempfile

    from reproduce import campaign, common

    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"{i}.json" for i in range(n)]
        errs = [(Path(tmp) / f"{i}.err").open("w") for i in range(n)]
        procs = [subprocess.Popen([sys.executable, "-m", "reproduce.bench_rl", "--iteration", "--config", config,
                                   "--rate", str(rate), "--repeats", str(repeats), "--json", str(o),
                                   "--barrier", tmp, "--parties", str(n)],
                                  cwd=common.ROOT, stdout=subprocess.DEVNULL, stderr=e,
                                  env=campaign.ONE_CORE_ENV)  # as the campaign's workers
                 for o, e in zip(outs, errs)]
        try:
            for i, p in enumerate(procs):
                if p.wait() != 0:
                    errs[i].flush()
                    raise RuntimeError(f"bench_rl --iteration --config {config} failed: "
                                       f"{Path(errs[i].name).read_text()[-2000:]}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for e in errs:
                e.close()
        return [json.loads(o.read_text()) for o in outs]


def _barrier(folder: str, parties: int) -> Callable[[], None]:
    """ready(): mark this process ready in `folder`, then wait until `parties` processes are."""
    def ready() -> None:
        Path(folder, f"{os.getpid()}.ready").touch()
        while len(list(Path(folder).glob("*.ready"))) < parties:
            time.sleep(0.05)
    return ready


def side_by_side(rate: float, config: str = "rl/cheetah_vel/maml", repeats: int = 1) -> dict:
    """`iteration_benchmark` in one child process on one core alone, then in two at once (the two
    cores both busy, as the campaign trains RL runs one per core): each run's iteration time side by
    side over its time alone."""
    alone = in_children(rate, config, 1, repeats)[0]
    pair = in_children(rate, config, 2, repeats)
    return {**alone, "name": f"{alone['name']} (one core)",
            "side_by_side_iteration_seconds": [r["iteration_seconds"] for r in pair],
            "side_by_side_to_alone": [r["iteration_seconds"] / alone["iteration_seconds"] for r in pair],
            "side_by_side_phases": [{k: v["seconds"] for k, v in r["phases"].items()} for r in pair]}


if __name__ == "__main__":
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m reproduce.bench_rl", description=__doc__.split("\n\n")[0])
    p.add_argument("--iteration", action="store_true", help="time one MAML-TRPO iteration phase by phase "
                   "(iteration_benchmark) instead of the sampler")
    p.add_argument("--config", default="rl/cheetah_vel/maml")
    p.add_argument("--rate", type=float, default=None, help="one-thread float32 matmul rate, FLOP/s (the floors)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as reproduce.train (e.g. train.task_chunk=0)")
    p.add_argument("--json", default=None, help="write the iteration record here")
    p.add_argument("--barrier", default=None, help=argparse.SUPPRESS)  # (in_children: start timing together)
    p.add_argument("--parties", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.iteration:
        rec = iteration_benchmark(args.config, args.rate, args.repeats, sets=tuple(args.set),
                                  ready=_barrier(args.barrier, args.parties) if args.barrier else None)
        if args.json:
            Path(args.json).write_text(json.dumps(rec, indent=1))
        print(json.dumps(rec, indent=1))
        raise SystemExit(0)
    rows = sampler_benchmark()
    print(f"load average {rows[-1]['load_average']}; ratios: time per env step / the unwrapped single env's")
    for row in rows:
        print(f"{row['env_steps_per_second']:10.0f} steps/s ({row['ratio_to_raw']:4.2f}x)  "
              f"{row['env_steps_per_cpu_second']:10.0f} steps/CPU-s ({row['cpu_ratio_to_raw']:4.2f}x)  {row['name']}")
