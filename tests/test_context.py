"""Context-vector adaptation (Appendix C): only z is adapted, the meta-gradient reaches everything."""
import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from maml_tf import context, maml, nets, rl
from maml_tf.tasks import TaskBatch

ROOT = Path(__file__).resolve().parent.parent

TB = TaskBatch.of


def _mlp_context():
    return context.context({"kind": "mlp", "sizes": [1, 16, 16, 1]}, z_dim=3)


def test_the_inner_step_changes_z_only_and_the_meta_gradient_reaches_every_parameter():
    model = _mlp_context()
    params = model.init(0)
    params["z"] = tf.constant([0.1, -0.2, 0.3])  # not zero, so that every path carries gradient
    assert model.frozen == frozenset(params) - {"z"}
    rng = np.random.default_rng(0)
    batch = {k: tf.constant(rng.normal(size=(4, 5, 1)), tf.float32) for k in ("xs", "ys", "xq", "yq")}
    fast = maml.adapt(model, params, batch["xs"], batch["ys"], maml.mse, steps=2, alpha=0.1)
    assert fast["z"].shape == (4, 3)  # one z per task
    assert not np.allclose(fast["z"].numpy(), params["z"].numpy()[None])
    for k in params:
        if k != "z":
            assert fast[k] is params[k]  # shared and untouched by the inner loop
    _, grads = maml.meta_gradient(model, params, TB(batch), maml.mse, 2, 0.1)
    for k, g in grads["params"].items():
        assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0, k


def test_context_is_concatenated_channel_wise_over_every_pixel():
    x = tf.zeros([2, 3, 4, 4, 1])
    z = tf.constant([[1.0, 2.0], [3.0, 4.0]])  # per task
    out = context.concat_context(x, z).numpy()
    assert out.shape == (2, 3, 4, 4, 3)
    np.testing.assert_array_equal(out[0, :, :, :, 1:], np.broadcast_to([1.0, 2.0], (3, 4, 4, 2)))
    np.testing.assert_array_equal(out[1, :, :, :, 1:], np.broadcast_to([3.0, 4.0], (3, 4, 4, 2)))
    shared = context.concat_context(tf.zeros([2, 5, 6]), tf.constant([7.0]))
    assert shared.shape == (2, 5, 7) and float(tf.reduce_min(shared[..., -1])) == 7.0
    conv = context.context({"kind": "conv4", "n_out": 5, "channels": 1, "filters": 8, "image_size": 28,
                            "max_pool": False}, z_dim=2)
    p = conv.init(0)
    assert p["conv1"].shape[-2] == 3  # 1 image channel + 2 context channels
    assert conv.apply(p, tf.zeros([2, 5, 28, 28, 1])).shape == (2, 5, 5)


@pytest.mark.parametrize("base", [
    {"kind": "conv4", "n_out": 3, "channels": 2, "filters": 5, "image_size": 12, "max_pool": False},
    {"kind": "conv4", "n_out": 3, "channels": 3, "filters": 4, "image_size": 16, "max_pool": True},
    # the per-task network (TF's own kernels, no XLA: the Omniglot context configs) against the
    # batched widened reference
    {"kind": "conv4", "n_out": 3, "channels": 2, "filters": 5, "image_size": 12, "max_pool": False, "impl": "per_task"},
    {"kind": "mlp", "sizes": [2, 8, 8, 1]},
    {"kind": "gaussian_mlp", "hidden": [8, 8]}])
def test_the_folded_context_is_the_network_on_the_concatenated_input_in_float64(base):
    """The context model computes z's part of the first layer without building the concatenation
    (a bias for an MLP, one channel of ones for the conv net); outputs with shared and per-task z
    and weights, and the second-order meta-gradient, are those of the widened network applied to
    [x, z]."""
    z_dim, tasks = 4, 3
    model = context.context(base, z_dim, obs_dim=3, act_dim=2)
    spec, natural = context._widened({**base, "obs_dim": 3, "act_dim": 2} if base["kind"] == "gaussian_mlp"
                                     else base, z_dim)
    wide = nets.build({k: v for k, v in spec.items() if k != "impl"})  # the batched form
    reference = lambda p, x: wide.apply({k: v for k, v in p.items() if k != "z"},
                                        context.concat_context(natural(x), p["z"]))
    rng = np.random.default_rng(1)
    params = {k: tf.constant(v.numpy() + rng.normal(scale=0.1, size=v.shape), tf.float64)
              for k, v in model.init(0).items()}
    size = base.get("image_size")
    shape = (tasks, 6, size, size, base["channels"]) if size else (tasks, 6, base["sizes"][0] if base["kind"] == "mlp" else 3)
    x = tf.constant(rng.normal(size=shape), tf.float64)
    per_task_z = {**params, "z": tf.constant(rng.normal(size=(tasks, z_dim)), tf.float64)}
    first = "conv1" if base["kind"] == "conv4" else "w1"   # the first layer per task too
    per_task_all = {**per_task_z, first: tf.constant(np.stack([params[first].numpy() + rng.normal(
        scale=0.01, size=params[first].shape) for _ in range(tasks)]), tf.float64)}
    for p in (params, per_task_z, per_task_all):
        np.testing.assert_allclose(model.apply(p, x).numpy(), reference(p, x).numpy(), rtol=1e-10, atol=1e-12)
    ys = tf.constant(rng.normal(size=model.apply(params, x).shape), tf.float64)
    batch = TB({"xs": x, "ys": ys, "xq": x * 0.5, "yq": ys})
    ref_model = model._replace(apply=reference)
    _, g = maml.meta_gradient(model, params, batch, maml.mse, 2, 0.1)
    _, g_ref = maml.meta_gradient(ref_model, params, batch, maml.mse, 2, 0.1)
    for k in params:
        np.testing.assert_allclose(g["params"][k].numpy(), g_ref["params"][k].numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_channel_wise_context_is_a_constant_per_channel_inside_the_image_which_batch_norm_subtracts(seed):
    """How z reaches the conv net (results/appendix/context_pilot.md): inside the image its
    contribution to the first convolution is one constant per channel; batch norm with the task's
    statistics takes such a constant out, so less of z is left in the interior than before the
    normalisation, and the pixels whose windows reach into the zero padding carry most of it."""
    r = context.reach_through_batch_norm(z_dim=8, seed=seed)
    assert r["constant_deviation"] < 1e-5 * r["before_norm"], r
    assert r["interior"] < 0.7 * r["before_norm"], r
    assert r["border"] > 3 * r["interior"], r


@pytest.mark.parametrize("impl", ["batched", "per_task"])
def test_the_after_norm_diagnostic_adds_zs_interior_shift_after_the_first_batch_norm(impl):
    """join "after_norm" (not the paper's model, a test of why the Omniglot pilots are low): the
    image through the base network's first convolution and batch norm, then z @ z_proj added per
    channel before the ReLU, the rest as the base network; with shared and per-task z, in float64,
    second-order meta-gradient included; only z adapts. z_proj starts as the input join's z rows
    summed over the 3x3 taps."""
    base = {"kind": "conv4", "n_out": 3, "channels": 1, "filters": 5, "image_size": 12, "max_pool": False,
            "impl": impl}
    z_dim, tasks, c = 4, 3, 1
    model = context.context(base, z_dim, init="base", join="after_norm")
    rng = np.random.default_rng(2)
    start = model.init(0)
    joined = context.context(base, z_dim, init="base").init(0)
    assert set(start) == set(joined) | {"z_proj"}
    np.testing.assert_allclose(start["z_proj"].numpy(), joined["conv1"].numpy()[:, :, c:].sum((0, 1)), rtol=1e-6)
    np.testing.assert_array_equal(start["conv1"].numpy(), joined["conv1"].numpy()[:, :, :c])
    params = {k: tf.constant(v.numpy() + rng.normal(scale=0.1, size=v.shape), tf.float64)
              for k, v in start.items()}
    assert model.frozen == frozenset(params) - {"z"}

    def reference(p, x):
        h = tf.reshape(x, [tasks, -1, 12, 12, c])
        shift = tf.einsum("zf,tz->tf" if p["z"].shape.rank == 2 else "zf,z->f", p["z_proj"], p["z"])
        h = nets.conv3x3(h, p["conv1"], p["b1"], 2)
        h = nets.batch_norm(h, p["bn1"]) + (shift[:, None, None, None] if shift.shape.rank == 2 else shift)
        h = tf.nn.relu(h)
        for i in range(2, 5):
            h = tf.nn.relu(nets.batch_norm(nets.conv3x3(h, p[f"conv{i}"], p[f"b{i}"], 2), p[f"bn{i}"]))
        return nets.dense(tf.reduce_mean(h, axis=[2, 3]), p["w5"], p["b5"])

    x = tf.constant(rng.normal(size=(tasks, 6, 12, 12, c)), tf.float64)
    per_task_z = {**params, "z": tf.constant(rng.normal(size=(tasks, z_dim)), tf.float64)}
    for p in (params, per_task_z):
        np.testing.assert_allclose(model.apply(p, x).numpy(), reference(p, x).numpy(), rtol=1e-10, atol=1e-12)
    ys = tf.constant(rng.normal(size=(tasks, 6, 3)), tf.float64)
    batch = TB({"xs": x, "ys": ys, "xq": x * 0.5, "yq": ys})
    fast = maml.adapt(model, params, x, ys, maml.mse, steps=1, alpha=0.1)
    assert all(fast[k] is params[k] for k in params if k != "z") and fast["z"].shape == (tasks, z_dim)
    _, g = maml.meta_gradient(model, params, batch, maml.mse, 2, 0.1)
    _, g_ref = maml.meta_gradient(model._replace(apply=reference), params, batch, maml.mse, 2, 0.1)
    for k in params:
        np.testing.assert_allclose(g["params"][k].numpy(), g_ref["params"][k].numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=k)
    with pytest.raises(context.ConfigError, match="conv4"):
        context.context({"kind": "mlp", "sizes": [2, 8, 1]}, 3, join="after_norm")
    with pytest.raises(context.ConfigError, match="model.join"):
        context.context(base, 3, join="output")


def test_a_policy_with_a_context_vector_sees_it_at_every_time_step():
    policy = context.context({"kind": "gaussian_mlp", "hidden": [8]}, z_dim=2, obs_dim=3, act_dim=2)
    p = policy.init(1)
    assert p["w1"].shape == (5, 8)
    out = policy.apply(p, tf.zeros([4, 7, 3]))
    assert out.shape == (4, 7, 4)
    with pytest.raises(ValueError, match="z_dim"):
        context.context({"kind": "mlp", "sizes": [1, 2]}, z_dim=0)


def test_a_short_context_vector_run_learns_to_adapt(tmp_path):
    """Sinusoid with a 4-entry context vector: after 1,500 meta-iterations, one inner step on z
    alone brings the MSE far below the unadapted one. (On Omniglot the context vector learns much
    more slowly: about chance after 300 iterations, and after 1,000 of a small net; tests/test_committed.py
    checks that its committed 3,000-iteration pilot adapts well above chance.)"""
    from maml_tf import config, evaluate, tasks, train
    cfg = config.from_dict({
        "experiment": "c", "task": {"kind": "sinusoid", "support": 10, "query": 10},
        "model": {"kind": "context", "z_dim": 4, "base": {"kind": "mlp", "sizes": [1, 40, 40, 1]}},
        "train": {"iterations": 1500, "meta_batch": 25, "inner_lr": 0.1, "log_every": 500, "checkpoint_every": 1500}})
    learner = train.train(cfg, tmp_path, quiet=True)
    res = evaluate.evaluate(learner.model, learner.param_values(),
                            tasks.build({"kind": "sinusoid", "support": 10, "query": 100}, split="test"),
                            maml.mse, maml.mse, 1, 0.1, n_tasks=200, seed=7)
    assert res["mean"][1] < 0.5 * res["mean"][0], res["mean"]


def test_z_counts_in_the_first_layers_fan_in_so_the_input_weights_start_smaller():
    """What `reproduce.appendix context-pilot` reports beside the pilots: the first layer is
    initialised as the base network's on the widened input (Glorot uniform over obs_dim + z_dim
    inputs), so the weights on the observation itself start smaller for a larger z."""
    from reproduce import appendix
    obs_dim, _ = rl.env_dims("maml/HalfCheetahDir-v0")
    for z in (2, 128):
        expected = math.sqrt(6.0 / (obs_dim + z + 100)) / math.sqrt(3.0)  # std of U(-limit, limit)
        std = appendix.input_weight_std("rl/cheetah_dir/context", z, ["model.init=widened"])
        assert abs(std / expected - 1) < 0.05
        # the half-cheetah run's own config (model.init: base) starts as the MAML policy: the same std
        base = math.sqrt(6.0 / (obs_dim + 100)) / math.sqrt(3.0)
        assert abs(appendix.input_weight_std("rl/cheetah_dir/context", z) / base - 1) < 0.05


def test_a_diagnostic_pilot_is_reported_against_the_setting_it_varies_once_both_finished():
    from reproduce import appendix, campaign, common
    name, (against, *_) = next(iter(appendix.DIAGNOSTICS.items()))
    run = [r for r in campaign.QUEUE if r.dir.endswith(f"/{name}_z8")]
    base = [r for r in campaign.QUEUE if r.dir.endswith(f"/{against}_z8")]
    # the same pilot as the one it is compared with, but for where z joins, trained further (then
    # compared with the Table 3 run, whose settings are the pilot's but for validating less often)
    assert len(run) == len(base) == 1 and run[0].iterations > base[0].iterations
    assert set(run[0].sets) == set(base[0].sets) | {"model.join=after_norm"}
    table3 = common.load(appendix.DIAGNOSTIC_REFERENCE_RUNS[name]).to_dict()
    pilot = common.load(base[0].config, sets=base[0].sets).to_dict()
    table3["train"].pop("val_every"), pilot["train"].pop("val_every"), pilot["train"].pop("iterations"), \
        table3["train"].pop("iterations")
    assert table3 == pilot
    c = lambda score, it, r: {"score": score, "summary": f"best meta-validation accuracy {score}%", "iterations": it,
                              "budget": 3000, "config": r.config, "sets": list(r.sets),
                              "curve": [[1000, 20.0], [3000, score]]}
    settings = {against: {"candidates": {"8": c(50.9, 3000, base[0])}},
                name: {"candidates": {"8": c(80.0, 2000, run[0])}}}
    assert appendix.diagnostic_lines(settings) == []   # not finished: nothing said yet
    settings[name]["candidates"]["8"] = c(80.0, 3000, run[0])
    (line,) = appendix.diagnostic_lines(settings)
    # 300 meta-validation tasks: 1.96 * sqrt((0.8 * 0.2 + 0.509 * 0.491) / 300) = 7.2 points
    assert "20.0 / 80.0% at iterations 1000 / 3000, against 20.0 / 50.9%" in line and "chance 20%" in line
    assert "Best +29.1 points; evaluation noise alone allows ±7.2" in line
    verdicts = next(iter(appendix.DIAGNOSTICS.values()))[2]
    assert line.endswith(verdicts["above"])
    for score, side in ((54.0, "within"), (40.0, "below")):
        settings[name]["candidates"]["8"] = c(score, 3000, run[0])
        (line,) = appendix.diagnostic_lines(settings)
        assert line.endswith(verdicts[side]), (score, line)
    # trained beyond its pilots: against the Table 3 run at the iterations both validated, once that
    # run has reached the diagnostic's budget
    longer = {**c(0, 10000, run[0]), "budget": 10000,
              "curve": [[1000, 20.0], [2000, 21.0], [3000, 28.0], [4000, 60.0], [5000, 90.0], [6000, 70.0]]}
    settings[name] = {"candidates": {"8": longer}, "reference_run": {
        "config": appendix.DIAGNOSTIC_REFERENCE_RUNS[name], "z_dim": 8, "iterations": 8000,
        "curve": [[2000, 39.0], [4000, 52.0], [6000, 56.0], [8000, 59.0], [10000, 63.7], [12000, 67.5]]}}
    assert appendix.diagnostic_lines(settings) == []   # the diagnostic not finished
    longer.update(iterations=10000, curve=longer["curve"] + [[8000, 71.0], [10000, 72.0], [11000, 99.0]])
    assert appendix.diagnostic_lines(settings) == []   # the Table 3 run not as far yet
    settings[name]["reference_run"]["iterations"] = 26000
    (line,) = appendix.diagnostic_lines(settings)
    assert "21.0 / 60.0 / 70.0 / 71.0 / 72.0% at iterations 2000 / 4000 / 6000 / 8000 / 10000, against " \
           "39.0 / 52.0 / 56.0 / 59.0 / 63.7%" in line   # 5000's 90.0 and 11000's 99.0: not validated by both
    assert "Best +8.3 points" in line and "the Table 3 run omniglot/conv_5w1s_context" in line
    assert line.endswith(verdicts["above"])


def test_the_inner_step_check_is_reused_for_the_same_checkpoint_and_says_what_it_found(tmp_path):
    """The check of the inner step on z (reproduce.appendix INNER_STEP_CHECK) runs once per best
    checkpoint of the chosen pilot: a record of the same pilot, checkpoint, tasks and grid is
    reused, one of another checkpoint or score is not (and without the data there is none). Its
    line says a scale does better only beyond the paired margin, and which."""
    import yaml
    from reproduce import appendix
    setting, scales, steps = appendix.INNER_STEP_CHECK
    assert 1 in scales and min(scales) < 1 < max(scales)   # smaller and larger steps than the config's
    run_dir = tmp_path / "appendix" / "context_pilot" / f"{setting}_z8"
    run_dir.mkdir(parents=True)
    (run_dir / "best.json").write_text('{"step": 3000, "value": 0.5, "metric": "accuracy"}')
    raw = yaml.safe_load((ROOT / "reproduce" / "configs" / "omniglot" / "conv_5w1s_context.yaml").read_text())
    raw["task"]["path"] = str(tmp_path / "missing.npz")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
    settings = {setting: {"chosen_z_dim": 8, "candidates": {}}}
    assert appendix.inner_step_check({setting: {"chosen_z_dim": None}}, tmp_path, None) is None
    acc = {str(s): [20.0] + [50.0 - abs(s - 1) + j for j in range(steps)] for s in scales}
    train = appendix.config_lib.from_dict(raw).train
    done = {"setting": setting, "z_dim": 8, "checkpoint": 3000, "score": 0.5, "tasks": train.val_tasks,
            "val_seed": train.val_seed, "scales": list(scales), "steps": steps, "inner_lr": 0.4, "accuracy": acc,
            "paired_ci95_after_one": {str(s): 0.0 if s == 1 else 2.0 for s in scales}}
    assert appendix.inner_step_check(settings, tmp_path, done) is done
    for stale in ({**done, "checkpoint": 2000}, {**done, "score": 0.4}):   # computed again: here, no data
        assert appendix.inner_step_check(settings, tmp_path, stale) is None
    (line,) = appendix.inner_step_line(done)
    assert "times 0.25: 49.2%, 1: 50.0%, 2.5: 48.5%" in line and "after 1..5 steps 50.0 / 51.0 / 52.0 / 53.0 / 54.0%" in line
    assert "No step size tried does better than the config's beyond evaluation noise" in line
    acc["2.5"][1] = 51.5   # better, but within its margin of 2
    assert "No step size tried" in appendix.inner_step_line(done)[0]
    acc["0.25"][1] = 53.0
    (line,) = appendix.inner_step_line(done)
    assert "0.25 times the config's step does better by 3.0 points (paired 95% margin ±2.0)" in line
    assert appendix.inner_step_line(None) == []


def test_the_point_context_policy_trains_at_its_configs_size_with_chunked_gradients():
    """Two MAML-TRPO iterations of the point context config as the campaign trains it (20 tasks, its
    TRPO gradients in 2 chunks of 10). When the chunks were a tf.while_loop inside the CG loop,
    Grappler's arithmetic optimiser made the second call fail ("AlreadyExistsError ... tmp_var"),
    which the small test sizes did not show."""
    import maml_tf.envs  # noqa: F401
    from reproduce import common
    cfg = common.load("rl/point/context")
    assert cfg.train.meta_batch == 20 and maml.chunk_size(20, cfg.train.task_chunk) == 10
    run = rl.RLRun(cfg)
    run.begin(0, 2)
    for step in range(2):
        info = run.iterate(step)
        assert np.isfinite(info["loss_after"]) and info["kl_after"] <= cfg.train.max_kl


@pytest.mark.parametrize("base, first, d", [
    ({"kind": "conv4", "n_out": 5, "channels": 1, "filters": 32, "image_size": 12, "max_pool": False}, "conv1", 1),
    ({"kind": "mlp", "sizes": [20, 64, 5]}, "w1", 20),
    ({"kind": "gaussian_mlp", "hidden": [100, 100]}, "w1", 20)])
def test_a_context_model_initialised_as_its_base_starts_as_the_base_network_whatever_z_dim(base, first, d):
    """init: base: with z at zero the model is the base network of the same seed (the MAML row's
    starting point) for every z_dim, and z's rows start at the base layer's own scale; with the
    default (widened) the input's weights shrink as z_dim grows."""
    dims = {"obs_dim": 20, "act_dim": 6} if base["kind"] == "gaussian_mlp" else {}
    plain = nets.build({**base, **dims})
    own = plain.init(5)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((2, 4, 12, 12, 1) if base["kind"] == "conv4" else (2, 4, d)), tf.float32)
    expected = plain.apply(own, x).numpy()
    base_std = own[first].numpy().std()
    for z_dim in (2, 64):
        model = context.context(base, z_dim, init="base", **dims)
        p = model.init(5)
        np.testing.assert_allclose(model.apply(p, x).numpy(), expected, rtol=1e-5, atol=1e-6)
        z_rows = p[first].numpy()[..., d:, :]
        assert z_rows.shape[-2] == z_dim and abs(z_rows.std() / base_std - 1) < 0.15, (z_dim, z_rows.std(), base_std)
        # drawn on their own: not the base kernel's numbers again
        assert np.intersect1d(z_rows.ravel(), own[first].numpy().ravel()).size == 0
        widened = context.context(base, z_dim, **dims).init(5)[first].numpy()[..., :d, :]
        if base["kind"] != "mlp" and z_dim == 64:  # (the MLP's truncated normal does not depend on its fans)
            assert widened.std() < 0.97 * base_std
    with pytest.raises(ValueError, match="model.init"):
        context.context(base, 2, init="narrow", **dims)


def test_a_run_saved_before_model_init_existed_resumes_as_widened_and_refuses_base(tmp_path):
    import yaml
    from maml_tf import runs
    from maml_tf.runs import TrainingError
    from reproduce import common
    saved = common.load("omniglot/conv_5w1s_context").to_dict()
    saved["model"].pop("init", None)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert runs.check_resume(tmp_path, common.load("omniglot/conv_5w1s_context", sets=["model.init=widened"])) == {}
    with pytest.raises(TrainingError, match="model.init"):
        runs.check_resume(tmp_path, common.load("omniglot/conv_5w1s_context", sets=["model.init=base"]))


def test_table3_labels_a_partial_maml_row(tmp_path):
    """Table 3's MAML column comes from Table 1; a cell still training says so beside its number."""
    import json
    from reproduce import appendix
    row = lambda shot, acc, it, status: {"dataset": "omniglot", "way": 5, "shot": shot, "model": "conv",
                                         "order": "second", "accuracy": acc, "ci95": 0.1, "iterations": it,
                                         "status": status}
    (tmp_path / "table1.json").write_text(json.dumps([row(1, 99.03, 60000, "full"), row(5, 99.52, 26668, "partial")]))
    assert appendix.main(["context", "--results", str(tmp_path), "--quiet"]) == 0
    text = (tmp_path / "appendix" / "context.md").read_text()
    assert "| 99.03 ± 0.10 | 98.7 ± 0.4 |" in text
    assert "| 99.52 ± 0.10 (PARTIAL: 26668 iterations) | 99.9 ± 0.1 |" in text


def test_table3_keeps_its_committed_context_rows_where_omniglot_is_missing(tmp_path, monkeypatch):
    """A clone without Omniglot's data keeps the committed (evaluated) context-vector row of Table 3,
    as Table 1 keeps its rows, instead of writing it over with 'not run'."""
    import json
    from maml_tf import tasks
    from reproduce import appendix
    build = tasks.build
    monkeypatch.setattr(tasks, "build", lambda spec, split="train": build(
        {**spec, "path": str(tmp_path / "no-data")} if spec["kind"] == "omniglot" else spec, split))
    assert appendix.main(["context", "--results", str(tmp_path), "--quiet"]) == 0
    path = tmp_path / "appendix" / "context.json"
    saved = json.loads(path.read_text())
    first = saved["table3"][0]["context"]
    assert first["status"] == "not_run" and "data" in first["note"] and not any(k.startswith("_") for k in first)
    first.update(accuracy=95.1, ci95=0.8, status="full", iterations=60000, commit="c0ffee", note="evaluated")
    path.write_text(json.dumps(saved))
    assert appendix.main(["context", "--results", str(tmp_path), "--quiet"]) == 0
    again = json.loads(path.read_text())["table3"]
    assert again[0]["context"] == first and again[1]["context"]["status"] == "not_run"
    assert "| 1 | 95.10 ± 0.80 | 60000 / 60000 |" in (tmp_path / "appendix" / "context.md").read_text()


def test_tables_4_and_5_say_where_the_papers_context_returns_lie():
    """Next to the context vector's returns: whether each of the paper's lies inside our 95% CI
    (and the gap against the two-evaluation margin where not), and the context vector against our
    MAML step by step, a verdict only for runs at full budget."""
    from reproduce import appendix
    paper = appendix.CONTEXT_PAPER["point"]                   # -42.42 / -13.90 / -5.17 / -3.18
    ctx = {"returns": [paper[0] + 0.5, paper[1] + 3.0, -4.0, -2.0], "ci95": [1.0, 1.0, 0.2, 0.2]}
    maml = {"returns": [-40.0, -10.0, -3.0, -2.1], "ci95": [1.0, 1.0, 0.2, 0.2]}
    full = {"context": {"status": "full"}, "maml": {"status": "full"}}
    lines = appendix.context_rl_findings("point", {"context": ctx, "maml": maml}, full)
    assert "context vector after 0..3 steps yes / no / no / no" in lines[1]
    assert "step 1: the paper's 3.00 below ours, beyond ± 1.41" in lines[1] and "PARTIAL" not in lines[1]
    assert "context vector behind at step(s) 2." in lines[2] and "ahead" not in lines[2]   # step 3 overlaps
    assert "-13.9 vs -11.68" in lines[2]                       # the paper's own comparison beside ours
    partial = appendix.context_rl_findings("point", {"context": ctx, "maml": maml},
                                           {**full, "maml": {"status": "partial"}})
    assert "too early for a verdict" in partial[2]
    assert appendix.context_rl_findings("point", {"maml": maml}, full) == []
    short = {"returns": ctx["returns"][:2], "ci95": ctx["ci95"][:2]}     # evaluated after 0..1 steps only
    lines = appendix.context_rl_findings("point", {"context": short, "maml": {k: v[:1] for k, v in maml.items()}}, full)
    assert "after 0..1 steps" in lines[0] and "yes / no." in lines[1] and len(lines) == 2   # no comparison to make


def test_table4_shows_where_the_papers_context_returns_lie(tmp_path):
    """The generated Table 4: the row saying whether each of the paper's context-vector returns
    lies inside our CI, and the findings under the table."""
    import json
    from reproduce import appendix
    paper = appendix.CONTEXT_PAPER["point"]
    metrics = {"context": {"returns": [paper[0] + 0.5, paper[1] + 3.0, -4.0, -2.0], "ci95": [1.0, 1.0, 0.2, 0.2]},
               "maml": {"returns": [-40.0, -10.0, -3.0, -2.1], "ci95": [1.0, 1.0, 0.2, 0.2]}}
    runs = {m: {"status": "full", "iterations": 100, "paper_iterations": 100} for m in metrics}
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "point.json").write_text(json.dumps({"metrics": metrics, "runs": runs}))
    assert appendix.main(["context", "--results", str(tmp_path), "--quiet"]) == 0
    text = (tmp_path / "appendix" / "context.md").read_text()
    assert "| paper in our 95% CI, context vector | | yes | no | no | no |" in text
    assert "- Context vector vs MAML (ours) after 1..3 steps:" in text
    assert json.loads((tmp_path / "appendix" / "context.json").read_text())["rl"]["point"]["findings"]


def test_the_context_tables_command_trains_and_evaluates_only_the_tables_it_is_given(tmp_path, monkeypatch):
    """`reproduce.appendix context --tables 4`: the point's context run goes through reproduce.rl
    (evaluated where it has a checkpoint, trained first with --train), Table 3 keeps its committed
    rows unevaluated; --report-only evaluates nothing; the options belong to `context`."""
    import json
    from reproduce import appendix, table1
    rl_calls = []
    monkeypatch.setattr(appendix.rl_repro, "_main", lambda argv: rl_calls.append(argv) or 0)
    monkeypatch.setattr(table1, "run_cell", lambda *a, **k: pytest.fail("Table 3 evaluated"))
    (tmp_path / "appendix").mkdir()
    kept = {"accuracy": 88.0, "ci95": 1.0, "iterations": 60000, "paper_accuracy": 94.9, "paper_ci95": 0.9,
            "status": "full", "note": "kept"}
    (tmp_path / "appendix" / "context.json").write_text(json.dumps({"table3": [{"shot": 1, "context": kept}]}))
    args = ["context", "--tables", "4", "--results", str(tmp_path), "--quiet", "--threads", "1"]
    assert appendix.main(args) == 0 and rl_calls == []      # not trained: nothing to evaluate
    assert appendix.main(args + ["--train", "--iterations", "30"]) == 0
    assert rl_calls[-1][:3] == ["point", "--methods", "context"] and "--eval-only" not in rl_calls[-1]
    assert rl_calls[-1][-2:] == ["--iterations", "30"]
    (tmp_path / "rl" / "point" / "context" / "checkpoints").mkdir(parents=True)
    (tmp_path / "rl" / "point" / "context" / "checkpoints" / "checkpoint").write_text("")
    assert appendix.main(args) == 0 and "--eval-only" in rl_calls[-1] and "--iterations" not in rl_calls[-1]
    rl_calls.clear()
    assert appendix.main(["context", "--report-only", "--results", str(tmp_path), "--quiet"]) == 0 and rl_calls == []
    saved = json.loads((tmp_path / "appendix" / "context.json").read_text())["table3"]
    assert saved[0]["context"] == kept and saved[1]["context"]["status"] == "not_run"
    assert "| 1 | 88.00 ± 1.00 | 60000 / 60000 |" in (tmp_path / "appendix" / "context.md").read_text()
    monkeypatch.setattr(appendix.rl_repro, "_main", lambda argv: 2)   # an evaluation that failed: an error
    assert appendix.main(args) == 2
    assert appendix.main(["table2", "--tables", "3", "--results", str(tmp_path)]) == 2
    # --iterations: the budget of one table's runs, with --train; --report-only evaluates no table
    for bad in (["--iterations", "30"], ["--train", "--iterations", "30"], ["--train", "--tables", "3", "4", "--iterations", "30"],
                ["--report-only", "--tables", "3"], ["--train", "--report-only"]):
        with pytest.raises(SystemExit) if bad == ["--train", "--report-only"] else contextlib.nullcontext():
            assert appendix.main(["context", *bad, "--results", str(tmp_path)]) == 2, bad


def test_the_context_tables_command_without_options_evaluates_every_table_and_trains_nothing(tmp_path, monkeypatch):
    """`make appendix-context` (no TRAIN=1): Table 3's cells evaluated only (no budget given), each RL
    context run with a checkpoint evaluated only (--eval-only), the others left as not trained."""
    from reproduce import appendix, table1
    cells, rl_calls = [], []
    monkeypatch.setattr(appendix.rl_repro, "_main", lambda argv: rl_calls.append(argv) or 0)
    monkeypatch.setattr(table1, "run_cell", lambda cell, iterations, eval_only, *a, **k: cells.append(
        (cell.shot, iterations, eval_only)) or {"accuracy": None, "ci95": None, "iterations": 0, "status": "not_run",
                                                "paper_accuracy": 94.9, "paper_ci95": 0.9, "note": ""})
    (tmp_path / "rl" / "cheetah_dir" / "context" / "checkpoints").mkdir(parents=True)
    (tmp_path / "rl" / "cheetah_dir" / "context" / "checkpoints" / "checkpoint").write_text("")
    assert appendix.main(["context", "--results", str(tmp_path), "--quiet"]) == 0
    assert cells == [(1, None, True), (5, None, True)]
    assert [c[0] for c in rl_calls] == ["cheetah_dir"] and "--eval-only" in rl_calls[0]   # point: no checkpoint
