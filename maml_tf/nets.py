"""The networks of the paper as pure functions of an explicit parameter structure.

A model is a `Model(init, apply, frozen, xla, second_order_tasks)`:
  * `init(seed) -> params`, a flat dict name -> tf.Tensor (plain structure, no Keras layers);
  * `apply(params, x) -> output`, a pure function. `x` always carries a leading task axis,
    [tasks, examples, ...]. Each parameter either is shared by all tasks (its natural shape) or
    has one copy per task (a leading task axis). Per-task copies are what the inner loop of MAML
    produces, and they turn every layer into a single batched matmul over tasks (convolutions too,
    written as patches @ kernel), so one compiled step serves the whole task batch;
  * `frozen`: the names that the inner loop never changes (the batch-norm offsets);
  * `xla`: whether the model is meant to run under XLA (`jit_compile`); False for the per-task
    conv4 (`impl="per_task"`), whose oneDNN kernels XLA would replace (evaluation follows it);
  * `second_order_tasks`: the most tasks one call of `apply` may hold when a second-order
    meta-gradient is taken through it (0: any); `maml.meta_gradient` splits larger batches.

Batch norm follows the official code: it always normalises with the statistics of the batch at hand,
computed per task and per pass (support and query separately); there are no moving averages and no
scale, only a learned offset (epsilon 1e-3).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import tensorflow as tf

BN_EPSILON = 1e-3
# conv4(impl="per_task"): up to LOOP_MAX_TASKS tasks are a Python loop (one graph per task: a
# replica's share of the meta-batch, up to Omniglot 5-way 5-shot's 32 on one core; a MiniImagenet
# evaluation batch of 4); more a tf.map_fn running MAP_PARALLEL_TASKS at a time (one graph for all:
# 27 s to compile 10 steps against 93 s for a loop over 20 tasks, but 28% slower per task; the
# 20-way 5-shot step on one core: 7.5 s as a map, 5.95 s as a loop, compile 32 s against 95 s; the
# 5-way 5-shot step: 0.93 s as a map, 0.78-0.79 s as a loop, compile 6 s against 32 s). The map
# serves first derivatives only: a second derivative through it inside tf.function fails
# (InaccessibleTensorError: the while body's custom-gradient tensors), so the model declares
# second_order_tasks=LOOP_MAX_TASKS and a second-order meta-gradient of more tasks runs in chunks.
LOOP_MAX_TASKS = 32
MAP_PARALLEL_TASKS = 2
# conv4: an optional parameter "shift1" ([filters], or one per task) is added to the first block's
# output after its batch norm, before the ReLU. No network of the paper has it; the context
# vector's diagnostic variant (`maml_tf.context`, join "after_norm") passes z's contribution so,
# where batch norm cannot subtract it.
SHIFT1 = "shift1"


class Model(NamedTuple):
    init: Callable[[int], dict]
    apply: Callable[[dict, tf.Tensor], tf.Tensor]
    frozen: frozenset = frozenset()
    xla: bool = True
    second_order_tasks: int = 0


# ----------------------------------------------------------------------------- building blocks

def _per_task(w: tf.Tensor, base_rank: int) -> bool:
    """True when `w` holds one copy per task (one more axis than its natural rank)."""
    return w.shape.rank == base_rank + 1


def dense(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """x [T, N, D] @ w ([D, H] shared or [T, D, H] per task) + b ([H] or [T, H])."""
    if _per_task(w, 2):
        y = tf.matmul(x, w)
    else:
        y = tf.einsum("tnd,dh->tnh", x, w)
    if _per_task(b, 1):
        b = b[:, None, :]
    return y + b


def _same_padding(size: int, stride: int, k: int = 3) -> tuple[int, int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def _patches(x: tf.Tensor, stride: int) -> tf.Tensor:
    """[B, H, W, C] -> [B, oh, ow, 9C]: the nine shifted views of the SAME-padded input."""
    h, wd = x.shape[1], x.shape[2]
    oh, top, bottom = _same_padding(h, stride)
    ow, left, right = _same_padding(wd, stride)
    xp = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    views = [xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
             for i in range(3) for j in range(3)]
    return tf.concat(views, axis=-1)


def _col2im_stride2(dp: tf.Tensor, h: int, wd: int) -> tf.Tensor:
    """The transpose of `_patches(x, 2)`: [B, oh, ow, 9C] -> [B, H, W, C].

    Autodiff would add nine interior-padded (dilated) views, which XLA's CPU loops evaluate slowly.
    By parity instead: a padded row 2a receives view row i = 0 at a and i = 2 at a - 1, a row 2a + 1
    view row i = 1 at a (columns alike); the four parity classes are plain shifted sums, then
    interleaved by a reshape. Built from differentiable ops, so second derivatives flow."""
    b, oh, ow = tf.shape(dp)[0], dp.shape[1], dp.shape[2]
    c = dp.shape[3] // 9
    _, top, _ = _same_padding(h, 2)
    _, left, _ = _same_padding(wd, 2)
    v = [[dp[..., (3 * i + j) * c:(3 * i + j + 1) * c] for j in range(3)] for i in range(3)]

    def shift(x, r, q):  # place x (oh, ow) at offset (r, q) of an (oh + 1, ow + 1) grid
        return tf.pad(x, [[0, 0], [r, 1 - r], [q, 1 - q], [0, 0]])

    ee = shift(v[0][0], 0, 0) + shift(v[0][2], 0, 1) + shift(v[2][0], 1, 0) + shift(v[2][2], 1, 1)
    eo = shift(v[0][1], 0, 0) + shift(v[2][1], 1, 0)      # odd columns: only the first ow are real
    oe = shift(v[1][0], 0, 0) + shift(v[1][2], 0, 1)      # odd rows: only the first oh are real
    oo = shift(v[1][1], 0, 0)
    even = tf.stack([ee, eo], axis=3)                      # [B, oh+1, ow+1, 2, C]
    odd = tf.stack([oe, oo], axis=3)
    full = tf.reshape(tf.stack([even, odd], axis=2), [b, 2 * oh + 2, 2 * ow + 2, c])
    return full[:, top:top + h, left:left + wd, :]


@tf.custom_gradient
def _patches_stride2(x: tf.Tensor):
    """`_patches(x, 2)` with its gradient computed by `_col2im_stride2`."""
    h, wd = x.shape[1], x.shape[2]
    return _patches(x, 2), lambda dp: _col2im_stride2(dp, h, wd)


def conv3x3(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, stride: int) -> tf.Tensor:
    """3x3 SAME convolution of x [T, N, H, W, C] with w [3, 3, C, F] or [T, 3, 3, C, F].

    Written as patches @ kernel: the nine shifted (strided) views of the padded input are stacked
    along channels, so a per-task kernel is one batched matmul over tasks. All derivatives are
    slices and pads, cheap to any order and friendly to XLA."""
    t, n, h, wd, c = (tf.shape(x)[0], tf.shape(x)[1], x.shape[2], x.shape[3], x.shape[4])
    oh, ow = -(-h // stride), -(-wd // stride)
    x = tf.reshape(x, [-1, h, wd, c])
    patches = _patches_stride2(x) if stride == 2 else _patches(x, stride)
    patches = tf.reshape(patches, [t, n * oh * ow, 9 * c])
    f = w.shape[-1]
    if _per_task(w, 4):
        y = tf.matmul(patches, tf.reshape(w, [-1, 9 * c, f]))
    else:
        y = tf.einsum("tpk,kf->tpf", patches, tf.reshape(w, [9 * c, f]))
    y = tf.reshape(y, [t, n, oh, ow, f])
    if _per_task(b, 1):
        b = b[:, None, None, None, :]
    return y + b


def batch_norm(x: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """Normalise with the statistics of each task's own batch (all axes but task and feature)."""
    axes = list(range(1, x.shape.rank - 1))
    # Not tf.nn.moments: it stops the gradient through the mean inside the variance, which leaves
    # first derivatives exact but makes second-order meta-gradients wrong.
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    var = tf.reduce_mean(tf.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + BN_EPSILON) + offset


def max_pool2(x: tf.Tensor) -> tf.Tensor:
    """2x2 max-pool, stride 2, VALID, of x [T, N, H, W, C]."""
    t, n, h, w, c = tf.shape(x)[0], tf.shape(x)[1], x.shape[2], x.shape[3], x.shape[4]
    y = tf.nn.max_pool2d(tf.reshape(x, [-1, h, w, c]), 2, 2, "VALID")
    return tf.reshape(y, [t, n, h // 2, w // 2, c])


# From feature maps of this many pixels (H * W) the per-task batch norm sums by matmuls
# (`_batch_norm_matmul`); below, by TensorFlow's reductions (`_batch_norm_reduce`): MiniImagenet's
# 84x84, 42x42 and 21x21 layers are above (one task's second-order 5-shot step takes 21% less
# time, 1-shot 10%, first-order 5-shot 26%: README, Benchmark); Omniglot's 14x14 and smaller are
# below, where the matmul form gained nothing and compiled 60% longer. On CPU only: on a GPU,
# TensorFlow's matmuls may round their inputs to TensorFloat-32 (10-bit mantissa), too coarse for
# the cancelling sums of batch norm's gradient (untested on GPUs: README).
BN_MATMUL_MIN_PIXELS = 400


def batch_norm_one_task(x: tf.Tensor, offset: tf.Tensor, pool: bool = False) -> tf.Tensor:
    """`batch_norm` of one task's activations x [N, H, W, C] (statistics over N, H, W), the same
    formula. Not TensorFlow's fused kernel (FusedBatchNormV3, which made the MiniImagenet step 30%
    faster than the reduction form did): its float32 rounding is 2-3x larger in the forward pass
    and, through the batch-norm gradient, moves the meta-gradient by 5-9% after one inner step,
    against 1e-5 here (README, Benchmark); nor has it a float64 kernel for the finite-difference
    tests.

    pool=True: the 2x2 max-pool (stride 2, VALID) of the result, computed as the normalisation of
    the max-pool of x, with the statistics of all of x. Batch norm without a scale is an increasing
    map of each channel, so the max-pool commutes with it: the same function (in float32 the same
    bits, since each operation here rounds monotonically; so are a ReLU's after it, while float32
    tanh and softplus are not monotone in the last bit and may differ by an ulp where a window
    holds neighbouring floats); the gradients differ only in how a tie is split, and a tie of x is
    a tie of its normalisation. The normalisation, and the activation after it (increasing too),
    pass over a quarter of the pixels."""
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None or h * w < BN_MATMUL_MIN_PIXELS or tf.config.list_logical_devices("GPU"):
        return _batch_norm_reduce(x, offset, pool)
    return _batch_norm_matmul(x, offset, pool)


@tf.custom_gradient
def _bias_before_batch_norm(x: tf.Tensor, b: tf.Tensor):
    """x + b where batch norm follows: it subtracts the mean of each channel, and b with it,
    exactly, so the output does not depend on b and b's gradient is zero. Computed as x, with a
    zero gradient for b: no pass over x forward (the bias add) or backward (its sum over N, H, W),
    at any order. (The official network adds the bias; its gradient there is rounding noise.)"""
    return tf.identity(x), lambda dz: (dz, tf.zeros_like(b))


# The per-task path's 2x2 max-pool (stride 2, VALID) of x [N, H, W, C], with its derivatives
# written out so that the second one is fast: the derivative of the pool's gradient P^T dy
# (TensorFlow's MaxPoolGrad, which scatters each window's gradient to its maximum) with respect
# to dy is the selection P c of each window's entry at the maximum, which TensorFlow computes with
# MaxPoolGradGrad, a loop that ran 2.5x slower than one XLA fusion of the same selection
# (`_max_pool_select`). The same maximum on ties (the first in row-major order, as MaxPoolGrad's),
# so the derivatives of every order are those of tf.nn.max_pool2d (tests/test_nets.py).

def _pool(x: tf.Tensor) -> tf.Tensor:
    return tf.nn.max_pool2d(x, 2, 2, "VALID")


@tf.custom_gradient
def _max_pool(x: tf.Tensor):
    y = _pool(x)
    return y, lambda dy: _max_pool_grad(x, y, dy)


@tf.custom_gradient
def _max_pool_grad(x: tf.Tensor, y: tf.Tensor, dy: tf.Tensor):
    """P^T dy: each window's dy at its maximum (y = the pool of x), zero elsewhere. Linear in dy;
    in x and y piecewise constant (zero derivative, as TensorFlow's)."""
    g = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy, ksize=[1, 2, 2, 1],
                               strides=[1, 2, 2, 1], padding="VALID")
    return g, lambda dg: (tf.zeros_like(x), tf.zeros_like(y), _max_pool_select(x, y, dg))


@tf.custom_gradient
def _max_pool_select(x: tf.Tensor, y: tf.Tensor, c: tf.Tensor):
    """P c: the entry of c at each 2x2 window's maximum of x, [N, H // 2, W // 2, C]."""
    return _select_at_max(x, c), lambda dz: (tf.zeros_like(x), tf.zeros_like(y), _max_pool_grad(x, y, dz))


@tf.function(jit_compile=True)
def _select_at_max(x: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    """`_max_pool_select` as one XLA fusion: of each window [[a, b], [d, e]] the first maximum in
    row-major order (a strict comparison keeps the earlier entry on a tie)."""
    h, w, ch = x.shape[1] // 2, x.shape[2] // 2, x.shape[3]

    def quads(t):   # (a, b, d, e) of every window: the pool's VALID crop of an odd size, then a view
        t = tf.reshape(t[:, :2 * h, :2 * w], [tf.shape(t)[0], h, 2, w, 2, ch])
        return t[:, :, 0, :, 0], t[:, :, 0, :, 1], t[:, :, 1, :, 0], t[:, :, 1, :, 1]
    (a, b, d, e), (ca, cb, cd, ce) = quads(x), quads(c)
    top, c_top = tf.maximum(a, b), tf.where(b > a, cb, ca)
    bottom, c_bottom = tf.maximum(d, e), tf.where(e > d, ce, cd)
    return tf.where(bottom > top, c_bottom, c_top)


def _batch_norm_reduce(x: tf.Tensor, offset: tf.Tensor, pool: bool = False) -> tf.Tensor:
    """`batch_norm_one_task` with TensorFlow's reductions (small feature maps)."""
    mean = tf.reduce_mean(x, axis=[0, 1, 2], keepdims=True)
    var = tf.reduce_mean(tf.square(x - mean), axis=[0, 1, 2], keepdims=True)
    if pool:
        x = _max_pool(x)
    return (x - mean) * tf.math.rsqrt(var + BN_EPSILON) + offset


def _batch_norm_matmul(x: tf.Tensor, offset: tf.Tensor, pool: bool = False) -> tf.Tensor:
    """`batch_norm_one_task` for large feature maps, where batch norm is bound by memory traffic
    (README, Benchmark): every per-channel sum, here and in the derivatives of every order, is a
    batched matmul with vectors of ones, one per image (`_colsum`); TensorFlow's reduction over all
    axes but the last reads memory at less than half the rate of that matmul on CPU. Summed image
    by image, its float32 rounding is smaller: on 75x84x84x32 activations, 1.5e-7 of the float64
    sum, against 5.5e-6 for that reduction and 1.8e-5 for one matmul over all N*H*W rows. The same
    function to float64 rounding (tests/test_nets.py)."""
    c = x.shape[-1]
    rows = tf.reshape(x, [tf.shape(x)[0], -1, c])
    m = tf.cast(tf.shape(rows)[0] * tf.shape(rows)[1], x.dtype)
    mean = _colsum(rows) / m
    var = _centred_var(rows, mean)
    if pool:
        x = _max_pool(x)
        rows = tf.reshape(x, [tf.shape(x)[0], -1, c])
    centred = _sub_row(rows, mean)
    y = _add_row(_mul_row(centred, tf.math.rsqrt(var + BN_EPSILON)), tf.reshape(offset, [1, 1, c]))
    return tf.reshape(y, tf.shape(x))


@tf.custom_gradient
def _centred_var(x: tf.Tensor, mean: tf.Tensor):
    """The variance of each channel of x [N, P, C] about its mean [1, 1, C] (which must be x's own
    mean: the gradient assumes it). Its gradient in x is 2 (x - mean) dvar / (N P), a row product
    (not TensorFlow's broadcast, square derivative and sum of their terms, three times the memory
    traffic); in the mean it is zero, as it is for x's own mean (the sum of x - mean), and zero
    along x for all x, so the second derivatives are exact too."""
    m = tf.cast(tf.shape(x)[0] * tf.shape(x)[1], x.dtype)
    centred = _sub_row(x, mean)
    return _colsum(centred * centred) / m, lambda dv: (_mul_row(_sub_row(x, mean), 2.0 * dv / m),
                                                       tf.zeros_like(mean))


# Broadcast arithmetic on x [N, P, C] with rows r [1, 1, C] whose gradients sum over N and P by
# `_colsum`, each gradient written with these same functions, so that derivatives of any order
# keep the matmul form (the second-order meta-gradient differentiates the first derivatives).

def _colsum(x: tf.Tensor) -> tf.Tensor:
    """[N, P, C] -> [1, 1, C]: the sums over N and P, as ones[N, 1, P] @ x summed over N."""
    @tf.custom_gradient
    def colsum(x):
        n, p = tf.shape(x)[0], tf.shape(x)[1]
        y = tf.reduce_sum(tf.matmul(tf.ones([n, 1, p], x.dtype), x), axis=0, keepdims=True)
        return y, lambda dy: _rowbcast(dy, tf.shape(x))
    return colsum(x)


def _rowbcast(y: tf.Tensor, shape) -> tf.Tensor:
    """[1, 1, C] -> `shape` [N, P, C]: the row repeated (the gradient of `_colsum`)."""
    @tf.custom_gradient
    def rowbcast(y):
        return tf.broadcast_to(y, shape), _colsum
    return rowbcast(y)


@tf.custom_gradient
def _sub_row(x: tf.Tensor, r: tf.Tensor):
    """x - r, x [N, P, C], r [1, 1, C]."""
    return x - r, lambda dz: (dz, -_colsum(dz))


@tf.custom_gradient
def _mul_row(x: tf.Tensor, r: tf.Tensor):
    """x * r, x [N, P, C], r [1, 1, C]."""
    return x * r, lambda dz: (_mul_row(dz, r), _colsum(dz * x))


@tf.custom_gradient
def _add_row(x: tf.Tensor, r: tf.Tensor):
    """x + r, x [N, P, C], r [1, 1, C]."""
    return x + r, lambda dz: (dz, _colsum(dz))


# ----------------------------------------------------------------------------- initialisers

def _glorot_uniform(shape, fan_in: int, fan_out: int, seed) -> tf.Tensor:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return tf.random.stateless_uniform(shape, seed, -limit, limit)


def _trunc_normal(shape, std: float, seed) -> tf.Tensor:
    return tf.random.stateless_truncated_normal(shape, seed, stddev=std)


def _seeds(seed: int, n: int):
    return [tf.constant([seed, i], tf.int64) for i in range(n)]


# ----------------------------------------------------------------------------- the models

# Each non-decreasing, so that a max-pool after it commutes with it: conv4's per-task form pools
# before batch norm's normalisation and the activation (tests/test_nets.py checks the property).
ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.nn.tanh, "softplus": tf.nn.softplus}


def mlp(sizes: list[int], batch_norm_hidden: bool = False, out_std: float = 0.01,
        activation: str = "relu") -> Model:
    """Fully connected ReLU net. sizes = [in, hidden..., out].

    `activation` is ReLU in every experiment (a smooth one serves finite-difference tests).
    Sinusoid: [1, 40, 40, 1], no norm. Omniglot non-conv: [784, 256, 128, 64, 64, N] with batch
    norm after every hidden layer. Weights truncated normal std 0.01, biases zero (official)."""
    n_layers, act = len(sizes) - 1, ACTIVATIONS[activation]

    def init(seed: int) -> dict:
        params, seeds = {}, _seeds(seed, n_layers)
        for i in range(n_layers):
            std = out_std if i == n_layers - 1 else 0.01
            params[f"w{i + 1}"] = _trunc_normal([sizes[i], sizes[i + 1]], std, seeds[i])
            params[f"b{i + 1}"] = tf.zeros([sizes[i + 1]])
            if batch_norm_hidden and i < n_layers - 1:
                params[f"bn{i + 1}"] = tf.zeros([sizes[i + 1]])
        return params

    def apply(params: dict, x: tf.Tensor) -> tf.Tensor:
        h = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], sizes[0]])
        for i in range(1, n_layers + 1):
            h = dense(h, params[f"w{i}"], params[f"b{i}"])
            if i < n_layers:
                if batch_norm_hidden:
                    h = batch_norm(h, params[f"bn{i}"])
                h = act(h)
        return h

    frozen = frozenset(f"bn{i}" for i in range(1, n_layers)) if batch_norm_hidden else frozenset()
    return Model(init, apply, frozen)


def conv4(n_out: int, channels: int, filters: int, image_size: int, max_pool: bool,
          activation: str = "relu", impl: str = "batched") -> Model:
    """Four [3x3 conv, batch norm, ReLU] blocks and a linear classifier.

    Omniglot form: 64 filters, stride-2 convs, then the mean over the spatial dims; output layer
    normal(0, 1) (official). MiniImagenet form: 32 filters, stride-1 convs each followed by a 2x2
    max-pool, flattened; output layer Glorot uniform. Conv kernels Glorot uniform ("Xavier").

    `impl` chooses how the tasks are batched (the function computed is the same):
      * "batched": every layer one operation over all tasks (convolutions as patches @ kernel),
        for one XLA program per step; fastest for Omniglot's small images and large meta-batch;
      * "per_task": a loop over the (few) tasks of the batch, each task's network written with
        TensorFlow's own kernels (oneDNN `conv2d` and its backprops, `max_pool2d`), to run
        without XLA (`train.xla: false`): MiniImagenet's meta-step is about 2.8x faster so, and
        Omniglot 20-way 5-shot's (200 images per task) 1.6x (README, Benchmark). Up to
        LOOP_MAX_TASKS tasks (a replica's share of the meta-batch, the MiniImagenet configs'
        evaluation batch) are a Python loop; more a `tf.map_fn`, whose compile time does not grow
        with the tasks but which runs about a quarter slower."""
    if impl not in ("batched", "per_task"):
        raise ValueError(f"conv4 impl must be 'batched' or 'per_task', got {impl!r}")
    act, size = ACTIVATIONS[activation], image_size
    for _ in range(4):
        size = size // 2 if max_pool else -(-size // 2)
    n_features = filters * size * size if max_pool else filters

    def init(seed: int) -> dict:
        params, seeds = {}, _seeds(seed, 5)
        c = channels
        for i in range(1, 5):
            params[f"conv{i}"] = _glorot_uniform([3, 3, c, filters], 9 * c, 9 * filters, seeds[i - 1])
            params[f"b{i}"] = tf.zeros([filters])
            params[f"bn{i}"] = tf.zeros([filters])
            c = filters
        if max_pool:
            params["w5"] = _glorot_uniform([n_features, n_out], n_features, n_out, seeds[4])
        else:
            params["w5"] = tf.random.stateless_normal([n_features, n_out], seeds[4])
        params["b5"] = tf.zeros([n_out])
        return params

    def apply(params: dict, x: tf.Tensor) -> tf.Tensor:
        h = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], image_size, image_size, channels])
        for i in range(1, 5):
            h = conv3x3(h, params[f"conv{i}"], params[f"b{i}"], stride=1 if max_pool else 2)
            h = batch_norm(h, params[f"bn{i}"])
            if i == 1 and SHIFT1 in params:  # see SHIFT1
                shift = params[SHIFT1]
                h = h + (tf.reshape(shift, [-1, 1, 1, 1, filters]) if _per_task(shift, 1) else shift)
            h = act(h)
            if max_pool:
                h = max_pool2(h)
        if max_pool:
            h = tf.reshape(h, [tf.shape(h)[0], tf.shape(h)[1], n_features])
        else:
            h = tf.reduce_mean(h, axis=[2, 3])
        return dense(h, params["w5"], params["b5"])

    stride = 1 if max_pool else 2
    ranks = {"w5": 2, **{f"conv{i}": 4 for i in range(1, 5)}}   # the others are vectors

    def one_task(p: dict, h: tf.Tensor) -> tf.Tensor:
        """One task's logits [N, n_out] from its images h [N, H, W, C] and parameters p."""
        for i in range(1, 5):
            h = _bias_before_batch_norm(tf.nn.conv2d(h, p[f"conv{i}"], stride, "SAME"), p[f"b{i}"])
            # max-pool(act(batch norm(h) [+ shift])): every map after the pool is non-decreasing
            # in each channel (ACTIVATIONS), so the pool commutes with them and comes first
            # (batch_norm_one_task)
            h = batch_norm_one_task(h, p[f"bn{i}"], pool=max_pool)
            if i == 1 and SHIFT1 in p:  # see SHIFT1
                h = h + p[SHIFT1]
            h = act(h)
        h = tf.reshape(h, [-1, n_features]) if max_pool else tf.reduce_mean(h, axis=[1, 2])
        return tf.matmul(h, p["w5"]) + p["b5"]

    def apply_per_task(params: dict, x: tf.Tensor) -> tf.Tensor:
        x = tf.reshape(x, [tf.shape(x)[0], -1, image_size, image_size, channels])
        own = {k for k, v in params.items() if _per_task(v, ranks.get(k, 1))}
        n_tasks = x.shape[0]
        if n_tasks is not None and n_tasks <= LOOP_MAX_TASKS:
            # a Python loop: the tasks' ops are independent (TF runs them side by side on its
            # inter-op threads); per-task copies unstacked (their gradient is one stack)
            views = {k: tf.unstack(v) if k in own else [v] * n_tasks for k, v in params.items()}
            return tf.stack([one_task({k: views[k][t] for k in params}, h)
                             for t, h in enumerate(tf.unstack(x))])
        # many tasks (evaluation batches): a map over tasks keeps the graph, and its tracing and
        # optimisation time, independent of the number of tasks
        shared = {k: v for k, v in params.items() if k not in own}
        return tf.map_fn(lambda e: one_task({**shared, **e[1]}, e[0]), (x, {k: params[k] for k in own}),
                         fn_output_signature=tf.TensorSpec([None, n_out], x.dtype),
                         parallel_iterations=MAP_PARALLEL_TASKS)

    frozen = frozenset(f"bn{i}" for i in range(1, 5))
    if impl == "per_task":
        return Model(init, apply_per_task, frozen, xla=False, second_order_tasks=LOOP_MAX_TASKS)
    return Model(init, apply, frozen)


BUILDERS = {"mlp": mlp, "conv4": conv4}


def build(spec: dict) -> Model:
    """Model from a config's `model` section: {"kind": "mlp" | "conv4", ...its arguments}."""
    spec = dict(spec)
    return BUILDERS[spec.pop("kind")](**spec)


# ----------------------------------------------------------------------------- the RL policy

def gaussian_mlp(obs_dim: int, act_dim: int, hidden: list[int] = (100, 100), init_std: float = 1.0,
                 min_std: float = 1e-6, activation: str = "relu") -> Model:
    """The Gaussian MLP policy of the RL experiments (paper §5.3; cbfinn/maml_rl
    `MAMLGaussianMLPPolicy` as used by its MAML-TRPO scripts).

    Mean network obs -> hidden (100, 100, ReLU) -> act_dim, weights Glorot ("Xavier") uniform and
    biases zero (the official `create_MLP` initialisers); a state-independent log-std parameter
    initialised to log(init_std) and clamped below at log(min_std) (official min_std 1e-6). Every
    parameter, log-std included, is adapted by the inner loop (frozen is empty).

    `apply(params, obs [T, N, obs_dim]) -> [T, N, 2 * act_dim]`: the mean and the log-std
    concatenated on the last axis (`maml_tf.rl.split_dist` splits them), so that the same
    `maml.inner_step` adapts it with a policy-gradient loss."""
    sizes = [obs_dim, *hidden, act_dim]
    n_layers, act = len(sizes) - 1, ACTIVATIONS[activation]
    min_log_std = math.log(min_std)

    def init(seed: int) -> dict:
        params, seeds = {}, _seeds(seed, n_layers)
        for i in range(n_layers):
            params[f"w{i + 1}"] = _glorot_uniform([sizes[i], sizes[i + 1]], sizes[i], sizes[i + 1],
                                                  seeds[i])
            params[f"b{i + 1}"] = tf.zeros([sizes[i + 1]])
        params["log_std"] = tf.fill([act_dim], math.log(init_std))
        return params

    def apply(params: dict, x: tf.Tensor) -> tf.Tensor:
        h = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], obs_dim])
        for i in range(1, n_layers + 1):
            h = dense(h, params[f"w{i}"], params[f"b{i}"])
            if i < n_layers:
                h = act(h)
        log_std = tf.maximum(params["log_std"], min_log_std)
        if _per_task(log_std, 1):
            log_std = log_std[:, None, :]
        return tf.concat([h, tf.broadcast_to(log_std, tf.shape(h))], axis=-1)

    return Model(init, apply, frozenset())


BUILDERS["gaussian_mlp"] = gaussian_mlp
