"""Appendix C baselines: multi-task parameter averaging."""
import dataclasses

import numpy as np
import pytest

from maml_tf import multitask

FAST = dataclasses.replace(multitask.Settings(), target=0.3, max_steps=5000, check_every=100,
                           restart_after=1000, chunks=2)


def test_regressors_trained_side_by_side_each_reach_the_target_and_are_averaged():
    r = multitask.train_regressors(FAST, "none", 0.0, seed=0, n=6)
    assert r["reached"] == 6, r
    assert 0 < r["median_steps"] <= FAST.max_steps
    assert set(r["average"]) == {"w1", "b1", "w2", "b2", "w3", "b3"}
    assert r["average"]["w1"].shape == (1, 40)  # one shared network, no task axis
    # the same seed trains the same regressors
    again = multitask.train_regressors(FAST, "none", 0.0, seed=0, n=6)
    np.testing.assert_array_equal(again["average"]["w2"], r["average"]["w2"])


def test_each_regularisation_moves_the_regressors_the_expected_way():
    free = multitask.train_regressors(FAST, "none", 0.0, seed=3, n=8)
    decay = multitask.train_regressors(FAST, "l2", 3e-3, seed=3, n=8)
    pulled = multitask.train_regressors(FAST, "mean", 0.3, seed=3, n=8)
    assert decay["param_norm"] < 0.9 * free["param_norm"], (decay["param_norm"], free["param_norm"])
    assert pulled["spread"] < 0.9 * free["spread"], (pulled["spread"], free["spread"])


def test_unknown_regularisation_is_refused():
    with pytest.raises(ValueError, match="none, l2 or mean"):
        multitask.train_regressors(FAST, "dropout", 0.1, seed=0, n=2)
