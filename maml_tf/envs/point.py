"""2D point navigation tasks (MAML paper, section 5.3, "2D Navigation").

Facts taken from the official code (``cbfinn/maml_rl``: ``maml_examples/point_env_randgoal.py``,
``maml_examples/point_env_randgoal_oracle.py``, ``maml_examples/maml_trpo_point.py`` and
``rllab/envs/normalized_env.py``):

* task: a goal drawn uniformly from ``[-0.5, 0.5]^2``; the agent always starts at the origin;
* observation: the current 2D position (the oracle variant appends the goal, giving 4 numbers);
* action: a 2D velocity, the next position is ``position + velocity``.  The official point env has
  ``Box(-0.1, 0.1)`` actions and is wrapped in rllab's ``normalize``, so the policy acts in
  ``[-1, 1]`` and the action is rescaled ``lb + (a + 1) * (ub - lb) / 2`` and clipped to
  ``[-0.1, 0.1]`` per axis.  ``normalized_actions=True`` (default) reproduces that; with
  ``normalized_actions=False`` the action space is ``Box(-0.1, 0.1)`` and actions are only clipped;
* reward: ``-||position - goal||`` (Euclidean distance) in the official code, computed after the
  move.  The paper text says "negative squared distance"; pass ``reward_type="squared"`` for that.
  The default, ``"distance"``, is the official code's choice (the numbers in the paper were produced
  by it);
* termination: when ``|x - gx| < 0.01`` and ``|y - gy| < 0.01`` after the move;
* horizon: 100 steps (``max_episode_steps=100`` at registration, i.e. a ``TimeLimit``).

Task API (both classes): ``sample_tasks(n, rng_or_seed) -> [{"goal": array(2)}, ...]``,
``set_task(task)`` / ``get_task()`` / the ``task`` property, and ``reset(options={"task": task})``.
A task persists across resets until it is changed.  If no task was ever set, the first reset draws
one from the env's own ``np_random`` (like the official env, which drew a goal once and kept it).

``Point2DVectorEnv`` (``point_vector.py``) is a natively vectorised (numpy) version, a ``gymnasium.vector.VectorEnv``
with the same autoreset semantics as ``gymnasium.vector.SyncVectorEnv`` (``"next_step"`` by default,
``"same_step"`` and ``"disabled"`` also supported) and with the time limit built in.  Per-env tasks:
``set_tasks(list_of_n_tasks)``, ``set_attr("task", list_of_n_tasks)`` (the same call works on a
``SyncVectorEnv`` of single envs), or ``reset(options={"tasks": list_of_n_tasks})``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import gymnasium as gym
from gymnasium import spaces

try:  # gymnasium >= 1.1
    from gymnasium.vector import AutoresetMode
except ImportError:  # pragma: no cover - older gymnasium
    from gymnasium.vector.vector_env import AutoresetMode

__all__ = ["Point2DEnv", "sample_point_tasks"]

GOAL_LOW = -0.5
GOAL_HIGH = 0.5
MAX_SPEED = 0.1
SUCCESS_TOL = 0.01
REWARD_TYPES = ("distance", "squared")


def _as_rng(rng_or_seed) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed, a SeedSequence or None."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def sample_point_tasks(n: int, rng_or_seed=None, low: float = GOAL_LOW, high: float = GOAL_HIGH):
    """``n`` point-navigation tasks ``{"goal": float64 array of shape (2,)}``, goals U[low, high]^2."""
    rng = _as_rng(rng_or_seed)
    goals = rng.uniform(low, high, size=(int(n), 2))
    return [{"goal": g.copy()} for g in goals]


def _goal_from_task(task) -> np.ndarray:
    """Accepts ``{"goal": xy}`` or a bare ``xy``; returns a float64 array of shape (2,)."""
    if isinstance(task, dict):
        if "goal" not in task:
            raise KeyError(f"point task must have a 'goal' entry, got keys {list(task)}")
        task = task["goal"]
    goal = np.asarray(task, dtype=np.float64).reshape(-1)
    if goal.shape != (2,) or not np.all(np.isfinite(goal)):
        raise ValueError(f"point goal must be 2 finite numbers, got {task!r}")
    return goal.copy()


def _autoreset_mode(mode) -> AutoresetMode:
    """An ``AutoresetMode`` from the enum, its value (``"NextStep"``) or e.g. ``"next_step"``."""
    if isinstance(mode, AutoresetMode):
        return mode
    key = str(mode).replace("_", "").replace("-", "").lower()
    for member in AutoresetMode:
        if member.value.lower() == key or member.name.replace("_", "").lower() == key:
            return member
    raise ValueError(f"unknown autoreset mode {mode!r}; expected one of {[m.value for m in AutoresetMode]}")


def _action_to_velocity(action, normalized: bool, max_speed: float) -> np.ndarray:
    """rllab NormalizedEnv rescaling (``lb + (a + 1) * 0.5 * (ub - lb)``) then clipping.

    Works on a single action (2,) or a batch (n, 2); shared by the single and the vector env so
    both produce bit-identical states.
    """
    a = np.asarray(action, dtype=np.float64)
    lb, ub = -max_speed, max_speed
    if normalized:
        a = lb + (a + 1.0) * 0.5 * (ub - lb)
    return np.clip(a, lb, ub)


def _reward_and_done(pos, goal, reward_type: str, tol: float):
    """Reward and termination after the move; works on (2,) or (n, 2) arrays."""
    diff = pos - goal
    sq = np.sum(np.square(diff), axis=-1)
    reward = -np.sqrt(sq) if reward_type == "distance" else -sq
    done = np.all(np.abs(diff) < tol, axis=-1)
    return reward, done


def optimal_returns(goals, horizon: int = 100, max_speed: float = MAX_SPEED, reward_type: str = "distance",
                    tol: float = SUCCESS_TOL) -> np.ndarray:
    """The best return an episode can have for each goal in `goals` [n, 2]: every step moves each
    coordinate straight toward the goal by up to `max_speed` (the action's limit), which makes
    each coordinate's distance, and with it the distance and the reward after every step, as small
    as any policy can; the episode ends as the env's (`_reward_and_done`) or at `horizon`."""
    goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)
    pos = np.zeros_like(goals)
    total, live = np.zeros(len(goals)), np.ones(len(goals), dtype=bool)
    for _ in range(horizon):
        pos = pos + np.clip(goals - pos, -max_speed, max_speed)
        reward, done = _reward_and_done(pos, goals, reward_type, tol)
        total += np.where(live, reward, 0.0)
        live &= ~done
        if not live.any():
            break
    return total


class Point2DEnv(gym.Env):
    """Point agent moving to a goal in 2D; see the module docstring for the exact rules.

    Args:
        task: initial task (``{"goal": xy}``), optional.
        oracle: append the goal to the observation (obs = [x, y, gx, gy]).
        reward_type: ``"distance"`` (official code, default) or ``"squared"`` (paper text).
        normalized_actions: policy acts in [-1, 1], rescaled to [-0.1, 0.1] like rllab's
            ``normalize`` (default); if False the action space is [-0.1, 0.1] itself.
        max_speed: per-axis velocity bound (0.1).
        goal_low, goal_high: range of the goal distribution used by ``sample_tasks``.
        success_tol: per-axis distance under which the episode terminates (0.01).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: dict | None = None,
        oracle: bool = False,
        reward_type: str = "distance",
        normalized_actions: bool = True,
        max_speed: float = MAX_SPEED,
        goal_low: float = GOAL_LOW,
        goal_high: float = GOAL_HIGH,
        success_tol: float = SUCCESS_TOL,
        render_mode: str | None = None,
    ):
        if reward_type not in REWARD_TYPES:
            raise ValueError(f"reward_type must be one of {REWARD_TYPES}, got {reward_type!r}")
        self.oracle = bool(oracle)
        self.reward_type = reward_type
        self.normalized_actions = bool(normalized_actions)
        self.max_speed = float(max_speed)
        self.goal_low = float(goal_low)
        self.goal_high = float(goal_high)
        self.success_tol = float(success_tol)
        self.render_mode = render_mode

        bound = 1.0 if self.normalized_actions else self.max_speed
        self.action_space = spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)
        obs_dim = 4 if self.oracle else 2
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)

        self._goal: np.ndarray | None = None
        self._pos = np.zeros(2, dtype=np.float64)
        if task is not None:
            self.set_task(task)

    # ----------------------------------------------------------------- task API
    def sample_tasks(self, n: int, rng_or_seed=None) -> list[dict]:
        """``n`` tasks ``{"goal": array(2)}`` drawn with ``rng_or_seed`` (Generator, int or None)."""
        return sample_point_tasks(n, rng_or_seed, self.goal_low, self.goal_high)

    def set_task(self, task) -> None:
        """Set the goal (``{"goal": xy}`` or a bare ``xy``); it persists across resets."""
        self._goal = _goal_from_task(task)

    def get_task(self) -> dict | None:
        return None if self._goal is None else {"goal": self._goal.copy()}

    @property
    def task(self) -> dict | None:
        return self.get_task()

    @task.setter
    def task(self, task) -> None:
        self.set_task(task)

    @property
    def goal(self) -> np.ndarray | None:
        return None if self._goal is None else self._goal.copy()

    # --------------------------------------------------------------- gym API
    def _obs(self) -> np.ndarray:
        if self.oracle:
            return np.concatenate([self._pos, self._goal])
        return self._pos.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # Always consume one draw, so that the RNG stream does not depend on whether a task was set.
        fallback_seed = int(self.np_random.integers(2**63 - 1))
        if options is not None and options.get("task") is not None:
            self.set_task(options["task"])
        elif self._goal is None:
            self.set_task(self.sample_tasks(1, fallback_seed)[0])
        self._pos = np.zeros(2, dtype=np.float64)
        return self._obs(), {"goal": self._goal.copy()}

    def step(self, action):
        if self._goal is None:
            raise RuntimeError("call reset() before step()")
        velocity = _action_to_velocity(action, self.normalized_actions, self.max_speed)
        self._pos = self._pos + velocity
        reward, done = _reward_and_done(self._pos, self._goal, self.reward_type, self.success_tol)
        info = {"distance": float(np.linalg.norm(self._pos - self._goal))}
        return self._obs(), float(reward), bool(done), False, info

    def render(self):
        return None
