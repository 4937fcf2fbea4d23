"""Half-cheetah goal-velocity and goal-direction tasks (MAML paper, section 5.3): Gymnasium's
``HalfCheetah-v5`` with the official MAML reward, action interface and initial state; what is
shared with the ant, and the sources, are in ``locomotion.py``.
"""
from __future__ import annotations

import numpy as np
import mujoco

from gymnasium import utils
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from maml_tf.envs.locomotion import CHEETAH_CTRL_COST, _MetaLocomotionMixin


class MetaHalfCheetahEnv(_MetaLocomotionMixin, HalfCheetahEnv):
    """Half-cheetah with the official MAML goal-velocity or goal-direction reward.

    Args:
        task_type: ``"velocity"`` (goal U[0, 2]) or ``"direction"`` (+1 / -1).
        task: initial task, optional.
        oracle: append the task parameter to the observation.
        frame_skip: MuJoCo steps per env step; 1 (default) gives rllab's dt = 0.01 s,
            5 gives Gymnasium's 0.05 s.
        velocity_mode: ``"com"`` (official: whole-body centre-of-mass x velocity) or
            ``"finite_difference"`` (Gymnasium: root x displacement / dt).
        reset_mode: ``"rllab"`` (default) or ``"gymnasium"`` initial-state noise.
        obs_mode: ``"gymnasium"`` (17 numbers, default) or ``"rllab"`` (20).
        ctrl_cost_weight: 0.05 (official).
        velocity_range: goal-velocity range for ``sample_tasks`` (official (0, 2)).
        mj_model: an ``mujoco.MjModel`` to step instead of loading the XML (this env gets its own
            ``MjData``); it must come from an env built with the same arguments (``xml_file``).
            Used by ``maml_tf.rl.sampler.make_vec_env`` to share one model between sub-envs.
        **kwargs: passed to Gymnasium's ``HalfCheetahEnv`` (e.g. ``render_mode``, ``xml_file``,
            ``reset_noise_scale`` for ``reset_mode="gymnasium"``).
    """

    def __init__(
        self,
        task_type: str = "velocity",
        task: dict | None = None,
        oracle: bool = False,
        frame_skip: int = 1,
        velocity_mode: str = "com",
        reset_mode: str = "rllab",
        obs_mode: str = "gymnasium",
        ctrl_cost_weight: float = CHEETAH_CTRL_COST,
        velocity_range: tuple[float, float] = (0.0, 2.0),
        mj_model: mujoco.MjModel | None = None,
        **kwargs,
    ):
        kwargs.setdefault("exclude_current_positions_from_observation", True)
        self._shared_model = mj_model
        HalfCheetahEnv.__init__(self, frame_skip=frame_skip, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self._meta_init(task_type, oracle, velocity_mode, reset_mode, obs_mode, velocity_range, task)
        utils.EzPickle.__init__(
            self,
            task_type=task_type,
            task=task,
            oracle=oracle,
            frame_skip=frame_skip,
            velocity_mode=velocity_mode,
            reset_mode=reset_mode,
            obs_mode=obs_mode,
            ctrl_cost_weight=ctrl_cost_weight,
            velocity_range=velocity_range,
            mj_model=mj_model,
            **kwargs,
        )

    _BATCH_SETTINGS = ("frame_skip", "velocity_mode", "obs_mode", "oracle", "_ctrl_cost_weight",
                       "_exclude_current_positions_from_observation", "render_mode")

    @staticmethod
    def _derive(m, d) -> None:
        # Positions/velocities changed by mj_step: recompute kinematics, CoM frames and the subtree
        # CoM velocities (what rllab's model.forward() + body_comvels gave).  No contacts needed.
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_comVel(m, d)
        mujoco.mj_subtreeVel(m, d)

    def _kept(self) -> list:
        torso = self._torso_id
        return [("com", lambda d: d.subtree_com[torso])] if self.obs_mode == "rllab" else []

    def _observation(self, qpos, qvel, kept) -> np.ndarray:
        if self.obs_mode == "rllab":  # qpos[1:] (8), qvel (9), the torso subtree's centre of mass (3)
            return np.concatenate([qpos[:, 1:], qvel, kept["com"]], axis=1)
        # Gymnasium's: qpos without the root x (17 numbers), unless asked to keep it
        return np.concatenate([qpos[:, 1:] if self._exclude_current_positions_from_observation else qpos, qvel],
                              axis=1)

    def _outcome(self, s, forward, ctrl_cost) -> tuple:
        """The official reward, task term minus control cost; the cheetah never terminates."""
        return forward - ctrl_cost, np.zeros(len(forward), bool), {"reward_forward": forward,
                                                                    "reward_ctrl": -ctrl_cost}


class HalfCheetahVelEnv(MetaHalfCheetahEnv):
    """Goal-velocity half-cheetah (``maml/HalfCheetahVel-v0``)."""

    def __init__(self, **kwargs):
        super().__init__(task_type="velocity", **kwargs)
        utils.EzPickle.__init__(self, **kwargs)


class HalfCheetahDirEnv(MetaHalfCheetahEnv):
    """Forward/backward half-cheetah (``maml/HalfCheetahDir-v0``)."""

    def __init__(self, **kwargs):
        super().__init__(task_type="direction", **kwargs)
        utils.EzPickle.__init__(self, **kwargs)
