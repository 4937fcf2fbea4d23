"""TRPO as the MAML meta-optimizer, written for parameters held in plain dicts name -> tensor.

The official RL code (cbfinn/maml_rl, rllab's `ConjugateGradientOptimizer`) takes one TRPO step per
meta-iteration:

  1. g = gradient of the loss (the post-update surrogate) at the current parameters theta;
  2. s = CG solution of (H + damping I) s = g, 10 iterations, residual tolerance 1e-10, where H is the
     Hessian of the mean KL; Hessian-vector products are *symmetric finite differences of the KL
     gradient*, (g_kl(theta + eps v) - g_kl(theta - eps v)) / (2 eps) with eps = 1 / (||theta|| + 1e-8);
  3. initial step size beta = sqrt(2 max_kl / (s^T (H + damping I) s + 1e-8)) (1.0 if that is NaN);
  4. backtracking over theta - 0.8^n beta s, n = 0..14: stop at the first candidate whose loss is below
     the loss before and whose KL is <= max_kl; if the candidate it stopped at (or the last one) has a
     NaN loss or KL, a loss >= loss before, or a KL >= max_kl, the step is rejected and theta is kept.

About eps: rllab's `FiniteDifferenceHvp` has `base_eps=1e-8` as its signature default, but the
optimizer builds it as `FiniteDifferenceHvp(num_slices)`, passing num_slices (= 1) positionally as
`base_eps`. So the code that produced the paper's results used base_eps = 1, i.e.
eps = 1 / (||theta|| + 1e-8), and the symmetric (central) difference. That is our default.

Everything that costs something (gradients, Hessian-vector products, the CG solve) is written in TF
and can run inside `tf.function`; `make_direction_fn(..., compile=True)` gives a compiled search
direction. The line search is a short Python loop over calls of the (possibly compiled) loss and KL.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import tensorflow as tf

from maml_tf.config import RLTrain

# The official constants (rllab ConjugateGradientOptimizer / FiniteDifferenceHvp as used by
# maml_rl) are declared once, as the defaults of the config's train section (config.RLTrain).
MAX_KL = RLTrain.max_kl
CG_ITERS = RLTrain.cg_iters
CG_RESIDUAL_TOL = 1e-10
DAMPING = RLTrain.cg_damping  # `reg_coeff`: A -> A + reg_coeff * I
BACKTRACK_RATIO = RLTrain.backtrack_ratio
MAX_BACKTRACKS = RLTrain.max_backtracks
FD_BASE_EPS = RLTrain.fd_base_eps  # see the module docstring


# ----------------------------------------------------------------------------- flat vectors

def keys_of(params: dict) -> list:
    """The stable order in which parameters are flattened: sorted names."""
    return sorted(params)


def flatten(params: dict) -> tf.Tensor:
    """Concatenate the parameters (sorted by name) into one vector."""
    return tf.concat([tf.reshape(params[k], [-1]) for k in keys_of(params)], axis=0)


def unflatten(vector: tf.Tensor, like: dict) -> dict:
    """Inverse of `flatten`: split `vector` into tensors shaped like the entries of `like`."""
    names = keys_of(like)
    shapes = [tuple(like[k].shape) for k in names]
    sizes = [int(np.prod(s)) for s in shapes]
    parts = tf.split(vector, sizes, axis=0)
    return {k: tf.reshape(p, s) for k, p, s in zip(names, parts, shapes)}


def as_tensors(params: dict) -> dict:
    """A dict of plain tensors (variables are read), so it can be perturbed and differentiated."""
    return {k: tf.convert_to_tensor(v) for k, v in params.items()}


def _flat_grads(grads: dict, params: dict) -> tf.Tensor:
    """Flatten a gradient dict, zeros for names that are missing or None."""
    return flatten({k: (grads.get(k) if grads.get(k) is not None else tf.zeros_like(params[k]))
                    for k in params})


def value_and_grad(fn: Callable[[dict], tf.Tensor], params: dict) -> tuple[tf.Tensor, dict]:
    """fn(params) and its gradient dict (zeros where fn does not depend on a parameter)."""
    params = as_tensors(params)
    with tf.GradientTape() as tape:
        tape.watch(list(params.values()))
        value = fn(params)
    grads = tape.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, grads


def grad_fn_of(fn: Callable[[dict], tf.Tensor]) -> Callable[[dict], dict]:
    """params -> gradient dict of the scalar fn (to build the `grad_fn` of a FD HVP)."""
    return lambda params: value_and_grad(fn, params)[1]


# ----------------------------------------------------------------------------- linear algebra

def conjugate_gradient(matvec: Callable[[tf.Tensor], tf.Tensor], b: tf.Tensor,
                       iters: int = CG_ITERS, residual_tol: float = CG_RESIDUAL_TOL) -> tf.Tensor:
    """Approximately solve A x = b for symmetric positive definite A known only through `matvec`.

    Starts from x = 0 and runs at most `iters` iterations, stopping once r.r < residual_tol (the
    official rule, checked after each update). Written with `tf.while_loop`, so inside `tf.function`
    the matvec is traced once."""
    b = tf.convert_to_tensor(b)
    x0 = tf.zeros_like(b)
    rdotr0 = tf.tensordot(b, b, 1)
    tol = tf.cast(residual_tol, b.dtype)

    def cond(i, x, r, p, rdotr):
        return tf.logical_and(i < iters, rdotr >= tol)

    def body(i, x, r, p, rdotr):
        z = matvec(p)
        v = rdotr / tf.tensordot(p, z, 1)
        x = x + v * p
        r = r - v * z
        new_rdotr = tf.tensordot(r, r, 1)
        p = r + (new_rdotr / rdotr) * p
        return i + 1, x, r, p, new_rdotr

    _, x, _, _, _ = tf.while_loop(cond, body, (tf.constant(0), x0, b, b, rdotr0))
    return x


# ----------------------------------------------------------------------------- Hessian-vector products

def _as_flat(vector, params: dict) -> tuple[tf.Tensor, bool]:
    if isinstance(vector, dict):
        return flatten(vector), True
    return tf.convert_to_tensor(vector), False


def finite_difference_hvp(grad_fn: Callable[[dict], dict], params: dict, vector,
                          base_eps: float = FD_BASE_EPS, symmetric: bool = True,
                          damping: float = 0.0):
    """H v by finite differences of gradients, H the Jacobian of `grad_fn` at `params`.

    eps = base_eps / (||theta|| + 1e-8) with theta all parameters flattened; symmetric:
    (g(theta + eps v) - g(theta - eps v)) / (2 eps); one-sided: (g(theta + eps v) - g(theta)) / eps.
    `grad_fn(params_dict_of_tensors) -> grads dict` can be any gradient, e.g. that of the mean KL of
    the post-update policy (which itself contains an inner gradient step). `vector` is a flat vector
    (returns a flat vector) or a dict like params (returns a dict). Adds `damping * v`."""
    params = as_tensors(params)
    v, was_dict = _as_flat(vector, params)
    theta = flatten(params)
    eps = tf.cast(base_eps, theta.dtype) / (tf.norm(theta) + tf.cast(1e-8, theta.dtype))
    v = tf.cast(v, theta.dtype)
    plus = unflatten(theta + eps * v, params)
    g_plus = _flat_grads(grad_fn(plus), params)
    if symmetric:
        with tf.control_dependencies([g_plus]):  # one gradient after the other: the memory of one
            minus = unflatten(theta - eps * v, params)
        g_minus = _flat_grads(grad_fn(minus), params)
        hv = (g_plus - g_minus) / (2.0 * eps)
    else:
        g0 = _flat_grads(grad_fn(params), params)
        hv = (g_plus - g0) / eps
    if damping:
        hv = hv + damping * v
    return unflatten(hv, params) if was_dict else hv


def exact_hvp(fn: Callable[[dict], tf.Tensor], params: dict, vector, damping: float = 0.0):
    """H v of the scalar fn at params by double backprop (nested tapes); for tests and comparison.
    `vector` flat or dict, the result has the same form. Adds `damping * v`."""
    params = as_tensors(params)
    v, was_dict = _as_flat(vector, params)
    v = tf.cast(v, flatten(params).dtype)
    vd = unflatten(v, params)
    names = keys_of(params)
    with tf.GradientTape() as outer:
        outer.watch([params[k] for k in names])
        with tf.GradientTape() as inner:
            inner.watch([params[k] for k in names])
            value = fn(params)
        grads = inner.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        gv = tf.add_n([tf.reduce_sum(grads[k] * vd[k]) for k in names])
    hv = outer.gradient(gv, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    hv = flatten(hv)
    if damping:
        hv = hv + damping * v
    return unflatten(hv, params) if was_dict else hv


# ----------------------------------------------------------------------------- search direction

def make_direction_fn(kl_fn: Callable[[dict], tf.Tensor] | None = None,
                      grad_fn: Callable[[dict], dict] | None = None,
                      hvp: str | Callable = "finite_difference",
                      cg_iters: int = CG_ITERS, damping: float = DAMPING,
                      base_eps: float = FD_BASE_EPS, residual_tol: float = CG_RESIDUAL_TOL,
                      compile: bool = False) -> Callable[[dict, tf.Tensor], tuple]:
    """Build `direction(params, flat_loss_grad) -> (s, sHs)`, s = CG solution of (H + damping I) s = g
    and sHs = s^T (H + damping I) s, H the Hessian of the KL.

    hvp: 'finite_difference' (FD of `grad_fn`, which defaults to the autodiff gradient of kl_fn),
    'exact' (double backprop of kl_fn), or a callable (params, flat_v) -> flat H v (no damping).
    compile=True wraps the whole thing (gradients, HVPs and the CG loop) in one `tf.function`;
    build it once and reuse it, since every new function object traces again."""
    if grad_fn is None and hvp == "finite_difference":
        if kl_fn is None:
            raise ValueError("finite_difference HVP needs grad_fn or kl_fn")
        grad_fn = grad_fn_of(kl_fn)
    if hvp == "finite_difference":
        hvp_fn = lambda p, v: finite_difference_hvp(grad_fn, p, v, base_eps=base_eps)
    elif hvp == "exact":
        if kl_fn is None:
            raise ValueError("exact HVP needs kl_fn")
        hvp_fn = lambda p, v: exact_hvp(kl_fn, p, v)
    elif callable(hvp):
        hvp_fn = hvp
    else:
        raise ValueError(f"unknown hvp {hvp!r}")

    def direction(params: dict, flat_grad: tf.Tensor):
        params = as_tensors(params)
        matvec = lambda v: hvp_fn(params, v) + damping * v
        s = conjugate_gradient(matvec, flat_grad, iters=cg_iters, residual_tol=residual_tol)
        shs = tf.tensordot(s, matvec(s), 1)
        return s, shs

    return tf.function(direction) if compile else direction


# ----------------------------------------------------------------------------- the TRPO step

def trpo_step(params: dict, loss_fn: Callable[[dict], tf.Tensor], kl_fn: Callable[[dict], tf.Tensor],
              grad_fn: Callable[[dict], dict] | None = None, max_kl: float = MAX_KL,
              cg_iters: int = CG_ITERS, damping: float = DAMPING,
              backtrack_ratio: float = BACKTRACK_RATIO, max_backtracks: int = MAX_BACKTRACKS,
              hvp: str | Callable = "finite_difference", base_eps: float = FD_BASE_EPS,
              residual_tol: float = CG_RESIDUAL_TOL,
              loss_grad_fn: Callable[[dict], tuple] | None = None,
              loss_kl_fn: Callable[[dict], tuple] | None = None,
              direction_fn: Callable[[dict, tf.Tensor], tuple] | None = None) -> tuple[dict, dict]:
    """One TRPO step from `params` (dict of tensors or variables; not modified).

    loss_fn(params) -> scalar loss to minimise; kl_fn(params) -> scalar mean KL between the fixed old
    policy and the policy at params; grad_fn(params) -> gradient dict of kl_fn for the FD HVP (default:
    autodiff of kl_fn). Optional pieces the caller may pass compiled (`tf.function`):
      loss_grad_fn(params) -> (loss, grads dict)   default: tape over loss_fn;
      loss_kl_fn(params) -> (loss, kl)             default: two calls; used in the line search;
      direction_fn(params, flat_grad) -> (s, sHs)  default: `make_direction_fn(...)` (overrides hvp,
                                                   grad_fn, cg_iters, damping, base_eps).
    Returns (new_params, info): new_params is a dict of tensors (the old values when the step is
    rejected); info has loss_before, loss_after, kl_after (at the returned params), accepted,
    n_backtracks (index of the last step size tried, as the official log: 0 = full step), step_size
    (the initial beta), shs, grad_norm, and the loss / KL of the last tried candidate."""
    old = as_tensors(params)
    old_flat = flatten(old)

    if loss_grad_fn is None:
        loss_before, grads = value_and_grad(loss_fn, old)
    else:
        loss_before, grads = loss_grad_fn(old)
    g = _flat_grads(grads, old)

    if direction_fn is None:
        direction_fn = make_direction_fn(kl_fn, grad_fn, hvp, cg_iters, damping, base_eps,
                                         residual_tol)
    s, shs = direction_fn(old, g)

    shs_val = float(shs)
    step_size = math.sqrt(2.0 * max_kl / (shs_val + 1e-8)) if shs_val + 1e-8 > 0 else float("nan")
    if math.isnan(step_size):
        step_size = 1.0
    full_step = step_size * s

    if loss_kl_fn is None:
        loss_kl_fn = lambda p: (loss_fn(p), kl_fn(p))

    loss_before = float(loss_before)
    loss = kl = float("nan")
    n = 0
    cand = old
    for n in range(max_backtracks):
        ratio = backtrack_ratio ** n
        cand = unflatten(old_flat - ratio * full_step, old)
        loss_t, kl_t = loss_kl_fn(cand)
        loss, kl = float(loss_t), float(kl_t)
        if loss < loss_before and kl <= max_kl:
            break
    rejected = (math.isnan(loss) or math.isnan(kl) or loss >= loss_before or kl >= max_kl)

    info = dict(loss_before=loss_before, accepted=not rejected, n_backtracks=n,
                step_size=step_size, shs=shs_val, grad_norm=float(tf.norm(g)),
                last_loss=loss, last_kl=kl)
    if rejected:
        info["loss_after"] = loss_before
        info["kl_after"] = float(kl_fn(old))
        return old, info
    info["loss_after"] = loss
    info["kl_after"] = kl
    return cand, info
