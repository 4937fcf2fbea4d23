"""Context-vector adaptation (paper Appendix C; Rei 2015): a vector z of free parameters is
concatenated to the input of a network (channel-wise for images: z broadcast over the pixels),
meta-learned with the network, and it is the only parameter that the inner steps change.

`context(base, z_dim)` wraps any model of `maml_tf.nets` (an MLP, the conv4 net, the Gaussian MLP
policy) into a `Model` of the same kind: its parameters are the base network's plus "z" (zeros at
initialisation), and every base parameter is `frozen`, so `maml.inner_step` (and therefore every
adaptation path: supervised, RL, evaluation) adapts z only, while the meta-gradient reaches all of
them. In RL the context joins the observation at every time step.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from maml_tf import nets
from maml_tf.config import ConfigError


def _widened(spec: dict, z_dim: int) -> tuple[dict, callable]:
    """The base spec with z_dim more inputs, and how to bring an input to its natural shape."""
    spec = dict(spec)
    kind = spec["kind"]
    if kind == "conv4":
        size, channels = spec["image_size"], spec["channels"]
        spec["channels"] = channels + z_dim
        shape = lambda x: tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], size, size, channels])
    elif kind == "mlp":
        d = spec["sizes"][0]
        spec["sizes"] = [d + z_dim, *spec["sizes"][1:]]
        shape = lambda x: tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], d])
    elif kind == "gaussian_mlp":
        d = spec["obs_dim"]
        spec["obs_dim"] = d + z_dim
        shape = lambda x: tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], d])
    else:
        raise ValueError(f"a context vector needs a base model of kind conv4, mlp or gaussian_mlp, got {kind!r}")
    return spec, shape


def concat_context(x: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """x [T, N, ..., C] with z ([z_dim] shared, or [T, z_dim] per task) broadcast over every axis
    but the task axis and concatenated on the last one: [T, N, ..., C + z_dim]."""
    rank = x.shape.rank
    if z.shape.rank == 1:
        z = z[None]
    z = tf.reshape(z, [tf.shape(z)[0]] + [1] * (rank - 2) + [z.shape[-1]])
    z = tf.broadcast_to(z, tf.concat([tf.shape(x)[:-1], [tf.shape(z)[-1]]], 0))
    return tf.concat([x, tf.cast(z, x.dtype)], axis=-1)


INITS = ("widened", "base")
# where z meets the conv net: "input", as Appendix C states (channel-wise, broadcast over the
# pixels), or "after_norm", a diagnostic that is not the paper's model: z @ z_proj, a [z_dim,
# filters] matrix of its own, is added to the first block after its batch norm, which would subtract
# z's shift when z joins the input (`reach_through_batch_norm`). z_proj starts as the sum over the
# 3x3 taps of the input join's z rows: at the start, z @ z_proj is the shift that z adds inside the
# image (before batch norm) when it joins the input. A matrix of its own, not the nine taps' sum:
# the taps would get one gradient each, and Adam would move their sum at nine times its per-weight
# rate
JOINS = ("input", "after_norm")
Z_SEED_OFFSET = 1_000_003  # init "base": z's first-layer rows are drawn with seed + this


def context(base: dict, z_dim: int, obs_dim: int | None = None, act_dim: int | None = None,
            init: str = "widened", join: str = "input") -> nets.Model:
    """The `base` model (a `model` config section) with a context vector of `z_dim` entries. RL
    passes obs_dim / act_dim (from the environment) on to a gaussian_mlp base.

    `init` says how the first layer starts:
      * "widened": the base network's initialiser on the widened input, so z's entries count in
        that layer's Glorot fan-in and the weights on the input itself start smaller for a larger
        z (the runs trained before "base" existed);
      * "base": every parameter is the base network's of the same seed, and z's rows of the first
        layer are drawn (from their own random stream) at that layer's own scale. With z at zero
        the model starts as the MAML row's network whatever z_dim is, so runs of different z_dim
        differ only in their context vector: its size and, with it, how far one inner step on z
        moves the first layer (by -alpha W_z^T W_z g, whose trace grows with z_dim).

    `join` (JOINS): "input" (Appendix C) or, for the conv net only, "after_norm" (a diagnostic)."""
    if z_dim < 1:
        raise ConfigError(f"model.z_dim must be >= 1, got {z_dim}")
    if init not in INITS:
        raise ConfigError(f"model.init must be one of {', '.join(INITS)}, got {init!r}")
    if join not in JOINS:
        raise ConfigError(f"model.join must be one of {', '.join(JOINS)}, got {join!r}")
    if join != "input" and base.get("kind") != "conv4":
        raise ConfigError(f"model.join {join!r} needs a conv4 base (it passes z around its first batch norm), "
                          f"got {base.get('kind')!r}")
    base = dict(base)
    if base.get("kind") == "gaussian_mlp":
        base.update(obs_dim=obs_dim, act_dim=act_dim)
    spec, natural = _widened(base, z_dim)
    inner = nets.build(spec)   # the network on the widened input
    plain = nets.build(base)
    shapes = {k: v.shape for k, v in plain.init(0).items()}   # the base parameters' names and shapes
    # the weights (matrices and kernels) that the folded net copies per task
    folded = _folded(base, spec, natural, {k: s.rank for k, s in shapes.items() if s.rank >= 2})
    first, d = ("conv1", base["channels"]) if base["kind"] == "conv4" else \
        ("w1", base["sizes"][0] if base["kind"] == "mlp" else base["obs_dim"])
    scale = math.sqrt(_glorot_fans(spec) / _glorot_fans(base))  # the base layer's scale / the widened one's

    def init_params(seed: int) -> dict:
        if init == "widened":
            return {**inner.init(seed), "z": tf.zeros([z_dim])}
        own = plain.init(seed)
        # z's rows from a stream of their own: the widened kernel drawn with the same seed as the
        # base one would repeat the base kernel's numbers in z's rows (conv4: channels are not the
        # leading axis)
        z_rows = inner.init(seed + Z_SEED_OFFSET)[first][..., d:, :] * scale
        return {**own, first: tf.concat([own[first], z_rows], axis=-2), "z": tf.zeros([z_dim])}

    if join == "after_norm":
        return _after_norm(base, plain, init_params, shapes, natural)
    return inner._replace(init=init_params, apply=folded, frozen=frozenset(shapes))


def _after_norm(base: dict, plain: nets.Model, input_init, shapes: dict, natural) -> nets.Model:
    """The "after_norm" diagnostic (JOINS): the base conv net's parameters, z and z_proj; z @ z_proj
    is the per-channel shift `nets.SHIFT1` after the first batch norm. Everything but z is frozen."""
    c = base["channels"]
    ranks = {k: s.rank for k, s in shapes.items() if s.rank >= 2}

    def init(seed: int) -> dict:
        p = input_init(seed)
        w = p["conv1"]
        return {**p, "conv1": w[..., :c, :], "z_proj": tf.reduce_sum(w[..., c:, :], axis=[0, 1])}

    def apply(params: dict, x: tf.Tensor) -> tf.Tensor:
        z = tf.cast(params["z"], params["z_proj"].dtype)
        rest = {k: v for k, v in params.items() if k not in ("z", "z_proj")}
        rest[nets.SHIFT1] = tf.tensordot(z, params["z_proj"], 1)   # [filters], or [T, filters] per task
        if base.get("impl", "batched") == "batched":
            rest = _one_copy_per_task(rest, tf.shape(x)[0], ranks)
        return plain.apply(rest, natural(x))

    return plain._replace(init=init, apply=apply, frozen=frozenset(shapes) | {"z_proj"})


def _glorot_fans(spec: dict) -> int:
    """fan_in + fan_out of the first layer's Glorot initialiser (1 for the MLP, whose truncated
    normal of std 0.01 does not depend on its fans)."""
    if spec["kind"] == "conv4":
        return 9 * (spec["channels"] + spec["filters"])
    if spec["kind"] == "gaussian_mlp":
        return spec["obs_dim"] + ([*spec.get("hidden", (100, 100))] or [spec["act_dim"]])[0]
    return 1


def _split_first_layer(w: tf.Tensor, z: tf.Tensor, d: int, base_rank: int):
    """The first layer's weights w ([..., D + Z, F], shared or per task) split into the input's part
    [..., D, F] and z's contribution z @ w[D:] ([..., F] with a task axis if either has one)."""
    w_x, w_z = w[..., :d, :], w[..., d:, :]
    w_task, z_task = w.shape.rank == base_rank + 1, z.shape.rank == 2
    letters = "hw"[:base_rank - 2]
    eq = f"{'t' if w_task else ''}{letters}zf,{'t' if z_task else ''}z->{'t' if w_task or z_task else ''}{letters}f"
    return w_x, tf.einsum(eq, w_z, tf.cast(z, w.dtype)), w_task, z_task


def _one_copy_per_task(params: dict, n_tasks, ranks: dict) -> dict:
    """Each weight of `ranks` that is shared by the tasks broadcast to one copy per task (the
    gradient sums the copies). The same function, but a shared weight is an einsum whose first
    and second derivatives XLA's CPU backend runs slowly, and only z adapts here, so every other
    weight stays shared: the Omniglot context step (5-way 1-shot, z_dim 8, one core) took
    0.57-0.83 s with shared kernels and 0.23-0.28 s with copies (MAML's own step 0.30-0.37 s,
    everything per task after `maml.per_task`). The policy's second-order meta-gradient under XLA
    (40 tasks, 4,000 samples each): 2.5 s against 1.05 s; without XLA, as the RL configs run,
    about the same (a half-cheetah context iteration 46.3 s against 48.4 s)."""
    return {k: tf.broadcast_to(v[None], tf.concat([[n_tasks], tf.shape(v)], 0))
            if k in ranks and v.shape.rank == ranks[k] else v for k, v in params.items()}


def _folded(base: dict, spec: dict, natural, weight_ranks: dict) -> callable:
    """apply(params, x) of the widened network on x concatenated with z, computed without building
    the concatenation (the same function; tests/test_context.py compares them in float64):
      * an MLP's first layer: [x, z] @ w1 + b1 = x @ w1[:D] + (b1 + z @ w1[D:]), z's part a
        (per-task) bias;
      * the conv net's first convolution: z broadcast over the pixels contributes, at each output
        pixel, z @ w[tap] summed over the 3x3 taps that fall inside the image (SAME zero padding
        pads z too), which is the convolution of one channel of ones with the kernel u[tap] =
        z @ w[tap]: the input becomes [x, 1] and the kernel [w[:C], u], instead of C + z_dim
        channels (z_dim 128 made the first layer 130 times the work)."""
    kind = base["kind"]
    if kind == "conv4":
        c = base["channels"]
        narrow = nets.build({**spec, "channels": c + 1})

        def apply(params: dict, x: tf.Tensor) -> tf.Tensor:
            rest = {k: v for k, v in params.items() if k != "z"}
            w_x, u, w_task, z_task = _split_first_layer(params["conv1"], params["z"], c, 4)
            if z_task and not w_task:
                w_x = tf.broadcast_to(w_x, tf.concat([tf.shape(u)[:1], tf.shape(w_x)], 0))
            kernel = tf.concat([w_x, u[..., None, :]], axis=-2)   # [(T,) 3, 3, C + 1, F]
            h = natural(x)
            rest = {**rest, "conv1": kernel}
            if base.get("impl", "batched") == "batched":
                rest = _one_copy_per_task(rest, tf.shape(h)[0], weight_ranks)
            return narrow.apply(rest, tf.concat([h, tf.ones_like(h[..., :1])], -1))
        return apply

    d = base["sizes"][0] if kind == "mlp" else base["obs_dim"]
    narrow = nets.build(base)

    def apply(params: dict, x: tf.Tensor) -> tf.Tensor:
        rest = {k: v for k, v in params.items() if k != "z"}
        w_x, zb, _, _ = _split_first_layer(params["w1"], params["z"], d, 2)
        rest = {**rest, "w1": w_x, "b1": params["b1"] + zb}
        return narrow.apply(_one_copy_per_task(rest, tf.shape(x)[0], weight_ranks), natural(x))
    return apply


def reach_through_batch_norm(z_dim: int = 8, seed: int = 0, images: int = 5) -> dict:
    """Where z reaches the Omniglot conv4 net (stride 2, 64 filters, at initialisation), when it goes
    from zeros to a normal(0, 1) draw, on `images` random images:
      * before_norm: the mean |shift| of the first convolution's output at the interior pixels,
        and constant_deviation: how far that shift is from one constant per channel (the largest
        difference between two interior pixels of a channel: zero up to float32 rounding);
      * interior / border: the mean |change| of the first block's output (batch norm with the
        task's statistics, then ReLU) at the interior pixels and at the last row and column,
        whose windows reach into the zero padding; activation: its mean |value|.
    Batch norm's mean subtraction takes a channel-wise constant out, so what is left of z in the
    interior comes through the per-channel statistics, which the border pixels move."""
    rng = np.random.default_rng(seed)
    model = nets.conv4(5, 1 + z_dim, 64, 28, max_pool=False)
    p = model.init(seed)
    x = tf.constant(rng.random((1, images, 28, 28, 1)), tf.float32)
    conv = [nets.conv3x3(concat_context(x, tf.constant(z, tf.float32)), p["conv1"], p["b1"], 2)
            for z in (np.zeros(z_dim), rng.normal(size=z_dim))]
    a, b = (tf.nn.relu(nets.batch_norm(h, p["bn1"])).numpy()[0] for h in conv)
    shift = (conv[1] - conv[0]).numpy()[0, :, :-1, :-1]    # [images, H - 1, W - 1, filters]
    d = np.abs(a - b)
    border = np.concatenate([d[:, -1, :, :].ravel(), d[:, :-1, -1, :].ravel()])
    return {"before_norm": float(np.abs(shift).mean()),
            "constant_deviation": float(np.abs(shift - shift[:1, :1, :1]).max()),
            "interior": float(d[:, :-1, :-1].mean()), "border": float(border.mean()),
            "activation": float(np.abs(a).mean()), "z_dim": z_dim}


nets.BUILDERS["context"] = context  # a `model` section may say `kind: context` (see maml_tf.config)
