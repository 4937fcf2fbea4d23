"""tf.distribute.MultiWorkerMirroredStrategy: two worker processes on loopback (TF_CONFIG), each
holding one replica, take the same supervised meta-steps as one process on the whole task batch.

Each worker draws the same global batch from the (seed, iteration) stream, as train.train does,
and keeps its replica's half (distribute.split_across_replicas); the per-replica meta-gradients
are all-reduced (MEAN) across the two processes over gRPC. Checked after the first step: the
all-reduced meta-gradient (read back from Adam's first moment, m = (1 - beta_1) g) equals the
single process's, and is the mean of the two halves' own gradients, which differ from it (so the
collective did the work); after two steps the parameters match the single process's and have
moved from their initial values.

Every process runs in a subprocess (collective ops and devices must be set up before TensorFlow
initialises), with a timeout, so a hung collective fails the test instead of hanging it."""
import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

SCRIPT = textwrap.dedent("""
    import json, sys
    from maml_tf import distribute
    distribute.use_cpu_cores(1)  # one CPU device and thread per process (a CPU worker holds one replica)
    import tensorflow as tf
    from maml_tf import config, tasks
    from maml_tf.supervised import MetaLearner
    cfg = config.from_dict({"experiment": "mw", "task": {"kind": "sinusoid"},
                            "model": {"kind": "mlp", "sizes": [1, 40, 40, 1]},
                            "train": {"iterations": 2, "meta_batch": 8, "distribute": sys.argv[1]}})
    t = cfg.train
    strategy = distribute.make_strategy(t.distribute, t.meta_batch)
    multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    learner = MetaLearner(cfg, strategy)
    source = tasks.build(cfg.task, split="train")
    as_list = lambda d: {k: v.numpy().tolist() for k, v in d.items()}
    out = {"replicas": strategy.num_replicas_in_sync, "multi_worker": multi,
           "init": as_list(learner.param_values()), "loss": []}
    for i in range(2):  # the batches of iterations 0 and 1, as train.train draws them
        batch = tasks.TaskBatch.of(source.sample(tasks.stream_rng(cfg.seed, i), t.meta_batch), tf.convert_to_tensor)
        if i == 0:  # this process's own (not all-reduced) meta-gradient on its share of the batch
            n, r = strategy.num_replicas_in_sync, strategy.cluster_resolver.task_id if multi else 0
            share = tasks.TaskBatch(*(v[r * (t.meta_batch // n):(r + 1) * (t.meta_batch // n)] for v in batch))
            grads = learner._grads(learner.param_values(), learner.inner_lr(), share)[1]["params"]
            out["own_grad"] = as_list(grads)
        out["loss"].append(float(learner.train_step(distribute.split_across_replicas(strategy, batch))))
        if i == 0:  # Adam's first moment after one step is (1 - beta_1) times the applied gradient
            opt = learner.optimizer
            m = {k: opt._momentums[opt._get_variable_index(v)] for k, v in learner.params.items()}
            out["grad"] = {k: (v.numpy() / (1 - opt.beta_1)).tolist() for k, v in m.items()}
    out["step"] = int(learner.step.numpy())
    out["params"] = as_list(learner.param_values())
    print("RESULT " + json.dumps(out), flush=True)
""")

TIMEOUT = 90  # seconds for all three processes together; they take ~20-30 s, TensorFlow's import included


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_all(root: Path, tmp_path: Path) -> dict:
    """Start the two workers and the single process; their parsed results, by name."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    base = {"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root),
            "OMP_NUM_THREADS": "1", "NO_PROXY": "*", "no_proxy": "*"}  # gRPC must not go through a proxy
    jobs = {f"worker{i}": ("multi_worker", {**base, "TF_CONFIG": json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": i}})}) for i in range(2)}
    jobs["single"] = ("default", base)
    procs = {}
    for name, (strategy, env) in jobs.items():
        log = open(tmp_path / f"{name}.log", "w+")
        procs[name] = (subprocess.Popen([sys.executable, "-c", SCRIPT, strategy], cwd=root, env=env,
                                        stdout=subprocess.PIPE, stderr=log, text=True), log)
    deadline, results = time.monotonic() + TIMEOUT, {}
    try:
        for name, (proc, log) in procs.items():
            try:
                stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{name} did not finish within {TIMEOUT} s (a hung collective?); its "
                                     f"log:\n{_tail(log)}") from None
            assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{_tail(log)}"
            line = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
            assert line, f"{name} printed no result:\n{stdout[-2000:]}\n{_tail(log)}"
            results[name] = json.loads(line[-1][len("RESULT "):])
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:  # SIGKILL: a worker waiting for its peers ignores SIGTERM
                proc.kill()
                proc.wait()
            log.close()
    return results


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-3000:]


def test_two_workers_on_loopback_match_one_worker(tmp_path):
    root = Path(__file__).resolve().parent.parent
    out = run_all(root, tmp_path)
    w0, w1, single = out["worker0"], out["worker1"], out["single"]
    assert w0["multi_worker"] and w1["multi_worker"] and not single["multi_worker"]
    assert w0["replicas"] == w1["replicas"] == 2 and single["replicas"] == 1
    assert w0["step"] == w1["step"] == single["step"] == 2
    close = dict(rtol=1e-5, atol=1e-6)
    for k, v in single["params"].items():
        # the same starting point everywhere, then the step moved it
        np.testing.assert_array_equal(w0["init"][k], single["init"][k])
        np.testing.assert_array_equal(w1["init"][k], single["init"][k])
        assert np.abs(np.subtract(v, single["init"][k])).max() > 1e-4, k
        # the all-reduced meta-gradient: the single process's, the mean of the two halves' own
        # gradients, and not either half's alone
        g = np.asarray(single["grad"][k])
        assert np.abs(g).max() > 0, k
        np.testing.assert_allclose(w0["grad"][k], g, **close, err_msg=f"worker 0 gradient {k}")
        np.testing.assert_allclose(w1["grad"][k], g, **close, err_msg=f"worker 1 gradient {k}")
        np.testing.assert_allclose((np.asarray(w0["own_grad"][k]) + w1["own_grad"][k]) / 2, g, **close)
        for w in (w0, w1):
            assert not np.allclose(w["own_grad"][k], g, **close), k
        # the parameters after two steps
        np.testing.assert_allclose(w0["params"][k], v, **close, err_msg=f"worker 0 {k}")
        np.testing.assert_allclose(w1["params"][k], v, **close, err_msg=f"worker 1 {k}")
    np.testing.assert_allclose(w0["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(w1["loss"], single["loss"], rtol=1e-5)


# ----------------------------------------------------------------------------- the training loop

def _train_cmd(run: Path, iterations: int) -> list[str]:
    return [sys.executable, "-m", "reproduce.train", "sinusoid/maml", "--iterations", str(iterations),
            "--threads", "1", "--quiet", "--run-dir", str(run), "--set", "train.meta_batch=24",
            "--set", "train.log_every=5", "--set", "train.checkpoint_every=1000000"]


def _workers(root: Path, run: Path, iterations: int, logs: Path) -> list[subprocess.Popen]:
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    base = {"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root),
            "OMP_NUM_THREADS": "1", "NO_PROXY": "*", "no_proxy": "*"}
    procs = []
    for i in range(2):
        env = {**base, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(_train_cmd(run, iterations) + ["--set", "train.distribute=multi_worker"],
                                      cwd=root, env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(logs / f"w{i}.log", "w")))
    return procs


def _wait(procs, logs: Path, timeout: float = TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        raise AssertionError("a worker hung:\n" + "\n".join((logs / f"w{i}.log").read_text()[-2000:]
                                                           for i in range(2))) from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _params(run: Path) -> tuple[int, dict]:
    import tensorflow as tf
    path = tf.train.latest_checkpoint(str(run / "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("params/") and "OPTIMIZER" not in n]
    return int(path.rsplit("-", 1)[1]), {n: reader.get_tensor(n) for n in names}


def test_multi_worker_training_runs_in_the_chiefs_directory_and_stops_together(tmp_path):
    """`python -m reproduce.train ... --set train.distribute=multi_worker` on two loopback workers:
    the chief trains in --run-dir, worker 1 in <run>/workers/1; both end with the parameters of one
    process trained on the whole batch. A signal to one worker stops both after the same
    iteration, and a worker whose checkpoint is behind the chief's is refused."""
    root = Path(__file__).resolve().parent.parent
    run, single = tmp_path / "mw", tmp_path / "single"
    assert _wait(_workers(root, run, 20, tmp_path), tmp_path) == [0, 0]
    subprocess.run(_train_cmd(single, 20), cwd=root, check=True, capture_output=True, timeout=TIMEOUT)
    (n0, chief), (n1, other), (ns, ref) = _params(run), _params(run / "workers" / "1"), _params(single)
    assert n0 == n1 == ns == 20 and set(chief) == set(ref) and chief
    assert not (run / "workers" / "0").exists() and (run / "metrics.jsonl").exists()
    for k in ref:
        np.testing.assert_allclose(chief[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_array_equal(chief[k], other[k])

    # SIGTERM to worker 1 only: both save after the same iteration and stop
    procs = _workers(root, run, 10 ** 6, tmp_path)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and len(metrics.read_text().splitlines()) < 8 and procs[0].poll() is None:
        time.sleep(0.2)
    procs[1].send_signal(__import__("signal").SIGTERM)
    assert _wait(procs, tmp_path) == [130, 130]
    (n0, chief), (n1, other) = _params(run), _params(run / "workers" / "1")
    assert n0 == n1 > 20
    for k in chief:
        np.testing.assert_array_equal(chief[k], other[k])

    # a worker behind the chief is refused, by both, before anything is trained
    for f in (run / "workers" / "1" / "checkpoints").iterdir():
        f.unlink()
    procs = _workers(root, run, n0 + 10, tmp_path)
    assert _wait(procs, tmp_path) == [2, 2]
    assert "resume at different iterations" in (tmp_path / "w0.log").read_text()
    assert _params(run)[0] == n0
