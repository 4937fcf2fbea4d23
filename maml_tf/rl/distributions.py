"""The policy's action distribution (a diagonal Gaussian whose mean and log-std the policy network
outputs side by side) and the losses on it, batched over tasks (leading axis T):

  * `split_dist`, `gaussian_log_prob`, `gaussian_kl` (rllab's order: old distribution first);
  * the inner loss `vpg_loss`: -mean(log pi(a|s) * A) over each task's valid (unpadded) steps, what
    `maml.adapt` differentiates (the official inner step: plain gradient descent, step alpha), with
    `inner_targets` giving its `y`;
  * the TRPO surrogate `surrogate_loss` and the KL pooled over all valid samples, `pooled_kl`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- distributions

def split_dist(out):
    """The policy output [..., 2A] (a tensor or a numpy array) -> (mean [..., A], log_std [..., A]):
    the one place that knows the layout `nets.gaussian_mlp` writes."""
    half = out.shape[-1] // 2
    return out[..., :half], out[..., half:]


def gaussian_log_prob(mean, log_std, x):
    """log N(x; mean, diag(exp(log_std)^2)), summed over the last axis."""
    z = (x - mean) * tf.exp(-log_std)
    return tf.reduce_sum(-0.5 * tf.square(z) - log_std, axis=-1) - 0.5 * LOG_2PI * tf.cast(
        tf.shape(x)[-1], x.dtype)


def gaussian_kl(mean0, log_std0, mean1, log_std1):
    """KL(N0 || N1) of diagonal Gaussians, summed over the last axis (rllab's `kl_sym` order:
    old distribution first)."""
    var0, var1 = tf.exp(2.0 * log_std0), tf.exp(2.0 * log_std1)
    return tf.reduce_sum(log_std1 - log_std0 + (var0 + tf.square(mean0 - mean1)) / (2.0 * var1) - 0.5,
                         axis=-1)


def masked_task_mean(x, mask):
    """Mean of x [T, N] over the valid entries of each task -> [T]."""
    return tf.reduce_sum(x * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def vpg_loss(out, y):
    """Inner (policy-gradient) loss per task [T]: -mean over valid steps of log pi(a|s) * A.
    `y` = (actions [T, N, A], advantages [T, N], mask [T, N])."""
    actions, adv, mask = y
    mean, log_std = split_dist(out)
    return -masked_task_mean(gaussian_log_prob(mean, log_std, actions) * adv, mask)


def surrogate_loss(out, y):
    """TRPO surrogate per task [T]: -mean over valid steps of exp(logp - old_logp) * A.
    `y` = (actions, advantages, mask, old_logp [T, N])."""
    actions, adv, mask, old_logp = y
    mean, log_std = split_dist(out)
    ratio = tf.exp(gaussian_log_prob(mean, log_std, actions) - old_logp)
    return -masked_task_mean(ratio * adv, mask)


def pooled_kl(out, old_mean, old_log_std, mask, count=None):
    """KL(old || new) averaged over all valid samples of all tasks (the official mean_kl). With
    `count` (the valid samples of all tasks), the sum over these tasks' samples divided by it: the
    part of the pooled KL that a chunk of the tasks contributes."""
    mean, log_std = split_dist(out)
    kl = gaussian_kl(old_mean, old_log_std, mean, log_std)
    return tf.reduce_sum(kl * mask) / (valid_count(mask) if count is None else count)


def valid_count(mask):
    """The number of valid samples (at least 1): what `pooled_kl` divides by."""
    return tf.maximum(tf.reduce_sum(mask), 1.0)


class Samples(NamedTuple):
    """The tensors of a batch of rollouts that the compiled losses take, per task (leading axis T):
    observations [T, N, d], actions [T, N, A], advantages and the valid-step mask [T, N]."""
    obs: tf.Tensor
    actions: tf.Tensor
    adv: tf.Tensor
    mask: tf.Tensor


class TRPOSamples(NamedTuple):
    """The post-update samples of a TRPO step, with the sampling policy's distribution on them
    (constants of the step): its mean and log-std [T, N, A] and the log-likelihood [T, N]."""
    obs: tf.Tensor
    actions: tf.Tensor
    adv: tf.Tensor
    mask: tf.Tensor
    old_mean: tf.Tensor
    old_log_std: tf.Tensor
    old_logp: tf.Tensor


def loss_inputs(batch) -> Samples:
    """The tensors of a batch (a `sampler.RolloutBatch`) that the compiled losses take."""
    return Samples(batch.obs, batch.actions, batch.adv, batch.mask)


def inner_targets(batch) -> tuple:
    """What the inner loss `vpg_loss` compares the policy's output with: (actions, advantages,
    mask), the `y` of `maml.adapt` (whose `x` is batch.obs)."""
    return batch.actions, batch.adv, batch.mask
