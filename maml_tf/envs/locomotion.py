"""Half-cheetah and ant goal-velocity / goal-direction tasks (MAML paper, section 5.3): what the two
bodies share (task sampling, reward terms, reset, observation and action interface); the bodies are
``cheetah.py`` and ``ant.py``.

Built by subclassing Gymnasium's MuJoCo ``HalfCheetah-v5`` and ``Ant-v5`` environments: their
models (``half_cheetah.xml`` / ``ant.xml`` shipped with Gymnasium) and physics are reused; the
reward, termination, action interface and initial-state distribution are those of the official
MAML code.  Sources read (GitHub ``cbfinn/maml_rl``, a fork of ``rll/rllab``):
``rllab/envs/mujoco/half_cheetah_env_rand.py``, ``half_cheetah_env_rand_direc.py``,
``ant_env_rand.py``, ``ant_env_rand_direc.py``, ``rllab/envs/mujoco/mujoco_env.py``,
``rllab/envs/normalized_env.py``, ``maml_examples/cluster_maml_trpo_cheetah.py``,
``cluster_maml_trpo_ant.py``, ``sandbox/rocky/tf/algos/batch_maml_polopt.py``; and from
``rll/rllab`` (the fork's copies of these are not stored in the index we searched):
``rllab/mujoco_py/mjcore.py`` (``body_comvels``), ``vendor/mujoco_models/half_cheetah.xml``,
``vendor/mujoco_models/ant.xml``, ``scripts/setup_mujoco.sh``.  Gymnasium 1.2.2's
``envs/mujoco/{mujoco_env,half_cheetah_v5,ant_v5}.py`` and ``assets/{half_cheetah,ant}.xml`` for
the other side.

Tasks and rewards (official code)
---------------------------------
``a`` below is the action after rllab's ``normalize`` rescaling and clipping, expressed in units of
the actuator half-range (so ``a`` is in [-1, 1]); ``v`` is the forward velocity (see below).

* cheetah velocity: goal ``U[0, 2]``; reward ``-|v - goal| - 0.05 * sum(a^2)``; never terminates.
* cheetah direction: direction ``+1 / -1`` with probability 1/2 (official: ``goal ~ U[0, 2]``,
  direction ``-1`` if ``goal < 1``); reward ``direction * v - 0.05 * sum(a^2)``.
* ant velocity: goal ``U[0, 3]``; reward
  ``-|v - goal| + 1.0 - 0.005 * sum(a^2) - 5e-4 * sum(clip(cfrc_ext, -1, 1)^2) + 0.05``.
* ant direction: direction ``+1 / -1`` (official: ``U[0, 3]`` thresholded at 1.5); reward
  ``direction * v - 0.005 * sum(a^2) - 5e-4 * sum(clip(cfrc_ext, -1, 1)^2) + 0.05``.
* ant termination: state not finite, or torso height ``qpos[2]`` outside ``[0.2, 1.0]`` (checked
  after the step; the step's reward, including the 0.05 survive bonus, is still paid).
* horizon 200 for all four (``max_episode_steps=200`` at registration).

The official coefficients: cheetah ``ctrl_cost = 1e-1 * 0.5 * sum(clip(a)^2)`` on the clipped action
(the cheetah's bounds are [-1, 1]); ant ``ctrl_cost = 0.5 * 1e-2 * sum((a / scaling)^2)`` with
``scaling = (ub - lb) / 2 = 150`` for rllab's ant, i.e. the normalised action; ant
``contact_cost = 0.5 * 1e-3 * sum(clip(cfrc_ext, -1, 1)^2)`` over all bodies (the world body's row
is zero in MuJoCo 3); ``survive_reward = 0.05``; the velocity task adds ``+ 1.0`` ("make it happy, not
suicidal").

Forward velocity ``v``: rllab's ``get_body_comvel("torso")[0]``.  In rllab's mujoco_py
(``MjModel._compute_subtree``) that is the linear velocity of each body's centre of mass
(``mj_objectVelocity``, world frame), mass-weighted over the torso's subtree: the x velocity of the
centre of mass of the whole robot (the torso is the root body), evaluated after the step (rllab's
``forward_dynamics`` calls ``model.forward()`` after stepping).  This equals MuJoCo's
``data.subtree_linvel[torso]`` (checked numerically in the tests).  ``velocity_mode="com"``
(default) uses it; ``velocity_mode="finite_difference"`` uses Gymnasium's convention,
``(qpos[0]_after - qpos[0]_before) / dt`` (root x; for the ant ``qpos[0]`` is the torso x).

Action interface: rllab's ``NormalizedEnv`` exposes ``Box(-1, 1)`` and maps an action to
``lb + (a + 1) * 0.5 * (ub - lb)`` then clips to ``[lb, ub]`` (the policy's Gaussian sample itself
is not clipped).  These envs do the same: ``action_space`` is ``Box(-1, 1)``, any finite action is
accepted, rescaled to the actuators' ``ctrlrange`` and clipped; the control costs use the clipped
value.

Differences between Gymnasium's v5 bodies and the rllab ones used by the paper (all verified)
------------------------------------------------------------------------------------------------
1. Control period.  rllab: ``half_cheetah.xml`` has ``timestep=0.01`` (Euler) and ``ant.xml``
   ``timestep=0.02`` (RK4); neither defines the ``frame_skip`` numeric, so rllab's ``MujocoEnv``
   uses ``frame_skip = 1``: dt = 0.01 s (cheetah) and 0.02 s (ant); 200 steps = 2 s / 4 s.
   Gymnasium v5: cheetah ``timestep=0.01`` (Euler), ant ``timestep=0.01`` (RK4), both
   ``frame_skip=5``: dt = 0.05 s.  **Default here: rllab's integration** - the cheetah with
   ``frame_skip=1`` (one Euler step of 0.01 s: dt 0.01, identical integration); the ant loads
   Gymnasium's ``ant.xml`` and sets the model's ``opt.timestep`` to 0.02 with ``frame_skip=1``
   (one RK4 step of 0.02 s per env step: dt 0.02, as rllab).  Other choices: ``frame_skip=5`` for
   Gymnasium's dt 0.05 (both bodies; the ant then keeps the XML's 0.01 timestep); for the ant,
   ``frame_skip=2`` (or ``timestep=0.01, frame_skip=2``) gives two RK4 steps of 0.01 s, this
   package's integration before the rllab one became the default (same dt 0.02, twice the physics
   per env step).  ``maml_tf.envs.integration_check`` compares the two on fixed open-loop policies
   from the same seeds: individual trajectories diverge (torso x ~1.3 m apart after 200 steps;
   contacts make the ant chaotic), but mean returns and episode lengths agree within their 95% CIs
   (100 trajectories per cell), while a doubled dt is clearly detected.  Note that MuJoCo's
   ``refsafe`` (on by default) raises the contact ``solref`` time constant to 2 x timestep, so
   with the 0.02 s step the contacts' 0.02 s becomes 0.04 s.  Ant runs trained with the earlier
   integration must not be resumed under this default (their config does not record it).
2. Actuators.  Cheetah: identical (ctrlrange [-1, 1], gears 120/90/60/120/60/30).  Ant: rllab has
   ``ctrlrange=[-150, 150]`` with gear 1; Gymnasium ``ctrlrange=[-1, 1]`` with ``gear=150``: the
   same torque range.  With the [-1, 1] interface the policy sees no difference, and rllab's ant
   control cost (divided by the half-range 150) is reproduced exactly.
3. Contact parameters.  Cheetah: identical (joint/geom defaults, ``solimp 0 .8 .01``).  Ant: rllab's
   geom default has ``solref=".02 1" solimp=".8 .8 .01"``; Gymnasium's ``ant.xml`` sets neither,
   so MuJoCo's defaults apply (``solimp 0.9 0.95 0.001``), i.e. harder contacts.  Not changed here.
4. Simulator.  rllab ran MuJoCo 1.31 (``scripts/setup_mujoco.sh`` installs ``mjpro131``); here
   MuJoCo 3.x (different constraint solver defaults; trajectories are not bit-comparable).
5. Contact forces.  Since MuJoCo 2.0, ``mj_forward`` no longer computes ``cfrc_ext`` (only
   ``mj_rnePostConstraint`` does; openai/gym issues #1541, #1711), so in MuJoCo 1.31 rllab's
   ``cfrc_ext`` was populated by ``model.forward()``.  Gymnasium calls ``mj_rnePostConstraint``
   right after ``mj_step``, whose derived quantities (contacts, ``xpos``, ...) still describe the
   state at the start of the last substep, so its observation mixes post-step ``qpos``/``qvel``
   with contact forces from one substep earlier.  Here the ant
   calls ``mj_forward`` + ``mj_rnePostConstraint`` after stepping, so contact forces, CoM velocity
   and observation all describe the post-step state, as in rllab.  (The cheetah only needs
   kinematics and velocities: ``mj_kinematics``, ``mj_comPos``, ``mj_comVel``, ``mj_subtreeVel``.)
6. Observations.  rllab cheetah: ``qpos[1:]`` (8) + ``qvel`` (9) + torso ``com_subtree`` (3, the
   robot's centre of mass including its x) = 20.  Gymnasium cheetah: ``qpos[1:]`` + ``qvel`` = 17.
   rllab ant: full ``qpos`` (15, including x, y) + ``qvel`` (14) + ``clip(cfrc_ext, -1, 1)`` of all
   14 bodies including the world (84) + torso rotation matrix (9) + torso ``com_subtree`` (3) = 125.
   Gymnasium ant: ``qpos[2:]`` (13) + ``qvel`` (14) + ``clip(cfrc_ext[1:], -1, 1)`` (78) = 105.
   **Default here: Gymnasium's observation** (``obs_mode="gymnasium"``); ``obs_mode="rllab"``
   gives rllab's layout (20 / 125).  The oracle variants append the task parameter (1 number).
7. Initial state.  rllab: ``qpos = init_qpos + 0.01 * N(0, 1)``, ``qvel = init_qvel + 0.1 * N(0, 1)``,
   where the ant's ``init_qpos`` comes from the XML's custom numeric ``init_qpos`` (torso z = 0.55,
   ankles at +-1 rad, unit quaternion).  Gymnasium v5: ``qpos = qpos0 + U(-0.1, 0.1)``,
   ``qvel = qvel0 + 0.1 * N(0, 1)``, and it ignores the ``init_qpos`` numeric even though its own
   ``ant.xml`` carries the identical one: its ant starts at z = 0.75 with every joint at 0 (the
   ankles' 0 lies outside their 30-70 degree ranges).  **Default here: rllab's**
   (``reset_mode="rllab"``); ``reset_mode="gymnasium"`` restores Gymnasium's.
8. Rewards.  Gymnasium's: cheetah ``dx/dt - 0.1 * sum(a^2)``; ant ``dx/dt + 1 (healthy) -
   0.5 * sum(a^2) - 5e-4 * sum(clip(cfrc_ext)^2)`` with dx from the torso frame position.  All are
   replaced by the official ones above (note the official ant control weight is 0.005, not 0.5).
9. Healthy range: the same in both (``qpos[2]`` in [0.2, 1.0] and a finite state).  But MuJoCo
   >= 2 never lets a state become non-finite: on NaN / huge values it warns and resets ``mjData``
   to ``qpos0`` (so Gymnasium's finiteness test can never fire).  The ant here terminates when
   MuJoCo reports such a reset during the step (``mjWARN_BADQPOS/BADQVEL/BADQACC``), which is
   rllab's "state not finite" case; ``info["unstable"]`` flags it for both bodies (the cheetah
   never terminates, as in rllab).

Task API
--------
``sample_tasks(n, rng_or_seed) -> [{"velocity": float}, ...]`` or ``[{"direction": +-1.0}, ...]``;
``set_task(task)`` (also accepts a bare number), ``get_task()``, the ``task`` property, and
``reset(options={"task": task})``.  A task persists across resets until changed; if none was ever
set, the first reset draws one from the env's ``np_random``.  ``set_task`` takes effect
immediately.

With ``gymnasium.vector.SyncVectorEnv`` (``gym.make_vec(id, num_envs=n, vectorization_mode="sync")``)
set one task per sub-env with ``vec.set_attr("task", [task_0, ..., task_{n-1}])`` (a property with a
setter on the unwrapped env, reached through the wrappers), then ``vec.reset(seed=...)``; read them
back with ``vec.get_attr("task")``.  ``vec.call("set_task", task)`` or
``vec.reset(options={"task": task})`` give every sub-env the same task.  ``maml_tf.envs.set_tasks``
wraps this for both kinds of vector env.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import mujoco
import numpy as np

from gymnasium import spaces


TASK_TYPES = ("velocity", "direction")
VELOCITY_MODES = ("com", "finite_difference")
RESET_MODES = ("rllab", "gymnasium")
OBS_MODES = ("gymnasium", "rllab")

# Official coefficients (see module docstring).
CHEETAH_CTRL_COST = 0.05  # 1e-1 * 0.5
ANT_CTRL_COST = 0.005  # 0.5 * 1e-2, on the action divided by the half-range
ANT_CONTACT_COST = 5e-4  # 0.5 * 1e-3
ANT_SURVIVE_REWARD = 0.05
ANT_VELOCITY_BONUS = 1.0
RLLAB_QPOS_NOISE = 0.01  # std of N(0, 1) noise added to init_qpos
RLLAB_QVEL_NOISE = 0.1  # std of N(0, 1) noise added to init_qvel
RLLAB_ANT_TIMESTEP = 0.02  # rllab's ant.xml: one RK4 step of 0.02 s per env step
# MuJoCo >= 2 does not propagate NaN / huge values: it warns and resets mjData to qpos0.
_BAD_STATE_WARNINGS = np.array([int(mujoco.mjtWarning.mjWARN_BADQPOS), int(mujoco.mjtWarning.mjWARN_BADQVEL),
                                 int(mujoco.mjtWarning.mjWARN_BADQACC)])


def _as_rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def sample_velocity_tasks(n: int, rng_or_seed=None, low: float = 0.0, high: float = 2.0) -> list[dict]:
    """``n`` tasks ``{"velocity": float}`` with the goal velocity drawn from U[low, high]."""
    rng = _as_rng(rng_or_seed)
    return [{"velocity": float(v)} for v in rng.uniform(low, high, size=int(n))]


def sample_direction_tasks(n: int, rng_or_seed=None) -> list[dict]:
    """``n`` tasks ``{"direction": -1.0 or +1.0}``, each with probability 1/2."""
    rng = _as_rng(rng_or_seed)
    return [{"direction": float(d)} for d in np.where(rng.random(int(n)) < 0.5, -1.0, 1.0)]


class _State(NamedTuple):
    """What `_step_envs` read off n envs after their step: qpos [n, nq], qvel [n, nv], the forward
    velocity and task value [n], the instability flags [n] (watched only for the info or where
    the body terminates on them), and the body's `_kept` arrays by name."""
    qpos: np.ndarray
    qvel: np.ndarray
    velocity: np.ndarray
    task: np.ndarray
    unstable: np.ndarray
    kept: dict


class _MetaLocomotionMixin:
    """Task handling, rllab action interface, oracle observation and rllab reset for both bodies.

    Must come before the Gymnasium env class in the bases.
    """

    # ------------------------------------------------------------ construction
    # Set by the subclass before the Gymnasium constructor runs (it calls _initialize_simulation).
    _timestep: float | None = None  # None: the XML's opt.timestep
    _shared_model: mujoco.MjModel | None = None

    def _initialize_simulation(self):
        """Load the XML's model (and set ``opt.timestep``), or reuse ``mj_model``: own ``MjData``.

        The model is written only here, at load time (``opt.timestep``; Gymnasium's loader sets
        ``vis.global_.offwidth/offheight``); stepping, resets, rewards and observations only write
        ``MjData`` (``mj_step``, ``mj_forward``, ``mj_rnePostConstraint``, ``mj_subtreeVel``,
        ``set_state``) and the renderer only reads the model.  So the sub-envs of one vector env
        can each step their own ``MjData`` on one shared model (``maml_tf.rl.sampler.make_vec_env``)
        with the same results bit for bit.  A shared model is never written: its timestep is
        checked instead.
        """
        model = self._shared_model
        if model is None:
            model, data = super()._initialize_simulation()
            if self._timestep is not None:
                model.opt.timestep = self._timestep
            return model, data
        if not isinstance(model, mujoco.MjModel):
            raise TypeError(f"mj_model must be a mujoco.MjModel, got {type(model).__name__}")
        if self._timestep is not None and model.opt.timestep != self._timestep:
            raise ValueError(f"mj_model has opt.timestep {model.opt.timestep}, this env needs {self._timestep}: "
                             "build the shared model with the same timestep")
        return model, mujoco.MjData(model)

    def _meta_init(self, task_type, oracle, velocity_mode, reset_mode, obs_mode, velocity_range, task):
        # a numpy view of mjData's warning counters (mjData lives as long as the env); building it
        # at every step would cost as much as the simulation step
        self._warning_counts = self.data.warning.number
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        if velocity_mode not in VELOCITY_MODES:
            raise ValueError(f"velocity_mode must be one of {VELOCITY_MODES}, got {velocity_mode!r}")
        if reset_mode not in RESET_MODES:
            raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {reset_mode!r}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        self.task_type = task_type
        self.oracle = bool(oracle)
        self.velocity_mode = velocity_mode
        self.reset_mode = reset_mode
        self.obs_mode = obs_mode
        self.velocity_range = (float(velocity_range[0]), float(velocity_range[1]))
        self._task_value: float | None = None
        self._torso_id = self.model.body("torso").id
        # rllab's MujocoEnv reads init_qpos from the XML's custom numeric when present.
        self._rllab_init_qpos = self.init_qpos.copy()
        for i in range(self.model.nnumeric):
            if self.model.numeric(i).name == "init_qpos":
                data = np.asarray(self.model.numeric(i).data, dtype=np.float64)
                if data.size == self.model.nq:
                    self._rllab_init_qpos = data.copy()
        self._update_derived()
        obs_dim = self._get_obs().size
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)
        if task is not None:
            self.set_task(task)

    def _set_action_space(self):
        """Called by ``MujocoEnv.__init__``: remember the body's bounds, expose Box(-1, 1)."""
        bounds = self.model.actuator_ctrlrange.copy().astype(np.float64)
        self._ctrl_low, self._ctrl_high = bounds.T
        self._ctrl_half_range = 0.5 * (self._ctrl_high - self._ctrl_low)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.model.nu,), dtype=np.float32)
        return self.action_space

    def _controls(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rllab ``NormalizedEnv`` on actions [..., nu]: ``lb + (a + 1) * 0.5 * (ub - lb)``, clipped
        to ``[lb, ub]``; returns the controls sent to MuJoCo and the same divided by the half-range
        (the quantity whose squares the official control costs sum)."""
        ctrl = np.clip(self._ctrl_low + (a + 1.0) * 0.5 * (self._ctrl_high - self._ctrl_low),
                       self._ctrl_low, self._ctrl_high)
        return ctrl, ctrl / self._ctrl_half_range

    # ------------------------------------------------------------------ tasks
    @property
    def task_key(self) -> str:
        return self.task_type

    def sample_tasks(self, n: int, rng_or_seed=None) -> list[dict]:
        """``n`` tasks drawn with ``rng_or_seed`` (a numpy Generator, an int seed or None)."""
        if self.task_type == "velocity":
            return sample_velocity_tasks(n, rng_or_seed, *self.velocity_range)
        return sample_direction_tasks(n, rng_or_seed)

    def set_task(self, task) -> None:
        """``{"velocity": v}`` / ``{"direction": +-1}`` (or the bare number); persists across resets."""
        if isinstance(task, dict):
            if self.task_type not in task:
                raise KeyError(f"{type(self).__name__} expects a task with key {self.task_type!r}, got {list(task)}")
            task = task[self.task_type]
        value = float(np.asarray(task, dtype=np.float64).reshape(()))
        if not np.isfinite(value):
            raise ValueError(f"task value must be finite, got {value}")
        if self.task_type == "direction" and value not in (-1.0, 1.0):
            raise ValueError(f"direction must be -1 or +1, got {value}")
        self._task_value = value

    def get_task(self) -> dict | None:
        return None if self._task_value is None else {self.task_type: self._task_value}

    @property
    def task(self) -> dict | None:
        return self.get_task()

    @task.setter
    def task(self, task) -> None:
        self.set_task(task)

    # ------------------------------------------------------------ stepping: one env or several
    # The one implementation of a step is `_step_envs`, which steps a list of envs of one body at
    # once; `step` is it on [self] (plus Gymnasium's info), `step_many` on the sampler's sub-envs.
    _BATCH_SETTINGS: tuple = ()  # the settings `step_many` needs equal across the envs, besides task_type
    _UNSTABLE_TERMINATES = False  # whether MuJoCo's reset of a bad state ends the episode (the ant)

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.model.nu,):
            raise ValueError(f"action must have shape ({self.model.nu},), got {np.shape(action)}")
        obs, reward, terminated, info = self._step_envs([self], a[None], with_info=True)
        if self.render_mode == "human":
            self.render()
        return obs[0], float(reward[0]), bool(terminated[0]), False, info

    @classmethod
    def step_many(cls, envs: list, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`step` of several envs at once (`can_step_many(envs)` must hold): observations [n, d],
        rewards [n] and terminated [n], computed by the same code as `step`, so the same numbers bit
        for bit. `info` is not built (nor, unless the body terminates on it, its `unstable` flag)."""
        obs, reward, terminated, _ = envs[0]._step_envs(envs, np.asarray(actions, dtype=np.float64))
        return obs, reward, terminated

    @classmethod
    def can_step_many(cls, envs: list) -> bool:
        """Whether the body's `step_many` steps these unwrapped envs as their own `step` would: all
        of this very class, one shared model, the same settings, no rendering."""
        if not envs or any(type(e) is not type(envs[0]) for e in envs) or not isinstance(envs[0], cls):
            return False
        first = envs[0]
        keys = ("task_type", *cls._BATCH_SETTINGS)  # (the task term is computed once for all)
        same = lambda e: all(getattr(e, k) == getattr(first, k) for k in keys)  # noqa: E731
        return first.render_mode is None and all(e.model is first.model and same(e) for e in envs)

    def _step_envs(self, envs: list, actions: np.ndarray, with_info: bool = False):
        """One step of `envs` (this env first; all of one body and settings, on one model) with
        `actions` [n, nu]: (observations [n, d], rewards [n], terminated [n], the info of envs[0]
        or None). Each env's own work is its MuJoCo step and derived quantities, and copying what
        the reward and observation read; the action's rescaling, the costs, the task reward, the
        termination and the observation are numpy over all the envs (`_outcome`, the body's)."""
        m, n, fs = self.model, len(envs), self.frame_skip
        ctrl, a_norm = self._controls(actions.reshape(n, m.nu))
        qpos, qvel = np.empty((n, m.nq)), np.empty((n, m.nv))
        velocity, task, unstable = np.empty(n), np.empty(n), np.zeros(n, bool)
        spec = self._read_spec()
        kept = {name: np.empty((n, *shape)) for name, shape, _ in spec}
        reads = [(kept[name], get) for name, _, get in spec]
        torso, by_com = self._torso_id, self.velocity_mode == "com"
        watch = with_info or self._UNSTABLE_TERMINATES
        step, derive = mujoco.mj_step, self._derive
        for k, e in enumerate(envs):
            if e._task_value is None:
                raise RuntimeError("call reset() (or set_task) before step()")
            d = e.data
            x_before = d.qpos[0]
            if watch:
                n_bad = e._instability_count()
            d.ctrl[:] = ctrl[k]
            step(m, d, nstep=fs)
            derive(m, d)
            if watch:
                unstable[k] = e._instability_count() > n_bad
            qpos[k], qvel[k] = d.qpos, d.qvel
            velocity[k] = d.subtree_linvel[torso, 0] if by_com else (d.qpos[0] - x_before) / e.dt
            for out, get in reads:
                out[k] = get(d)
            task[k] = e._task_value
        forward = self._task_reward(velocity, task)
        ctrl_cost = self._ctrl_cost_weight * np.sum(np.square(a_norm), axis=1)
        reward, terminated, terms = self._outcome(_State(qpos, qvel, velocity, task, unstable, kept), forward,
                                                  ctrl_cost)
        obs = self._observation(qpos, qvel, kept)
        if self.oracle:
            obs = np.concatenate([obs, task[:, None]], axis=1)
        if not with_info:
            return obs, reward, terminated, None
        info = {"x_position": float(qpos[0, 0]), **self._info_positions(qpos[0]), "x_velocity": float(velocity[0]),
                **{k: float(v[0] if isinstance(v, np.ndarray) else v) for k, v in terms.items()},
                "unstable": bool(unstable[0])}
        return obs, reward, terminated, info

    # ------------------------------------------------------------ what each body defines
    @staticmethod
    def _derive(m: mujoco.MjModel, d: mujoco.MjData) -> None:
        """Make the derived quantities the reward and observation read describe the state after
        `mj_step` (rllab's ``model.forward()``)."""
        raise NotImplementedError

    def _kept(self) -> list:
        """(name, data -> array) of what `_outcome` and `_observation` read besides qpos, qvel, the
        velocity and the task, copied from each env after its step (it may depend on obs_mode)."""
        return []

    def _read_spec(self) -> list:
        """`_kept` with each array's shape: (name, shape, data -> array), made again when obs_mode
        changes (the settings `_kept` depends on)."""
        cached = getattr(self, "_read_cache", None)
        if cached is None or cached[0] != self.obs_mode:
            cached = self._read_cache = (self.obs_mode, [(name, np.shape(get(self.data)), get)
                                                         for name, get in self._kept()])
        return cached[1]

    def _observation(self, qpos: np.ndarray, qvel: np.ndarray, kept: dict) -> np.ndarray:
        """The observations [n, d] of n envs (without the oracle's task value) from their qpos,
        qvel and `_kept` arrays: after a step and at reset alike."""
        raise NotImplementedError

    def _outcome(self, s: "_State", forward: np.ndarray, ctrl_cost: np.ndarray) -> tuple:
        """(rewards [n], terminated [n], the reward terms of the info: name -> [n] or a number) of
        the stepped envs, from their state `s`, the task reward `forward` and the control cost."""
        raise NotImplementedError

    def _info_positions(self, qpos: np.ndarray) -> dict:
        return {}

    def _update_derived(self) -> None:
        self._derive(self.model, self.data)

    # ------------------------------------------------------------ simulation
    def _step_mujoco_simulation(self, ctrl, n_frames):  # Gymnasium's do_simulation (not used by step)
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=n_frames)
        self._update_derived()

    def _instability_count(self) -> int:
        """How many times MuJoCo met a NaN / huge state and reset the simulation."""
        return int(self._warning_counts[_BAD_STATE_WARNINGS].sum())

    def _task_reward(self, velocity: np.ndarray, task: np.ndarray) -> np.ndarray:
        """The task's reward term of forward velocities [n] under task values [n]."""
        if self.task_type == "velocity":
            return -np.abs(velocity - task)
        return task * velocity

    # ------------------------------------------------------------ observation
    def _get_obs(self) -> np.ndarray:
        """This env's observation now (at reset; a step computes it with the step's numbers)."""
        d = self.data
        kept = {name: get(d)[None] for name, _, get in self._read_spec()}
        obs = self._observation(d.qpos[None], d.qvel[None], kept)[0]
        if self.oracle:
            obs = np.append(obs, 0.0 if self._task_value is None else self._task_value)
        return obs

    # ------------------------------------------------------------------ reset
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options is not None and options.get("task") is not None:
            self.set_task(options["task"])
        return super().reset(seed=seed, options=options)

    def reset_model(self):
        # Always draw once so the RNG stream does not depend on whether a task was already set.
        fallback_seed = int(self.np_random.integers(2**63 - 1))
        if self._task_value is None:
            self.set_task(self.sample_tasks(1, fallback_seed)[0])
        nq, nv = self.model.nq, self.model.nv
        if self.reset_mode == "rllab":
            qpos = self._rllab_init_qpos + RLLAB_QPOS_NOISE * self.np_random.standard_normal(nq)
            qvel = self.init_qvel + RLLAB_QVEL_NOISE * self.np_random.standard_normal(nv)
        else:
            s = self._reset_noise_scale
            qpos = self.init_qpos + self.np_random.uniform(low=-s, high=s, size=nq)
            qvel = self.init_qvel + s * self.np_random.standard_normal(nv)
        self.set_state(qpos, qvel)  # runs mj_forward
        self._update_derived()
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return {"x_position": float(self.data.qpos[0]), "task": self.get_task()}
