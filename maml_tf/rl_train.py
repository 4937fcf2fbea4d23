"""The RL domain's side of training and evaluation: the learner that the run loop trains
(`RLRun`: MAML-TRPO and the TRPO baselines), the environment sizes, the (cached) samplers, the
baselines' step-size search on training tasks and the test protocol of one method.
"""
from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from maml_tf import evaluate, nets, rl
from maml_tf.config import RLConfig
from maml_tf.loop import Score

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

    def begin(self, start: int, stop: int) -> None:
        t = self.cfg.train
        self._sampler = sampler(self.model, self.cfg, t.meta_batch, t.trajectories)
        self._tasks = rl.task_sampler(self.cfg.env, self.cfg.env_kwargs)

    def end(self) -> None:
        pass

    def iterate(self, step: int) -> dict:
        cfg, s = self.cfg, self._sampler
        tasks = self._tasks(cfg.train.meta_batch, rl.seed_of(cfg.seed, step, 0))
        steps0 = s.env_steps
        self._theta = {k: tf.identity(v) for k, v in self.params.items()}
        info = self.policy.iteration(lambda p, phase: s.sample(p, tasks, rl.seed_of(cfg.seed, step, 1 + phase)))
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


def tune_inner_lr(model: nets.Model, params: dict, cfg: RLConfig) -> tuple[float, dict]:
    """The fine-tuning step size of a baseline: the value of eval.lr_grid with the best mean return
    over steps 1..eval.steps on eval.tune_tasks tasks drawn with eval.tune_seed (training tasks,
    never the test seed)."""
    e = cfg.eval
    n_traj = e.trajectories or cfg.train.trajectories
    s = sampler(model, cfg, e.tune_tasks, n_traj)
    tasks = rl.task_sampler(cfg.env, cfg.env_kwargs)(e.tune_tasks, e.tune_seed)
    score = lambda a: np.mean(rl.evaluate(model, params, s, tasks, e.steps, a, seed=e.tune_seed)["returns"][1:])
    return evaluate.tune_step_size(e.lr_grid, score, higher_is_better=True)


def evaluate_run(cfg: RLConfig, learner, steps: int | None = None) -> dict:
    """The test protocol for one method: eval.tasks tasks from eval.seed, 0..steps adaptation steps
    with fresh rollouts, step alpha then alpha/2; the oracle is not adapted (its return at step 0 is
    repeated). The baselines' alpha is tuned on training tasks when eval.lr_grid is set."""
    e = cfg.eval
    steps = e.steps if steps is None else steps
    params = learner.param_values()
    alpha, search = evaluate.step_size(cfg), None
    if cfg.method in ("pretrained", "random") and e.lr_grid:
        alpha, search = tune_inner_lr(learner.model, params, cfg)
    s = sampler(learner.model, cfg, e.tasks, e.trajectories or cfg.train.trajectories)
    tasks = rl.task_sampler(cfg.env, cfg.env_kwargs)(e.tasks, e.seed)
    if cfg.method == "oracle":
        r = rl.evaluate(learner.model, params, s, tasks, 0, alpha, seed=e.seed)
        out = {k: evaluate.not_adapted(v, steps) for k, v in r.items()}
        out["alpha"] = None
    else:
        out = rl.evaluate(learner.model, params, s, tasks, steps, alpha, seed=e.seed)
        out["alpha"] = alpha
    if search:
        out["alpha_search"] = {str(a): v for a, v in search.items()}
    return out
