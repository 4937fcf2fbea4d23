"""The RL meta-training loop (MAML-TRPO and the TRPO baselines), with the conventions of `train.py`.

A run directory holds:
  config.yaml       the resolved config (a resumed run must match it, but for the budget keys)
  checkpoints/      the latest checkpoints (policy parameters, iteration, wall time, env steps)
  best/             the iterate with the best average post-update training return (pre-update return
                    for the TRPO baselines), and best.json (its iteration and return)
  metrics.jsonl     one JSON line per logged iteration; tb/ the same for TensorBoard
An interrupted run resumes from its last checkpoint and continues as if it had never stopped: the tasks
and the rollouts of iteration i depend only on (seed, i) and the parameters.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from maml_tf import nets, rl
from maml_tf.config import RLConfig
from maml_tf.records import write_json
from maml_tf import runs
from maml_tf.runs import Log, StopRequest, TrainingError, check_resume, claim, record_session

_SAMPLERS: dict = {}


def env_dims(env_id: str, env_kwargs: dict | None = None) -> tuple[int, int]:
    import gymnasium as gym
    env = gym.make(env_id, **(env_kwargs or {}))
    dims = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    env.close()
    return dims


def build_model(cfg: RLConfig) -> nets.Model:
    obs_dim, act_dim = env_dims(cfg.env, cfg.env_kwargs)
    return nets.build({**cfg.model, "obs_dim": obs_dim, "act_dim": act_dim})


def sampler(model: nets.Model, cfg: RLConfig, n_tasks: int, n_traj: int) -> rl.Sampler:
    """A (cached) sampler for the config's environment; vector envs are reused across calls of the
    same shape, the policy function is rebound to `model`."""
    key = (cfg.env, json.dumps(cfg.env_kwargs, sort_keys=True), n_tasks, n_traj, cfg.train.horizon)
    s = _SAMPLERS.get(key)
    if s is None:
        s = rl.Sampler(model, cfg.env, n_tasks, n_traj, cfg.train.horizon, cfg.env_kwargs,
                       cfg.train.discount, cfg.train.gae_lambda)
        _SAMPLERS[key] = s
    elif s.model is not model:
        s.set_model(model)
    return s


def make_learner(cfg: RLConfig, model: nets.Model | None = None) -> rl.PolicyLearner:
    t = cfg.train
    return rl.PolicyLearner(model or build_model(cfg), cfg.seed, t.inner_lr, t.inner_steps, t.first_order,
                            t.max_kl, t.cg_iters, t.cg_damping, t.backtrack_ratio, t.max_backtracks,
                            t.fd_base_eps, t.xla)


def train(cfg: RLConfig, run_dir: str | Path, quiet: bool = False,
          stop_after: int | None = None) -> rl.PolicyLearner:
    """Train (or resume) the run in `run_dir` up to cfg.train.iterations (0 for `random`: the
    initial policy is saved as it is), holding the run directory's lock. `stop_after` stops after
    that many iterations of this call."""
    with claim(run_dir):
        return _train(cfg, Path(run_dir), quiet, stop_after)


def _train(cfg: RLConfig, run_dir: Path, quiet: bool, stop_after: int | None) -> rl.PolicyLearner:
    t = cfg.train
    changed = check_resume(run_dir, cfg)  # inner_lr and max_kl changes take effect: read from cfg
    learner = make_learner(cfg)
    manager = tf.train.CheckpointManager(learner.checkpoint, run_dir / "checkpoints", max_to_keep=1)
    best_params = {k: tf.Variable(v) for k, v in learner.params.items()}
    best_ckpt = tf.train.Checkpoint(params=best_params, step=tf.Variable(0, dtype=tf.int64))
    if manager.latest_checkpoint:
        learner.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    start = int(learner.step.numpy())
    runs.resumed(run_dir, cfg, start, changed)
    best_manager = tf.train.CheckpointManager(best_ckpt, run_dir / "best", max_to_keep=1)
    iterations = 0 if cfg.method == "random" else t.iterations
    if start == 0 and not manager.latest_checkpoint:
        manager.save(checkpoint_number=0)  # the initial policy (the `random` baseline is only that)
    stop = iterations if stop_after is None else min(iterations, start + stop_after)
    runs.announce(run_dir, start, stop, iterations, quiet)
    if start >= stop:
        return learner

    best_path = run_dir / "best.json"
    best = json.loads(best_path.read_text()) if best_path.exists() else None
    log = Log(run_dir, quiet)
    s = sampler(learner.model, cfg, t.meta_batch, t.trajectories)
    sample_tasks = rl.task_sampler(cfg.env, cfg.env_kwargs)

    def finite() -> bool:
        return runs.all_finite(learner.params.values())

    def save(step: int) -> None:
        if not finite():
            raise TrainingError(
                f"the policy parameters became NaN or infinite before iteration {step}; nothing was "
                f"saved over the last good checkpoint ({manager.latest_checkpoint}). Lower train.max_kl "
                f"or train.inner_lr and resume.")
        manager.save(checkpoint_number=step)

    t0, wall0 = time.perf_counter(), float(learner.wall_time.numpy())
    step = start
    with StopRequest() as stop_request:
        while step < stop:
            it_start = time.perf_counter()
            tasks = sample_tasks(t.meta_batch, rl.seed_of(cfg.seed, step, 0))
            steps0 = s.env_steps
            theta = {k: tf.identity(v) for k, v in learner.params.items()}
            info = learner.iteration(lambda p, phase: s.sample(p, tasks, rl.seed_of(cfg.seed, step, 1 + phase)))
            bad = [k for k in ("pre_return", "post_return", "loss_before") if not np.isfinite(info[k])]
            if bad or not finite():
                raise TrainingError(
                    f"iteration {step}: {', '.join(bad) or 'the parameters'} became NaN or infinite; the "
                    f"last good checkpoint is {manager.latest_checkpoint}. Lower train.max_kl or "
                    f"train.inner_lr, then resume.")
            learner.env_steps.assign_add(s.env_steps - steps0)
            metric = info["post_return"]
            if runs.is_better(metric, best, higher_is_better=True):
                # the returns were measured with the parameters before this iteration's update
                for k, v in theta.items():
                    best_params[k].assign(v)
                best_ckpt.step.assign(step)
                best_manager.save(checkpoint_number=step)
                best = {"step": step, "value": metric, "metric": "post_return" if t.inner_steps else "return"}
                write_json(best_path, best)
            step += 1
            if step == start + 1:
                record_session(run_dir, start, stop, changed)
            now = time.perf_counter()
            learner.wall_time.assign(wall0 + now - t0)
            if step % t.log_every == 0 or step == stop or stop_request.requested:
                values = {**info, "iteration_s": now - it_start, "wall_time_s": wall0 + now - t0,
                          "env_steps": int(learner.env_steps.numpy())}
                values["accepted"] = float(values["accepted"])
                log.write(step, values)
                eta = (iterations - step) * (now - it_start)
                log.progress(f"[{step:>5d}/{iterations}] return pre {info['pre_return']:8.2f} "
                             f"post {info['post_return']:8.2f}  kl {info['kl_after']:.4f}  "
                             f"{now - it_start:5.1f} s/it  eta {eta / 60:6.1f} min")
            stop_request.checkpoint(step, step % t.checkpoint_every == 0 or step == stop, save, log)
    log.done(f"trained to {step} iterations: the checkpoints are in {run_dir}")
    return learner


def restore(cfg: RLConfig, run_dir: str | Path, which: str = "latest") -> tuple[rl.PolicyLearner, int]:
    """A learner with the run's latest (or best) parameters, and the iteration they come from."""
    run_dir = Path(run_dir)
    learner = make_learner(cfg)
    path = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if path is None:
        raise TrainingError(f"no checkpoint in {run_dir / 'checkpoints'}: train the run first "
                            f"(its make target does)")
    learner.checkpoint.restore(path).expect_partial()
    done = int(learner.step.numpy())
    if which == "best" and tf.train.latest_checkpoint(str(run_dir / "best")):
        best = tf.train.Checkpoint(params=learner.params, step=tf.Variable(0, dtype=tf.int64))
        best.restore(tf.train.latest_checkpoint(str(run_dir / "best"))).expect_partial()
        return learner, int(best.step.numpy())
    return learner, done


def tune_inner_lr(model: nets.Model, params: dict, cfg: RLConfig) -> tuple[float, dict]:
    """The fine-tuning step size of a baseline: the value of eval.lr_grid with the best mean return
    over steps 1..eval.steps on eval.tune_tasks tasks drawn with eval.tune_seed (training tasks,
    never the test seed)."""
    e = cfg.eval
    n_traj = e.trajectories or cfg.train.trajectories
    s = sampler(model, cfg, e.tune_tasks, n_traj)
    tasks = rl.task_sampler(cfg.env, cfg.env_kwargs)(e.tune_tasks, e.tune_seed)
    scores = {}
    for a in e.lr_grid:
        r = rl.evaluate(model, params, s, tasks, e.steps, a, seed=e.tune_seed)
        score = float(np.mean(r["returns"][1:]))
        scores[a] = score if np.isfinite(score) else -float("inf")
    return max(scores, key=scores.get), scores


def evaluate(cfg: RLConfig, learner: rl.PolicyLearner, steps: int | None = None) -> dict:
    """The test protocol for one method: eval.tasks tasks from eval.seed, 0..steps adaptation steps
    with fresh rollouts, step alpha then alpha/2; the oracle is not adapted (its return at step 0 is
    repeated). The baselines' alpha is tuned on training tasks when eval.lr_grid is set."""
    e = cfg.eval
    steps = e.steps if steps is None else steps
    params = learner.param_values()
    alpha, search = (e.inner_lr if e.inner_lr is not None else cfg.train.inner_lr), None
    if cfg.method in ("pretrained", "random") and e.lr_grid:
        alpha, search = tune_inner_lr(learner.model, params, cfg)
    s = sampler(learner.model, cfg, e.tasks, e.trajectories or cfg.train.trajectories)
    tasks = rl.task_sampler(cfg.env, cfg.env_kwargs)(e.tasks, e.seed)
    if cfg.method == "oracle":
        r = rl.evaluate(learner.model, params, s, tasks, 0, alpha, seed=e.seed)
        out = {k: v * (steps + 1) for k, v in r.items()}
        out["alpha"] = None
    else:
        out = rl.evaluate(learner.model, params, s, tasks, steps, alpha, seed=e.seed)
        out["alpha"] = alpha
    if search:
        out["alpha_search"] = {str(a): v for a, v in search.items()}
    return out
