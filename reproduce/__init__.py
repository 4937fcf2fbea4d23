"""Experiment entry points: each is a config (reproduce/configs/...) plus a thin script."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import maml_tf  # noqa: E402,F401  (before any entry point imports TensorFlow: see maml_tf/_quiet.py)
