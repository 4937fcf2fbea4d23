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

    def _update_derived(self) -> None:
        # Positions/velocities changed by mj_step: recompute kinematics, CoM frames and the subtree
        # CoM velocities (what rllab's model.forward() + body_comvels gave).  No contacts needed.
        m, d = self.model, self.data
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_comVel(m, d)
        mujoco.mj_subtreeVel(m, d)

    def _base_obs(self) -> np.ndarray:
        if self.obs_mode == "rllab":
            return np.concatenate(
                [self.data.qpos[1:], self.data.qvel, self.data.subtree_com[self._torso_id]]
            ).astype(np.float64)
        return HalfCheetahEnv._get_obs(self)

    def step(self, action):
        if self._task_value is None:
            raise RuntimeError("call reset() (or set_task) before step()")
        ctrl, a_norm = self._rescale_action(action)
        x_before = float(self.data.qpos[0])
        n_bad = self._instability_count()
        self.do_simulation(ctrl, self.frame_skip)
        velocity = self._forward_velocity(x_before)
        forward_reward = self._task_reward(velocity)
        ctrl_cost = self._ctrl_cost_weight * float(np.sum(np.square(a_norm)))
        reward = forward_reward - ctrl_cost
        observation = self._get_obs()
        info = {
            "x_position": float(self.data.qpos[0]),
            "x_velocity": velocity,
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
            "unstable": self._instability_count() > n_bad,
        }
        if self.render_mode == "human":
            self.render()
        return observation, float(reward), False, False, info

    _BATCH_SETTINGS = ("frame_skip", "velocity_mode", "obs_mode", "oracle", "_ctrl_cost_weight",
                       "_exclude_current_positions_from_observation", "render_mode")

    @classmethod
    def step_many(cls, envs: list, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`step` of several envs at once (`can_step_many(envs)` must hold): observations [n, d],
        rewards [n] and terminated [n] (never: the cheetah does not terminate), the same numbers
        bit for bit as n calls of `step` (tested). What costs little per env in `step` is done once
        for all here: the action's rescaling and control cost, the task reward and the observation
        are vectorised over the envs; each env's own work is its MuJoCo step and derived
        quantities. `info` is not built (its `unstable` flag: `step`)."""
        first = envs[0]
        m, n, fs = first.model, len(envs), first.frame_skip
        ctrl, squares = first._batch_controls(actions)
        ctrl_cost = first._ctrl_cost_weight * squares
        qpos, qvel = np.empty((n, m.nq)), np.empty((n, m.nv))
        velocity = np.empty(n)
        com = np.empty((n, 3)) if first.obs_mode == "rllab" else None
        task = np.empty(n)
        torso, by_com = first._torso_id, first.velocity_mode == "com"
        step, kin, com_pos, com_vel, sub_vel = (mujoco.mj_step, mujoco.mj_kinematics, mujoco.mj_comPos,
                                               mujoco.mj_comVel, mujoco.mj_subtreeVel)
        for k, e in enumerate(envs):
            if e._task_value is None:
                raise RuntimeError("call reset() (or set_task) before step()")
            d = e.data
            x_before = d.qpos[0]
            d.ctrl[:] = ctrl[k]
            step(m, d, nstep=fs)
            kin(m, d)  # = _update_derived
            com_pos(m, d)
            com_vel(m, d)
            sub_vel(m, d)
            qpos[k], qvel[k] = d.qpos, d.qvel
            velocity[k] = d.subtree_linvel[torso, 0] if by_com else (d.qpos[0] - x_before) / e.dt
            if com is not None:
                com[k] = d.subtree_com[torso]
            task[k] = e._task_value
        forward = first._task_reward(velocity, task)
        if first.obs_mode == "rllab":
            obs = [qpos[:, 1:], qvel, com]
        else:
            obs = [qpos[:, 1:] if first._exclude_current_positions_from_observation else qpos, qvel]
        if first.oracle:
            obs.append(task[:, None])
        return np.concatenate(obs, axis=1), forward - ctrl_cost, np.zeros(n, bool)


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
