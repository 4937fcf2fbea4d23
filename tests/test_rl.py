"""Policy-gradient MAML: the Gaussian policy, log-likelihood and KL, the sampler, the inner step, the
MAML-TRPO step, the RL config and training loop, and a short point-navigation meta-training run."""
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from maml_tf import config, maml, nets, rl, train

POINT = "maml/Point2D-v0"


def _policy(obs_dim=2, act_dim=2, hidden=(16, 16)):
    return nets.gaussian_mlp(obs_dim, act_dim, hidden=list(hidden))


def _rl_config(tmp_overrides=None, **train):
    raw = {"experiment": "rl/test", "method": "maml", "seed": 3, "env": POINT,
           "model": {"kind": "gaussian_mlp", "hidden": [32, 32]},
           "train": {"iterations": 4, "meta_batch": 4, "trajectories": 5, "horizon": 30,
                     "inner_lr": 0.1, "checkpoint_every": 2, **train},
           "eval": {"tasks": 4, "steps": 2, "lr_grid": [0.05, 0.1], "tune_tasks": 3}}
    raw.update(tmp_overrides or {})
    return config.from_dict(raw)


# ----------------------------------------------------------------------------- policy and distributions

def test_gaussian_policy_init_and_shapes():
    m = nets.gaussian_mlp(5, 3)
    p = m.init(0)
    assert p["w1"].shape == (5, 100) and p["w2"].shape == (100, 100) and p["w3"].shape == (100, 3)
    assert m.frozen == frozenset()
    np.testing.assert_array_equal(p["log_std"].numpy(), np.zeros(3))       # log(1.0)
    for b in ("b1", "b2", "b3"):
        np.testing.assert_array_equal(p[b].numpy(), 0.0)
    limit = math.sqrt(6 / (100 + 100))                                        # Glorot uniform
    assert np.abs(p["w2"].numpy()).max() <= limit and np.abs(p["w2"].numpy()).max() > 0.9 * limit
    x = tf.random.normal([4, 7, 5])
    out = m.apply(p, x)
    assert out.shape == (4, 7, 6)
    np.testing.assert_array_equal(out[..., 3:].numpy(), 0.0)
    fast = maml.per_task(m, p, 4)                                              # per-task copies
    np.testing.assert_allclose(m.apply(fast, x).numpy(), out.numpy(), atol=1e-5)
    assert set(nets.BUILDERS) >= {"mlp", "conv4", "gaussian_mlp"}


def test_gaussian_log_prob_and_kl_match_closed_forms():
    rng = np.random.default_rng(0)
    m0, m1, x = (rng.normal(size=(3, 4, 2)) for _ in range(3))
    ls0, ls1 = rng.normal(0, 0.5, (3, 4, 2)), rng.normal(0, 0.5, (3, 4, 2))
    ref_logp = np.sum(-0.5 * ((x - m0) / np.exp(ls0)) ** 2 - ls0 - 0.5 * np.log(2 * np.pi), -1)
    np.testing.assert_allclose(rl.gaussian_log_prob(m0, ls0, x).numpy(), ref_logp, rtol=1e-10)
    s0, s1 = np.exp(ls0), np.exp(ls1)
    ref_kl = np.sum(np.log(s1 / s0) + (s0 ** 2 + (m0 - m1) ** 2) / (2 * s1 ** 2) - 0.5, -1)
    np.testing.assert_allclose(rl.gaussian_kl(m0, ls0, m1, ls1).numpy(), ref_kl, rtol=1e-10)
    np.testing.assert_allclose(rl.gaussian_kl(m0, ls0, m0, ls0).numpy(), 0.0, atol=1e-12)
    # the KL is the expectation of log p0 - log p1 under p0 (Monte Carlo, one entry)
    z = m0[0, 0] + s0[0, 0] * rng.normal(size=(200000, 2))
    mc = np.mean(rl.gaussian_log_prob(m0[0, 0], ls0[0, 0], z).numpy()
                 - rl.gaussian_log_prob(m1[0, 0], ls1[0, 0], z).numpy())
    assert abs(mc - ref_kl[0, 0]) < 0.02 * max(1.0, ref_kl[0, 0])


def test_vpg_loss_averages_over_valid_steps_only():
    out = tf.zeros([2, 4, 2])                     # mean 0, log-std 0, 1-D actions
    actions = tf.zeros([2, 4, 1])
    adv = tf.constant([[1.0, 2.0, 3.0, 100.0], [1.0, 1.0, 1.0, 1.0]])
    mask = tf.constant([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    logp0 = -0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(rl.vpg_loss(out, (actions, adv, mask)).numpy(), [-2 * logp0, -logp0], rtol=1e-6)


# ----------------------------------------------------------------------------- the sampler

@pytest.fixture(scope="module")
def point_sampler():
    return rl.Sampler(_policy(), POINT, n_tasks=3, n_traj=4, horizon=30)


def test_sampler_shapes_masks_and_seeding(point_sampler):
    m = point_sampler.model
    params = m.init(0)
    tasks = rl.task_sampler(POINT)(3, 0)
    tasks[1] = {"goal": np.array([0.005, -0.004])}  # within the tolerance of the start
    a = point_sampler.sample(params, tasks, seed=5)
    # with zero biases the initial mean at the origin is 0; a tiny std keeps task 1 at the goal, so
    # its trajectories end after one step and the rest is padding
    still = maml.per_task(m, params, 3)
    still["log_std"] = tf.constant([[0.0, 0.0], [-20.0, -20.0], [0.0, 0.0]])
    short = point_sampler.sample(still, tasks, seed=5).raw
    np.testing.assert_array_equal(short.lengths[1], 1)
    assert np.all(short.lengths[[0, 2]] > 1)
    np.testing.assert_array_equal(short.mask[1, :, 1:], 0)
    np.testing.assert_array_equal(short.rewards[1, :, 1:], 0)
    raw = a.raw
    assert raw.obs.shape == (3, 4, 30, 2) and raw.actions.shape == (3, 4, 30, 2)
    assert raw.rewards.shape == raw.mask.shape == (3, 4, 30) and raw.lengths.shape == (3, 4)
    assert a.obs.shape == (3, 120, 2) and a.adv.shape == a.mask.shape == (3, 120)
    np.testing.assert_array_equal(raw.mask, (np.arange(30) < raw.lengths[..., None]))
    assert np.all(raw.rewards[raw.mask == 0] == 0) and np.all(a.adv.numpy()[a.mask.numpy() == 0] == 0)
    np.testing.assert_allclose(a.returns, raw.rewards.sum(-1).mean(-1))
    # point rewards: -distance to each task's own goal, after the move, from the origin
    goals = np.array([t["goal"] for t in tasks])
    pos = raw.obs[:, :, 1]                      # position after the first step
    first_r = raw.rewards[:, :, 0]
    ok = raw.lengths > 1
    np.testing.assert_allclose(first_r[ok], -np.linalg.norm(pos - goals[:, None], axis=-1)[ok], rtol=1e-5)
    np.testing.assert_array_equal(raw.obs[:, :, 0], 0.0)
    b = point_sampler.sample(params, tasks, seed=5)
    for k in ("obs", "actions", "rewards", "mask"):
        np.testing.assert_array_equal(getattr(raw, k), getattr(b.raw, k))
    c = point_sampler.sample(params, tasks, seed=6)
    assert not np.array_equal(raw.actions, c.raw.actions)
    # per-task parameters: task i's policy acts on task i's sub-environments only
    fast = maml.per_task(m, params, 3)
    fast["b3"] = tf.constant([[0.0, 0.0], [50.0, 50.0], [0.0, 0.0]])  # task 1 always moves +x +y
    d = point_sampler.sample(fast, tasks, seed=5).raw
    assert np.all(d.actions[1][d.mask[1] > 0] > 10)
    # task 0 acts as with the shared parameters (to float32 rounding: per-task parameters run the
    # policy as a batched matmul, whose kernel may round differently, e.g. oneDNN on AMD)
    np.testing.assert_allclose(d.actions[0], raw.actions[0], rtol=1e-5, atol=1e-5)


def test_sampler_on_half_cheetah_is_seeded():
    s = rl.Sampler(_policy(17 + 0, 6), "maml/HalfCheetahVel-v0", n_tasks=2, n_traj=2, horizon=5)
    tasks = rl.task_sampler("maml/HalfCheetahVel-v0")(2, 0)
    params = s.model.init(0)
    a, b = s.sample(params, tasks, 3), s.sample(params, tasks, 3)
    assert a.raw.obs.shape == (2, 2, 5, 17)
    np.testing.assert_array_equal(a.raw.rewards, b.raw.rewards)
    assert np.all(a.raw.mask == 1)
    s.close()


# ----------------------------------------------------------------------------- the inner step

def test_inner_step_is_a_policy_gradient_step(point_sampler):
    m = point_sampler.model
    params = m.init(1)
    tasks = rl.task_sampler(POINT)(3, 1)
    batch = point_sampler.sample(params, tasks, seed=2)
    alpha = 0.3
    fast = maml.adapt(m, params, batch.obs, rl.inner_targets(batch), rl.vpg_loss, 1, alpha)
    for i in range(3):
        x = batch.obs[i:i + 1]
        with tf.GradientTape() as tape:
            tape.watch(list(params.values()))
            mean, log_std = rl.split_dist(m.apply(params, x))
            logp = rl.gaussian_log_prob(mean, log_std, batch.actions[i:i + 1])[0]
            mask = batch.mask[i]
            loss = -tf.reduce_sum(logp * batch.adv[i] * mask) / tf.reduce_sum(mask)
        grads = tape.gradient(loss, params)
        for k in params:
            np.testing.assert_allclose(fast[k][i].numpy(), (params[k] - alpha * grads[k]).numpy(),
                                       rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- MAML-TRPO

def test_maml_trpo_step_keeps_the_kl_bound(point_sampler):
    m = point_sampler.model
    learner = rl.PolicyLearner(m, seed=0, inner_lr=0.1, inner_steps=1, max_kl=0.01)
    tasks = rl.task_sampler(POINT)(3, 4)
    batches = {}

    def sample(p, phase):
        batches[phase] = point_sampler.sample(p, tasks, seed=10 + phase)
        batches[f"params{phase}"] = p
        return batches[phase]

    theta = learner.param_values()
    info = learner.iteration(sample)
    assert info["accepted"] and info["loss_after"] < info["loss_before"]
    assert 0 < info["kl_after"] <= 0.01
    # recompute the pooled KL between the sampling post-update policy and the new post-update one
    d0 = rl.loss_inputs(batches[0])
    new_fast = maml.adapt(m, learner.param_values(), batches[0].obs, rl.inner_targets(batches[0]),
                          rl.vpg_loss, 1, 0.1)
    old_out = m.apply(batches["params1"], batches[1].obs)
    new_out = m.apply(new_fast, batches[1].obs)
    kl = rl.gaussian_kl(*rl.split_dist(old_out), *rl.split_dist(new_out))
    mask = batches[1].mask
    pooled = float(tf.reduce_sum(kl * mask) / tf.reduce_sum(mask))
    assert abs(pooled - info["kl_after"]) < 1e-4 and pooled <= 0.01 + 1e-6
    assert any(not np.allclose(theta[k].numpy(), learner.params[k].numpy()) for k in theta)
    assert d0.obs.shape == (3, 120, 2)


def test_meta_gradient_goes_through_the_inner_step(point_sampler):
    """The MAML surrogate's gradient differs between second order and first order (the inner step is
    differentiated), and both equal the plain surrogate gradient when alpha = 0."""
    m = point_sampler.model
    tasks = rl.task_sampler(POINT)(3, 5)
    grads = {}
    for name, lr, fo in (("so", 0.5, False), ("fo", 0.5, True), ("zero", 0.0, False)):
        learner = rl.PolicyLearner(m, seed=0, inner_lr=lr, inner_steps=1, first_order=fo)
        theta = learner.param_values()
        b0 = point_sampler.sample(theta, tasks, 1)
        fast = learner._adapt(theta, rl.loss_inputs(b0))
        b1 = point_sampler.sample(fast, tasks, 2)
        d1 = learner.old_dist(fast, b1)
        loss, g = learner._loss_grad(theta, rl.loss_inputs(b0), d1)
        grads[name] = tf.concat([tf.reshape(g[k], [-1]) for k in sorted(g)], 0).numpy()
        assert abs(float(loss) + float(tf.reduce_mean(rl.masked_task_mean(d1.adv, d1.mask)))) < 1e-4
    assert np.linalg.norm(grads["so"] - grads["fo"]) > 1e-4 * np.linalg.norm(grads["fo"])


def test_task_chunks_give_the_same_trpo_pieces():
    """`task_chunk` (the loss and KL gradients summed over chunks of tasks, one chunk at a time) computes
    the same loss, KL, gradients, search direction and TRPO step as all tasks at once; a chunk size
    that does not divide the meta-batch becomes the largest divisor below it."""
    assert [maml.chunk_size(40, c) for c in (0, 10, 12, 7, 40, 64, 1)] == [40, 10, 10, 5, 40, 40, 1]
    point_sampler = rl.Sampler(_policy(), POINT, n_tasks=4, n_traj=4, horizon=30)
    m = point_sampler.model
    tasks = rl.task_sampler(POINT)(4, 6)
    out = {}
    for chunk in (0, 1, 2):
        learner = rl.PolicyLearner(m, seed=0, inner_lr=0.5, inner_steps=1, task_chunk=chunk)
        theta = learner.param_values()
        b0 = point_sampler.sample(theta, tasks, 1)
        d0 = rl.loss_inputs(b0)
        fast = learner._adapt(theta, d0)
        d1 = learner.old_dist(fast, point_sampler.sample(fast, tasks, 2))
        loss, g = learner._loss_grad(theta, d0, d1)
        g = rl.learner.trpo._flat_grads(g, theta)
        far = {k: v * 1.1 for k, v in theta.items()}  # where the KL is not zero
        kl, kl_g = learner._kl_grad(far, d0, d1)
        s, shs = learner._direction(theta, g, d0, d1)
        new, info = learner.trpo_step(theta, d0, d1)
        out[chunk] = [loss, g, learner._kl(far, d0, d1), kl, rl.learner.trpo.flatten(kl_g), s, shs,
                      *learner._loss_kl(far, d0, d1), rl.learner.trpo.flatten(new)]
    assert float(out[0][3]) > 1e-5 and info["accepted"]
    for chunk in (1, 2):
        for a, b in zip(out[0], out[chunk]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


# ----------------------------------------------------------------------------- configs, loop, evaluation

def test_rl_config_is_strict():
    cfg = _rl_config()
    assert isinstance(cfg, config.RLConfig) and cfg.train.meta_batch == 4
    for bad, message in (({"train": {"bogus": 1}}, "train.bogus"), ({"env": "nope-v0"}, "env"),
                         ({"method": "magic"}, "method"), ({"eval": {"steps": 1.5}}, "eval.steps"),
                         ({"model": {"kind": "gaussian_mlp", "obs_dim": 3}}, "obs_dim")):
        with pytest.raises(config.ConfigError) as err:
            _rl_config(bad)
        assert message in str(err.value)


def test_resume_records_a_change_of_task_chunk(tmp_path):
    """train.task_chunk (how the same gradients are summed) may change when a run resumes, as the
    runs trained before it existed do, and sessions.jsonl records it; the algorithm may not."""
    import yaml
    from maml_tf import runs
    old = _rl_config().to_dict()
    del old["train"]["task_chunk"]  # a run trained before the key existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert runs.check_resume(tmp_path, _rl_config()) == {"train.task_chunk": [None, 10]}
    with pytest.raises(train.TrainingError, match="train.discount"):
        runs.check_resume(tmp_path, _rl_config(discount=0.9))


def test_rl_training_resumes_exactly_and_keeps_the_best(tmp_path):
    cfg = _rl_config()
    full = train.train(cfg, tmp_path / "a", quiet=True)
    train.train(cfg, tmp_path / "b", quiet=True, stop_after=2)
    resumed = train.train(cfg, tmp_path / "b", quiet=True)
    assert int(resumed.step.numpy()) == 4
    for k in full.params:
        np.testing.assert_allclose(full.params[k].numpy(), resumed.params[k].numpy(), rtol=1e-5, atol=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all("post_return" in x for x in lines)
    best = json.loads((tmp_path / "a" / "best.json").read_text())
    assert best["value"] == max(x["post_return"] for x in lines)
    learner, it = train.restore(cfg, tmp_path / "a", "best")
    assert it == best["step"]
    with pytest.raises(Exception, match="discount"):  # the algorithm cannot change on resume
        train.train(_rl_config(discount=0.9), tmp_path / "a", quiet=True)
    res = rl.evaluate_run(cfg, learner)
    assert len(res["returns"]) == len(res["ci95"]) == 3 and res["alpha"] == 0.1
    rnd = config.from_dict({**cfg.to_dict(), "method": "random"})
    learner = train.train(rnd, tmp_path / "r", quiet=True)
    res = rl.evaluate_run(rnd, learner)
    assert res["alpha"] in (0.05, 0.1) and set(res["alpha_search"]) == {"0.05", "0.1"}


def test_short_point_meta_training_improves_the_post_update_return():
    """A few MAML-TRPO iterations on point navigation (small batch) raise the post-update return well
    above the initial policy's pre-update return."""
    tf.random.set_seed(0)
    m = nets.gaussian_mlp(2, 2, hidden=[100, 100])
    s = rl.Sampler(m, POINT, n_tasks=10, n_traj=10, horizon=60)
    learner = rl.PolicyLearner(m, seed=1, inner_lr=0.1)
    sample_tasks = rl.task_sampler(POINT)
    history = []
    for it in range(6):
        tasks = sample_tasks(10, rl.seed_of(0, it))
        history.append(learner.iteration(lambda p, ph: s.sample(p, tasks, rl.seed_of(0, it, ph))))
    start = history[0]["pre_return"]
    end = np.mean([h["post_return"] for h in history[-2:]])
    assert end > start + 5, [(h["pre_return"], h["post_return"]) for h in history]


def test_rl_paper_check_against_our_intervals():
    """Each paper value is inside our 95% CI or not; outside, the gap is set against sqrt(2) x our
    half-width (two 40-task evaluations) and its sign is said; a step we did not evaluate is '-'."""
    from reproduce import rl as rl_repro
    paper, oracle = rl_repro.PAPER["point"]                  # -40.41 / -11.68 / -3.33 / -3.23, -2.29
    metrics = {"maml": {"returns": [paper[0] + 0.9, paper[1] - 1.2, paper[2] + 5.0], "ci95": [1.0, 1.0, 1.0]},
               "oracle": {"returns": [oracle + 0.5], "ci95": [0.5]}}
    check = rl_repro.paper_check("point", metrics)
    assert [c and c[0] for c in check["maml"]] == [True, False, False, None]
    assert check["oracle"][0][0]                             # on the edge of the interval counts as inside
    runs = {"maml": {"status": "full"}, "oracle": {"status": "partial"}}
    line = rl_repro.paper_check_finding("point", metrics, runs)
    assert "MAML after 0..3 steps yes / no / no / -; oracle yes." in line
    assert "step 1: the paper's 1.20 above ours, within ± 1.41" in line
    assert "step 2: the paper's 5.00 below ours, beyond ± 1.41" in line
    assert "step 0:" not in line and "oracle PARTIAL" in line and "maml and" not in line
    assert rl_repro.paper_check_finding("point", {"random": metrics["maml"]}, runs) == ""


def test_rl_table_and_figures_from_results(tmp_path):
    from reproduce import rl as rl_repro
    run = {"iterations": 3, "paper_iterations": 100, "status": "partial", "wall_time_s": 1.0}
    metrics = {m: {"returns": [-40.0, -20.0, -10.0, -8.0, -7.0], "ci95": [1.0] * 5}
               for m in ("maml", "pretrained", "random", "oracle")}
    summary = {"experiment": "rl/point", "commit": "abc", "written": "now", "metrics": metrics,
               "runs": {m: dict(run) for m in metrics}}
    summary["findings"] = rl_repro.findings("point", metrics, summary["runs"])
    out = tmp_path / "rl"
    out.mkdir()
    (out / "point.json").write_text(json.dumps(summary))
    text = rl_repro.table(out)
    assert "| maml | 3 (100), PARTIAL | -40.00 ± 1.00 |" in text and "-11.68" in text
    assert any("PARTIAL" in f for f in summary["findings"])
    assert "| paper in our 95% CI, MAML | | yes | no | no | no |  |" in text
    assert "| paper in our 95% CI, oracle | | no |  |  |  |  |" in text
    paths = rl_repro.figures(out)
    assert [p.name for p in paths] == ["fig4_point.png"] and paths[0].stat().st_size > 0
    # --report-only rewrites stale findings, and leaves the JSON and table alone once they are current
    summary["findings"] = ["stale"]
    (out / "point.json").write_text(json.dumps(summary))
    assert rl_repro.main(["point", "--report-only", "--results", str(tmp_path)]) == 0
    assert json.loads((out / "point.json").read_text())["findings"] == rl_repro.findings("point", metrics, summary["runs"])
    files = (out / "point.json", out / "table.md", out / "fig4_point.png")
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}   # a rename makes a new inode
    assert rl_repro.main(["point", "--report-only", "--results", str(tmp_path)]) == 0
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == stamps


# ----------------------------------------------------------------------------- the sampler, bit for bit

def _reference_rollout(model, params, env_id, tasks, n_traj, horizon, seed, env_kwargs=None):
    """What `Sampler.rollout` returns, by a plain loop over wrapped `gym.make` envs: sub-env i runs
    trajectory i % n_traj of task i // n_traj and is reset with seed `seed + i`; once per step the
    policy runs on all observations [T, n_traj, d] (float32) and the actions are mean + std * noise
    (float32), the noise drawn for all sub-envs from `default_rng([seed, 7])`; a trajectory ends at
    termination or truncation (the TimeLimit wrapper's included), after which its observation stays
    its last one, its actions are still drawn and its rewards and mask are 0; once all have ended,
    the remaining steps are zeros."""
    import gymnasium as gym

    T, n = len(tasks), n_traj
    N = T * n
    policy = tf.function(lambda p, x: model.apply(p, x))
    envs = [gym.make(env_id, **(env_kwargs or {})) for _ in range(N)]
    obs = []
    for i, env in enumerate(envs):
        env.unwrapped.set_task(tasks[i // n])
        obs.append(env.reset(seed=seed + i)[0])
    rng = np.random.default_rng([seed, 7])
    alive = [True] * N
    o_seq, a_seq, r_seq, m_seq = [], [], [], []
    for _ in range(horizon):
        o = np.array(obs, np.float32)
        out = policy(params, tf.constant(o.reshape(T, n, -1))).numpy()
        mean, log_std = np.split(out, 2, axis=-1)
        act = (mean + np.exp(log_std) * rng.standard_normal(mean.shape)).astype(np.float32).reshape(N, -1)
        rew = np.zeros(N)
        o_seq.append(o), a_seq.append(act), m_seq.append(np.array(alive, np.float64))
        for i in range(N):
            if alive[i]:
                obs[i], rew[i], term, trunc, _ = envs[i].step(act[i])
                alive[i] = not (term or trunc)
        r_seq.append(rew)
        if not any(alive):
            break
    for env in envs:
        env.close()
    pad = horizon - len(o_seq)
    seq = lambda xs: np.concatenate([np.stack(xs, 1), np.zeros((N, pad) + xs[0].shape[1:], xs[0].dtype)], 1)
    mask = seq(m_seq).reshape(T, n, horizon)
    return rl.Rollouts(obs=seq(o_seq).reshape(T, n, horizon, -1), actions=seq(a_seq).reshape(T, n, horizon, -1),
                       rewards=seq(r_seq).reshape(T, n, horizon), mask=mask, lengths=mask.sum(-1).astype(np.int64))


@pytest.mark.parametrize("env_id, n_tasks, n_traj, horizon, per_task, std_shift, ends, env_kwargs", [
    ("maml/HalfCheetahVel-v0", 3, 2, 30, True, 0.0, "horizon", None),
    ("maml/HalfCheetahVel-v0", 2, 2, 203, False, 0.0, "time limit", None),  # the registered 200 steps
    ("maml/HalfCheetahDir-v0", 2, 2, 40, True, 2.0, "horizon", None),       # wild actions: clipped
    ("maml/HalfCheetahVel-v0", 2, 2, 25, True, 0.0, "horizon",              # every other setting
     {"oracle": True, "obs_mode": "rllab", "velocity_mode": "finite_difference", "frame_skip": 5}),
    ("maml/AntVel-v0", 2, 3, 120, True, 2.0, "terminations", None),         # wild actions: the ant falls
    ("maml/AntDir-v0", 2, 3, 120, True, 2.0, "terminations",
     {"oracle": True, "obs_mode": "rllab", "velocity_mode": "finite_difference"}),
])
def test_sampler_rollout_is_bit_identical_to_a_plain_loop(env_id, n_tasks, n_traj, horizon, per_task,
                                                          std_shift, ends, env_kwargs):
    """The sampler (unwrapped sub-envs, its own time limit, in-place buffers; the locomotion
    sub-envs stepped all at once by `step_many`) returns exactly the observations, actions,
    rewards, masks and lengths of a plain loop over wrapped envs. The locomotion bodies' `step` is
    their `step_many` of one env (one implementation, whose formulas tests/test_envs.py checks), so
    for them this checks that stepping n envs at once is stepping each alone."""
    obs_dim, act_dim = rl.env_dims(env_id, env_kwargs)
    model = _policy(obs_dim, act_dim, hidden=(32, 32))
    params = model.init(4)
    if per_task:  # a different policy for every task
        params = maml.per_task(model, params, n_tasks)
        params = {k: v + 0.1 * tf.random.stateless_normal(tf.shape(v), [7, j])
                  for j, (k, v) in enumerate(sorted(params.items()))}
    params = {**params, "log_std": params["log_std"] + std_shift}
    tasks = rl.task_sampler(env_id)(n_tasks, 5)
    s = rl.Sampler(model, env_id, n_tasks, n_traj, horizon, env_kwargs)
    assert s._many is not None  # the batched path (`step_many`) is the one tested
    seed = 11
    got = s.rollout(params, tasks, seed)
    ref = _reference_rollout(model, params, env_id, tasks, n_traj, horizon, seed, env_kwargs)
    s.close()
    for k in rl.Rollouts._fields:
        a, b = getattr(got, k), getattr(ref, k)
        assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype, a.shape, b.shape)
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert s.env_steps == ref.mask.sum()
    if ends == "horizon":
        assert np.all(ref.lengths == horizon)
    elif ends == "time limit":
        assert np.all(ref.lengths == 200)
    else:
        assert ref.lengths.min() < horizon // 2 and ref.lengths.max() > ref.lengths.min()


def test_the_point_optimum_is_the_best_return_any_policy_gets():
    """envs.point.optimal_returns (the bound the point table's oracle is compared with) against
    the environment itself: the straight policy stepped through Point2DEnv gets exactly it, and
    random policies, or a slower straight one, never beat it."""
    import gymnasium as gym
    from maml_tf.envs import point
    rng = np.random.default_rng(3)
    goals = rng.uniform(-0.5, 0.5, size=(6, 2))
    best = point.optimal_returns(goals)
    for goal, b in zip(goals, best):
        env = gym.make("maml/Point2D-v0").unwrapped
        obs, _ = env.reset(seed=0, options={"task": {"goal": goal}})
        total = 0.0
        for _ in range(100):
            obs, r, done, _, _ = env.step(np.clip((goal - obs[:2]) / 0.1, -1, 1) if env.normalized_actions
                                          else np.clip(goal - obs[:2], -0.1, 0.1))
            total += r
            if done:
                break
        assert abs(total - b) < 1e-9, (goal, total, b)
    for scale in (0.5, 0.9):  # slower straight moves
        assert np.all(point.optimal_returns(goals, max_speed=0.1 * scale) < best)
    for _ in range(20):  # random walks with the same speed limit
        pos, total = np.zeros_like(goals), np.zeros(len(goals))
        for _ in range(100):
            pos = pos + rng.uniform(-0.1, 0.1, size=pos.shape)
            total -= np.linalg.norm(pos - goals, axis=1)
        assert np.all(total < best)


def test_a_fine_tuning_step_at_either_edge_of_its_grid_is_flagged():
    """A baseline's fine-tuning step tuned at the smallest or the largest step of its grid may be
    bettered by a wider grid, and the finding says so; one inside the grid is not flagged."""
    from reproduce import rl as rl_repro
    search = {"0.02": -85.2, "0.05": -134.5, "0.1": -187.2}
    said = {}
    for alpha in (0.02, 0.05, 0.1):
        metrics = {"pretrained": {"returns": [-1.0], "ci95": [1.0], "alpha": alpha, "alpha_search": search}}
        said[alpha] = next(f for f in rl_repro.findings("point", metrics, {"pretrained": {"status": "full"}})
                           if f.startswith("pretrained"))
    assert "the smallest step of the grid" in said[0.02] and "the largest step of the grid" in said[0.1]
    assert "of the grid:" not in said[0.05]


def test_the_oracle_gap_finding_separates_what_every_method_loses_from_adaptation():
    """MAML measured from each one's own oracle. For a tracking reward, where our oracle lies below
    the paper's beyond the two-evaluation margin, the rest of MAML's gap to the paper is said step
    by step against its own margin, or none where MAML is no further from its oracle than the
    paper's; an oracle above the paper's, or within the margin, gives no such reading. Direction
    tasks: fractions of the oracle's return. Not for the point; PARTIAL runs are no finding yet."""
    from reproduce import rl as rl_repro
    full = {"maml": {"status": "full"}, "oracle": {"status": "full"}}
    # cheetah_vel, paper -129.5 / -78.6 / -66.6 / -60.8, oracle -54.5
    maml = {"returns": [-150.0, -100.6, -88.6, -72.8], "ci95": [10.0] * 4}
    low = {"maml": maml, "oracle": {"returns": [-74.5] * 4, "ci95": [5.0] * 4}}   # 20 below, beyond 7.07
    line = rl_repro.oracle_gap_finding("cheetah_vel", low, full)
    assert "ours 26.10 / 14.10 / -1.70, the paper's 24.10 / 12.10 / 6.30." in line
    assert "Our oracle lies 20.00 below the paper's (beyond ± 7.07)" in line
    # 22.0 - 20 after steps 1 and 2, within sqrt(2 (25 + 100)) = 15.81; after step 3 MAML is 8.0
    # nearer its oracle than the paper's is
    assert "is 2.00 (within ± 15.81) / 2.00 (within ± 15.81) / none (-8.00: no further" in line
    wide = {"maml": {**maml, "returns": [-150.0, -140.6, -88.6, -72.8]}, "oracle": low["oracle"]}
    assert "42.00 (beyond ± 15.81)" in rl_repro.oracle_gap_finding("cheetah_vel", wide, full)
    for our_oracle in (-60.0, -30.0):   # within the margin (5.5 below), above the paper's
        close = {"maml": maml, "oracle": {"returns": [our_oracle] * 4, "ci95": [5.0] * 4}}
        line = rl_repro.oracle_gap_finding("cheetah_vel", close, full)
        assert "From the oracle" in line and "Our oracle lies" not in line
    assert line in rl_repro.findings("cheetah_vel", close, full)
    # direction (paper 293.2 / 313.5 / 315.7, oracle 442.7): no offset, fractions of the oracle's return
    direction = {"maml": {"returns": [0.0, 150.0, 200.0, 250.0], "ci95": [5.0] * 4},
                 "oracle": {"returns": [250.0] * 4, "ci95": [5.0] * 4}}
    line = rl_repro.oracle_gap_finding("cheetah_dir", direction, full)
    assert "Our oracle lies" not in line and "ours 0.60 / 0.80 / 1.00, the paper's 0.66 / 0.71 / 0.71." in line
    assert "PARTIAL" in rl_repro.oracle_gap_finding("cheetah_vel", low, {**full, "oracle": {"status": "partial"}})
    assert rl_repro.oracle_gap_finding("point", low, full) == ""
    assert rl_repro.oracle_gap_finding("cheetah_vel", {"maml": maml}, full) == ""
    one = {"maml": {"returns": [-150.0], "ci95": [10.0]}, "oracle": low["oracle"]}   # eval.steps 0
    assert rl_repro.oracle_gap_finding("cheetah_vel", one, full) == ""


def test_the_maml_vs_pretrained_verdict_names_the_side_ahead_beyond_both_cis():
    """Full runs: MAML ahead beyond both CIs, the pretrained policy ahead (the opposite of the
    paper's figure), or neither; partial runs get no verdict."""
    from reproduce import rl as rl_repro
    run = {"status": "full", "iterations": 500, "paper_iterations": 500}
    full = {"maml": run, "pretrained": run}

    def verdict(maml, pretrained, runs=full):
        metrics = {"maml": {"returns": maml, "ci95": [1.0] * len(maml)},
                   "pretrained": {"returns": pretrained, "ci95": [1.0] * len(pretrained)}}
        return next(f for f in rl_repro.findings("cheetah_vel", metrics, runs) if f.startswith("MAML vs pretrained"))
    assert "MAML is ahead beyond both CIs at step(s) [1, 2]." in verdict([0, 10, 10, 5], [0, 5, 5, 5])
    said = verdict([0, 5, 5, 6], [0, 10, 10, 5])
    assert "The pretrained policy is ahead beyond both CIs at step(s) [1, 2], MAML at none" in said
    assert "No step where MAML is ahead" in verdict([0, 5, 5, 5], [0, 6, 5, 4])
    assert "too early for a verdict" in verdict([0, 5, 5, 6], [0, 10, 10, 5], {**full, "maml": {**run, "status": "partial"}})


def test_the_locomotion_findings_give_maml_training_curve_by_window_and_the_pilots(tmp_path):
    """MAML's training return after the inner step and the share of TRPO steps accepted, window by
    window over the budget, for its run and each other seed's (the last record of a step that a
    resumed run logged twice counts); the environment's pilots with their last window; neither for
    the point or without a results folder."""
    from reproduce import rl as rl_repro
    cfg = {"experiment": "rl/cheetah_dir", "method": "maml", "train": {"iterations": 10}}
    runs = {"maml": {"config": cfg, "seed": 1, "status": "full", "iterations": 10, "paper_iterations": 10}}

    def log(d, rows):
        d.mkdir(parents=True)
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "checkpoint").write_text("x")
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    own = [{"step": k, "post_return": float(k), "accepted": k != 2} for k in range(1, 11)]
    own.insert(2, {"step": 3, "post_return": 100.0, "accepted": False})   # logged, then again after a resume: 3.0 counts
    log(tmp_path / "rl" / "cheetah_dir" / "maml", own)
    log(tmp_path / "rl" / "cheetah_dir" / "maml_seed2", [{"step": k, "post_return": 10.0 * k} for k in (1, 2, 3)])
    line = rl_repro.training_finding("cheetah_dir", runs, tmp_path)
    # windows of 10 // 5 = 2 iterations: (1 + 2) / 2 with one of two accepted, ...
    assert "seed 1 (10 iterations) 1-2: 1.5 (50%), 3-4: 3.5 (100%), 5-6: 5.5 (100%), 7-8: 7.5 (100%), " \
           "9-10: 9.5 (100%); seed 2 (3 iterations) 1-2: 15.0 (100%), 3-3: 30.0 (100%)." in line
    assert rl_repro.training_finding("point", runs, tmp_path) == ""
    assert rl_repro.training_finding("cheetah_dir", runs, None) == ""
    pilots = {"pilots": [{"config": "rl/cheetah_dir/maml", "done": 6, "budget": 6, "windows": [
        {"iterations": [1, 3], "difference": 9.0, "margin": 1.0}, {"iterations": [4, 6], "difference": -0.5, "margin": 2.0}]},
        {"config": "rl/cheetah_vel/maml", "done": 6, "budget": 6, "windows": [
            {"iterations": [1, 6], "difference": 5.0, "margin": 1.0}]}]}
    (tmp_path / "rl" / "obs_pilot.json").write_text(json.dumps(pilots))
    line = rl_repro.pilot_finding("cheetah_dir", tmp_path)
    assert "maml with rllab's observation" in line and "6 of 6 iterations: within the margin: no difference " \
        "shown in the last window (-0.5, ± 2.0, iterations 4-6)" in line and "+5.0" not in line
    assert "ahead beyond the margin" in rl_repro.pilot_finding("cheetah_vel", tmp_path)
    assert rl_repro.pilot_finding("ant_dir", tmp_path) == ""
    said = rl_repro.findings("cheetah_dir", {}, runs, tmp_path)
    assert any(f.startswith("MAML's training return") for f in said) and any(f.startswith("Pilots") for f in said)
