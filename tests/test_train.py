"""The training loop: it learns, it resumes exactly, and bad input fails clearly."""
import dataclasses

import numpy as np
import pytest
import yaml
import tensorflow as tf

from maml_tf import config, evaluate, maml, runs, supervised, tasks, train

SINUSOID = {"experiment": "t", "task": {"kind": "sinusoid", "support": 10, "query": 10},
            "model": {"kind": "mlp", "sizes": [1, 40, 40, 1]},
            "train": {"iterations": 40, "meta_batch": 25, "log_every": 10, "checkpoint_every": 10}}


def _cfg(**train_overrides):
    raw = {**SINUSOID, "train": {**SINUSOID["train"], **train_overrides}}
    return config.from_dict(raw)


def _post_update_mse(learner, n_tasks=200, steps=1, alpha=0.01):
    src = tasks.build({"kind": "sinusoid", "support": 10, "query": 100}, split="test")
    r = evaluate.evaluate(learner.model, learner.param_values(), src, maml.mse, maml.mse, steps, alpha,
                          n_tasks=n_tasks, seed=7)
    return r["mean"]


def test_short_sinusoid_meta_training_learns(tmp_path):
    it = 2500
    maml_run = train.train(_cfg(iterations=it, log_every=500, checkpoint_every=it), tmp_path / "maml", quiet=True)
    pre = train.train(_cfg(iterations=it, inner_steps=0, log_every=500, checkpoint_every=it),
                      tmp_path / "pre", quiet=True)
    m = _post_update_mse(maml_run)
    p = _post_update_mse(pre, alpha=0.02)
    assert m[1] < 0.6 * m[0], f"post-update MSE {m[1]:.2f} not well below pre-update {m[0]:.2f}"
    assert m[1] < 0.8 * min(p), f"MAML post-update {m[1]:.2f} not below pretrained fine-tuned {min(p):.2f}"
    lines = (tmp_path / "maml" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == it // 500


def test_resume_continues_exactly(tmp_path):
    straight = train.train(_cfg(), tmp_path / "a", quiet=True)
    first = train.train(_cfg(), tmp_path / "b", quiet=True, stop_after=20)
    assert int(first.step.numpy()) == 20
    resumed = train.train(_cfg(), tmp_path / "b", quiet=True)
    assert int(resumed.step.numpy()) == 40
    for k in straight.params:
        np.testing.assert_allclose(resumed.params[k].numpy(), straight.params[k].numpy(), rtol=1e-6, atol=1e-7)
    # the optimizer state came back too
    assert int(resumed.optimizer.iterations.numpy()) == 40
    # each training session is on record, with the commit that ran it
    import json
    sessions = [json.loads(line) for line in (tmp_path / "b" / "sessions.jsonl").read_text().splitlines()]
    assert [(s["from_iteration"], s["to_iteration"]) for s in sessions] == [(0, 20), (20, 40)]
    assert runs.training_commits(tmp_path / "b") == [sessions[0]["commit"]]


def test_resume_with_a_different_experiment_is_refused(tmp_path):
    train.train(_cfg(iterations=10), tmp_path, quiet=True)
    with pytest.raises(train.TrainingError, match="train.inner_steps"):
        train.train(_cfg(iterations=20, inner_steps=2), tmp_path, quiet=True)
    # a larger budget is a resume, not a different experiment
    assert int(train.train(_cfg(iterations=20), tmp_path, quiet=True).step.numpy()) == 20


def test_nan_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    train.train(_cfg(iterations=10), tmp_path, quiet=True)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    cfg = _cfg(iterations=30)
    bad = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, inner_lr=1e30))
    (tmp_path / "config.yaml").unlink()  # pretend the config was the same experiment
    with pytest.raises(train.TrainingError, match="NaN|nan|inf"):
        train.train(bad, tmp_path, quiet=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert np.all(np.isfinite(train.restore(cfg, tmp_path)[0].params["w1"].numpy()))


@pytest.mark.parametrize("section,key,value,message", [
    ("train", "iteratons", 5, "unknown key 'train.iteratons'"),
    ("train", "meta_batch", "25", "'train.meta_batch' must be of type int"),
    ("train", "first_order", 1, "'train.first_order' must be of type bool"),
    ("task", "shots", 5, "unknown key 'task.shots'"),
    ("model", "size", [1, 2], "unknown key 'model.size'"),
    ("model", "sizes", "40", "'model.sizes'"),
    ("eval", "steps", 1.5, "'eval.steps' must be of type int"),
])
def test_bad_config_names_the_key(section, key, value, message):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SINUSOID.items()}
    raw.setdefault(section, {})[key] = value
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(raw)
    assert message in str(err.value)


def test_config_files_of_the_repository_are_valid():
    from reproduce import common
    paths = sorted(common.CONFIGS.rglob("*.yaml"))
    assert paths
    from reproduce import appendix
    for p in paths:
        if p.parent.name == "appendix":  # the appendix's own settings (reproduce/appendix.py)
            appendix.load_config(p)
        else:
            config.load(p)


def test_fixed_test_tasks_do_not_depend_on_batching():
    src = tasks.build({"kind": "sinusoid", "support": 5, "query": 10}, split="test")
    a = list(evaluate._batches(src, 7, 3, batch=2))
    b = list(evaluate._batches(src, 7, 3, batch=7))
    np.testing.assert_array_equal(np.concatenate([x.xs for x in a]), b[0].xs)
    r = evaluate.summarize(np.array([[1.0, 2.0, 3.0, 4.0]]))
    assert r["mean"][0] == 2.5 and r["ci95"][0] == pytest.approx(1.96 * np.std([1, 2, 3, 4]) / 2)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(tmp_path):
    """A background run stopped by a signal keeps its progress (the interrupt path of resume)."""
    import json
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps({**SINUSOID, "train": {**SINUSOID["train"], "iterations": 10 ** 7,
                                                          "log_every": 200, "checkpoint_every": 10 ** 6}}))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "reproduce.train", str(cfg_path), "--run-dir", str(run),
                             "--quiet"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)  # saved and exited promptly
    saved, step = train.restore(config.load(cfg_path), run)
    assert step >= 400 and step % 10 ** 6 != 0, "no checkpoint at the interrupted iteration"
    resumed = train.train(config.load(cfg_path, {"train.iterations": step + 10}), run, quiet=True)
    assert int(resumed.step.numpy()) == step + 10


def test_a_signal_asks_the_loop_to_stop_and_a_second_one_interrupts_at_once():
    import os
    import signal
    from maml_tf.runs import StopRequest
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before the next bytecode: nothing raised
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def test_batches_follow_the_seeded_stream_and_pass_on_sampling_errors():
    src = tasks.build(SINUSOID["task"])
    got = list(supervised.batches(src, 3, 5, 8, 4))
    assert len(got) == 3
    for i, b in zip(range(5, 8), got):
        want = src.sample(tasks.stream_rng(3, i), 4)
        np.testing.assert_array_equal(b.xs.numpy(), want["xs"])
        np.testing.assert_array_equal(b.yq.numpy(), want["yq"])

    class Broken:
        def sample(self, rng, n):
            raise ValueError("corrupt episode")
    with pytest.raises(ValueError, match="corrupt episode"):
        list(supervised.batches(Broken(), 0, 0, 3, 4))


def test_resume_may_change_how_the_conv_net_is_computed_not_the_net(tmp_path):
    """model.impl (batched or per-task: the same function, tests/test_nets.py) may change when a run
    resumes, as Omniglot 20-way 5-shot's did; any other model key is a different experiment."""
    raw = {"experiment": "t", "task": {"kind": "omniglot", "way": 5, "shot": 1, "query": 1},
           "model": {"kind": "conv4", "n_out": 5, "channels": 1, "filters": 8, "image_size": 28,
                     "max_pool": False}, "train": {"iterations": 10}}
    first = config.from_dict(raw)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(first.to_dict()))
    assert runs.check_resume(tmp_path, config.from_dict(
        {**raw, "model": {**raw["model"], "impl": "per_task"},
         "train": {"iterations": 10, "xla": False}})) == {"model.impl": [None, "per_task"]}  # None: the default
    with pytest.raises(train.TrainingError, match="model.filters"):
        runs.check_resume(tmp_path, config.from_dict({**raw, "model": {**raw["model"], "filters": 16}}))
