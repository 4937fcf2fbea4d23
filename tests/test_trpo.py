"""Tests of maml_tf.trpo (CG, Hessian-vector products, the TRPO step) and maml_tf.advantages."""
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import advantages as adv
from maml_tf import trpo

OBS, ACT, HID = 3, 2, 16


# ----------------------------------------------------------------------------- a tiny Gaussian MLP policy

def init_policy(seed=0):
    rng = np.random.default_rng(seed)
    def w(i, o):
        return tf.constant(rng.normal(0, 1 / np.sqrt(i), (i, o)), tf.float32)
    return {"w0": w(OBS, HID), "b0": tf.constant(rng.normal(0, 0.1, HID), tf.float32),
            "w1": w(HID, HID), "b1": tf.constant(rng.normal(0, 0.1, HID), tf.float32),
            "w2": w(HID, ACT), "b2": tf.zeros([ACT]),
            "log_std": tf.zeros([ACT])}


def policy_dist(p, obs, nl=tf.nn.relu):
    h = nl(obs @ p["w0"] + p["b0"])
    h = nl(h @ p["w1"] + p["b1"])
    mean = h @ p["w2"] + p["b2"]
    return mean, tf.broadcast_to(p["log_std"], tf.shape(mean))


def log_prob(p, obs, act, nl=tf.nn.relu):
    mean, log_std = policy_dist(p, obs, nl)
    z = (act - mean) / tf.exp(log_std)
    return tf.reduce_sum(-0.5 * z ** 2 - log_std - 0.5 * np.log(2 * np.pi), axis=-1)


def kl_gauss(m0, ls0, m1, ls1):
    """KL(N0 || N1) of diagonal Gaussians, summed over action dims."""
    return tf.reduce_sum(ls1 - ls0 + (tf.exp(2 * ls0) + (m0 - m1) ** 2) / (2 * tf.exp(2 * ls1)) - 0.5,
                         axis=-1)


def make_problem(seed=0, n=256, nl=tf.nn.relu):
    rng = np.random.default_rng(seed)
    p0 = init_policy(seed)
    obs = tf.constant(rng.normal(size=(n, OBS)), tf.float32)
    m0, ls0 = policy_dist(p0, obs, nl)
    act = m0 + tf.exp(ls0) * tf.constant(rng.normal(size=(n, ACT)), tf.float32)
    a = tf.constant(rng.normal(size=n), tf.float32)
    old_logp = log_prob(p0, obs, act, nl)

    def loss_fn(p):
        return -tf.reduce_mean(tf.exp(log_prob(p, obs, act, nl) - old_logp) * a)

    def kl_fn(p):
        m1, ls1 = policy_dist(p, obs, nl)
        return tf.reduce_mean(kl_gauss(m0, ls0, m1, ls1))

    return p0, obs, act, a, loss_fn, kl_fn


def rand_like(params, seed):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=int(trpo.flatten(params).shape[0]))
    return tf.constant(v / np.linalg.norm(v), tf.float32)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# ----------------------------------------------------------------------------- flatten / CG

def test_flatten_roundtrip():
    p = init_policy(1)
    flat = trpo.flatten(p)
    assert flat.shape == (sum(int(np.prod(v.shape)) for v in p.values()),)
    back = trpo.unflatten(flat, p)
    assert set(back) == set(p)
    for k in p:
        np.testing.assert_array_equal(back[k].numpy(), p[k].numpy())
    # key order is stable whatever the insertion order
    q = {k: p[k] for k in reversed(list(p))}
    np.testing.assert_array_equal(trpo.flatten(q).numpy(), flat.numpy())


def test_conjugate_gradient_matches_solve():
    rng = np.random.default_rng(0)
    n = 12
    m = rng.normal(size=(n, n))
    A = m @ m.T + n * np.eye(n)
    b = rng.normal(size=n)
    At = tf.constant(A)
    x = trpo.conjugate_gradient(lambda v: tf.linalg.matvec(At, v), tf.constant(b), iters=50,
                                residual_tol=1e-24)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    # inside tf.function, float32, official 10 iterations on a well-conditioned system
    A32 = tf.constant(A, tf.float32)
    f = tf.function(lambda b_: trpo.conjugate_gradient(lambda v: tf.linalg.matvec(A32, v), b_))
    x32 = f(tf.constant(b, tf.float32))
    assert rel_err(x32.numpy(), np.linalg.solve(A, b)) < 1e-4


def test_conjugate_gradient_zero_rhs():
    x = trpo.conjugate_gradient(lambda v: 2.0 * v, tf.zeros([5]))
    np.testing.assert_array_equal(x.numpy(), np.zeros(5))


# ----------------------------------------------------------------------------- Hessian-vector products

@pytest.mark.parametrize("nl, tol", [(tf.nn.relu, 3e-2), (tf.tanh, 5e-3)])
def test_fd_hvp_matches_exact_on_policy_kl(nl, tol):
    """Official eps = 1 / (||theta|| + 1e-8), central difference, float32, unit vectors. The error is
    truncation, not round-off (float64 gives the same): ~2% with ReLU (kinks), ~0.1% with tanh."""
    p0, _, _, _, _, kl_fn = make_problem(nl=nl)
    grad_fn = trpo.grad_fn_of(kl_fn)
    for seed in range(3):
        v = rand_like(p0, seed)
        exact = trpo.exact_hvp(kl_fn, p0, v)
        fd = trpo.finite_difference_hvp(grad_fn, p0, v)
        assert rel_err(fd, exact) < tol, rel_err(fd, exact)
    # a smaller eps is more accurate on this small network
    fd_small = trpo.finite_difference_hvp(grad_fn, p0, v, base_eps=1e-2)
    assert rel_err(fd_small, exact) < 2e-3
    # one-sided difference is less accurate than the symmetric one but still close
    fd_one = trpo.finite_difference_hvp(grad_fn, p0, v, symmetric=False)
    assert rel_err(fd_one, exact) < 0.2
    # dict form and damping
    vd = trpo.unflatten(v, p0)
    hd = trpo.finite_difference_hvp(grad_fn, p0, vd, damping=0.1)
    assert isinstance(hd, dict) and set(hd) == set(p0)
    np.testing.assert_allclose(trpo.flatten(hd).numpy(),
                               (trpo.finite_difference_hvp(grad_fn, p0, v) + 0.1 * v).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nl, tol", [(tf.tanh, 1e-2), (tf.nn.relu, 0.15)])
def test_fd_hvp_through_inner_step(nl, tol):
    """The MAML use: the KL of the *post-update* policy, a function of the pre-update parameters
    through one inner policy-gradient step; FD of its gradient vs third-order double backprop.
    With ReLU the inner gradient (hence the post-update policy) jumps where a pre-activation changes
    sign, which FD sees and autodiff does not: the agreement is only ~5-8% there."""
    p0, obs, act, a, _, _ = make_problem(seed=3, n=128, nl=nl)
    alpha = 0.1

    def adapt(p):
        with tf.GradientTape() as tape:
            tape.watch(list(p.values()))
            inner = -tf.reduce_mean(log_prob(p, obs, act, nl) * a)
        g = tape.gradient(inner, p)
        return {k: p[k] - alpha * g[k] for k in p}

    post0 = adapt(p0)
    m0, ls0 = policy_dist(post0, obs, nl)
    m0, ls0 = tf.stop_gradient(m0), tf.stop_gradient(ls0)

    def post_kl(p):
        m1, ls1 = policy_dist(adapt(p), obs, nl)
        return tf.reduce_mean(kl_gauss(m0, ls0, m1, ls1))

    assert float(post_kl(p0)) == 0.0
    v = rand_like(p0, 7)
    exact = trpo.exact_hvp(post_kl, p0, v)
    fd = trpo.finite_difference_hvp(trpo.grad_fn_of(post_kl), p0, v)
    assert rel_err(fd, exact) < tol, rel_err(fd, exact)


def test_direction_fn_compiled_matches_eager():
    p0, _, _, _, loss_fn, kl_fn = make_problem()
    _, g = trpo.value_and_grad(loss_fn, p0)
    g = trpo.flatten(g)
    eager = trpo.make_direction_fn(kl_fn)
    comp = trpo.make_direction_fn(kl_fn, compile=True)
    s1, shs1 = eager(p0, g)
    s2, shs2 = comp(p0, g)
    assert rel_err(s2, s1) < 1e-4
    assert abs(float(shs1) - float(shs2)) <= 1e-4 * abs(float(shs1))
    # 10 CG iterations do not solve this ill-conditioned system exactly, but s is a descent
    # direction that lowers the quadratic model q(x) = x.Ax / 2 - g.x below q(0) = 0,
    # and more iterations bring the residual down
    hs = trpo.exact_hvp(kl_fn, p0, s1, damping=trpo.DAMPING)
    assert float(tf.tensordot(s1, g, 1)) > 0
    assert 0.5 * float(tf.tensordot(s1, hs, 1)) - float(tf.tensordot(s1, g, 1)) < 0
    s_long, _ = trpo.make_direction_fn(kl_fn, hvp="exact", cg_iters=60)(p0, g)
    hs_long = trpo.exact_hvp(kl_fn, p0, s_long, damping=trpo.DAMPING)
    assert rel_err(hs_long, g) < rel_err(hs, g)


# ----------------------------------------------------------------------------- TRPO step

def test_trpo_step_decreases_loss_within_kl():
    p0, _, _, _, loss_fn, kl_fn = make_problem()
    vars_ = {k: tf.Variable(v) for k, v in p0.items()}
    new, info = trpo.trpo_step(vars_, loss_fn, kl_fn, max_kl=0.01)
    assert info["accepted"]
    assert info["loss_after"] < info["loss_before"]
    assert info["kl_after"] <= 0.01
    assert float(loss_fn(new)) == pytest.approx(info["loss_after"], rel=1e-5, abs=1e-7)
    assert float(kl_fn(new)) == pytest.approx(info["kl_after"], rel=1e-5, abs=1e-7)
    # the quadratic model is good here: the full step is taken and uses most of the trust region
    assert info["n_backtracks"] <= 3
    assert info["kl_after"] > 0.002
    # the input variables are untouched
    for k in p0:
        np.testing.assert_array_equal(vars_[k].numpy(), p0[k].numpy())


def test_trpo_step_compiled_pieces():
    p0, _, _, _, loss_fn, kl_fn = make_problem(seed=1)
    direction = trpo.make_direction_fn(kl_fn, compile=True)
    loss_kl = tf.function(lambda p: (loss_fn(p), kl_fn(p)))
    loss_grad = tf.function(lambda p: trpo.value_and_grad(loss_fn, p))
    new, info = trpo.trpo_step(p0, loss_fn, kl_fn, loss_grad_fn=loss_grad, loss_kl_fn=loss_kl,
                               direction_fn=direction)
    ref, info_ref = trpo.trpo_step(p0, loss_fn, kl_fn)
    assert info["accepted"] and info_ref["accepted"]
    assert info["n_backtracks"] == info_ref["n_backtracks"]
    assert rel_err(trpo.flatten(new), trpo.flatten(ref)) < 1e-4


def _assert_rejected(new, info, p0):
    assert not info["accepted"]
    assert info["n_backtracks"] == trpo.MAX_BACKTRACKS - 1
    assert info["loss_after"] == info["loss_before"]
    for k in p0:
        np.testing.assert_array_equal(new[k].numpy(), p0[k].numpy())


def test_trpo_step_rejects_when_loss_does_not_fall():
    p0, _, _, _, loss_fn, kl_fn = make_problem()
    theta0 = trpo.flatten(p0)

    def sharp_loss(p):  # same gradient at p0, but any step of the searched sizes increases it
        d = trpo.flatten(p) - theta0
        return loss_fn(p) + 1e6 * tf.reduce_sum(d ** 2)

    new, info = trpo.trpo_step(p0, sharp_loss, kl_fn)
    _assert_rejected(new, info, p0)
    assert info["last_loss"] >= info["loss_before"]


def test_trpo_step_rejects_when_kl_is_broken():
    p0, _, _, _, loss_fn, kl_fn = make_problem()
    true_kl_grad = trpo.grad_fn_of(kl_fn)
    # the line search sees a KL 1e4 times larger than the one the step was scaled with
    new, info = trpo.trpo_step(p0, loss_fn, lambda p: 1e4 * kl_fn(p), grad_fn=true_kl_grad)
    _assert_rejected(new, info, p0)
    assert info["last_kl"] > 0.01 and info["last_loss"] < info["loss_before"]


def test_trpo_step_rejects_nan():
    p0, _, _, _, loss_fn, kl_fn = make_problem()
    theta0 = trpo.flatten(p0)

    def nan_loss(p):
        moved = tf.reduce_any(tf.not_equal(trpo.flatten(p), theta0))
        return tf.where(moved, tf.constant(np.nan, tf.float32), loss_fn(p))

    new, info = trpo.trpo_step(p0, nan_loss, kl_fn)
    _assert_rejected(new, info, p0)
    assert np.isnan(info["last_loss"])


# ----------------------------------------------------------------------------- returns, GAE

def ref_path_gae(r, b, gamma, lam):
    """Per-path reference: the value after the path's end is 0."""
    b1 = np.append(b, 0.0)
    deltas = r + gamma * b1[1:] - b1[:-1]
    out = np.zeros_like(r)
    acc = 0.0
    for t in reversed(range(len(r))):
        acc = deltas[t] + gamma * lam * acc
        out[t] = acc
    return out


def ref_returns(r, gamma):
    return np.array([sum(gamma ** (k - t) * r[k] for k in range(t, len(r))) for t in range(len(r))])


def test_discounted_cumsum():
    x = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    np.testing.assert_allclose(adv.discounted_cumsum(x, 0.9),
                               np.stack([ref_returns(x[0], 0.9), ref_returns(x[1], 0.9)]))


def test_gae_lambda1_is_returns_minus_baseline_with_early_termination():
    rng = np.random.default_rng(0)
    tasks, n, T, gamma = 2, 4, 7, 0.99
    lengths = np.array([[7, 3, 1, 5], [2, 7, 7, 4]])
    rewards = rng.normal(size=(tasks, n, T))
    values = rng.normal(size=(tasks, n, T))
    mask = adv.mask_from_lengths(lengths, T)
    # garbage beyond the ends must not leak in
    rewards_g = np.where(mask > 0, rewards, 1e3)
    values_g = np.where(mask > 0, values, -1e3)

    a1 = adv.gae(rewards_g, values_g, lengths=lengths, gamma=gamma, lam=1.0)
    ret = adv.discounted_returns(rewards_g, lengths=lengths, gamma=gamma)
    np.testing.assert_allclose(a1, (ret - values) * mask, atol=1e-10)
    a_half = adv.gae(rewards_g, values_g, mask=mask, gamma=gamma, lam=0.5)
    for i in range(tasks):
        for j in range(n):
            L = lengths[i, j]
            np.testing.assert_allclose(ret[i, j, :L], ref_returns(rewards[i, j, :L], gamma))
            np.testing.assert_allclose(a1[i, j, :L], ref_path_gae(rewards[i, j, :L], values[i, j, :L],
                                                                  gamma, 1.0))
            np.testing.assert_allclose(a_half[i, j, :L],
                                       ref_path_gae(rewards[i, j, :L], values[i, j, :L], gamma, 0.5))
            assert np.all(a1[i, j, L:] == 0) and np.all(ret[i, j, L:] == 0)


def test_center_and_shift_advantages_per_task():
    rng = np.random.default_rng(1)
    lengths = np.array([[5, 2, 4], [1, 5, 5]])
    a = rng.normal(3.0, 2.0, size=(2, 3, 5))
    mask = adv.mask_from_lengths(lengths, 5)
    c = adv.center_advantages(a, lengths=lengths)
    for i in range(2):
        valid = a[i][mask[i] > 0]
        np.testing.assert_allclose(c[i][mask[i] > 0], (valid - valid.mean()) / (valid.std() + 1e-8))
        assert np.all(c[i][mask[i] == 0] == 0)
    s = adv.shift_advantages_to_positive(c, mask=mask)
    for i in range(2):
        assert s[i][mask[i] > 0].min() == pytest.approx(1e-8, abs=1e-12)


# ----------------------------------------------------------------------------- linear baseline

def test_linear_baseline_features_match_rllab_layout():
    obs = np.array([[[-20.0, 1.0], [2.0, 30.0], [0.5, -0.5]]])  # [n_traj=1, T=3, 2]
    f = adv.linear_baseline_features(obs)
    assert f.shape == (1, 3, 2 * 2 + 4)
    t = np.arange(3) / 100.0
    o = np.clip(obs[0], -10, 10)
    expect = np.concatenate([o, o ** 2, t[:, None], t[:, None] ** 2, t[:, None] ** 3,
                             np.ones((3, 1))], axis=1)
    np.testing.assert_allclose(f[0], expect)


def test_linear_baseline_recovers_function_in_feature_span():
    rng = np.random.default_rng(0)
    tasks, n, T, d = 3, 10, 50, 4
    nf = 2 * d + 4
    w_true = rng.normal(size=(tasks, nf))

    def sample(seed):
        r = np.random.default_rng(seed)
        obs = r.uniform(-3, 3, size=(tasks, n, T, d))
        lengths = r.integers(5, T + 1, size=(tasks, n))
        vals = np.einsum("kntf,kf->knt", adv.linear_baseline_features(obs), w_true)
        return obs, lengths, vals

    obs, lengths, vals = sample(1)
    mask = adv.mask_from_lengths(lengths, T)
    vals_g = np.where(mask > 0, vals, 1e6)  # padding must be ignored by the fit
    bl = adv.LinearFeatureBaseline().fit(obs, vals_g, lengths=lengths)
    assert bl.coeffs.shape == (tasks, nf)
    # the cubic time features are nearly collinear, so their coefficients carry a little ridge bias
    np.testing.assert_allclose(bl.coeffs, w_true, rtol=0, atol=5e-2)
    np.testing.assert_allclose(bl.coeffs[..., :2 * d], w_true[..., :2 * d], rtol=0, atol=1e-4)
    obs2, lengths2, vals2 = sample(2)  # held out
    pred = bl.predict(obs2, lengths=lengths2)
    m2 = adv.mask_from_lengths(lengths2, T)
    assert np.max(np.abs(pred - vals2 * m2)) < 1e-3 * np.max(np.abs(vals2))
    # fit_predict (one task at a time) is fit, then predict, on the same paths; any leading axes
    for pick in (np.s_[:], np.s_[0], np.s_[None]):
        o, r, ln = obs[pick], vals_g[pick], lengths[pick]
        one = adv.LinearFeatureBaseline()
        np.testing.assert_allclose(one.fit_predict(o, r, lengths=ln),
                                   adv.LinearFeatureBaseline().fit(o, r, lengths=ln).predict(o, lengths=ln),
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(one.coeffs, bl.coeffs[pick], rtol=1e-9, atol=1e-9)

    # same as rllab's fit on the concatenated valid rows of one task
    feats = np.concatenate([adv.linear_baseline_features(obs[0, j:j + 1, :lengths[0, j]])[0]
                            for j in range(n)])
    y = np.concatenate([vals[0, j, :lengths[0, j]] for j in range(n)])
    ref = np.linalg.lstsq(feats.T @ feats + 1e-5 * np.eye(nf), feats.T @ y, rcond=None)[0]
    np.testing.assert_allclose(bl.coeffs[0], ref, rtol=1e-6, atol=1e-8)


def test_process_paths_end_to_end():
    rng = np.random.default_rng(3)
    tasks, n, T, d = 2, 5, 20, 2
    obs = rng.normal(size=(tasks, n, T, d))
    rewards = rng.normal(size=(tasks, n, T))
    lengths = rng.integers(3, T + 1, size=(tasks, n))
    out = adv.process_paths(obs, rewards, lengths=lengths)
    m = out["mask"]
    for i in range(tasks):
        valid = out["advantages"][i][m[i] > 0]
        assert abs(valid.mean()) < 1e-8 and abs(valid.std() - 1) < 1e-6
    raw = adv.process_paths(obs, rewards, lengths=lengths, center_adv=False)
    np.testing.assert_allclose(raw["advantages"], (raw["returns"] - raw["baselines"]) * m,
                               atol=1e-10)
