"""The meta-gradient against finite differences, first-order MAML, and the inner loop."""
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import maml, nets
from maml_tf.tasks import TaskBatch

TB = TaskBatch.of


def _f64(params):
    return {k: tf.cast(v, tf.float64) for k, v in params.items()}


def _regression_batch(rng, tasks=3, n=6, d=4, out=2):
    mk = lambda *s: tf.constant(rng.normal(size=s), tf.float64)
    return {"xs": mk(tasks, n, d), "ys": mk(tasks, n, out), "xq": mk(tasks, n, d), "yq": mk(tasks, n, out)}


def _classification_batch(rng, tasks=2, way=3, size=8, channels=1):
    mk = lambda: tf.constant(rng.normal(size=(tasks, way, size, size, channels)), tf.float64)
    y = tf.constant(np.tile(np.arange(way), (tasks, 1)), tf.int32)
    return {"xs": mk(), "ys": y, "xq": mk(), "yq": y}


def _directional_check(loss_of, params, grads, rng, eps=1e-7, n_dirs=4):
    """g . v against the central difference of the loss along random directions v (float64)."""
    for _ in range(n_dirs):
        v = {k: tf.constant(rng.normal(size=p.shape), tf.float64) for k, p in params.items()}
        plus = loss_of({k: params[k] + eps * v[k] for k in params})
        minus = loss_of({k: params[k] - eps * v[k] for k in params})
        fd = float((plus - minus) / (2 * eps))
        analytic = float(sum(tf.reduce_sum(grads[k] * v[k]) for k in params))
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)


# After an inner step the loss depends on the inner *gradient*, which jumps wherever a ReLU or a
# max-pool switches: finite differences across such a jump are meaningless. The ReLU MLP is small
# enough to have none within eps; the conv nets use a smooth activation (the machinery is the same).
MODELS = {
    "mlp_bn_relu": (nets.mlp([4, 8, 6, 2], batch_norm_hidden=True, out_std=0.5), "regression"),
    "conv_stride": (nets.conv4(3, 1, 4, 8, max_pool=False, activation="softplus"), "classification"),
    "conv_pool": (nets.conv4(3, 1, 4, 16, max_pool=True, activation="softplus"), "classification"),
    # MiniImagenet's form, tasks looped over tf.nn.conv2d / max_pool2d (stride 1, SAME padding)
    "conv_pool_per_task": (nets.conv4(3, 1, 4, 16, max_pool=True, activation="softplus", impl="per_task"),
                           "classification"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_second_order_meta_gradient_matches_finite_differences(name):
    model, kind = MODELS[name]
    rng = np.random.default_rng(0)
    params = _f64(model.init(1))
    if kind == "regression":
        batch, loss_fn, alpha = _regression_batch(rng), maml.mse, 0.05
    else:
        size = 16 if name.startswith("conv_pool") else 8
        batch, loss_fn, alpha = _classification_batch(rng, size=size), maml.cross_entropy(1), 0.1
    steps = 2
    loss_of = lambda p: maml.meta_loss(model, p, TB(batch), loss_fn, steps, alpha)
    _, grads = maml.meta_gradient(model, params, TB(batch), loss_fn, steps, alpha)
    grads = grads["params"]
    # The batch-norm offsets are meta-learned: they do get a meta-gradient.
    for k in model.frozen:
        assert float(tf.reduce_max(tf.abs(grads[k]))) > 0
    _directional_check(loss_of, params, grads, rng)


def test_learned_step_size_gradient_matches_finite_differences():
    model = nets.mlp([4, 8, 2])
    rng = np.random.default_rng(3)
    params = _f64(model.init(0))
    alpha = {k: tf.constant(rng.uniform(0.01, 0.1, size=v.shape), tf.float64) for k, v in params.items()}
    batch = _regression_batch(rng)
    _, grads = maml.meta_gradient(model, params, TB(batch), maml.mse, 2, alpha)
    loss_of = lambda a: maml.meta_loss(model, params, TB(batch), maml.mse, 2, a)
    _directional_check(loss_of, alpha, grads["alpha"], rng)


def test_first_order_is_query_gradient_at_adapted_parameters():
    model = nets.mlp([4, 8, 6, 2], batch_norm_hidden=True, out_std=0.5)
    rng = np.random.default_rng(1)
    params = _f64(model.init(2))
    batch = _regression_batch(rng, tasks=3)
    _, fo = maml.meta_gradient(model, params, TB(batch), maml.mse, 2, 0.05, first_order=True)
    _, so = maml.meta_gradient(model, params, TB(batch), maml.mse, 2, 0.05, first_order=False)
    fast = maml.adapt(model, params, batch["xs"], batch["ys"], maml.mse, 2, 0.05)
    fast = {k: tf.constant(v) for k, v in fast.items()}  # leaves: no path back to params
    with tf.GradientTape() as tape:
        tape.watch(list(fast.values()))
        q = tf.reduce_mean(maml.mse(model.apply(fast, batch["xq"]), batch["yq"]))
    g = tape.gradient(q, fast)
    for k in params:
        # per-task copies were tiled from params: the meta-gradient sums over tasks of d(mean)/d(copy)
        expected = g[k] if k in model.frozen else tf.reduce_sum(g[k], axis=0)
        np.testing.assert_allclose(fo["params"][k].numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)
    # and it really differs from the second-order gradient
    diff = max(float(tf.reduce_max(tf.abs(fo["params"][k] - so["params"][k]))) for k in params)
    assert diff > 1e-6


def test_inner_step_is_per_task_gradient_descent():
    model = nets.mlp([4, 8, 2])
    rng = np.random.default_rng(2)
    params = _f64(model.init(0))
    batch = _regression_batch(rng, tasks=3)
    fast = maml.adapt(model, params, batch["xs"], batch["ys"], maml.mse, 1, 0.1)
    for t in range(3):
        one = {k: v[t:t + 1] for k, v in batch.items()}
        with tf.GradientTape() as tape:
            tape.watch(list(params.values()))
            loss = maml.mse(model.apply(params, one["xs"]), one["ys"])[0]
        g = tape.gradient(loss, params)
        for k in params:
            np.testing.assert_allclose(fast[k][t].numpy(), (params[k] - 0.1 * g[k]).numpy(), rtol=1e-12)


def test_official_cross_entropy_scaling():
    logits = tf.constant(np.random.default_rng(0).normal(size=(2, 10, 5)), tf.float32)
    y = tf.constant(np.tile(np.arange(5), (2, 2)), tf.int32)  # 5-way 2-shot
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    # summed over examples and divided by K: N times the mean
    np.testing.assert_allclose(maml.cross_entropy(2)(logits, y).numpy(),
                               5 * tf.reduce_mean(xent, axis=1).numpy(), rtol=1e-6)


def _blocky_batch(rng, tasks=2, way=3, size=24, block=6, channels=3):
    """Images constant on block x block squares: wherever a 3x3 window lies inside one square the
    first convolution's outputs are equal for every parameter value, so 2x2 max-pool windows hold
    exact ties that stay ties along any direction in parameter space."""
    def mk():
        coarse = rng.uniform(size=(tasks, way, size // block, size // block, channels))
        return tf.constant(np.repeat(np.repeat(coarse, block, axis=2), block, axis=3), tf.float64)
    y = tf.constant(np.tile(np.arange(way), (tasks, 1)), tf.int32)
    return {"xs": mk(), "ys": y, "xq": mk(), "yq": y}


@pytest.mark.parametrize("impl", ["batched", "per_task"])
def test_second_order_meta_gradient_with_max_pool_ties(impl):
    """MiniImagenet-like (3 channels, stride-1 SAME convolutions, 2x2 max-pool, batch norm), two
    inner steps, second order, against finite differences, with max-pool windows whose maxima are
    tied: a pool gradient that sent the incoming gradient to every tied entry (or to none) would
    fail; any split of it among the tied entries is exact, since they move together."""
    model = nets.conv4(3, 3, 4, 24, max_pool=True, activation="softplus", impl=impl)
    rng = np.random.default_rng(4)
    params = _f64(model.init(3))
    batch = _blocky_batch(rng)
    # the ties are there: layer-1 activations of the support set, windows with a repeated maximum
    h = nets.conv3x3(batch["xs"], params["conv1"], params["b1"], 1)
    h = tf.nn.softplus(nets.batch_norm(h, params["bn1"])).numpy()
    windows = h.reshape(2, 3, 12, 2, 12, 2, 4).transpose(0, 1, 2, 4, 6, 3, 5).reshape(-1, 4)
    assert np.sum(np.sum(windows == windows.max(axis=1, keepdims=True), axis=1) > 1) > 100
    loss_fn = maml.cross_entropy(1)
    loss_of = lambda p: maml.meta_loss(model, p, TB(batch), loss_fn, 2, 0.1)
    _, grads = maml.meta_gradient(model, params, TB(batch), loss_fn, 2, 0.1)
    _directional_check(loss_of, params, grads["params"], rng)


def test_second_order_meta_gradient_of_more_tasks_than_the_per_task_loop(monkeypatch):
    """The per-task conv4 maps over batches of more than LOOP_MAX_TASKS tasks, and a second
    derivative through that map inside tf.function fails; meta_gradient splits such a batch into
    chunks the loop holds. Traced, with the loop made to hold 2 of 3 tasks (chunks of 1): the
    batched network's meta-gradient, to float64 rounding."""
    monkeypatch.setattr(nets, "LOOP_MAX_TASKS", 2)
    kw = dict(n_out=3, channels=1, filters=4, image_size=16, max_pool=True, activation="softplus")
    batched, per_task = nets.conv4(**kw), nets.conv4(**kw, impl="per_task")
    assert per_task.second_order_tasks == 2 and batched.second_order_tasks == 0
    params = _f64(batched.init(2))
    batch = TB(_classification_batch(np.random.default_rng(5), tasks=3, size=16))
    loss_fn = maml.cross_entropy(1)
    for alpha in (0.1, {k: tf.constant(0.05 + 0.01 * i, tf.float64) for i, k in enumerate(params)
                         if k not in batched.frozen}):
        want_loss, want = maml.meta_gradient(batched, params, batch, loss_fn, 2, alpha)
        loss, got = tf.function(lambda p, a: maml.meta_gradient(per_task, p, batch, loss_fn, 2, a))(params, alpha)
        assert float(loss) == pytest.approx(float(want_loss), rel=1e-12)
        assert {p: sorted(got[p]) for p in got} == {p: sorted(want[p]) for p in want}
        for part in want:
            for k in want[part]:
                np.testing.assert_allclose(got[part][k], want[part][k], rtol=1e-9, atol=1e-12)
