"""maml-tf: Model-Agnostic Meta-Learning (Finn, Abbeel, Levine, ICML 2017) in TensorFlow 2."""
import os

# XLA's newer CPU "thunk" runtime runs the per-task batched matmuls of the meta-step about half as
# fast as the classic runtime on this kind of machine (measured: 4.2 ms against 2.0 ms for
# [32, 245, 576] @ [32, 576, 64]; the Omniglot meta-step 112 ms against 80 ms; see README,
# Benchmark). Set before TensorFlow initialises XLA; an explicit XLA_FLAGS setting wins.
if "xla_cpu_use_thunk_runtime" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_thunk_runtime=false").strip()

from maml_tf import _quiet  # noqa: E402

_quiet.install()  # before TensorFlow is imported: its start-up noise stays off the terminal
