"""The RL test protocol: fixed test tasks, 0..S adaptation steps (`maml.adapt`) with fresh rollouts
per step, step alpha for the first update and alpha/2 after (`maml.halving`), mean return and 95% CI
per step (`maml_tf.evaluate.ci95`); the baselines' step size searched on training tasks
(`evaluate.tune_step_size`); the oracle, which does not adapt (`evaluate.not_adapted`).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from maml_tf import evaluate as protocol
from maml_tf import maml, nets
from maml_tf.config import RLConfig
from maml_tf.evaluate import ci95
from maml_tf.rl.distributions import inner_targets, vpg_loss
from maml_tf.rl.sampler import Sampler, sampler, seed_of, task_sampler

def evaluate(model: nets.Model, params: dict, sampler: Sampler, tasks: list, steps: int, alpha: float,
             seed: int) -> dict:
    """Mean return of every task after 0..steps adaptation steps, fresh rollouts at every step
    (seeded by (seed, step)). Returns {"returns": [steps+1], "ci95": [...], "per_task": [[T]...]}."""
    fast = maml.per_task(model, {k: tf.convert_to_tensor(v) for k, v in params.items()}, len(tasks))
    per_step = []
    for s in range(steps + 1):
        batch = sampler.sample(fast, tasks, seed_of(seed, s))
        per_step.append(np.asarray(batch.returns, np.float64))
        if s < steps:
            fast = maml.adapt(model, fast, batch.obs, inner_targets(batch), vpg_loss, 1,
                              maml.halving(alpha), shared=False, first_step=s)
    return {"returns": [float(r.mean()) for r in per_step],
            "ci95": [float(c) for c in ci95(np.stack(per_step))],
            "per_task": [r.tolist() for r in per_step]}


def tune_inner_lr(model: nets.Model, params: dict, cfg: RLConfig) -> tuple[float, dict]:
    """The fine-tuning step size of a baseline: the value of eval.lr_grid with the best mean return
    over steps 1..eval.steps on eval.tune_tasks tasks drawn with eval.tune_seed (training tasks,
    never the test seed)."""
    e = cfg.eval
    n_traj = e.trajectories or cfg.train.trajectories
    s = sampler(model, cfg, e.tune_tasks, n_traj)
    tasks = task_sampler(cfg.env, cfg.env_kwargs)(e.tune_tasks, e.tune_seed)
    score = lambda a: np.mean(evaluate(model, params, s, tasks, e.steps, a, seed=e.tune_seed)["returns"][1:])
    return protocol.tune_step_size(e.lr_grid, score, higher_is_better=True)


def evaluate_run(cfg: RLConfig, learner, steps: int | None = None) -> dict:
    """The test protocol for one method: eval.tasks tasks from eval.seed, 0..steps adaptation steps
    with fresh rollouts, step alpha then alpha/2; the oracle is not adapted (its return at step 0 is
    repeated). The baselines' alpha is tuned on training tasks when eval.lr_grid is set."""
    e = cfg.eval
    steps = e.steps if steps is None else steps
    params = learner.param_values()
    alpha, search = protocol.step_size(cfg), None
    if cfg.method in ("pretrained", "random") and e.lr_grid:
        alpha, search = tune_inner_lr(learner.model, params, cfg)
    s = sampler(learner.model, cfg, e.tasks, e.trajectories or cfg.train.trajectories)
    tasks = task_sampler(cfg.env, cfg.env_kwargs)(e.tasks, e.seed)
    if cfg.method == "oracle":
        r = evaluate(learner.model, params, s, tasks, 0, alpha, seed=e.seed)
        out = {k: protocol.not_adapted(v, steps) for k, v in r.items()}
        out["alpha"] = None
    else:
        out = evaluate(learner.model, params, s, tasks, steps, alpha, seed=e.seed)
        out["alpha"] = alpha
    if search:
        out["alpha_search"] = {str(a): v for a, v in search.items()}
    return out
