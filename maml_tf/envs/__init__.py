"""Meta-RL task environments of the MAML paper, registered with Gymnasium on import.

Registered ids (``gym.make(id)``; horizon = ``max_episode_steps``):

=============================== ====================================== =======
id                              task                                   horizon
=============================== ====================================== =======
``maml/Point2D-v0``             2D point, goal U[-0.5, 0.5]^2          100
``maml/Point2DOracle-v0``       same, goal appended to the observation 100
``maml/HalfCheetahVel-v0``      cheetah goal velocity U[0, 2]          200
``maml/HalfCheetahVelOracle-v0``                                       200
``maml/HalfCheetahDir-v0``      cheetah forward / backward             200
``maml/HalfCheetahDirOracle-v0``                                       200
``maml/AntVel-v0``              ant goal velocity U[0, 3]              200
``maml/AntVelOracle-v0``                                               200
``maml/AntDir-v0``              ant forward / backward                 200
``maml/AntDirOracle-v0``                                               200
=============================== ====================================== =======

Constructor options can be passed through ``gym.make(id, **kwargs)`` (e.g.
``reward_type="squared"`` for the point, ``frame_skip=5`` / ``obs_mode="rllab"`` /
``velocity_mode="finite_difference"`` for the MuJoCo bodies, ``timestep`` / ``frame_skip=2`` for
the ant's integration); see ``point.py`` and ``locomotion.py``.  ``integration_check.py`` compares
the ant's integrations on fixed policies.

Task API on every (unwrapped) env: ``sample_tasks(n, rng_or_seed)``, ``set_task(task)``,
``get_task()``, the ``task`` property, and ``reset(options={"task": task})``.

Vector envs: ``gym.make_vec("maml/Point2D-v0", num_envs=n)`` gives the native numpy
``Point2DVectorEnv`` (registered vector entry point); ``gym.make_vec(mujoco_id, num_envs=n,
vectorization_mode="sync")`` gives a ``SyncVectorEnv``.  Both accept per-env tasks through
``vec.set_attr("task", tasks)``; ``set_tasks(vec, tasks)`` below does that for either.

Importing this package does not import MuJoCo; the locomotion classes are loaded lazily.
"""

from __future__ import annotations

import gymnasium as gym

from .point import Point2DEnv, sample_point_tasks
from .point_vector import Point2DVectorEnv

__all__ = [
    "ENV_IDS",
    "POINT_IDS",
    "MUJOCO_IDS",
    "ORACLE_IDS",
    "register_envs",
    "set_tasks",
    "get_tasks",
    "Point2DEnv",
    "Point2DVectorEnv",
    "sample_point_tasks",
    "MetaHalfCheetahEnv",
    "MetaAntEnv",
    "HalfCheetahVelEnv",
    "HalfCheetahDirEnv",
    "AntVelEnv",
    "AntDirEnv",
]

_POINT = "maml_tf.envs.point"
_POINT_VEC = "maml_tf.envs.point_vector"
_CHEETAH = "maml_tf.envs.cheetah"
_ANT = "maml_tf.envs.ant"

# id -> (entry point, kwargs, max_episode_steps, vector entry point)
_SPECS: dict[str, tuple[str, dict, int, str | None]] = {
    "maml/Point2D-v0": (f"{_POINT}:Point2DEnv", {}, 100, f"{_POINT_VEC}:Point2DVectorEnv"),
    "maml/Point2DOracle-v0": (f"{_POINT}:Point2DEnv", {"oracle": True}, 100, f"{_POINT_VEC}:Point2DVectorEnv"),
    "maml/HalfCheetahVel-v0": (f"{_CHEETAH}:HalfCheetahVelEnv", {}, 200, None),
    "maml/HalfCheetahVelOracle-v0": (f"{_CHEETAH}:HalfCheetahVelEnv", {"oracle": True}, 200, None),
    "maml/HalfCheetahDir-v0": (f"{_CHEETAH}:HalfCheetahDirEnv", {}, 200, None),
    "maml/HalfCheetahDirOracle-v0": (f"{_CHEETAH}:HalfCheetahDirEnv", {"oracle": True}, 200, None),
    "maml/AntVel-v0": (f"{_ANT}:AntVelEnv", {}, 200, None),
    "maml/AntVelOracle-v0": (f"{_ANT}:AntVelEnv", {"oracle": True}, 200, None),
    "maml/AntDir-v0": (f"{_ANT}:AntDirEnv", {}, 200, None),
    "maml/AntDirOracle-v0": (f"{_ANT}:AntDirEnv", {"oracle": True}, 200, None),
}

ENV_IDS: tuple[str, ...] = tuple(_SPECS)
POINT_IDS: tuple[str, ...] = tuple(i for i in ENV_IDS if "Point" in i)
MUJOCO_IDS: tuple[str, ...] = tuple(i for i in ENV_IDS if "Point" not in i)
ORACLE_IDS: tuple[str, ...] = tuple(i for i in ENV_IDS if "Oracle" in i)


def register_envs() -> None:
    """Register all ids with Gymnasium (idempotent; done on import)."""
    for env_id, (entry_point, kwargs, horizon, vector_entry_point) in _SPECS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point=vector_entry_point,
            max_episode_steps=horizon,
            kwargs=dict(kwargs),
        )


def set_tasks(vec_env, tasks) -> None:
    """Give sub-env ``i`` the task ``tasks[i]`` in a ``Point2DVectorEnv`` or a Sync/AsyncVectorEnv.

    Takes effect immediately and persists across (auto)resets; call ``vec_env.reset()`` afterwards
    to start fresh episodes.
    """
    tasks = list(tasks)
    if len(tasks) != vec_env.num_envs:
        raise ValueError(f"got {len(tasks)} tasks for {vec_env.num_envs} sub-environments")
    vec_env.set_attr("task", tasks)


def get_tasks(vec_env) -> list:
    """The current task of every sub-env of a vector env."""
    return list(vec_env.get_attr("task"))


_LAZY = {"MetaHalfCheetahEnv": "cheetah", "HalfCheetahVelEnv": "cheetah", "HalfCheetahDirEnv": "cheetah",
         "MetaAntEnv": "ant", "AntVelEnv": "ant", "AntDirEnv": "ant",
         "sample_velocity_tasks": "locomotion", "sample_direction_tasks": "locomotion"}


def __getattr__(name):  # lazy access to the MuJoCo classes (PEP 562)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_envs()
