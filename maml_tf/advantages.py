"""Returns, GAE, rllab's linear feature baseline and advantage normalisation, in NumPy.

Trajectories are padded arrays: rewards [..., n_traj, T], observations [..., n_traj, T, obs_dim], with
per-trajectory lengths [..., n_traj] (or a 0/1 mask [..., n_traj, T]); episodes may terminate early.
Leading axes (`...`) are independent batches, typically the tasks of a meta-batch: the baseline is
fitted and the advantages are normalised separately for every leading index.

What the official code (cbfinn/maml_rl) does, per task and per adaptation step (rllab/sampler/base.py
`process_samples`, called once per task):
  * returns = discounted cumulative sum of rewards (discount 0.99);
  * the linear feature baseline is *fitted first* on these paths' returns and then used to predict
    on the same paths (in-sample; upstream rllab predicts with the previous fit instead);
  * GAE: delta_t = r_t + gamma b_{t+1} - b_t with b = 0 after the last step of every path (no
    bootstrap, whether the path terminated or hit the horizon), A = discounted cumsum of delta with
    gamma * lambda (lambda = 1);
  * `center_adv=True` (default): A <- (A - mean) / (std + 1e-8) over all the task's samples, i.e.
    standardised, not only centred (np.std, population); `positive_adv=False`:
    if on, A <- A - min(A) + 1e-8 after the standardisation.
Baseline (rllab/baselines/linear_feature_baseline.py): features [clip(o, -10, 10), its square,
t/100, (t/100)^2, (t/100)^3, 1] with t the step index within the path; coefficients from least
squares on (F^T F + c I) w = F^T R with c = 1e-5; if the result has a NaN, c is multiplied by 10 and
the solve retried, at most 5 tries in all.
"""
from __future__ import annotations

import numpy as np

DISCOUNT = 0.99
GAE_LAMBDA = 1.0
BASELINE_REG_COEFF = 1e-5
ADV_EPS = 1e-8


# ----------------------------------------------------------------------------- masks

def mask_from_lengths(lengths, horizon: int, dtype=np.float64) -> np.ndarray:
    """[..., n_traj] lengths -> [..., n_traj, horizon] mask, 1 for t < length."""
    lengths = np.asarray(lengths)
    return (np.arange(horizon) < lengths[..., None]).astype(dtype)


def _mask(x: np.ndarray, mask=None, lengths=None) -> np.ndarray:
    """The validity mask of padded [..., n_traj, T] data (all ones when neither is given)."""
    if mask is not None and lengths is not None:
        raise ValueError("give mask or lengths, not both")
    if lengths is not None:
        return mask_from_lengths(lengths, x.shape[-1])
    if mask is not None:
        return np.broadcast_to(np.asarray(mask, dtype=np.float64), x.shape)
    return np.ones(x.shape, dtype=np.float64)


# ----------------------------------------------------------------------------- returns and GAE

def discounted_cumsum(x, discount: float) -> np.ndarray:
    """y_t = sum_{k >= t} discount^(k - t) x_k along the last axis (batched over the others).
    Padding must be zero for per-path sums (use a mask), which `discounted_returns` and `gae` do."""
    x = np.asarray(x, dtype=np.float64)
    y = np.zeros_like(x)
    acc = np.zeros(x.shape[:-1], dtype=np.float64)
    for t in range(x.shape[-1] - 1, -1, -1):
        acc = x[..., t] + discount * acc
        y[..., t] = acc
    return y


def discounted_returns(rewards, mask=None, lengths=None, gamma: float = DISCOUNT) -> np.ndarray:
    """Discounted return from every step of every padded path [..., n_traj, T]; zero on padding."""
    rewards = np.asarray(rewards, dtype=np.float64)
    m = _mask(rewards, mask, lengths)
    return discounted_cumsum(rewards * m, gamma) * m


def gae(rewards, values, mask=None, lengths=None, gamma: float = DISCOUNT,
        lam: float = GAE_LAMBDA) -> np.ndarray:
    """Generalised advantage estimates of padded paths [..., n_traj, T]; zero on padding.

    The value after the last valid step of each path is taken as 0 (the official code appends 0 to
    every path's baseline). With lam = 1 this is discounted return minus the baseline."""
    rewards = np.asarray(rewards, dtype=np.float64)
    m = _mask(rewards, mask, lengths)
    values = np.asarray(values, dtype=np.float64) * m
    next_values = np.concatenate([values[..., 1:], np.zeros_like(values[..., :1])], axis=-1)
    deltas = (rewards + gamma * next_values - values) * m
    return discounted_cumsum(deltas, gamma * lam) * m


# ----------------------------------------------------------------------------- advantage normalisation

def center_advantages(advantages, mask=None, lengths=None, eps: float = ADV_EPS) -> np.ndarray:
    """Official `center_adv`: (A - mean) / (std + eps) over the valid entries of each leading index
    (each task), population std; zero on padding."""
    a = np.asarray(advantages, dtype=np.float64)
    m = _mask(a, mask, lengths)
    n = m.sum(axis=(-2, -1), keepdims=True)
    mean = (a * m).sum(axis=(-2, -1), keepdims=True) / n
    std = np.sqrt((((a - mean) * m) ** 2).sum(axis=(-2, -1), keepdims=True) / n)
    return (a - mean) / (std + eps) * m


def shift_advantages_to_positive(advantages, mask=None, lengths=None,
                                 eps: float = ADV_EPS) -> np.ndarray:
    """Official `positive_adv` (off by default): A - min(A) + eps per leading index; zero on padding."""
    a = np.asarray(advantages, dtype=np.float64)
    m = _mask(a, mask, lengths)
    amin = np.where(m > 0, a, np.inf).min(axis=(-2, -1), keepdims=True)
    return (a - amin + eps) * m


# ----------------------------------------------------------------------------- linear feature baseline

def linear_baseline_features(observations) -> np.ndarray:
    """rllab's features of padded observations [..., n_traj, T, obs_dim] -> [..., n_traj, T, F],
    F = 2 obs_dim + 4: clip(o, -10, 10), its square, t/100, (t/100)^2, (t/100)^3, 1."""
    o = np.clip(np.asarray(observations, dtype=np.float64), -10.0, 10.0)
    al = np.arange(o.shape[-2], dtype=np.float64)[:, None] / 100.0
    time = np.concatenate([al, al ** 2, al ** 3, np.ones_like(al)], axis=-1)
    time = np.broadcast_to(time, o.shape[:-1] + (4,))
    return np.concatenate([o, o ** 2, time], axis=-1)


def fit_linear(features, targets, mask, reg_coeff: float = BASELINE_REG_COEFF,
               max_tries: int = 5) -> np.ndarray:
    """Ridge least squares per leading index: features [..., n_traj, T, F], targets and mask
    [..., n_traj, T] -> coefficients [..., F]. Solves (F^T F + c I) w = F^T y with lstsq, multiplying
    c by 10 and retrying while w has a NaN (at most `max_tries` solves), as rllab does."""
    feats = np.asarray(features, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64) * m
    lead = feats.shape[:-3]
    nf = feats.shape[-1]
    fm = (feats * m[..., None]).reshape(lead + (-1, nf))
    yv = y.reshape(lead + (-1,))
    # as matmuls (BLAS): np.einsum's own loop took 15.6 s for the ant's 40 tasks x 4000 steps x 214
    # features against 0.41 s (the same sums in another order: 6e-15 relative)
    fmt = np.swapaxes(fm, -1, -2)
    gram = fmt @ fm
    rhs = (fmt @ yv[..., None])[..., 0]
    gram2 = gram.reshape((-1, nf, nf))
    rhs2 = rhs.reshape((-1, nf))
    coeffs = np.empty_like(rhs2)
    eye = np.eye(nf)
    for i in range(gram2.shape[0]):
        c = reg_coeff
        for _ in range(max_tries):
            w = np.linalg.lstsq(gram2[i] + c * eye, rhs2[i], rcond=None)[0]
            if not np.any(np.isnan(w)):
                break
            c *= 10
        coeffs[i] = w
    return coeffs.reshape(lead + (nf,))


class LinearFeatureBaseline:
    """rllab's linear feature baseline on padded, task-batched data.

    `fit(observations, returns, mask/lengths)` fits one coefficient vector per leading index (task)
    on the discounted returns; `predict(observations, mask/lengths)` gives values [..., n_traj, T]
    (zero on padding; zero everywhere before the first fit, as rllab). The official MAML code refits
    it for every task and every adaptation step on the paths it then evaluates; `fit_predict` does
    exactly that."""

    def __init__(self, reg_coeff: float = BASELINE_REG_COEFF):
        self.reg_coeff = reg_coeff
        self.coeffs: np.ndarray | None = None

    def fit(self, observations, returns, mask=None, lengths=None) -> "LinearFeatureBaseline":
        returns = np.asarray(returns, dtype=np.float64)
        m = _mask(returns, mask, lengths)
        feats = linear_baseline_features(observations)
        self.coeffs = fit_linear(feats, returns, m, self.reg_coeff)
        return self

    def predict(self, observations, mask=None, lengths=None) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float64)
        shape = obs.shape[:-1]
        m = _mask(np.zeros(shape), mask, lengths)
        if self.coeffs is None:
            return np.zeros(shape)
        feats = linear_baseline_features(obs)
        return np.einsum("...ntf,...f->...nt", feats, self.coeffs) * m

    def fit_predict(self, observations, returns, mask=None, lengths=None) -> np.ndarray:
        """`fit`, then `predict` on the same paths: the same numbers, computed one leading index
        (task) at a time from its features built once (the features of all the ant's 40 tasks
        at once took 0.27 GB in float64, and their temporaries twice that)."""
        obs = np.asarray(observations)
        returns = np.asarray(returns, dtype=np.float64)
        m = _mask(returns, mask, lengths)
        paths = returns.shape[-2:]
        obs_i = obs.reshape((-1,) + obs.shape[-3:])
        ret_i, m_i = returns.reshape((-1,) + paths), m.reshape((-1,) + paths)
        coeffs, values = [], np.empty(ret_i.shape)
        for i in range(len(ret_i)):
            feats = linear_baseline_features(obs_i[i])
            coeffs.append(fit_linear(feats, ret_i[i], m_i[i], self.reg_coeff))
            values[i] = (feats @ coeffs[-1]) * m_i[i]
        self.coeffs = np.stack(coeffs).reshape(returns.shape[:-2] + (-1,))
        return values.reshape(returns.shape)


# ----------------------------------------------------------------------------- everything at once

def process_paths(observations, rewards, mask=None, lengths=None, gamma: float = DISCOUNT,
                  lam: float = GAE_LAMBDA, baseline: LinearFeatureBaseline | None = None,
                  center_adv: bool = True, positive_adv: bool = False) -> dict:
    """The official per-task sample processing on padded, task-batched paths.

    observations [..., n_traj, T, obs_dim], rewards [..., n_traj, T]. Fits the baseline on the
    returns of these paths (per leading index) and predicts on them, then GAE, then the optional
    normalisation per leading index. Returns a dict of float64 arrays: returns, baselines,
    advantages, mask (all [..., n_traj, T], zero on padding)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    m = _mask(rewards, mask, lengths)
    returns = discounted_returns(rewards, mask=m, gamma=gamma)
    baseline = LinearFeatureBaseline() if baseline is None else baseline
    values = baseline.fit_predict(observations, returns, mask=m)
    adv = gae(rewards, values, mask=m, gamma=gamma, lam=lam)
    if center_adv:
        adv = center_advantages(adv, mask=m)
    if positive_adv:
        adv = shift_advantages_to_positive(adv, mask=m)
    return dict(returns=returns, baselines=values, advantages=adv, mask=m)
