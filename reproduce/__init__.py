"""Experiment entry points: each is a config (reproduce/configs/...) plus a thin script."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
