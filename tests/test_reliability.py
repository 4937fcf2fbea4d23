"""What a run promises under divergence, interruption, a second process and bad input (README,
"Interruptions and bad input")."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from maml_tf import config, runs, train
from reproduce import train as train_entry

ROOT = Path(__file__).resolve().parent.parent
SINUSOID = {"experiment": "t", "task": {"kind": "sinusoid", "support": 10, "query": 10},
            "model": {"kind": "mlp", "sizes": [1, 40, 40, 1]},
            "train": {"iterations": 40, "meta_batch": 25, "log_every": 10, "checkpoint_every": 10}}


def _cfg(**train_overrides):
    return config.from_dict({**SINUSOID, "train": {**SINUSOID["train"], **train_overrides}})


def test_a_diverging_run_never_makes_a_nan_best_checkpoint(tmp_path):
    cfg = _cfg(iterations=200, meta_lr=1000.0, val_every=5, val_tasks=20, log_every=50, checkpoint_every=50)
    with pytest.raises(train.TrainingError, match="nan|NaN|inf"):
        train.train(cfg, tmp_path, quiet=True)
    best = tmp_path / "best.json"
    if best.exists():
        assert math.isfinite(json.loads(best.read_text())["value"])
        restored, _ = train.restore(cfg, tmp_path, "best")
        assert all(np.all(np.isfinite(v.numpy())) for v in restored.params.values())
    assert runs.is_better(1.0, {"value": float("nan")}, higher_is_better=False)  # an old NaN best is replaced
    assert not runs.is_better(float("nan"), None, higher_is_better=True)


def test_a_diverged_run_resumes_with_a_lower_step_size_which_takes_effect_and_is_recorded(tmp_path):
    train.train(_cfg(iterations=20), tmp_path, quiet=True)
    with pytest.raises(train.TrainingError, match="Lower train.meta_lr"):
        train.train(_cfg(iterations=200, meta_lr=1e4, inner_lr=10.0), tmp_path, quiet=True)
    assert train.restore(_cfg(), tmp_path)[1] == 20  # the last good checkpoint is kept
    # the advice of the message can be followed: lower the step sizes, clip, resume
    learner = train.train(_cfg(iterations=60, meta_lr=1e-4, grad_clip=1.0), tmp_path, quiet=True)
    assert int(learner.step.numpy()) == 60
    assert float(learner.optimizer.learning_rate.numpy()) == pytest.approx(1e-4)
    sessions = [json.loads(l) for l in (tmp_path / "sessions.jsonl").read_text().splitlines()]
    assert sessions[-1]["changed"] == {"train.meta_lr": [1e4, 1e-4], "train.inner_lr": [10.0, 0.01],
                                       "train.grad_clip": [None, 1.0]}
    # a session that failed before its first iteration leaves no entry; the diverged one did train
    assert [(s["from_iteration"], s["to_iteration"]) for s in sessions] == [(0, 20), (20, 200), (20, 60)]
    # the algorithm itself still cannot change on resume
    with pytest.raises(train.TrainingError, match="train.inner_steps"):
        train.train(_cfg(iterations=80, meta_lr=1e-4, grad_clip=1.0, inner_steps=2), tmp_path, quiet=True)


def test_a_second_process_on_a_run_directory_is_refused_with_the_first_ones_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from maml_tf import runs\n"
                               f"with runs.RunLock({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(train.TrainingError, match=f"in use by process {holder.pid}"):
            train.train(_cfg(), tmp_path, quiet=True)
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    assert int(train.train(_cfg(), tmp_path, quiet=True).step.numpy()) == 40  # free again after a kill


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


BAD = [
    (["--iterations", "-5"], "'train.iterations' must be >= 0"),
    (["--set", "train.checkpoint_every=0"], "'train.checkpoint_every' must be >= 1"),
    (["--set", "train.log_every=0"], "'train.log_every' must be >= 1"),
    (["--set", "train.meta_batch=0"], "'train.meta_batch' must be >= 1"),
    (["--set", "train.distribute=bogus"], "'train.distribute' must be default, mirrored or multi_worker"),
    (["--set", "train.val_every=5"], "'train.val_tasks' is 0"),
    (["--set", "train.meta_lr=-1"], "'train.meta_lr' must be > 0"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    assert train_entry.main(["sinusoid/maml", "--run-dir", str(run), "--quiet", *args]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not run.exists()


def test_yaml_as_users_write_it_and_the_mistakes_they_make(tmp_path, capsys):
    raw = yaml.safe_dump(SINUSOID)
    ok = _write(tmp_path / "ok.yaml", raw.replace("meta_batch: 25", "meta_batch: 25\n  meta_lr: 1e-3"))
    assert config.load(ok).train.meta_lr == 1e-3  # unquoted 1e-3 is a float, not a string
    twice = _write(tmp_path / "twice.yaml", raw.replace("meta_batch: 25", "meta_batch: 25\n  meta_batch: 5"))
    no_budget = _write(tmp_path / "nobudget.yaml", raw.replace("iterations: 40", ""))
    mismatch = _write(tmp_path / "way.yaml", yaml.safe_dump(
        {"experiment": "w", "task": {"kind": "omniglot", "way": 20, "shot": 1, "query": 1},
         "model": {"kind": "conv4", "n_out": 5, "channels": 1, "filters": 64, "image_size": 28, "max_pool": False},
         "train": {"iterations": 10}}))
    for path, message in ((twice, "'meta_batch' appears twice"), (no_budget, "needs 'train.iterations'"),
                          (mismatch, "20-way but the model has 5 outputs")):
        run = tmp_path / "run"
        assert train_entry.main([path, "--run-dir", str(run), "--quiet"]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert len(err) == 1 and message in err[0], err
        assert not run.exists()


def test_a_missing_or_corrupt_dataset_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the dataset paths of a config are relative to the working folder
    cfg = yaml.safe_dump({"experiment": "o", "task": {"kind": "omniglot", "way": 5, "shot": 1, "query": 1,
                                                      "path": str(tmp_path / "o.npz")},
                          "model": {"kind": "mlp", "sizes": [784, 8, 5]}, "train": {"iterations": 10}})
    path = _write(tmp_path / "o.yaml", cfg)
    for content in (None, b"PK\x03\x04 truncated"):
        if content is not None:
            (tmp_path / "o.npz").write_bytes(content)
        assert train_entry.main([path, "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert len(err) == 1 and err[0].startswith("error: dataset file") and "make data-omniglot" in err[0], err
        assert not (tmp_path / "run").exists()


def test_a_full_disk_is_one_error_line_and_the_run_resumes_from_what_was_written(tmp_path, capsys, monkeypatch):
    """A write that fails for want of room (ENOSPC) mid-run ends it with exit code 2 and one
    `error:` line saying what to do; the checkpoints written before stay, and the same command
    resumes to the end once there is room."""
    import errno
    cfg_path = _write(tmp_path / "c.yaml", json.dumps(SINUSOID))
    run = tmp_path / "run"
    write = runs.Log.write

    def full(self, step, values):
        if step >= 30:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        write(self, step, values)
    monkeypatch.setattr(runs.Log, "write", full)
    assert train_entry.main([cfg_path, "--run-dir", str(run), "--quiet", "--threads", "1"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith("error: cannot write or read") and "No space left" in err[0] \
        and "Make room on the disk" in err[0], err
    assert "ckpt-20" in (run / "checkpoints" / "checkpoint").read_text()
    monkeypatch.setattr(runs.Log, "write", write)
    assert train_entry.main([cfg_path, "--run-dir", str(run), "--quiet", "--threads", "1"]) == 0
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_stop_at_a_random_iteration_then_resume_matches_an_uninterrupted_run(tmp_path, sig):
    """SIGKILL loses the iterations since the last checkpoint (they are trained again); SIGTERM
    and SIGINT save a checkpoint between two log steps and exit with code 130 and one `stopped:`
    line. Either way the resumed run's parameters and metrics.jsonl are those of a run that never
    stopped."""
    cfg_path = _write(tmp_path / "c.yaml", json.dumps(
        {**SINUSOID, "train": {**SINUSOID["train"], "iterations": 300, "log_every": 10, "checkpoint_every": 50}}))
    cmd = lambda run: [sys.executable, "-m", "reproduce.train", cfg_path, "--run-dir", str(run), "--quiet",
                       "--threads", "1"]
    subprocess.run(cmd(tmp_path / "straight"), cwd=ROOT, check=True, capture_output=True)
    killed = tmp_path / "killed"
    target = random.Random(os.getpid()).choice([k for k in range(70, 260, 10) if k % 50])
    stderr = (tmp_path / "stderr").open("w")
    proc = subprocess.Popen(cmd(killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    metrics, deadline = killed / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        rows = metrics.read_text().splitlines() if metrics.exists() else []
        if rows and json.loads(rows[-1])["step"] >= target:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait()
    stderr.close()
    index = (killed / "checkpoints" / "checkpoint").read_text()
    assert "ckpt-300" not in index, "the run finished before it was stopped"
    if sig != signal.SIGKILL:  # saved where it stopped, in general between two log steps
        assert int(index.split('"')[1].rsplit("-", 1)[1]) >= target
        lines = [l for l in (tmp_path / "stderr").read_text().splitlines() if l.strip()]
        assert proc.returncode == 130 and lines == ["stopped: a checkpoint was saved; the same command resumes "
                                                    "the run"], (proc.returncode, lines)
    subprocess.run(cmd(killed), cwd=ROOT, check=True, capture_output=True)
    rows = lambda run: [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    a, b = rows(tmp_path / "straight"), rows(killed)
    assert [s for s, _ in b] == [s for s, _ in a] == list(range(10, 301, 10))
    np.testing.assert_allclose([l for _, l in b], [l for _, l in a], rtol=1e-6)
    cfg = config.load(cfg_path)
    (pa, _), (pb, _) = train.restore(cfg, tmp_path / "straight"), train.restore(cfg, killed)
    for k in pa.params:
        np.testing.assert_array_equal(pa.params[k].numpy(), pb.params[k].numpy())


def test_the_stderr_filter_drops_tensorflow_noise_and_keeps_everything_else():
    code = ("import os, sys, maml_tf\n"
            "os.write(2, b'E0000 cuda_dnn.cc:8310] Unable to register cuDNN factory: twice\\n')\n"
            "os.write(2, b'a C++ line that matters\\n')\n"
            "print('error: a Python message', file=sys.stderr)\n"
            "os.write(2, b'the last C++ line before exit\\n')\n"
            "sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert "Unable to register" not in r.stderr
    for line in ("a C++ line that matters", "error: a Python message", "the last C++ line before exit"):
        assert line in r.stderr, r.stderr
    closed = subprocess.run([sys.executable, "-c", "import maml_tf; print('ok')"], cwd=ROOT,
                            stderr=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, timeout=60,
                            preexec_fn=lambda: os.close(2))
    assert closed.returncode == 0 and closed.stdout.strip() == "ok"


def test_a_best_from_lost_iterations_is_forgotten_only_when_the_resume_changes_the_path(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best.json").write_text(json.dumps({"step": 25, "value": 0.5}))
    runs.forget_lost_best(tmp_path, 20, {})  # a plain resume trains 21..25 again, identically
    assert (tmp_path / "best.json").exists()
    runs.forget_lost_best(tmp_path, 30, {"train.meta_lr": [1.0, 0.1]})  # best before the resume point
    assert (tmp_path / "best.json").exists()
    runs.forget_lost_best(tmp_path, 20, {"train.meta_lr": [1.0, 0.1]})
    assert not (tmp_path / "best.json").exists() and not (tmp_path / "best").exists()


def test_same_results_ignores_provenance_and_float_noise_but_not_counts(tmp_path):
    from maml_tf import records
    path = tmp_path / "r.json"
    records.write_json(path, {"commit": "a", "iterations": 59000, "acc": 0.98765432, "x": float("nan")})
    assert records.same_results(path, {"commit": "b", "iterations": 59000, "acc": 0.98765433, "x": float("nan")})
    assert not records.same_results(path, {"commit": "a", "iterations": 59500, "acc": 0.98765432, "x": float("nan")})
    assert not records.same_results(path, {"commit": "a", "iterations": 59000, "acc": 0.99, "x": float("nan")})


def test_a_log_line_cut_by_a_kill_is_skipped_and_the_commits_that_trained_the_run_still_read(tmp_path):
    """A process killed mid-write leaves a partial last line in sessions.jsonl or metrics.jsonl: every
    reader (the provenance of a result, the campaign's table, the RL findings) keeps the whole rows."""
    assert runs.read_jsonl(tmp_path / "metrics.jsonl") == [] and runs.training_commits(tmp_path) == []
    (tmp_path / "sessions.jsonl").write_text(
        json.dumps({"commit": "aaa", "from_iteration": 0}) + "\n" + json.dumps({"commit": "bbb", "from_iteration": 5})
        + "\n" + json.dumps({"commit": "aaa", "from_iteration": 9}) + "\n" + '{"commit": "ccc", "from_it')
    assert runs.training_commits(tmp_path) == ["aaa", "bbb"]
    assert [r["from_iteration"] for r in runs.read_jsonl(tmp_path / "sessions.jsonl")] == [0, 5, 9]
    runs.record_session(tmp_path, 12, 20)   # the next session's entry on a line of its own, not lost
    assert [r["from_iteration"] for r in runs.read_jsonl(tmp_path / "sessions.jsonl")] == [0, 5, 9, 12]
