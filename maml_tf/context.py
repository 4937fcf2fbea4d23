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

import tensorflow as tf

from maml_tf import nets


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


def context(base: dict, z_dim: int, obs_dim: int | None = None, act_dim: int | None = None) -> nets.Model:
    """The `base` model (a `model` config section) with a context vector of `z_dim` entries. RL
    passes obs_dim / act_dim (from the environment) on to a gaussian_mlp base."""
    if z_dim < 1:
        raise ValueError(f"z_dim must be >= 1, got {z_dim}")
    base = dict(base)
    if base.get("kind") == "gaussian_mlp":
        base.update(obs_dim=obs_dim, act_dim=act_dim)
    spec, natural = _widened(base, z_dim)
    inner = nets.build(spec)
    names = frozenset(inner.init(0))

    def init(seed: int) -> dict:
        return {**inner.init(seed), "z": tf.zeros([z_dim])}

    def apply(params: dict, x: tf.Tensor) -> tf.Tensor:
        rest = {k: v for k, v in params.items() if k != "z"}
        return inner.apply(rest, concat_context(natural(x), params["z"]))

    return inner._replace(init=init, apply=apply, frozen=names)


nets.BUILDERS["context"] = context  # a `model` section may say `kind: context` (see maml_tf.config)
