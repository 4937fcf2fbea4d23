"""Networks: shapes, initialisation, convolution, and the official batch-norm semantics."""
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import maml, nets
from maml_tf.tasks import TaskBatch

TB = TaskBatch.of

OMNIGLOT = nets.conv4(5, 1, 64, 28, max_pool=False)
MINIIMAGENET = nets.conv4(5, 3, 32, 84, max_pool=True)
MLP = nets.mlp([784, 256, 128, 64, 64, 5], batch_norm_hidden=True)


def _images(rng, t, n, size, c):
    return tf.constant(rng.uniform(size=(t, n, size, size, c)), tf.float32)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [28, 7, 84])
def test_conv3x3_matches_tf_conv2d(stride, size):
    rng = np.random.default_rng(0)
    x = _images(rng, 3, 2, size, 4)
    w = tf.constant(rng.normal(size=(3, 3, 3, 4, 5)), tf.float32)  # one kernel per task
    b = tf.constant(rng.normal(size=(3, 5)), tf.float32)
    y = nets.conv3x3(x, w, b, stride)
    for t in range(3):
        ref = tf.nn.conv2d(x[t], w[t], stride, "SAME") + b[t]
        np.testing.assert_allclose(y[t].numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    shared = nets.conv3x3(x, w[0], b[0], stride)
    np.testing.assert_allclose(shared[1].numpy(), (tf.nn.conv2d(x[1], w[0], stride, "SAME") + b[0]).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_output_shapes_and_parameter_counts():
    rng = np.random.default_rng(0)
    p = OMNIGLOT.init(0)
    assert OMNIGLOT.apply(p, _images(rng, 2, 5, 28, 1)).shape == (2, 5, 5)
    assert p["w5"].shape == (64, 5)                     # spatial mean -> 64 features
    p = MINIIMAGENET.init(0)
    assert MINIIMAGENET.apply(p, _images(rng, 2, 5, 84, 3)).shape == (2, 5, 5)
    assert p["w5"].shape == (5 * 5 * 32, 5)             # 84 -> 42 -> 21 -> 10 -> 5, flattened
    p = MLP.init(0)
    assert MLP.apply(p, _images(rng, 2, 5, 28, 1)).shape == (2, 5, 5)
    assert [p[f"w{i}"].shape[1] for i in range(1, 6)] == [256, 128, 64, 64, 5]


def test_official_initialisation():
    p = OMNIGLOT.init(0)
    assert float(tf.math.reduce_std(p["w5"])) == pytest.approx(1.0, rel=0.15)  # normal std 1
    lim = np.sqrt(6 / (9 * 64 + 9 * 64))
    assert float(tf.reduce_max(tf.abs(p["conv2"]))) <= lim                    # Glorot uniform
    assert float(tf.math.reduce_std(p["conv2"])) == pytest.approx(lim / np.sqrt(3), rel=0.05)
    q = nets.mlp([1, 40, 40, 1]).init(0)
    assert float(tf.reduce_max(tf.abs(q["w2"]))) <= 0.02                       # truncated at 2 std
    assert float(tf.math.reduce_std(q["w2"])) == pytest.approx(0.0088, rel=0.1)
    assert all(float(tf.reduce_max(tf.abs(v))) == 0 for k, v in p.items() if k[0] == "b")
    # deterministic in the seed, different across seeds
    assert np.array_equal(OMNIGLOT.init(3)["conv1"], OMNIGLOT.init(3)["conv1"])
    assert not np.array_equal(OMNIGLOT.init(3)["conv1"], OMNIGLOT.init(4)["conv1"])


def test_batch_norm_normalises_each_task_with_its_own_batch():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(3.0, 5.0, size=(3, 10, 4, 4, 6)) * np.arange(1, 4)[:, None, None, None, None],
                    tf.float32)
    offset = tf.constant(rng.normal(size=6), tf.float32)
    y = nets.batch_norm(x, offset).numpy()
    mean = y.mean(axis=(1, 2, 3))
    var = y.var(axis=(1, 2, 3))
    np.testing.assert_allclose(mean, np.broadcast_to(offset.numpy(), mean.shape), atol=1e-4)
    np.testing.assert_allclose(var, 1.0, rtol=2e-3)  # var / (var + 1e-3), var here is large


@pytest.mark.parametrize("model,shape", [(OMNIGLOT, (28, 1)), (MINIIMAGENET, (84, 3)), (MLP, (28, 1))])
def test_batch_norm_semantics_in_the_classifiers(model, shape):
    rng = np.random.default_rng(1)
    p = model.init(0)
    size, c = shape
    support, query = _images(rng, 3, 5, size, c), _images(rng, 3, 5, size, c)
    out = model.apply(p, support).numpy()
    # 1. statistics are per task: a task's output does not depend on the other tasks of the batch
    for t in range(3):
        np.testing.assert_allclose(model.apply(p, support[t:t + 1])[0].numpy(), out[t], rtol=1e-4, atol=1e-4)
    # 2. statistics are those of the batch at hand, never stored ones: the same example gives a
    #    different output in a different batch (support and query passes are normalised separately)
    mixed = tf.concat([support[:, :1], query[:, 1:]], axis=1)
    assert not np.allclose(model.apply(p, mixed)[:, 0].numpy(), out[:, 0], atol=1e-3)
    # 3. nothing is stateful: applying twice (meta-training or meta-test alike) gives the same result
    np.testing.assert_array_equal(model.apply(p, support).numpy(), out)
    # 4. the offsets are not adapted in the inner loop, and stay shared by the tasks
    y = tf.constant(np.tile(np.arange(5), (3, 1)), tf.int32)
    fast = maml.adapt(model, p, support, y, maml.cross_entropy(1), 2, 0.4)
    for k in model.frozen:
        assert fast[k] is p[k]
    assert all(fast[k].shape[0] == 3 for k in p if k not in model.frozen)
    assert model.frozen == {k for k in p if k.startswith("bn")}


@pytest.mark.parametrize("size", [28, 14, 7, 4, 5])
def test_stride2_col2im_is_the_exact_transpose_of_the_patches(size):
    """The hand-written gradient of the stride-2 patches equals autodiff's (and conv2d's)."""
    rng = np.random.default_rng(size)
    x = tf.constant(rng.normal(size=(2, size, size, 3)), tf.float64)
    out = -(-size // 2)
    dp = tf.constant(rng.normal(size=(2, out, out, 27)), tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        p = nets._patches(x, 2)
    np.testing.assert_allclose(nets._col2im_stride2(dp, size, size).numpy(),
                               tape.gradient(p, x, output_gradients=dp).numpy(), atol=1e-12)
    np.testing.assert_array_equal(nets._patches_stride2(x).numpy(), p.numpy())


# ----------------------------------------------------------------------------- per-task conv4 (MiniImagenet)

MINIIMAGENET_PER_TASK = nets.conv4(5, 3, 32, 84, max_pool=True, impl="per_task")


def _f64(params):
    return {k: tf.cast(v, tf.float64) for k, v in params.items()}


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _fewshot_batch(rng, tasks, way, shot, query, size, channels, dtype):
    mk = lambda n: tf.constant(rng.uniform(size=(tasks, way * n, size, size, channels)), dtype)
    lab = lambda n: tf.constant(np.tile(np.repeat(np.arange(way), n), (tasks, 1)), tf.int32)
    return {"xs": mk(shot), "ys": lab(shot), "xq": mk(query), "yq": lab(query)}


@pytest.mark.parametrize("max_pool,tasks", [(True, 3), (False, 3), (True, nets.LOOP_MAX_TASKS + 2),
                                            (False, nets.LOOP_MAX_TASKS + 2)])
def test_per_task_conv4_is_the_batched_function_in_float64(max_pool, tasks):
    """impl="per_task" (tf.nn.conv2d / max_pool2d networks, one per task: a loop over a few tasks,
    a tf.map_fn over more) computes the same function as the batched patches @ kernel form:
    outputs with shared and with per-task parameters, and the second- and first-order
    meta-gradients through two inner steps; with a shift after the first batch norm (`SHIFT1`).
    The max-pool net's 21x21 first layer (odd: the pool leaves a row and a column out, not its
    batch norm) pools before batch norm's normalisation in the per-task form."""
    kw = dict(n_out=3, channels=3, filters=6, image_size=21 if max_pool else 12, max_pool=max_pool)
    batched, per_task = nets.conv4(**kw), nets.conv4(**kw, impl="per_task")
    assert batched.xla and not per_task.xla
    # with max-pool, the first layer's 21x21 maps take batch norm's matmul form, the others its
    # reduction form: both, through two inner steps
    assert (21 * 21 >= nets.BN_MATMUL_MIN_PIXELS > 10 * 10) and 12 * 12 < nets.BN_MATMUL_MIN_PIXELS
    rng = np.random.default_rng(5)
    params = _f64(batched.init(2))
    params[nets.SHIFT1] = tf.constant(rng.normal(scale=0.5, size=6), tf.float64)
    batch = _fewshot_batch(rng, tasks, 3, 2, 2, kw["image_size"], 3, tf.float64)
    np.testing.assert_allclose(per_task.apply(params, batch["xs"]).numpy(),
                               batched.apply(params, batch["xs"]).numpy(), rtol=1e-10, atol=1e-12)
    fast = {k: v + tf.constant(rng.normal(scale=0.01, size=v.shape), tf.float64)
            for k, v in maml.per_task(batched, params, tasks).items()}   # a different copy per task
    np.testing.assert_allclose(per_task.apply(fast, batch["xq"]).numpy(),
                               batched.apply(fast, batch["xq"]).numpy(), rtol=1e-10, atol=1e-12)
    for first_order in (False, True):
        lb, gb = maml.meta_gradient(batched, params, TB(batch), maml.cross_entropy(2), 2, 0.1, first_order)
        lp, gp = maml.meta_gradient(per_task, params, TB(batch), maml.cross_entropy(2), 2, 0.1, first_order)
        assert float(lp) == pytest.approx(float(lb), rel=1e-12)
        # (the conv biases' gradient is exactly zero, batch norm follows: compared at the scale
        # of the largest gradient entry, like every entry)
        scale = max(float(tf.reduce_max(tf.abs(g))) for g in gb["params"].values())
        for k in ("b1", "b2", "b3", "b4"):   # the per-task form skips the bias batch norm cancels
            assert float(tf.reduce_max(tf.abs(gp["params"][k]))) == 0, k
        for k in params:
            np.testing.assert_allclose(gp["params"][k].numpy(), gb["params"][k].numpy(),
                                       rtol=1e-9, atol=1e-12 * scale, err_msg=k)


@pytest.mark.parametrize("pool,size", [(False, 20), (True, 20), (True, 21)])
@pytest.mark.parametrize("form,graph", [("batch_norm_one_task", False), ("_batch_norm_reduce", False),
                                        ("_batch_norm_matmul", False), ("_batch_norm_matmul", True)])
def test_batch_norm_one_task_is_batch_norm_of_that_task(form, graph, pool, size):
    """The per-task path's batch norm, in both its forms (TensorFlow's reductions; sums by matmuls
    with custom gradients, eagerly and traced with an unknown batch size): the same function as
    `batch_norm` on a one-task batch, with the same first and second derivatives (what
    second-order MAML differentiates); with pool=True, as the 2x2 max-pool of that (normalising
    the pooled activations with the statistics of all, also those of the last row and column of
    an odd size that the pool leaves out). 20x20 and 21x21 maps: `batch_norm_one_task` takes the
    matmul form."""
    assert 20 * 20 >= nets.BN_MATMUL_MIN_PIXELS
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(0.5, 2.0, size=(3, size, size, 4)) * rng.uniform(0.1, 3, size=4), tf.float64)
    off = tf.constant(rng.normal(size=4), tf.float64)
    dy, vx = (tf.constant(rng.normal(size=x.shape), tf.float64) for _ in range(2))
    voff = tf.constant(rng.normal(size=4), tf.float64)

    def derivatives(bn, x, dy, vx):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([x, off, dy])
            with tf.GradientTape() as inner:
                inner.watch([x, off])
                y = bn(x, off)
            gx, goff = inner.gradient(y, [x, off], output_gradients=dy)
            s = tf.reduce_sum(gx * vx) + tf.reduce_sum(goff * voff)   # a directional first derivative
        return [y, gx, goff] + outer.gradient(s, [x, off, dy])        # its derivatives: second order

    pooled = (lambda y: tf.nn.max_pool2d(y, 2, 2, "VALID")) if pool else (lambda y: y)
    if pool:
        dy = dy[:, :size - size % 2:2, :size - size % 2:2]
    ref = derivatives(lambda x, o: pooled(nets.batch_norm(x[None], o)[0]), x, dy, vx)
    bn = lambda x, o: getattr(nets, form)(x, o, pool=pool)
    of = derivatives
    if graph:   # as training runs it: both tapes inside one traced function, the batch size unknown
        spec = tf.TensorSpec([None, size, size, 4], tf.float64)
        dspec = tf.TensorSpec([None] + dy.shape[1:], tf.float64)
        traced = tf.function(lambda x, dy, vx: derivatives(bn, x, dy, vx), input_signature=[spec, dspec, spec])
        of = lambda bn, x, dy, vx: traced(x, dy, vx)
    for name, g, r in zip(["y", "dx", "doffset", "d2/dx", "d2/doffset", "d2/ddy"], of(bn, x, dy, vx), ref):
        if r is None or g is None:   # unconnected: the other is zero (the pool's derivative in x
            other = g if r is None else r    # depends on its input; zero, but connected)
            assert other is None or float(tf.reduce_max(tf.abs(other))) == 0, name
        else:
            np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_max_pool_derivatives_are_tensorflows_with_ties(dtype):
    """The per-task path's max-pool (`nets._max_pool`: its second derivative, the selection at each
    window's maximum, one XLA fusion) has tf.nn.max_pool2d's output and first and second
    derivatives exactly, on an odd 21x21 map full of tied windows: the selection picks the same
    entry of a tie as TensorFlow's MaxPoolGrad (else the second derivative would send the gradient
    of a tie elsewhere), and it is the adjoint of that gradient."""
    rng = np.random.default_rng(6)
    x = np.repeat(np.repeat(rng.integers(0, 3, size=(2, 11, 11, 5)), 2, axis=1), 2, axis=2)[:, :21, :21]
    x = np.where(rng.random(x.shape) < 0.3, rng.normal(size=x.shape), x)   # ties and non-ties
    x = tf.constant(x, dtype)
    dy, c = (tf.constant(rng.normal(size=s), dtype) for s in ((2, 10, 10, 5), (2, 21, 21, 5)))
    windows = x.numpy()[:, :20, :20].reshape(2, 10, 2, 10, 2, 5).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    assert np.sum(np.sum(windows == windows.max(axis=1, keepdims=True), axis=1) > 1) > 300

    def derivatives(pool):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([x, dy])
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = pool(x)
            gx = inner.gradient(y, x, output_gradients=dy)
            s = tf.reduce_sum(gx * c)
        return [y, gx] + outer.gradient(s, [x, dy], unconnected_gradients=tf.UnconnectedGradients.ZERO)

    tf_pool = lambda x: tf.nn.max_pool2d(x, 2, 2, "VALID")
    # eagerly and traced (where TensorFlow may swap in oneDNN's kernels, with their own tie rule)
    for run in (lambda f: f(), lambda f: tf.function(f)()):
        ours, ref = run(lambda: derivatives(nets._max_pool)), run(lambda: derivatives(tf_pool))
        for name, a, b in zip(["y", "dx", "d2/dx", "d2/ddy"], ours, ref):
            assert np.array_equal(a.numpy(), b.numpy()), name
        y = ref[0]
        select, grad, gradgrad = run(lambda: (nets._max_pool_select(x, y, c), nets._max_pool_grad(x, y, dy),
                                              tf.raw_ops.MaxPoolGradGrad(orig_input=x, orig_output=y, grad=c,
                                                                         ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1],
                                                                         padding="VALID")))
        assert np.array_equal(select.numpy(), gradgrad.numpy())
        np.testing.assert_allclose(float(tf.reduce_sum(grad * c)), float(tf.reduce_sum(dy * select)),
                                   rtol=1e-5 if dtype == tf.float32 else 1e-12)


def test_every_activation_is_non_decreasing():
    """conv4's per-task form max-pools before the activation, which is the same function only for a
    non-decreasing activation: one added to nets.ACTIVATIONS that is not (GELU, swish) fails here."""
    x = tf.constant(np.linspace(-30.0, 30.0, 200001), tf.float64)
    for name, act in nets.ACTIVATIONS.items():
        assert np.all(np.diff(act(x).numpy()) >= 0), name


@pytest.mark.parametrize("form", ["_batch_norm_reduce", "_batch_norm_matmul"])
def test_pooling_first_gives_the_same_float32_bits(form):
    """The per-task conv4 max-pools before batch norm's normalisation and the activation
    (`batch_norm_one_task(pool=True)`): increasing maps of each channel, with which the pool
    commutes. The normalisation and ReLU round monotonically in float32, so the values are the
    same bits as pooling last, also where a window holds neighbouring floats; at MiniImagenet's
    odd layer-3 size (21x21), for both forms. (Float32 tanh and softplus are not monotone in the
    last bit: there an ulp may differ, on such windows only.)"""
    rng = np.random.default_rng(8)
    x = rng.normal(0.3, 1.5, size=(6, 21, 21, 32)).astype(np.float32)
    x[:, 0:20:2, 1:20:2] = np.nextafter(x[:, 0:20:2, 0:20:2], np.float32(np.inf))   # near-ties in windows
    x, off = tf.constant(x), tf.constant(rng.normal(size=32), tf.float32)
    bn = getattr(nets, form)
    last = tf.nn.max_pool2d(tf.nn.relu(bn(x, off)), 2, 2, "VALID").numpy()
    first = tf.nn.relu(bn(x, off, pool=True)).numpy()
    assert first.shape == (6, 10, 10, 32) and np.array_equal(first, last)


def test_per_task_conv4_is_within_float32_rounding_of_the_exact_function_at_miniimagenet_shape():
    """At MiniImagenet's shapes (84x84x3, 32 filters, 5-way 1-shot, 2 tasks) the per-task path
    (oneDNN kernels, batch norm by matmuls) in float32 is within float32 rounding of the exact
    function (the batched path in float64): the plain gradient and the first- and second-order
    meta-gradients through an inner step.

    On a network without kinks: ReLU and max-pool have derivatives that jump where two inputs tie
    (a ReLU at 0, a window's two largest entries), and a float32 path rounds differently from
    float64 (and one CPU's oneDNN kernels from another's), so somewhere among millions of
    activations one of them lands on the other side of such a tie, and the gradient after an inner
    step moves by up to 1e-2 (seen on an AMD EPYC, seed 12: 1.5e-2 in conv2 with oneDNN, 1.3e-6
    without; the batched float32 path jumps likewise on most seeds). So the rounding is checked on
    the smooth variant of the network (softplus, stride-2 convolutions: batch norm's matmul form on
    its 42x42 and 21x21 maps, the reduction form on 11x11 and 6x6), where no such jump exists, and
    on the MiniImagenet network itself (ReLU, max-pool) only what is continuous: the outputs and
    the losses. Its derivatives are the batched form's exactly in float64
    (test_per_task_conv4_is_the_batched_function_in_float64), its max-pool's derivatives
    tf.nn.max_pool2d's on ties (test_max_pool_derivatives_are_tensorflows_with_ties)."""
    rng = np.random.default_rng(12)
    batch = _fewshot_batch(rng, 2, 5, 1, 2, 84, 3, tf.float32)
    exact = {k: tf.cast(v, tf.float64) if v.dtype == tf.float32 else v for k, v in batch.items()}
    loss_fn = maml.cross_entropy(1)
    smooth = {impl: nets.conv4(5, 3, 32, 84, max_pool=False, activation="softplus", impl=impl)
              for impl in ("batched", "per_task")}
    assert 21 * 21 >= nets.BN_MATMUL_MIN_PIXELS > 11 * 11   # the smooth net's maps: 42, 21, 11, 6 pixels a side
    for (batched, per_task), tolerance in (((MINIIMAGENET, MINIIMAGENET_PER_TASK), None),
                                           ((smooth["batched"], smooth["per_task"]), 2e-4)):
        params = batched.init(0)
        out_b = batched.apply(_f64(params), exact["xq"]).numpy()
        assert _max_rel(per_task.apply(params, batch["xq"]).numpy(), out_b) < 1e-5
        for steps, first_order in ((0, False), (1, False), (1, True)):
            l64, g64 = maml.meta_gradient(batched, _f64(params), TB(exact), loss_fn, steps, 0.001, first_order)
            lp, gp = maml.meta_gradient(per_task, params, TB(batch), loss_fn, steps, 0.001, first_order)
            assert float(lp) == pytest.approx(float(l64), rel=1e-5)
            for k in params if tolerance else ():
                if k in ("b1", "b2", "b3", "b4"):   # exactly zero (batch norm follows): rounding noise only
                    continue
                assert _max_rel(gp["params"][k].numpy(), g64["params"][k].numpy()) < tolerance, (steps, first_order, k)


# The Omniglot conv4 meta-gradient (second order, 1 inner step of 0.4) on a fixed batch, computed
# with the code before the per-task path existed (commit c0e302a): per parameter, the sum, the sum
# of absolute values and the projection on a fixed random vector. The Omniglot path must not move.
OMNIGLOT_META_LOSS = 24.178386688232422
OMNIGLOT_META_GRADIENT = {
    "b1": (0.0001855006, 0.001200758, 0.0001800925),
    "b2": (-7.561212e-07, 7.195225e-05, 1.513384e-05),
    "b3": (2.118759e-06, 2.980931e-05, -7.411937e-06),
    "b4": (-7.191673e-06, 2.146885e-05, 1.857043e-06),
    "b5": (2.682209e-07, 7.905696, -10.62341),
    "bn1": (-6.85091, 222.6556, -14.30182),
    "bn2": (-12.14907, 134.2356, 8.139732),
    "bn3": (20.33147, 143.7946, -3.367305),
    "bn4": (47.4722, 115.5321, 18.15552),
    "conv1": (-445.1034, 12303.47, 441.1519),
    "conv2": (-1574.413, 132024, -1916.072),
    "conv3": (-209.6157, 111162, -901.5829),
    "conv4": (1316.557, 93672.78, 348.9596),
    "w5": (9.596348e-06, 392.3234, 15.5994),
}


def test_omniglot_meta_gradient_is_unchanged():
    rng = np.random.default_rng(20)
    mk = lambda: tf.constant((rng.random((2, 5, 28, 28, 1)) < 0.25).astype(np.float32))
    y = tf.constant(np.tile(np.arange(5, dtype=np.int32), (2, 1)))
    batch = {"xs": mk(), "ys": y, "xq": mk(), "yq": y}
    loss, g = maml.meta_gradient(OMNIGLOT, OMNIGLOT.init(0), TB(batch), maml.cross_entropy(1), 1, 0.4)
    assert float(loss) == pytest.approx(OMNIGLOT_META_LOSS, rel=1e-6)
    for k, expected in OMNIGLOT_META_GRADIENT.items():
        v = g["params"][k].numpy().astype(np.float64).ravel()
        r = np.random.default_rng(sum(k.encode())).normal(size=v.size)
        # biases before batch norm have an exactly-zero gradient: their values are rounding noise.
        # The sum and the projection cancel (conv3: -209.6 of 111,162 in absolute values), so their
        # float32 rounding is relative to the sum of absolute values, and differs between processors
        # (6e-8 of it between an AMD and an Intel machine): the tolerance is 2e-6 of that sum.
        atol = max(1e-3, 2e-6 * expected[1])
        np.testing.assert_allclose([v.sum(), np.abs(v).sum(), v @ r], expected, rtol=1e-5, atol=atol, err_msg=k)
