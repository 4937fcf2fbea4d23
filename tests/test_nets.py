"""Networks: shapes, initialisation, convolution, and the official batch-norm semantics."""
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import maml, nets

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
