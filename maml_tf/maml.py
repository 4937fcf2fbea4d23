"""MAML: the inner loop (adaptation) and the meta-objective, batched over tasks.

Every function works on a whole task batch at once. Per-task losses are computed as a vector [T];
the inner gradient is taken of their *sum*, which gives every task exactly the gradient of its own
loss with respect to its own copy of the parameters (tasks do not interact). The meta-objective is
the *mean* over tasks of the query loss after the last inner step.

Second-order MAML differentiates through the inner gradients (the inner tape is recorded by the outer
one); `first_order=True` stops the gradient through them, so the meta-gradient is the query-loss
gradient at the adapted parameters.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

from maml_tf.nets import Model

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (prediction, target) -> per-task loss [T]


# ----------------------------------------------------------------------------- losses and metrics

def mse(pred: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Mean squared error of each task, [T]."""
    return tf.reduce_mean(tf.square(pred - y), axis=list(range(1, pred.shape.rank)))


def cross_entropy(shots: int) -> LossFn:
    """Per-task softmax cross-entropy as the official code computes it: the per-example losses are
    divided by K (the support shots) and summed, i.e. N (ways) times the mean for the support set.
    The inner step size alpha therefore acts on a loss summed over classes."""
    def loss(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        return tf.reduce_sum(xent, axis=1) / float(shots)
    return loss


def accuracy(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Fraction of correct predictions of each task, [T]."""
    hit = tf.equal(tf.argmax(logits, axis=-1, output_type=y.dtype), y)
    return tf.reduce_mean(tf.cast(hit, tf.float32), axis=1)


# ----------------------------------------------------------------------------- adaptation

def per_task(model: Model, params: dict, n_tasks) -> dict:
    """One copy of every adaptable parameter per task; frozen ones stay shared."""
    return {k: v if k in model.frozen else tf.tile(v[None], [n_tasks] + [1] * v.shape.rank)
            for k, v in params.items()}


def halving(alpha: float):
    """The RL test-time schedule of the official code: step alpha first, alpha / 2 after."""
    return lambda step: alpha if step == 0 else alpha / 2.0


def inner_step(model: Model, fast: dict, x: tf.Tensor, y: tf.Tensor, loss_fn: LossFn,
               alpha, first_order: bool = False) -> dict:
    """One gradient step of every task on its own support set, for the parameters that adapt
    (all but `model.frozen`: only the context vector for Appendix C's model).

    `fast` holds per-task copies (see `per_task`). `alpha` is a float or a dict name -> step size
    (a meta-learned step size, shared by the tasks, of any shape that broadcasts to the parameter)."""
    names = [k for k in fast if k not in model.frozen]
    with tf.GradientTape() as tape:
        tape.watch([fast[k] for k in names])
        loss = tf.reduce_sum(loss_fn(model.apply(fast, x), y))
    grads = tape.gradient(loss, [fast[k] for k in names])
    new = dict(fast)
    for k, g in zip(names, grads):
        if first_order:
            g = tf.stop_gradient(g)
        a = alpha[k] if isinstance(alpha, dict) else alpha
        new[k] = fast[k] - a * g
    return new


def adapt(model: Model, params: dict, x, y, loss_fn: LossFn, steps: int, alpha,
          first_order: bool = False, shared: bool = True, first_step: int = 0) -> dict:
    """The one adaptation function, which training, evaluation, figures and RL all call: `steps`
    inner gradient steps on the support data (x, y) of every task.

    `params` are the shared meta-parameters (copied per task first) or, with `shared=False`,
    per-task parameters already adapted `first_step` steps. `alpha` is the step size: a float, a
    dict of meta-learned step sizes, or a schedule `step -> float` (e.g. `halving`), called with
    the index of each step counted from the meta-parameters."""
    fast = per_task(model, params, tf.shape(x)[0]) if shared else params
    for s in range(first_step, first_step + steps):
        fast = inner_step(model, fast, x, y, loss_fn, alpha(s) if callable(alpha) else alpha, first_order)
    return fast


def chunk_size(n_tasks: int, chunk: int) -> int:
    """The largest divisor of `n_tasks` that is at most `chunk`; all the tasks when `chunk` is 0 or
    at least `n_tasks`."""
    if chunk <= 0 or chunk >= n_tasks:
        return n_tasks
    return max(c for c in range(1, chunk + 1) if n_tasks % c == 0)


def sum_over_tasks(fn: Callable, inputs, chunk: int):
    """fn(inputs) for an `fn` that is a sum over the tasks of `inputs` (a nest of tensors whose
    leading axis, static, is the task axis), computed `chunk_size(T, chunk)` tasks at a time and
    added up, one chunk after the other (inside `tf.function`, each chunk waits for the previous
    one's result): the memory of one chunk's intermediates at a time, e.g. of a second-order gradient.
    With one chunk it is fn(inputs).

    The chunks are unrolled, not a `tf.while_loop`: with the loop inside the TRPO step's
    conjugate-gradient loop, Grappler's arithmetic optimiser turned a sum of gradients into an
    accumulator whose temporary variable outlived its step ("AlreadyExistsError: Resource
    __per_step_0/...AddOpsRewrite.../tmp_var" on the next call; the context-vector policy)."""
    n_tasks = int(tf.nest.flatten(inputs)[0].shape[0])
    c = chunk_size(n_tasks, chunk)
    if c == n_tasks:
        return fn(inputs)
    parts, after = [], []
    for i in range(0, n_tasks, c):
        with tf.control_dependencies(after):
            parts.append(fn(tf.nest.map_structure(lambda x: x[i:i + c], inputs)))
        after = tf.nest.flatten(parts[-1])
    return tf.nest.map_structure(lambda *xs: None if xs[0] is None else tf.add_n(list(xs)), *parts)


def meta_loss(model: Model, params: dict, batch: dict, loss_fn: LossFn, steps: int, alpha,
              first_order: bool = False) -> tf.Tensor:
    """Mean over the task batch of the query loss after `steps` inner steps on the support set.
    With steps = 0 this is plain regression/classification on all tasks (the pretrained baseline)."""
    fast = adapt(model, params, batch.xs, batch.ys, loss_fn, steps, alpha, first_order)
    return tf.reduce_mean(loss_fn(model.apply(fast, batch.xq), batch.yq))


def meta_gradient(model: Model, params: dict, batch: dict, loss_fn: LossFn, steps: int, alpha,
                  first_order: bool = False) -> tuple[tf.Tensor, dict]:
    """(meta-loss, its gradient with respect to `params` and, when learned, `alpha`). A second-order
    one of more tasks than `model.second_order_tasks` is the task-weighted sum of chunks' (each
    chunk at most that many tasks, one after the other: `sum_over_tasks`)."""
    n_tasks, most = batch.xs.shape[0], model.second_order_tasks
    if not first_order and most and n_tasks is None:
        raise ValueError(f"a second-order meta-gradient of this model takes at most {most} tasks per call, "
                         "and this batch's task count is not known when traced: give the batch a static "
                         "leading (task) dimension")
    if not first_order and most and n_tasks > most:
        def chunk(b):
            w = b.xs.shape[0] / n_tasks  # the chunk's share of the mean over tasks
            loss, grads = meta_gradient(model, params, b, loss_fn, steps, alpha)
            return loss * w, tf.nest.map_structure(lambda g: None if g is None else g * w, grads)
        return sum_over_tasks(chunk, batch, most)
    learned_alpha = isinstance(alpha, dict)
    with tf.GradientTape() as tape:
        tape.watch(list(params.values()))
        if learned_alpha:
            tape.watch(list(alpha.values()))
        loss = meta_loss(model, params, batch, loss_fn, steps, alpha, first_order)
    sources = {"params": params, **({"alpha": alpha} if learned_alpha else {})}
    return loss, tape.gradient(loss, sources)


def evaluate_steps(model: Model, params: dict, batch: dict, loss_fn: LossFn, metric_fn,
                   steps: int, alpha) -> tf.Tensor:
    """Query metric of every task after 0, 1, ..., `steps` inner steps: [steps + 1, T]."""
    fast = per_task(model, params, tf.shape(batch.xs)[0])
    out = [metric_fn(model.apply(fast, batch.xq), batch.yq)]
    for s in range(steps):
        fast = adapt(model, fast, batch.xs, batch.ys, loss_fn, 1, alpha, shared=False, first_step=s)
        out.append(metric_fn(model.apply(fast, batch.xq), batch.yq))
    return tf.stack(out)
