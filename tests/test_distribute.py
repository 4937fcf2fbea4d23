"""tf.distribute: a meta-step split over two replicas (one per logical CPU, as distribute.use_cpu_cores
sets up the training entry points on a machine without GPU) equals the single-device step.

Runs in a subprocess, because the two logical CPU devices must be configured before TensorFlow
initialises."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    from maml_tf import config, distribute, train
    distribute.use_cpu_cores(2)  # one single-threaded logical CPU per (virtual) core
    out = {"threads": tf.config.threading.get_intra_op_parallelism_threads(),
           "replicas_for_odd_batch": distribute.make_strategy("mirrored", 7).num_replicas_in_sync}
    for strategy in ("default", "mirrored"):
        cfg = config.from_dict({"experiment": "d", "task": {"kind": "sinusoid"},
                                "model": {"kind": "mlp", "sizes": [1, 40, 40, 1]},
                                "train": {"iterations": 5, "meta_batch": 8, "distribute": strategy,
                                          "log_every": 5, "checkpoint_every": 5}})
        learner = train.train(cfg, sys.argv[1] + "/" + strategy, quiet=True)
        out[strategy] = {"replicas": learner.strategy.num_replicas_in_sync,
                         "params": {k: v.numpy().tolist() for k, v in learner.params.items()}}
    print(json.dumps(out))
""")


def test_mirrored_strategy_matches_single_device(tmp_path):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=root, capture_output=True,
                          text=True, timeout=600, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin",
                                                        "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["default"]["replicas"] == 1 and out["mirrored"]["replicas"] == 2
    assert out["threads"] == 1
    assert out["replicas_for_odd_batch"] == 1  # a meta-batch of 7 cannot be split over 2
    import numpy as np
    for k, v in out["default"]["params"].items():
        np.testing.assert_allclose(out["mirrored"]["params"][k], v, rtol=1e-4, atol=1e-6)
