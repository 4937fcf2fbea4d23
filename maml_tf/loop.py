"""The one run loop that every meta-learner trains in (the supervised MAML learner of
`maml_tf.supervised`, the MAML-TRPO and TRPO learner of `maml_tf.rl.learner`).

The loop owns the run directory: the lock, the resume check, the latest and the best checkpoint,
the NaN guard, stop signals, the metrics log and restoring. A learner owns one iteration and says
what to checkpoint. It provides:

  checkpoint          a tf.train.Checkpoint of everything a resumed run needs, with `step` (the
                      iterations done) and `wall_time` (seconds of training) as variables
  params, alpha       the meta-parameters (and the meta-learned step sizes, {} when not learned):
                      what the best checkpoint keeps
  budget              the iterations to train to
  guarded             the logged values that must stay finite (a run whose meta-loss becomes NaN stops)
  fix_hint            what to change in the config when the run diverges
  restored()          called after the latest checkpoint is restored (e.g. re-assign a changed meta_lr)
  same_start(start)   refuse to train when the processes of one run (multi-worker) resume apart
  agreed_stop(req)    whether to stop now, as every process of the run agrees (req: this one's signal)
  begin(start, stop)  / end(): open and close the data stream of iterations start..stop-1
  iterate(step)       iteration `step` (0-based): update the variables, return the values to log
  score(step, values) after iteration `step` (now `step` + 1 iterations done): a `Score` when the
                      learner has a new measure of how good its parameters are, else None
  extras(rate)        values logged beside the interval's means (rate = iterations per second)
  progress(step, means, rate)   the one-line progress text

A run directory holds:
  config.yaml       the resolved config (a resumed run must match it, but for the budget keys)
  checkpoints/      the latest checkpoint, and log_interval.json (the log interval open at it)
  best/ best.json   the parameters with the best score, and their iteration and score
  metrics.jsonl     one JSON line per log step (and per validation); tb/ the same for TensorBoard
  sessions.jsonl    which commit trained which iterations, where and when
An interrupted run resumes from its last checkpoint and continues as if it had never stopped: the
data of iteration i depend only on (seed, i), and the metrics log is rolled back to the checkpoint.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from maml_tf import runs
from maml_tf.records import write_json
from maml_tf.runs import Log, StopRequest, TrainingError


class Score(NamedTuple):
    """A measure of the parameters that were current after `step` iterations (`params`, `alpha`:
    their values, copied by the learner when they have changed since)."""
    value: float
    step: int
    metric: str
    higher_is_better: bool
    params: dict
    alpha: dict
    log: dict  # values to write to the metrics log beside it ({} when already logged)


class _Best:
    """The best checkpoint: the parameters (and step sizes) with the best score and their
    iteration. One format for every learner: Checkpoint(params, alpha, step)."""

    def __init__(self, learner, run_dir: Path):
        self.params = {k: tf.Variable(v) for k, v in learner.params.items()}
        self.alpha = {k: tf.Variable(v) for k, v in learner.alpha.items()}
        self.step = tf.Variable(0, dtype=tf.int64)
        self.manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(params=self.params, alpha=self.alpha, step=self.step),
            run_dir / "best", max_to_keep=1)
        self.path = run_dir / "best.json"
        self.record = json.loads(self.path.read_text()) if self.path.exists() else None

    def offer(self, score: Score) -> None:
        values = list(score.params.values()) + list(score.alpha.values())
        if not runs.all_finite(values) or not runs.is_better(score.value, self.record, score.higher_is_better):
            return
        for k, v in score.params.items():
            self.params[k].assign(v)
        for k, v in score.alpha.items():
            self.alpha[k].assign(v)
        self.step.assign(score.step)
        self.manager.save(checkpoint_number=score.step)
        self.record = {"step": score.step, "value": score.value, "metric": score.metric}
        write_json(self.path, self.record)


def train(learner, cfg, run_dir: str | Path, changed: dict, quiet: bool = False,
          stop_after: int | None = None):
    """Train (or resume) `learner` in `run_dir` up to learner.budget iterations. The caller holds
    the run directory's lock (runs.claim) and has checked the config against the run's
    (runs.check_resume, which gives `changed`). `stop_after` stops after that many iterations of
    this call (used to test resuming)."""
    run_dir = Path(run_dir)
    manager = tf.train.CheckpointManager(learner.checkpoint, run_dir / "checkpoints", max_to_keep=1)
    if manager.latest_checkpoint:
        learner.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        learner.restored()
    start = int(learner.step.numpy())
    learner.same_start(start)
    runs.resumed(run_dir, cfg, start, changed)
    stop = learner.budget if stop_after is None else min(learner.budget, start + stop_after)
    log_every, checkpoint_every = cfg.train.log_every, cfg.train.checkpoint_every
    interval = run_dir / "checkpoints" / "log_interval.json"
    last_step, sums = start, {}
    if interval.exists():  # the log interval open at the checkpoint resumed from
        open_at = json.loads(interval.read_text())
        if open_at.get("checkpoint") == start and 0 <= open_at.get("from", -1) <= start:
            last_step = open_at["from"]
            sums = open_at.get("sums", {"loss": open_at["loss_sum"]} if "loss_sum" in open_at else {})
    t0 = last_t = time.perf_counter()
    wall0 = float(learner.wall_time.numpy())

    def save(step: int) -> None:
        if not runs.all_finite(list(learner.params.values()) + list(learner.alpha.values())):
            raise TrainingError(
                f"the parameters became NaN or infinite before iteration {step}; nothing was saved over "
                f"the last good checkpoint ({manager.latest_checkpoint}). {learner.fix_hint}, and resume.")
        learner.wall_time.assign(wall0 + time.perf_counter() - t0)
        manager.save(checkpoint_number=step)
        # the metrics log's interval open at this checkpoint (its first iteration and its sums):
        # a run stopped between two log steps then logs as if it had never stopped
        write_json(interval, {"checkpoint": step, "from": last_step,
                              "sums": {k: float(v) for k, v in sums.items()}})

    if start == 0 and not manager.latest_checkpoint:
        save(0)  # the initial parameters (all that the `random` RL baseline is)
    runs.announce(run_dir, start, stop, learner.budget, quiet)
    if start >= stop:
        return learner

    best = _Best(learner, run_dir)
    log = Log(run_dir, quiet)
    learner.begin(start, stop)
    try:
        with StopRequest() as stop_request:
            for step in range(start, stop):
                values = learner.iterate(step)
                done = step + 1
                if done == start + 1:
                    runs.record_session(run_dir, start, stop, changed)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if done % log_every == 0 or done == stop:
                    n = done - last_step
                    means = {k: float(v) / n for k, v in sums.items()}
                    bad = [k for k in learner.guarded if not np.isfinite(means[k])]
                    if bad:
                        raise TrainingError(
                            f"{', '.join(bad)} became {means[bad[0]]} between iterations {last_step} and "
                            f"{done}; the last good checkpoint is {manager.latest_checkpoint}. "
                            f"{learner.fix_hint}, then resume.")
                    now = time.perf_counter()
                    rate = (done - max(last_step, start)) / (now - last_t)  # this process's iterations
                    learner.wall_time.assign(wall0 + now - t0)
                    log.write(done, {**means, **learner.extras(rate), "wall_time_s": wall0 + now - t0})
                    log.progress(learner.progress(done, means, rate))
                    last_t, last_step, sums = now, done, {}
                score = learner.score(step, values)
                if score is not None:
                    if score.log:
                        log.write(done, score.log)
                    best.offer(score)
                stop_request.checkpoint(done, done % checkpoint_every == 0 or done == stop, save, log,
                                        learner.agreed_stop(stop_request.requested))
    finally:
        learner.end()
    log.done(f"trained to {stop} iterations: the checkpoints are in {run_dir}")
    return learner


def restore(learner, run_dir: str | Path, which: str = "latest") -> int:
    """Restore the run's latest checkpoint into `learner`, then, for which="best", the best
    parameters (when the run has a best checkpoint). Returns the iteration the parameters come
    from. Reads best checkpoints of every format this project has written (the full learner
    checkpoint of older supervised runs, Checkpoint(params, step) of older RL runs)."""
    run_dir = Path(run_dir)
    path = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if path is None:
        raise TrainingError(f"no checkpoint in {run_dir / 'checkpoints'}: train the run first "
                            f"(its make target does)")
    learner.checkpoint.restore(path).expect_partial()
    best = tf.train.latest_checkpoint(str(run_dir / "best"))
    if which != "best" or best is None:
        return int(learner.step.numpy())
    step = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(params=learner.params, alpha=learner.alpha, step=step).restore(best).expect_partial()
    return int(step.numpy())
