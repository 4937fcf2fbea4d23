"""The 2D point navigation task as a native NumPy vector environment: every sub-environment of a
meta-batch stepped in one array operation (the same dynamics, reward and termination as
``point.Point2DEnv``, sub-environment by sub-environment; tested against it).
"""
from __future__ import annotations

__all__ = ["Point2DVectorEnv"]

from typing import Any

import numpy as np

from gymnasium import spaces
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space

from maml_tf.envs.point import (GOAL_HIGH, GOAL_LOW, MAX_SPEED, REWARD_TYPES, SUCCESS_TOL, AutoresetMode,
                                _action_to_velocity, _autoreset_mode, _goal_from_task, _reward_and_done, sample_point_tasks)


class Point2DVectorEnv(VectorEnv):
    """``num_envs`` point envs stepped together with numpy, each with its own task.

    Same observations, rewards, terminations and truncations as a ``SyncVectorEnv`` of
    ``gym.make("maml/Point2D-v0")`` envs given the same tasks and actions (tested step for step).
    Created by ``gym.make_vec("maml/Point2D-v0", num_envs=n)`` (the registered vector entry point)
    or directly.

    Args:
        num_envs: number of sub-environments.
        max_episode_steps: horizon (truncation after this many steps; 100 for the paper).
        tasks: optional list of ``num_envs`` tasks.
        autoreset_mode: an ``AutoresetMode`` or its name: ``"next_step"`` (default, like
            SyncVectorEnv), ``"same_step"`` (final observation in ``info["final_obs"]`` with mask
            ``info["_final_obs"]``) or ``"disabled"`` (reset finished envs yourself with
            ``options={"reset_mask": mask}``).
        remaining args: as ``Point2DEnv``.
    """

    def __init__(
        self,
        num_envs: int,
        max_episode_steps: int | None = 100,
        tasks: list | None = None,
        oracle: bool = False,
        reward_type: str = "distance",
        normalized_actions: bool = True,
        max_speed: float = MAX_SPEED,
        goal_low: float = GOAL_LOW,
        goal_high: float = GOAL_HIGH,
        success_tol: float = SUCCESS_TOL,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
    ):
        if reward_type not in REWARD_TYPES:
            raise ValueError(f"reward_type must be one of {REWARD_TYPES}, got {reward_type!r}")
        self.num_envs = int(num_envs)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.oracle = bool(oracle)
        self.reward_type = reward_type
        self.normalized_actions = bool(normalized_actions)
        self.max_speed = float(max_speed)
        self.goal_low = float(goal_low)
        self.goal_high = float(goal_high)
        self.success_tol = float(success_tol)
        self.render_mode = render_mode
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.metadata = {"render_modes": [], "autoreset_mode": self.autoreset_mode}

        bound = 1.0 if self.normalized_actions else self.max_speed
        self.single_action_space = spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)
        obs_dim = 4 if self.oracle else 2
        self.single_observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

        n = self.num_envs
        self._goals = np.zeros((n, 2), dtype=np.float64)
        self._has_task = np.zeros(n, dtype=bool)
        self._pos = np.zeros((n, 2), dtype=np.float64)
        self._elapsed = np.zeros(n, dtype=np.int64)
        self._autoreset_envs = np.zeros(n, dtype=bool)
        self._started = False
        if tasks is not None:
            self.set_tasks(tasks)

    # ----------------------------------------------------------------- task API
    def sample_tasks(self, n: int, rng_or_seed=None) -> list[dict]:
        """``n`` tasks ``{"goal": array(2)}`` drawn with ``rng_or_seed`` (Generator, int or None)."""
        return sample_point_tasks(n, rng_or_seed, self.goal_low, self.goal_high)

    def set_tasks(self, tasks, indices=None) -> None:
        """Assign tasks: ``tasks`` is a list (one per index) or a single task for all ``indices``.

        ``indices`` defaults to all sub-envs.  Takes effect immediately (the next reward uses it).
        """
        idx = np.arange(self.num_envs) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if isinstance(tasks, (list, tuple)):
            if len(tasks) != len(idx):
                raise ValueError(f"got {len(tasks)} tasks for {len(idx)} sub-environments")
            goals = [_goal_from_task(t) for t in tasks]
        else:
            goals = [_goal_from_task(tasks)] * len(idx)
        for i, g in zip(idx, goals):
            self._goals[i] = g
            self._has_task[i] = True

    def set_task(self, task) -> None:
        """The same task for every sub-env (mirrors ``SyncVectorEnv.call("set_task", task)``)."""
        self.set_tasks(task)

    def get_tasks(self) -> list[dict | None]:
        return [{"goal": self._goals[i].copy()} if self._has_task[i] else None for i in range(self.num_envs)]

    @property
    def tasks(self) -> list[dict | None]:
        return self.get_tasks()

    @property
    def goals(self) -> np.ndarray:
        return self._goals.copy()

    # The SyncVectorEnv-style attribute API, so a sampler can use one code path for both kinds of
    # vector env: ``vec.set_attr("task", tasks)``, ``vec.get_attr("task")``, ``vec.call(...)``.
    def set_attr(self, name: str, values) -> None:
        """Only ``"task"`` is supported: a list of ``num_envs`` tasks, or one task for all."""
        if name != "task":
            raise AttributeError(f"Point2DVectorEnv.set_attr only supports 'task', got {name!r}")
        if isinstance(values, (list, tuple)):
            self.set_tasks(list(values))
        else:
            self.set_tasks(values)

    def get_attr(self, name: str) -> tuple:
        if name == "task":
            return tuple(self.get_tasks())
        return tuple(getattr(self, name) for _ in range(self.num_envs))

    def call(self, name: str, *args, **kwargs) -> tuple:
        if name == "set_task":
            self.set_tasks(*args, **kwargs)
            return tuple(None for _ in range(self.num_envs))
        if name in ("get_task", "task"):
            return tuple(self.get_tasks())
        if name == "sample_tasks":
            out = self.sample_tasks(*args, **kwargs)
            return tuple(out for _ in range(self.num_envs))
        attr = getattr(self, name)
        value = attr(*args, **kwargs) if callable(attr) else attr
        return tuple(value for _ in range(self.num_envs))

    # --------------------------------------------------------------- gym API
    def _obs(self, rows=None) -> np.ndarray:
        pos = self._pos if rows is None else self._pos[rows]
        if not self.oracle:
            return pos.copy()
        goals = self._goals if rows is None else self._goals[rows]
        return np.concatenate([pos, goals], axis=-1)

    def _reset_rows(self, mask: np.ndarray) -> None:
        self._pos[mask] = 0.0
        self._elapsed[mask] = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset all sub-envs (or those in ``options["reset_mask"]``).

        options: ``"tasks"`` (list of ``num_envs`` tasks) or ``"task"`` (one task for all);
        ``"reset_mask"`` (bool array) to reset only some sub-envs.  Sub-envs that never had a
        task get one drawn from this env's ``np_random`` (seeded by ``seed``).
        """
        super().reset(seed=seed)
        options = dict(options) if options else {}
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        else:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        if options.get("tasks") is not None:
            self.set_tasks(list(options["tasks"]))
        elif options.get("task") is not None:
            self.set_tasks(options["task"], indices=np.flatnonzero(mask))
        missing = mask & ~self._has_task
        if missing.any():
            idx = np.flatnonzero(missing)
            self.set_tasks(self.sample_tasks(len(idx), self.np_random), indices=idx)
        self._reset_rows(mask)
        self._autoreset_envs[mask] = False
        self._started = True
        return self._obs(), {}

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        n = self.num_envs
        actions = np.asarray(actions)
        if actions.shape != (n, 2):
            raise ValueError(f"actions must have shape ({n}, 2), got {actions.shape}")
        infos: dict[str, Any] = {}

        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            resetting = self._autoreset_envs.copy()
        elif self.autoreset_mode == AutoresetMode.DISABLED:
            if self._autoreset_envs.any():
                raise RuntimeError(
                    "autoreset_mode='disabled': reset finished sub-envs with options={'reset_mask': mask} "
                    f"before stepping them again (finished: {np.flatnonzero(self._autoreset_envs)})"
                )
            resetting = np.zeros(n, dtype=bool)
        else:
            resetting = np.zeros(n, dtype=bool)
        stepping = ~resetting

        velocity = _action_to_velocity(actions, self.normalized_actions, self.max_speed)
        new_pos = self._pos + velocity
        self._pos = np.where(stepping[:, None], new_pos, self._pos)
        self._elapsed = self._elapsed + stepping
        reward, terminated = _reward_and_done(self._pos, self._goals, self.reward_type, self.success_tol)
        reward = np.where(stepping, reward, 0.0).astype(np.float64)
        terminated = terminated & stepping
        if self.max_episode_steps is None:
            truncated = np.zeros(n, dtype=bool)
        else:
            truncated = (self._elapsed >= self.max_episode_steps) & stepping
        if resetting.any():
            self._reset_rows(resetting)

        done = terminated | truncated
        obs = self._obs()
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            infos["final_obs"] = obs.copy()
            infos["_final_obs"] = done.copy()
            self._reset_rows(done)
            obs = self._obs()
        self._autoreset_envs = done.copy()
        return obs, reward, terminated, truncated, infos

    def render(self):
        return None
