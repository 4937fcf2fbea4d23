"""Training and restoring a run, whatever its domain: the config's kind picks the learner (the
supervised `maml_tf.supervised.MetaLearner` or the RL `maml_tf.rl.learner.RLRun`) and every learner
trains in the one run loop of `maml_tf.loop` (see there for what a run directory holds).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from maml_tf import distribute, loop, runs, tasks
from maml_tf.config import Config, RLConfig
from maml_tf.runs import TrainingError  # noqa: F401  (callers catch it from here)


def learner_for(cfg: Config | RLConfig, for_training: bool = False):
    """The learner of the config's domain. For training it also opens the training data (a missing
    dataset stops here, before anything is written) and the tf.distribute strategy."""
    if isinstance(cfg, RLConfig):
        from maml_tf.rl.learner import RLRun
        return RLRun(cfg)
    from maml_tf import supervised
    if not for_training:
        t = dataclasses.replace(cfg.train, distribute="default")
        return supervised.MetaLearner(dataclasses.replace(cfg, train=t))
    t = cfg.train
    strategy = distribute.make_strategy(t.distribute, t.meta_batch)
    if t.meta_batch % strategy.num_replicas_in_sync:
        raise TrainingError(f"train.meta_batch={t.meta_batch} must be divisible by the "
                            f"{strategy.num_replicas_in_sync} replicas")
    return supervised.MetaLearner(cfg, strategy, source=tasks.build(cfg.task, split="train"))


def train(cfg: Config | RLConfig, run_dir: str | Path, quiet: bool = False, stop_after: int | None = None):
    """Train (or resume) the run in `run_dir` up to its budget, holding the run directory's lock (a
    second process on it is refused). Returns the learner. In a multi-worker run (TF_CONFIG) the
    chief trains in `run_dir` and every other worker in `run_dir/workers/<index>`. `stop_after` stops after that many
    iterations of this call (used to test resuming)."""
    run_dir = Path(run_dir)
    if isinstance(cfg, Config) and cfg.train.distribute == "multi_worker":
        chief, index = distribute.worker_role()
        if not chief:  # the chief's directory is the run; every other worker keeps its own copy
            run_dir = run_dir / "workers" / str(index)
    with runs.claim(run_dir):
        changed = runs.check_resume(run_dir, cfg)  # the recovery keys take effect: read from cfg
        learner = learner_for(cfg, for_training=True)
        return loop.train(learner, cfg, run_dir, changed, quiet, stop_after)


def restore(cfg: Config | RLConfig, run_dir: str | Path, which: str = "latest"):
    """(learner with the run's latest or best-on-validation parameters, the iteration they come
    from)."""
    learner = learner_for(cfg)
    return learner, loop.restore(learner, run_dir, which)




