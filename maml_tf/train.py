"""The meta-training loop: one compiled step for the whole task batch, Adam, checkpoints, resume.

A run directory holds:
  config.yaml       the resolved config (a resumed run must match it, but for the budget keys)
  checkpoints/      the latest checkpoints (params, step sizes, Adam state, step, wall time)
  best/             the checkpoint with the best meta-validation metric (when val_every > 0)
  metrics.jsonl     one JSON line per log step (and per validation)
  tb/               TensorBoard summaries of the same
An interrupted run resumes from its last checkpoint and continues as if it had never stopped: the
batch of iteration i depends only on (seed, i).
"""
from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from maml_tf import distribute, evaluate, maml, nets, tasks
from maml_tf.config import Config
from maml_tf.records import write_json
from maml_tf import runs
from maml_tf.runs import Log, StopRequest, TrainingError, check_resume, record_session

def objective(cfg: Config):
    """(loss used in the inner loop and for the meta-objective, metric reported at evaluation,
    name of the metric, whether higher is better) for the config's task."""
    if cfg.task["kind"] == "sinusoid":
        return maml.mse, maml.mse, "mse", False
    return maml.cross_entropy(cfg.task.get("shot", 1)), maml.accuracy, "accuracy", True


class MetaLearner:
    """Meta-parameters (and, if learned, step sizes) as variables, with the compiled meta-step."""

    def __init__(self, cfg: Config, strategy: tf.distribute.Strategy | None = None):
        self.cfg, t = cfg, cfg.train
        self.model = nets.build(cfg.model)
        self.loss_fn, self.metric_fn, self.metric_name, self.higher_is_better = objective(cfg)
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            self.params = {k: tf.Variable(v, name=k) for k, v in self.model.init(cfg.seed).items()}
            self.alpha = ({k: tf.Variable(tf.fill(v.shape, t.inner_lr), name=f"alpha_{k}")
                           for k, v in self.params.items() if k not in self.model.frozen}
                          if t.learn_inner_lr else {})
            self.optimizer = tf.keras.optimizers.Adam(t.meta_lr)
            self.optimizer.build(self.variables)
            self.step = tf.Variable(0, dtype=tf.int64, name="step")
            self.wall_time = tf.Variable(0.0, dtype=tf.float64, name="wall_time")
        self.checkpoint = tf.train.Checkpoint(params=self.params, alpha=self.alpha,
                                              optimizer=self.optimizer, step=self.step,
                                              wall_time=self.wall_time)
        # The compiled meta-gradient is a pure function of parameter values (no captured
        # variables), so every replica runs the same traced function; XLA compiles it once per
        # device (in parallel: 20-way 5-shot, 2 min per device, 8 min for 4 replicas on 2 cores).
        self._grads = tf.function(self._meta_gradient, jit_compile=t.xla)
        # On one device the whole step (meta-gradient and Adam update) is one XLA program; with
        # several replicas only the per-replica meta-gradient is (the all-reduce stays outside).
        single = self.strategy.num_replicas_in_sync == 1 and not isinstance(
            self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self._train_step = tf.function(self._distributed_step, jit_compile=t.xla and single)

    @property
    def variables(self) -> list:
        return list(self.params.values()) + list(self.alpha.values())

    def inner_lr(self):
        return {k: v.value() for k, v in self.alpha.items()} if self.alpha else self.cfg.train.inner_lr

    def _meta_gradient(self, params: dict, alpha, batch: dict):
        t = self.cfg.train
        return maml.meta_gradient(self.model, params, batch, self.loss_fn, t.inner_steps, alpha,
                                  t.first_order)

    def _replica_step(self, batch):
        return self._grads(self.param_values(), self.inner_lr(), batch)

    def _distributed_step(self, batch):
        loss, grads = self.strategy.run(self._replica_step, args=(batch,))
        mean = lambda x: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, x, axis=None)
        loss = mean(loss)
        flat = [mean(grads["params"][k]) for k in self.params]
        if self.alpha:
            flat += [mean(grads["alpha"][k]) for k in self.alpha]
        if self.cfg.train.grad_clip is not None:
            c = self.cfg.train.grad_clip
            flat = [tf.clip_by_value(g, -c, c) for g in flat]
        self.optimizer.apply_gradients(zip(flat, self.variables))
        self.step.assign_add(1)
        return loss

    def train_step(self, batch) -> tf.Tensor:
        return self._train_step(batch)

    def meta_gradient_graph(self, batch):
        """The traced graph of one replica's meta-gradient on `batch` (what `make bench` counts
        FLOPs in)."""
        return self._grads.get_concrete_function(self.param_values(), self.inner_lr(), batch).graph

    def param_values(self) -> dict:
        return {k: v.value() for k, v in self.params.items()}


def _model_batch(batch: dict) -> dict:
    return {k: batch[k] for k in tasks.MODEL_KEYS}


def batches(source, seed: int, start: int, stop: int, meta_batch: int, ahead: int = 4):
    """Batches start..stop-1 of the stream `seed` (dicts of tensors), sampled `ahead` on a daemon
    thread while the compiled step runs. A plain thread rather than tf.data: an interrupted run
    exits at once (a tf.data generator pipeline could hold the exit for a minute)."""
    out, stopped = queue.Queue(maxsize=ahead), threading.Event()

    def put(item) -> None:
        while not stopped.is_set():
            try:
                return out.put(item, timeout=0.1)
            except queue.Full:
                pass

    def work() -> None:
        try:
            for i in range(start, stop):
                put(_model_batch(source.sample(tasks.stream_rng(seed, i), meta_batch)))
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    threading.Thread(target=work, name="batches", daemon=True).start()
    try:
        for _ in range(start, stop):
            item = out.get()
            if isinstance(item, BaseException):
                raise item
            yield {k: tf.convert_to_tensor(v) for k, v in item.items()}
    finally:
        stopped.set()


def validate(learner: MetaLearner, cfg: Config) -> float:
    """Mean meta-validation metric with the test protocol (eval.task, eval.steps, the reported
    step), on `val_tasks` fixed tasks of the validation split."""
    t, e = cfg.train, cfg.eval
    source = tasks.build({**cfg.task, **e.task}, split="val")
    res = evaluate.evaluate(learner.model, learner.param_values(), source, learner.loss_fn,
                            learner.metric_fn, steps=e.steps, alpha=test_inner_lr(learner, cfg),
                            n_tasks=t.val_tasks, seed=t.val_seed, batch=e.batch)
    return float(res["mean"][e.steps if e.report_step is None else e.report_step])


def test_inner_lr(learner: MetaLearner, cfg: Config):
    """The test-time step size: the meta-learned one, eval.inner_lr, or the training one."""
    if learner.alpha:
        return learner.inner_lr()
    return cfg.train.inner_lr if cfg.eval.inner_lr is None else cfg.eval.inner_lr


def train(cfg: Config, run_dir: str | Path, quiet: bool = False, stop_after: int | None = None) -> MetaLearner:
    """Train (or resume) the run in `run_dir` up to cfg.train.iterations, holding the run
    directory's lock (a second process on it is refused).

    `stop_after` stops early after that many iterations of this call (used to test resuming)."""
    with runs.claim(run_dir):
        return _train(cfg, Path(run_dir), quiet, stop_after)


def _train(cfg: Config, run_dir: Path, quiet: bool, stop_after: int | None) -> MetaLearner:
    t = cfg.train
    changed = check_resume(run_dir, cfg)
    strategy = distribute.make_strategy(t.distribute, t.meta_batch)
    if t.meta_batch % strategy.num_replicas_in_sync:
        raise TrainingError(f"train.meta_batch={t.meta_batch} must be divisible by the "
                            f"{strategy.num_replicas_in_sync} replicas")
    source = tasks.build(cfg.task, split="train")  # a missing dataset stops here, nothing written
    learner = MetaLearner(cfg, strategy)
    # the latest checkpoint and the best only: older ones are deleted as new ones are written
    manager = tf.train.CheckpointManager(learner.checkpoint, run_dir / "checkpoints", max_to_keep=1)
    if manager.latest_checkpoint:
        learner.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        learner.optimizer.learning_rate.assign(t.meta_lr)  # a changed meta_lr takes effect
    start = int(learner.step.numpy())
    runs.resumed(run_dir, cfg, start, changed)
    best_manager = tf.train.CheckpointManager(learner.checkpoint, run_dir / "best", max_to_keep=1)
    stop = t.iterations if stop_after is None else min(t.iterations, start + stop_after)
    runs.announce(run_dir, start, stop, t.iterations, quiet)
    if start >= stop:
        return learner

    best_path = run_dir / "best.json"
    best = json.loads(best_path.read_text()) if best_path.exists() else None
    log = Log(run_dir, quiet)
    data = batches(source, cfg.seed, start, stop, t.meta_batch)

    def save(step: int) -> None:
        if not runs.all_finite(learner.variables):
            raise TrainingError(
                f"the parameters became NaN or infinite before iteration {step}; nothing was saved "
                f"over the last good checkpoint ({manager.latest_checkpoint}). Lower train.meta_lr or "
                f"train.inner_lr, or set train.grad_clip, and resume.")
        learner.wall_time.assign(wall0 + time.perf_counter() - t0)
        manager.save(checkpoint_number=step)
        # the metrics log's interval open at this checkpoint (its first iteration and loss sum):
        # a run stopped between two log steps then logs as if it had never stopped
        write_json(run_dir / "checkpoints" / "log_interval.json",
                   {"checkpoint": step, "from": last_step, "loss_sum": float(loss_sum)})

    step, t0, last_t, last_step, loss_sum = start, time.perf_counter(), time.perf_counter(), start, 0.0
    interval = run_dir / "checkpoints" / "log_interval.json"
    if interval.exists():  # the log interval open at the checkpoint resumed from
        open_at = json.loads(interval.read_text())
        if open_at.get("checkpoint") == start and 0 <= open_at.get("from", -1) <= start:
            last_step, loss_sum = open_at["from"], open_at["loss_sum"]
    wall0 = float(learner.wall_time.numpy())
    with StopRequest() as stop_request:
        for batch in data:
            loss = learner.train_step(distribute.split_across_replicas(strategy, batch))
            step += 1
            if step == start + 1:
                record_session(run_dir, start, stop, changed)
            loss_sum = loss_sum + loss
            if step % t.log_every == 0 or step == stop:
                mean_loss = float(loss_sum) / (step - last_step)
                if not np.isfinite(mean_loss):
                    raise TrainingError(
                        f"the meta-loss became {mean_loss} between iterations {last_step} and {step}; "
                        f"the last good checkpoint is {manager.latest_checkpoint}. Lower train.meta_lr "
                        f"or train.inner_lr, or set train.grad_clip, then resume.")
                now = time.perf_counter()
                rate = (step - max(last_step, start)) / (now - last_t)  # this process's iterations
                learner.wall_time.assign(wall0 + now - t0)
                log.write(step, {"loss": mean_loss, "it_per_s": rate, "wall_time_s": wall0 + now - t0})
                eta = (t.iterations - step) / rate if rate > 0 else float("nan")
                log.progress(f"[{step:>7d}/{t.iterations}] loss {mean_loss:.4f}  {rate:6.1f} it/s  "
                             f"eta {eta / 60:6.1f} min")
                last_t, last_step, loss_sum = now, step, 0.0
            if t.val_every and (step % t.val_every == 0 or step == t.iterations):
                value = validate(learner, cfg)
                log.write(step, {f"val_{learner.metric_name}": value})
                if runs.all_finite(learner.variables) and runs.is_better(value, best, learner.higher_is_better):
                    best = {"step": step, "value": value, "metric": learner.metric_name}
                    best_manager.save(checkpoint_number=step)
                    write_json(best_path, best)
            stop_request.checkpoint(step, step % t.checkpoint_every == 0 or step == stop, save, log)
    log.done(f"trained to {step} iterations: the checkpoints are in {run_dir}")
    return learner


def restore(cfg: Config, run_dir: str | Path, which: str = "latest") -> MetaLearner:
    """A learner with the run's latest (or best-on-validation) checkpoint restored."""
    run_dir = Path(run_dir)
    learner = MetaLearner(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, distribute="default")))
    folder = run_dir / ("best" if which == "best" else "checkpoints")
    path = tf.train.latest_checkpoint(str(folder))
    if which == "best" and path is None:
        path = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if path is None:
        raise TrainingError(f"no checkpoint in {folder}: train the run first (its make target does)")
    learner.checkpoint.restore(path).expect_partial()
    return learner
