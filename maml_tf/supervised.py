"""The supervised meta-learner (sinusoid regression, few-shot classification): the
meta-parameters (and, if learned, the step sizes) as variables, one compiled meta-step for the whole
task batch with Adam, the (seed, iteration) batch stream and meta-validation. It trains in the run
loop of `maml_tf.loop`.
"""
from __future__ import annotations

import queue
import threading

import tensorflow as tf

from maml_tf import distribute, evaluate, maml, nets, tasks
from maml_tf.config import Config
from maml_tf.loop import Score


def objective(cfg: Config):
    """(loss used in the inner loop and for the meta-objective, metric reported at evaluation,
    name of the metric, whether higher is better) for the config's task."""
    if cfg.task["kind"] == "sinusoid":
        return maml.mse, maml.mse, "mse", False
    return maml.cross_entropy(cfg.task.get("shot", 1)), maml.accuracy, "accuracy", True


class MetaLearner:
    """Meta-parameters (and, if learned, step sizes) as variables, with the compiled meta-step.

    `source` (the training split's task source) is needed to train only: a learner restored for
    evaluation does not load the training data."""

    fix_hint = "Lower train.meta_lr or train.inner_lr, or set train.grad_clip"
    guarded = ("loss",)

    def __init__(self, cfg: Config, strategy: tf.distribute.Strategy | None = None, source=None):
        self.cfg, t = cfg, cfg.train
        self.source, self.budget, self._batches = source, t.iterations, None
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

    # ------------------------------------------------------------------ what the run loop calls

    def restored(self) -> None:
        self.optimizer.learning_rate.assign(self.cfg.train.meta_lr)  # a changed meta_lr takes effect

    def same_start(self, start: int) -> None:
        distribute.same_start(self.strategy, start)

    def agreed_stop(self, requested: bool) -> bool:
        return distribute.agreed_stop(self.strategy, requested)

    def begin(self, start: int, stop: int) -> None:
        self._batches = batches(self.source, self.cfg.seed, start, stop, self.cfg.train.meta_batch)

    def end(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None

    def iterate(self, step: int) -> dict:
        batch = next(self._batches)
        return {"loss": self.train_step(distribute.split_across_replicas(self.strategy, batch))}

    def score(self, step: int, values: dict) -> Score | None:
        """Meta-validation every train.val_every iterations and at the end of the budget."""
        t, done = self.cfg.train, step + 1
        if not t.val_every or (done % t.val_every and done != t.iterations):
            return None
        value = validate(self, self.cfg)
        return Score(value, done, self.metric_name, self.higher_is_better, self.param_values(),
                     {k: v.value() for k, v in self.alpha.items()}, {f"val_{self.metric_name}": value})

    def extras(self, rate: float) -> dict:
        return {"it_per_s": rate}

    def progress(self, step: int, means: dict, rate: float) -> str:
        eta = (self.budget - step) / rate if rate > 0 else float("nan")
        return (f"[{step:>7d}/{self.budget}] loss {means['loss']:.4f}  {rate:6.1f} it/s  "
                f"eta {eta / 60:6.1f} min")


def batches(source, seed: int, start: int, stop: int, meta_batch: int, ahead: int = 4):
    """Batches start..stop-1 of the stream `seed` (`tasks.TaskBatch`es of tensors), sampled `ahead` on a daemon
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
                put(tasks.TaskBatch.of(source.sample(tasks.stream_rng(seed, i), meta_batch)))
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    threading.Thread(target=work, name="batches", daemon=True).start()
    try:
        for _ in range(start, stop):
            item = out.get()
            if isinstance(item, BaseException):
                raise item
            yield tasks.TaskBatch(*(tf.convert_to_tensor(v) for v in item))
    finally:
        stopped.set()


def validate(learner: MetaLearner, cfg: Config) -> float:
    """Mean meta-validation metric with the test protocol (eval.task, eval.steps, the reported
    step), on `val_tasks` fixed tasks of the validation split."""
    return float(validation_by_step(learner, cfg)["mean"][cfg.eval.headline_step])


def task_source(cfg: Config, split: str):
    """The tasks of the test protocol (`eval.task` over `task`) drawn from `split`: 'test' for the
    reported numbers, 'val' for meta-validation, 'train' for diagnoses."""
    return tasks.build({**cfg.task, **cfg.eval.task}, split=split)


def validation_by_step(learner: MetaLearner, cfg: Config, source=None, steps: int | None = None,
                       alpha=None) -> dict:
    """`evaluate.evaluate` on the meta-validation tasks of `validate`: the metric after 0..eval.steps
    (or `steps`) with the learner's step size (or `alpha`); `source`: `task_source(cfg, "val")`, once
    built."""
    t, e = cfg.train, cfg.eval
    return evaluate.evaluate(learner.model, learner.param_values(), source or task_source(cfg, "val"),
                             learner.loss_fn, learner.metric_fn, steps=e.steps if steps is None else steps,
                             alpha=step_size(learner) if alpha is None else alpha,
                             n_tasks=t.val_tasks, seed=t.val_seed, batch=e.batch)


def step_size(learner: MetaLearner):
    """The learner's test-time step size (`evaluate.step_size`)."""
    return evaluate.step_size(learner.cfg, learner.inner_lr() if learner.alpha else None)
