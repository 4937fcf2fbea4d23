"""Ant goal-velocity and goal-direction tasks (MAML paper, section 5.3): Gymnasium's ``Ant-v5``
with the official MAML reward, termination, action interface and initial state, integrated as
rllab's (one RK4 step of 0.02 s per env step); what is shared with the half-cheetah, and the
sources, are in ``locomotion.py``.
"""
from __future__ import annotations

import numpy as np
import mujoco

from gymnasium import utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from maml_tf.envs.locomotion import (ANT_CONTACT_COST, ANT_CTRL_COST, ANT_SURVIVE_REWARD, ANT_VELOCITY_BONUS,
                                     RLLAB_ANT_TIMESTEP, _MetaLocomotionMixin)


class MetaAntEnv(_MetaLocomotionMixin, AntEnv):
    """Ant with the official MAML goal-velocity or goal-direction reward and termination.

    Integration: by default rllab's, one RK4 step of 0.02 s per env step (Gymnasium's ``ant.xml``
    is loaded, then its ``opt.timestep`` 0.01 is set to 0.02; ``frame_skip=1``; dt = 0.02 s).
    ``frame_skip=2`` (with ``timestep`` left at None, or ``timestep=0.01``) gives this package's
    earlier integration, two RK4 steps of 0.01 s (also dt 0.02 s); ``frame_skip=5`` gives
    Gymnasium's five steps of 0.01 s (dt 0.05 s).

    Args:
        task_type: ``"velocity"`` (goal U[0, 3]) or ``"direction"`` (+1 / -1).
        task: initial task, optional.
        oracle: append the task parameter to the observation.
        frame_skip: MuJoCo steps per env step (default 1).
        timestep: the model's ``opt.timestep`` (the integrator stays the XML's RK4).  None
            (default): 0.02 (rllab's) when ``frame_skip`` is 1, otherwise the XML's 0.01.
        velocity_mode: ``"com"`` (official) or ``"finite_difference"`` (torso x displacement / dt).
        reset_mode: ``"rllab"`` (default: init pose from the XML's init_qpos numeric, N(0, 0.01)
            position and N(0, 0.1) velocity noise) or ``"gymnasium"``.
        obs_mode: ``"gymnasium"`` (105 numbers, default) or ``"rllab"`` (125).
        ctrl_cost_weight: 0.005 (official, on the normalised action).
        contact_cost_weight: 5e-4 (official).
        survive_reward: 0.05 (official), paid every step.
        velocity_bonus: 1.0, added every step in the velocity task only (official).
        healthy_z_range: (0.2, 1.0) (official and Gymnasium).
        velocity_range: goal-velocity range for ``sample_tasks`` (official (0, 3)).
        mj_model: an ``mujoco.MjModel`` to step instead of loading the XML (this env gets its own
            ``MjData``); it must come from an env built with the same arguments (its
            ``opt.timestep`` is checked against ``timestep``, never written).  Used by
            ``maml_tf.rl.sampler.make_vec_env`` to share one model between sub-envs.
        **kwargs: passed to Gymnasium's ``AntEnv``.
    """

    def __init__(
        self,
        task_type: str = "velocity",
        task: dict | None = None,
        oracle: bool = False,
        frame_skip: int = 1,
        timestep: float | None = None,
        velocity_mode: str = "com",
        reset_mode: str = "rllab",
        obs_mode: str = "gymnasium",
        ctrl_cost_weight: float = ANT_CTRL_COST,
        contact_cost_weight: float = ANT_CONTACT_COST,
        survive_reward: float = ANT_SURVIVE_REWARD,
        velocity_bonus: float = ANT_VELOCITY_BONUS,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        velocity_range: tuple[float, float] = (0.0, 3.0),
        mj_model: mujoco.MjModel | None = None,
        **kwargs,
    ):
        kwargs.setdefault("exclude_current_positions_from_observation", True)
        kwargs.setdefault("include_cfrc_ext_in_observation", True)
        kwargs.setdefault("contact_force_range", (-1.0, 1.0))
        if timestep is None and int(frame_skip) == 1:
            timestep = RLLAB_ANT_TIMESTEP
        if timestep is not None and not (np.isfinite(timestep) and timestep > 0):
            raise ValueError(f"timestep must be a positive number, got {timestep!r}")
        # read by _initialize_simulation, which AntEnv.__init__ calls (so dt, render_fps agree)
        self._timestep = None if timestep is None else float(timestep)
        self._shared_model = mj_model
        AntEnv.__init__(
            self,
            frame_skip=frame_skip,
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            healthy_reward=survive_reward,
            terminate_when_unhealthy=True,
            healthy_z_range=healthy_z_range,
            **kwargs,
        )
        self._survive_reward = float(survive_reward)
        self._velocity_bonus = float(velocity_bonus)
        self._meta_init(task_type, oracle, velocity_mode, reset_mode, obs_mode, velocity_range, task)
        utils.EzPickle.__init__(
            self,
            task_type=task_type,
            task=task,
            oracle=oracle,
            frame_skip=frame_skip,
            timestep=timestep,
            velocity_mode=velocity_mode,
            reset_mode=reset_mode,
            obs_mode=obs_mode,
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            survive_reward=survive_reward,
            velocity_bonus=velocity_bonus,
            healthy_z_range=healthy_z_range,
            velocity_range=velocity_range,
            mj_model=mj_model,
            **kwargs,
        )

    _BATCH_SETTINGS = ("frame_skip", "velocity_mode", "obs_mode", "oracle", "_ctrl_cost_weight",
                       "_contact_cost_weight", "_survive_reward", "_velocity_bonus", "_healthy_z_range",
                       "_contact_force_range", "_exclude_current_positions_from_observation",
                       "_include_cfrc_ext_in_observation", "render_mode")
    _UNSTABLE_TERMINATES = True  # MuJoCo replaced a non-finite state by qpos0: rllab's "state not finite"

    @staticmethod
    def _derive(m, d) -> None:
        # rllab: model.forward() after stepping (MuJoCo 1.31 also filled cfrc_ext there).
        mujoco.mj_forward(m, d)
        mujoco.mj_rnePostConstraint(m, d)
        mujoco.mj_subtreeVel(m, d)

    def _kept(self) -> list:
        torso = self._torso_id
        kept = [("cfrc", lambda d: d.cfrc_ext)]
        if self.obs_mode == "rllab":
            kept += [("xmat", lambda d: d.xmat[torso]), ("com", lambda d: d.subtree_com[torso])]
        return kept

    def _observation(self, qpos, qvel, kept) -> np.ndarray:
        n, cfrc = len(qpos), kept["cfrc"]
        if self.obs_mode == "rllab":  # qpos, qvel, clipped contact forces of all bodies, torso rotation, CoM
            return np.concatenate([qpos, qvel, np.clip(cfrc, -1.0, 1.0).reshape(n, -1), kept["xmat"], kept["com"]],
                                  axis=1)
        # Gymnasium's: qpos without x, y; qvel; the contact forces clipped to its range, world body left out
        obs = [qpos[:, 2:] if self._exclude_current_positions_from_observation else qpos, qvel]
        if self._include_cfrc_ext_in_observation:
            obs.append(np.clip(cfrc, *self._contact_force_range)[:, 1:].reshape(n, -1))
        return np.concatenate(obs, axis=1)

    def _outcome(self, s, forward, ctrl_cost) -> tuple:
        """The official reward (task term, the velocity task's bonus, control and contact costs,
        survive reward) and termination (an unstable state, or the torso's height out of range)."""
        if self.task_type == "velocity":
            forward = forward + self._velocity_bonus
        contact_cost = self._contact_costs(s.kept["cfrc"])
        reward = forward - ctrl_cost - contact_cost + self._survive_reward
        min_z, max_z = self._healthy_z_range
        healthy = (np.isfinite(s.qpos).all(1) & np.isfinite(s.qvel).all(1) & (min_z <= s.qpos[:, 2])
                   & (s.qpos[:, 2] <= max_z))
        terms = {"reward_forward": forward, "reward_ctrl": -ctrl_cost, "reward_contact": -contact_cost,
                 "reward_survive": self._survive_reward}
        return reward, s.unstable | ~healthy, terms

    def _contact_costs(self, cfrc: np.ndarray) -> np.ndarray:
        """``contact_cost_weight * sum(clip(cfrc_ext, -1, 1)^2)`` over all bodies (official) of n
        envs' contact forces [n, nbody, 6]."""
        return self._contact_cost_weight * np.sum(np.square(np.clip(cfrc, -1.0, 1.0)).reshape(len(cfrc), -1), axis=1)

    @property
    def contact_cost(self) -> float:
        """This env's official contact cost now (Gymnasium's `AntEnv.contact_cost` clips to
        contact_force_range instead)."""
        return float(self._contact_costs(self.data.cfrc_ext[None])[0])

    def _info_positions(self, qpos) -> dict:
        return {"y_position": float(qpos[1]), "z_position": float(qpos[2])}


class AntVelEnv(MetaAntEnv):
    """Goal-velocity ant (``maml/AntVel-v0``)."""

    def __init__(self, **kwargs):
        super().__init__(task_type="velocity", **kwargs)
        utils.EzPickle.__init__(self, **kwargs)


class AntDirEnv(MetaAntEnv):
    """Forward/backward ant (``maml/AntDir-v0``)."""

    def __init__(self, **kwargs):
        super().__init__(task_type="direction", **kwargs)
        utils.EzPickle.__init__(self, **kwargs)
