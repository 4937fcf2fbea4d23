"""Does the ant's integration matter?  Fixed-policy rollouts under two integrations of dt = 0.02 s.

``MetaAntEnv`` steps rllab's integration by default, one RK4 step of 0.02 s per env step
(``frame_skip=1, timestep=0.02``); before, it stepped two RK4 steps of 0.01 s
(``frame_skip=2, timestep=0.01``).  ``compare_integrations`` rolls out the same open-loop action
sequences from the same seeded initial states under both and reports, per policy and task:

* the mean undiscounted return of the episode (ended by the ant's termination or the horizon)
  with its 95% CI (1.96 * sample std / sqrt(n)), and the mean episode length;
* the paired difference of the returns (same seed, same actions, same task) with its 95% CI;
* the divergence of the state trajectories: the torso x (``qpos[0]``) after ``horizon`` steps
  (the physics is stepped on through a termination, so every trajectory has ``horizon`` steps),
  mean |difference| between the integrations, and for scale the same between the default
  integration and itself from a 1e-6 m/s perturbed initial velocity (contacts make the ant's
  trajectories diverge quickly: individual trajectories are not comparable, their statistics are);
* the wall time per env step of each (both measured in the same run, interleaved).

Policies (open loop, so both integrations get exactly the same actions):

* ``gaussian``: i.i.d. N(0, 1) actions (the initial policy's noise, ``init_std`` 1), seeded per
  trajectory, rescaled and clipped by the env like any action;
* ``sine``: a deterministic trotting gait, hip ``j`` = 0.3 sin(2 pi 2 t + phase_j), ankle
  ``j`` = 0.3 cos(2 pi 2 t + phase_j), diagonal legs in phase (t in seconds); gentle, so most
  episodes last the horizon (larger amplitudes make the ant jump out of the healthy range).

Tasks (``TASKS``): the training distributions (goal velocity U[0, 3], direction +-1, drawn per
trajectory from its seed) and two fixed tasks (goal velocity 0.5, direction +1), which leave only
the dynamics' variance in the returns.  The task changes the reward only, not the dynamics or the
termination, so each trajectory is simulated once and its return computed for every task from
the env's own per-step terms: ``task_reward(v) [+ 1.0 velocity bonus] + (reward -
reward_forward)`` with ``v = info["x_velocity"]`` (the same sum the env computes; checked in
``tests/test_envs.py``).

Run ``python -m maml_tf.envs.integration_check [n_traj]`` for the tables.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from maml_tf.envs.ant import MetaAntEnv
from maml_tf.envs.locomotion import ANT_VELOCITY_BONUS

__all__ = ["INTEGRATIONS", "POLICIES", "TASKS", "policy_actions", "task_for", "rollout", "episode_return",
           "compare_integrations", "format_table"]

# name -> MetaAntEnv kwargs; the first is the default
INTEGRATIONS: dict[str, dict] = {
    "1 x RK4 0.02 s": {"frame_skip": 1, "timestep": 0.02},
    "2 x RK4 0.01 s": {"frame_skip": 2, "timestep": 0.01},
}
POLICIES = ("gaussian", "sine")
# name -> (task type, fixed value or None: drawn per trajectory from the training distribution)
TASKS: dict[str, tuple[str, float | None]] = {
    "velocity U[0,3]": ("velocity", None),
    "velocity 0.5": ("velocity", 0.5),
    "direction +-1": ("direction", None),
    "direction +1": ("direction", 1.0),
}
DT = 0.02
SINE_AMPLITUDE, SINE_HZ = 0.3, 2.0
PERTURBATION = 1e-6


def _ci95(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(1.96 * x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0


def policy_actions(policy: str, seed: int, horizon: int = 200, act_dim: int = 8) -> np.ndarray:
    """The [horizon, act_dim] action sequence of trajectory ``seed`` of a fixed policy."""
    if policy == "gaussian":
        return np.random.default_rng([int(seed), 1]).standard_normal((horizon, act_dim))
    if policy == "sine":
        t = np.arange(horizon)[:, None] * DT
        # actuator order: hip_4, ankle_4, hip_1, ankle_1, hip_2, ankle_2, hip_3, ankle_3
        leg_phase = np.array([0.0, 0.0, np.pi, np.pi, 0.0, 0.0, np.pi, np.pi])[:act_dim]
        phase = 2 * np.pi * SINE_HZ * t + leg_phase
        out = np.where(np.arange(act_dim) % 2 == 0, np.sin(phase), np.cos(phase))
        return SINE_AMPLITUDE * out
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


def task_for(task_type: str, value: float | None, seed: int) -> dict:
    """A fixed task, or trajectory ``seed``'s draw from the training distribution."""
    if value is not None:
        return {task_type: float(value)}
    rng = np.random.default_rng([int(seed), 2])
    if task_type == "velocity":
        return {"velocity": float(rng.uniform(0.0, 3.0))}
    return {"direction": 1.0 if rng.random() < 0.5 else -1.0}


def rollout(env: MetaAntEnv, actions: np.ndarray, seed: int, perturb: float = 0.0) -> dict:
    """One trajectory of ``len(actions)`` steps of an (unwrapped) ant from ``reset(seed)``, stepped
    on through a termination.  Per step: forward velocity ``v``, the task-independent reward terms
    ``rest`` (reward - reward_forward), ``terminated`` and the torso x; and the seconds spent in
    ``env.step``."""
    if env.get_task() is None:
        env.set_task(env.sample_tasks(1, 0)[0])
    env.reset(seed=int(seed))
    if perturb:
        qvel = env.data.qvel.copy()
        qvel[0] += perturb
        env.set_state(env.data.qpos.copy(), qvel)
        env._update_derived()
    H = len(actions)
    v, rest, x = np.empty(H), np.empty(H), np.empty(H)
    term = np.zeros(H, bool)
    t0 = time.perf_counter()
    for t, a in enumerate(actions):
        _, r, term[t], _, info = env.step(a)
        v[t], rest[t], x[t] = info["x_velocity"], r - info["reward_forward"], env.data.qpos[0]
    seconds = time.perf_counter() - t0
    return {"v": v, "rest": rest, "terminated": term, "x": x, "seconds": seconds}


def episode_return(traj: dict, task: dict) -> tuple[float, int]:
    """(return, length) of a trajectory under ``task``: rewards up to the first termination."""
    (task_type, value), = task.items()
    if task_type == "velocity":
        forward = -np.abs(traj["v"] - value) + ANT_VELOCITY_BONUS
    else:
        forward = value * traj["v"]
    ends = np.flatnonzero(traj["terminated"])
    length = int(ends[0]) + 1 if ends.size else len(traj["v"])
    return float(np.sum((forward + traj["rest"])[:length])), length


def compare_integrations(n_traj: int = 20, horizon: int = 200, seed: int = 0, policies=POLICIES,
                         tasks: dict | None = None, integrations: dict | None = None,
                         reference: bool = True) -> dict:
    """Fixed-policy rollouts of ``n_traj`` trajectories (seeds ``seed .. seed + n_traj - 1``) per
    policy and integration (``integrations``: name -> ``MetaAntEnv`` kwargs, the first is the one
    the others are compared with; default ``INTEGRATIONS``), their returns under each of ``tasks``
    (default ``TASKS``).  Returns
    ``{"rows": [...], "pairs": [...], "steps": {...}}``:

    rows (policy x task x integration): ``mean_return``, ``ci95_return``, ``mean_length`` and the
    per-trajectory ``returns``, ``lengths``;
    pairs (policy x task x each integration after the first, minus the first): ``return_diff``
    and ``ci95_return_diff`` (paired), ``sd_return_diff``, ``length_diff``, ``ci95_length_diff``,
    ``sd_length_diff`` and the per-trajectory ``return_diffs``, ``length_diffs``;
    steps (policy): ``mean_final_x`` and ``seconds_per_step`` per integration; per integration
    after the first: ``mean_abs_dx`` (|torso x difference| to the first after ``horizon`` steps,
    mean over trajectories), ``ci95_abs_dx``, ``step_time_ratio`` (its time per step / the
    first's); ``ref_mean_abs_dx``: the same |difference| between the first integration and itself
    from the perturbed initial velocity."""
    integrations = dict(INTEGRATIONS if integrations is None else integrations)
    tasks = dict(TASKS if tasks is None else tasks)
    names = list(integrations)
    envs = {k: MetaAntEnv(task_type="velocity", **kw) for k, kw in integrations.items()}
    rows, pairs, steps = [], [], {}
    for policy in policies:
        trajs = {k: [] for k in names}
        ref = []
        for i in range(n_traj):
            s = seed + i
            acts = policy_actions(policy, s, horizon)
            for k in names:  # interleaved: both integrations see the same machine load
                trajs[k].append(rollout(envs[k], acts, s))
            if reference:
                ref.append(rollout(envs[names[0]], acts, s, perturb=PERTURBATION))
        for task_name, (task_type, value) in tasks.items():
            out = {}
            for k in names:
                rl = np.array([episode_return(tr, task_for(task_type, value, seed + i))
                               for i, tr in enumerate(trajs[k])])
                out[k] = rl
                rows.append({"policy": policy, "task": task_name, "integration": k, "n": n_traj,
                             "mean_return": float(rl[:, 0].mean()), "ci95_return": _ci95(rl[:, 0]),
                             "mean_length": float(rl[:, 1].mean()), "returns": rl[:, 0], "lengths": rl[:, 1]})
            for k in names[1:]:
                d = out[k] - out[names[0]]
                pairs.append({"policy": policy, "task": task_name, "first": names[0], "second": k, "n": n_traj,
                              "return_diff": float(d[:, 0].mean()), "ci95_return_diff": _ci95(d[:, 0]),
                              "sd_return_diff": float(d[:, 0].std(ddof=1)), "length_diff": float(d[:, 1].mean()),
                              "ci95_length_diff": _ci95(d[:, 1]), "sd_length_diff": float(d[:, 1].std(ddof=1)),
                              "return_diffs": d[:, 0], "length_diffs": d[:, 1]})
        xf = {k: np.array([tr["x"][-1] for tr in trajs[k]]) for k in names}
        sec = {k: sum(tr["seconds"] for tr in trajs[k]) / (n_traj * horizon) for k in names}
        steps[policy] = {"mean_final_x": {k: float(xf[k].mean()) for k in names}, "seconds_per_step": sec,
                         "mean_abs_dx": {}, "ci95_abs_dx": {}, "step_time_ratio": {}}
        for k in names[1:]:
            dx = np.abs(xf[k] - xf[names[0]])
            steps[policy]["mean_abs_dx"][k] = float(dx.mean())
            steps[policy]["ci95_abs_dx"][k] = _ci95(dx)
            steps[policy]["step_time_ratio"][k] = sec[k] / sec[names[0]]
        if reference:
            xr = np.array([tr["x"][-1] for tr in ref])
            steps[policy]["ref_mean_abs_dx"] = float(np.abs(xr - xf[names[0]]).mean())
    for e in envs.values():
        e.close()
    return {"rows": rows, "pairs": pairs, "steps": steps, "integrations": names}


def format_table(result: dict) -> str:
    names = result["integrations"]
    a = names[0]
    by = {(r["policy"], r["task"], r["integration"]): r for r in result["rows"]}
    lines = []
    for b in names[1:]:
        lines += [f"| policy | task | return {a} | return {b} | paired diff | length {a} | length {b} |",
                  "|---|---|---|---|---|---|---|"]
        for p in result["pairs"]:
            if p["second"] != b:
                continue
            ra, rb = by[p["policy"], p["task"], a], by[p["policy"], p["task"], b]
            lines.append(f"| {p['policy']} | {p['task']} | {ra['mean_return']:.1f} +- {ra['ci95_return']:.1f} | "
                         f"{rb['mean_return']:.1f} +- {rb['ci95_return']:.1f} | {p['return_diff']:+.1f} +- "
                         f"{p['ci95_return_diff']:.1f} | {ra['mean_length']:.1f} | {rb['mean_length']:.1f} |")
        lines += ["", f"| policy | torso x at H: {a} | {b} | mean abs diff | same, 1e-6 perturbation | "
                      f"us/step {a} | {b} | ratio |", "|---|---|---|---|---|---|---|---|"]
        for policy, s in result["steps"].items():
            lines.append(f"| {policy} | {s['mean_final_x'][a]:.3f} | {s['mean_final_x'][b]:.3f} | "
                         f"{s['mean_abs_dx'][b]:.3f} +- {s['ci95_abs_dx'][b]:.3f} | "
                         f"{s.get('ref_mean_abs_dx', float('nan')):.3f} | {1e6 * s['seconds_per_step'][a]:.0f} | "
                         f"{1e6 * s['seconds_per_step'][b]:.0f} | {s['step_time_ratio'][b]:.2f} |")
        lines.append("")
    return "\n".join(lines)


def write(results_dir, n_traj: int = 100):
    """Run the comparison and write results_dir/bench/ant_integration.{json,md} with provenance."""
    from maml_tf import records
    t0 = time.perf_counter()
    out = compare_integrations(n_traj=n_traj)
    out.update(commit=records.commit(), machine=records.machine(), written=records.now(),
               wall_time_s=round(time.perf_counter() - t0, 1), n_traj=n_traj)
    out = json.loads(json.dumps(out, default=lambda o: o.tolist()))  # NumPy arrays as lists
    folder = Path(results_dir) / "bench"
    records.write_json(folder / "ant_integration.json", out)
    text = ("# The ant's integration: one RK4 step of 0.02 s (rllab's, the default) against two of "
            "0.01 s (before)\n\nGenerated by `python -m maml_tf.envs.integration_check` (also run by "
            f"`make bench`); commit {out['commit']}, {out['written']}. {n_traj} fixed-policy "
            "trajectories per cell, the same seeds and actions under both; mean +- 95% CI. See the "
            "module docstring for the policies and tasks.\n\n" + format_table(out))
    records.write_text(folder / "ant_integration.md", text)
    return folder / "ant_integration.md"


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    root = Path(__file__).resolve().parents[2]
    print(write(root / "results", n).read_text())
