"""Tests for the meta-RL task environments in ``maml_tf.envs``.

Run: ``cd /work/main && .venv/bin/python -m pytest tests/test_envs.py -q`` (about half a minute).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gymnasium as gym
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import maml_tf.envs as menvs
from maml_tf.envs import Point2DEnv, Point2DVectorEnv

mujoco = pytest.importorskip("mujoco")


def _manual_com_velocity(model, qpos, qvel) -> np.ndarray:
    """rllab's ``get_body_comvel("torso")``, recomputed from (qpos, qvel) on a fresh MjData.

    Per-body linear velocity at the body's centre of mass (``mj_objectVelocity``, world frame),
    mass-weighted and accumulated up the kinematic tree (rllab/mujoco_py ``_compute_subtree``).
    """
    d = mujoco.MjData(model)
    d.qpos[:] = qpos
    d.qvel[:] = qvel
    mujoco.mj_forward(model, d)
    vel = np.zeros((model.nbody, 6))
    for b in range(model.nbody):
        mujoco.mj_objectVelocity(model, d, mujoco.mjtObj.mjOBJ_BODY, b, vel[b], 0)
    mass = model.body_mass.copy()
    mom = vel[:, 3:] * mass[:, None]
    for b in range(model.nbody - 1, 0, -1):
        p = model.body_parentid[b]
        mom[p] += mom[b]
        mass[p] += mass[b]
    torso = model.body("torso").id
    return mom[torso] / mass[torso]


# --------------------------------------------------------------------------- registration/checker
def test_ids_registered():
    expected = {
        "maml/Point2D-v0", "maml/Point2DOracle-v0",
        "maml/HalfCheetahVel-v0", "maml/HalfCheetahVelOracle-v0",
        "maml/HalfCheetahDir-v0", "maml/HalfCheetahDirOracle-v0",
        "maml/AntVel-v0", "maml/AntVelOracle-v0", "maml/AntDir-v0", "maml/AntDirOracle-v0",
    }
    assert set(menvs.ENV_IDS) == expected
    for env_id in expected:
        spec = gym.spec(env_id)
        assert spec.max_episode_steps == (100 if "Point" in env_id else 200)
    menvs.register_envs()  # idempotent


@pytest.mark.parametrize("env_id", menvs.ENV_IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        # unbounded Box observation spaces, as in Gymnasium's own MuJoCo envs
        warnings.filterwarnings("ignore", message=".*infinity.*")
        # headless machine: no rendering check
        check_env(env.unwrapped, skip_render_check=True)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, env.action_space.shape, np.float32)
    env.close()


def test_locomotion_spaces_and_dt():
    shapes = {
        "maml/HalfCheetahVel-v0": (17, 6, 0.01),
        "maml/HalfCheetahDirOracle-v0": (18, 6, 0.01),
        "maml/AntVel-v0": (105, 8, 0.02),
        "maml/AntDirOracle-v0": (106, 8, 0.02),
    }
    for env_id, (obs_dim, act_dim, dt) in shapes.items():
        env = gym.make(env_id)
        assert env.observation_space.shape == (obs_dim,)
        assert env.action_space.shape == (act_dim,)
        assert env.unwrapped.dt == pytest.approx(dt)
        env.close()
    assert gym.make("maml/HalfCheetahVel-v0", obs_mode="rllab").observation_space.shape == (20,)
    assert gym.make("maml/AntVel-v0", obs_mode="rllab").observation_space.shape == (125,)
    assert gym.make("maml/HalfCheetahVel-v0", frame_skip=5).unwrapped.dt == pytest.approx(0.05)


# --------------------------------------------------------------------------------- task sampling
def test_task_sampling_reproducible_and_in_range():
    point = Point2DEnv()
    a = point.sample_tasks(200, 7)
    b = point.sample_tasks(200, 7)
    c = point.sample_tasks(200, 8)
    ga, gb, gc = (np.stack([t["goal"] for t in ts]) for ts in (a, b, c))
    np.testing.assert_array_equal(ga, gb)
    assert not np.array_equal(ga, gc)
    assert ga.shape == (200, 2) and ga.min() >= -0.5 and ga.max() <= 0.5
    # a Generator is used as is (and advanced)
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(np.stack([t["goal"] for t in point.sample_tasks(200, rng)]), ga)
    assert not np.array_equal(np.stack([t["goal"] for t in point.sample_tasks(200, rng)]), ga)
    vec = Point2DVectorEnv(3)
    np.testing.assert_array_equal(np.stack([t["goal"] for t in vec.sample_tasks(200, 7)]), ga)

    for env_id, key, lo, hi in [
        ("maml/HalfCheetahVel-v0", "velocity", 0.0, 2.0),
        ("maml/AntVel-v0", "velocity", 0.0, 3.0),
        ("maml/HalfCheetahDir-v0", "direction", -1.0, 1.0),
        ("maml/AntDir-v0", "direction", -1.0, 1.0),
    ]:
        env = gym.make(env_id).unwrapped
        t1 = [t[key] for t in env.sample_tasks(300, 3)]
        t2 = [t[key] for t in env.sample_tasks(300, 3)]
        t3 = [t[key] for t in env.sample_tasks(300, 4)]
        assert t1 == t2 and t1 != t3
        assert all(isinstance(v, float) for v in t1)
        assert min(t1) >= lo and max(t1) <= hi
        if key == "direction":
            assert set(t1) == {-1.0, 1.0}
            assert 100 < sum(v > 0 for v in t1) < 200
        else:
            assert max(t1) - min(t1) > 0.9 * (hi - lo)
        env.close()


def test_task_set_and_persistence():
    env = gym.make("maml/Point2DOracle-v0")
    env.unwrapped.set_task({"goal": [0.2, -0.3]})
    for _ in range(3):
        obs, _ = env.reset()
        np.testing.assert_array_equal(obs, [0.0, 0.0, 0.2, -0.3])
    obs, _ = env.reset(options={"task": {"goal": np.array([-0.1, 0.4])}})
    np.testing.assert_array_equal(obs[2:], [-0.1, 0.4])
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs[2:], [-0.1, 0.4])
    env.unwrapped.task = {"goal": [0.0, 0.5]}
    assert env.unwrapped.get_task()["goal"].tolist() == [0.0, 0.5]
    with pytest.raises(KeyError):
        env.unwrapped.set_task({"velocity": 1.0})

    cheetah = gym.make("maml/HalfCheetahDirOracle-v0")
    cheetah.reset(seed=0, options={"task": {"direction": -1.0}})
    for _ in range(2):
        obs, info = cheetah.reset()
        assert obs[-1] == -1.0 and info["task"] == {"direction": -1.0}
    with pytest.raises(ValueError):
        cheetah.unwrapped.set_task({"direction": 0.5})
    cheetah.unwrapped.set_task(1.0)  # bare value accepted
    assert cheetah.unwrapped.task == {"direction": 1.0}
    cheetah.close()


def test_reset_without_task_is_seeded():
    e1, e2 = Point2DEnv(oracle=True), Point2DEnv(oracle=True)
    o1, _ = e1.reset(seed=5)
    o2, _ = e2.reset(seed=5)
    np.testing.assert_array_equal(o1, o2)
    assert np.all(np.abs(o1[2:]) <= 0.5)
    a1 = gym.make("maml/AntVelOracle-v0")
    a2 = gym.make("maml/AntVelOracle-v0")
    np.testing.assert_array_equal(a1.reset(seed=3)[0], a2.reset(seed=3)[0])
    # the task is drawn once and then kept; resets with the same seed give the same initial state
    task = a1.unwrapped.task
    o_again, _ = a1.reset(seed=3)
    assert a1.unwrapped.task == task
    np.testing.assert_array_equal(o_again, a2.reset(seed=3)[0])


# ------------------------------------------------------------------------------------- point env
@pytest.mark.parametrize("reward_type", ["distance", "squared"])
def test_point_reward_and_dynamics(reward_type):
    env = gym.make("maml/Point2D-v0", reward_type=reward_type)
    goal = np.array([0.3, -0.4])
    obs, _ = env.reset(seed=0, options={"task": {"goal": goal}})
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    rng = np.random.default_rng(0)
    pos = np.zeros(2)
    for _ in range(30):
        a = rng.normal(scale=1.5, size=2).astype(np.float32)
        obs, r, term, trunc, _ = env.step(a)
        pos = pos + np.clip(0.1 * a.astype(np.float64), -0.1, 0.1)
        np.testing.assert_allclose(obs, pos, atol=1e-12)
        d2 = np.sum((pos - goal) ** 2)
        expected = -np.sqrt(d2) if reward_type == "distance" else -d2
        assert r == pytest.approx(expected, abs=1e-12)
        assert not term and not trunc


def test_point_unnormalized_actions():
    env = Point2DEnv(normalized_actions=False, task={"goal": [0.4, 0.4]})
    assert env.action_space.high.tolist() == pytest.approx([0.1, 0.1])
    env.reset(seed=0)
    obs, *_ = env.step(np.array([0.05, 3.0]))
    np.testing.assert_allclose(obs, [0.05, 0.1])


def test_point_termination_and_horizon():
    env = gym.make("maml/Point2D-v0")
    # reaches (0.1, 0.1) exactly in one step: within 0.01 on both axes -> terminated
    env.reset(options={"task": {"goal": [0.1, 0.1]}})
    _, r, term, trunc, _ = env.step(np.array([1.0, 1.0], np.float32))
    assert term and not trunc and r == pytest.approx(0.0, abs=1e-12)
    # 0.005 away on x: terminated; 0.015 away: not
    env.reset(options={"task": {"goal": [0.105, 0.0]}})
    assert env.step(np.array([1.0, 0.0], np.float32))[2]
    env.reset(options={"task": {"goal": [0.115, 0.0]}})
    assert not env.step(np.array([1.0, 0.0], np.float32))[2]
    # the goal is never reached with zero actions: truncated at the horizon (100)
    env.reset(options={"task": {"goal": [0.5, 0.5]}})
    for t in range(100):
        _, _, term, trunc, _ = env.step(np.zeros(2, np.float32))
        assert not term
        assert trunc == (t == 99)


def test_point_oracle_obs():
    env = gym.make("maml/Point2DOracle-v0")
    obs, _ = env.reset(options={"task": {"goal": [-0.25, 0.35]}})
    np.testing.assert_array_equal(obs, [0, 0, -0.25, 0.35])
    obs, *_ = env.step(np.array([0.5, -0.5], np.float32))
    np.testing.assert_allclose(obs, [0.05, -0.05, -0.25, 0.35])


# --------------------------------------------------------------------------------- vector point
def _drive_actions(obs, goals, rng, n_drive):
    """Random actions, except the first ``n_drive`` envs head straight for their goals."""
    acts = rng.uniform(-1.5, 1.5, size=(obs.shape[0], 2))
    acts[:n_drive] = np.clip((goals[:n_drive] - obs[:n_drive, :2]) / 0.1, -1, 1)
    return acts.astype(np.float32)


@pytest.mark.parametrize("mode", ["next_step", "same_step"])
@pytest.mark.parametrize("oracle", [False, True])
def test_vector_point_matches_sync(mode, oracle):
    n, horizon = 6, 12
    env_id = "maml/Point2DOracle-v0" if oracle else "maml/Point2D-v0"
    sync = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, max_episode_steps=horizon) for _ in range(n)],
        autoreset_mode={"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP}[mode],
    )
    vec = Point2DVectorEnv(n, max_episode_steps=horizon, oracle=oracle, autoreset_mode=mode)
    tasks = vec.sample_tasks(n, 11)
    tasks[0] = {"goal": np.array([0.23, -0.17])}
    tasks[1] = {"goal": np.array([0.1, 0.1])}
    menvs.set_tasks(sync, tasks)
    menvs.set_tasks(vec, tasks)
    goals = np.stack([t["goal"] for t in tasks])
    for a, b in zip(menvs.get_tasks(sync), menvs.get_tasks(vec)):
        np.testing.assert_array_equal(a["goal"], b["goal"])
    o1, _ = sync.reset(seed=0)
    o2, _ = vec.reset(seed=0)
    np.testing.assert_array_equal(o1, o2)
    rng = np.random.default_rng(1)
    n_term = n_trunc = 0
    for _ in range(40):
        acts = _drive_actions(o1, goals, rng, 2)
        o1, r1, te1, tr1, i1 = sync.step(acts)
        o2, r2, te2, tr2, i2 = vec.step(acts)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(te1, te2)
        np.testing.assert_array_equal(tr1, tr2)
        if mode == "same_step" and "_final_obs" in i1:
            np.testing.assert_array_equal(i1["_final_obs"], i2["_final_obs"])
            for k in np.flatnonzero(i1["_final_obs"]):
                np.testing.assert_array_equal(i1["final_obs"][k], i2["final_obs"][k])
        n_term += te1.sum()
        n_trunc += tr1.sum()
    assert n_term >= 2 and n_trunc >= 4  # both kinds of episode end were exercised


def test_vector_point_make_vec_and_reset_mask():
    vec = gym.make_vec("maml/Point2DOracle-v0", num_envs=4)
    assert isinstance(vec.unwrapped, Point2DVectorEnv)
    assert vec.unwrapped.max_episode_steps == 100
    assert vec.observation_space.shape == (4, 4)
    obs, _ = vec.reset(seed=0, options={"tasks": [{"goal": [0.1 * i, 0.0]} for i in range(4)]})
    np.testing.assert_allclose(obs[:, 2], [0.0, 0.1, 0.2, 0.3])

    dis = Point2DVectorEnv(3, max_episode_steps=5, autoreset_mode="disabled")
    dis.set_attr("task", [{"goal": [0.1, 0.0]}, {"goal": [0.4, 0.4]}, {"goal": [-0.4, 0.4]}])
    dis.reset()
    _, _, term, _, _ = dis.step(np.array([[1, 0], [0, 0], [0, 0]], np.float32))
    assert term.tolist() == [True, False, False]
    with pytest.raises(RuntimeError):
        dis.step(np.zeros((3, 2), np.float32))
    obs, _ = dis.reset(options={"reset_mask": term})
    np.testing.assert_array_equal(obs[0], [0, 0])
    dis.step(np.zeros((3, 2), np.float32))


# -------------------------------------------------------------------------------- half-cheetah
@pytest.mark.parametrize("task_type", ["velocity", "direction"])
def test_cheetah_reward_com_velocity(task_type):
    env_id = "maml/HalfCheetahVel-v0" if task_type == "velocity" else "maml/HalfCheetahDir-v0"
    env = gym.make(env_id)
    u = env.unwrapped
    task = {"velocity": 1.3} if task_type == "velocity" else {"direction": -1.0}
    env.reset(seed=2, options={"task": task})
    rng = np.random.default_rng(0)
    for _ in range(25):
        a = rng.normal(scale=1.5, size=6)  # partly outside [-1, 1]: rescaled then clipped
        _, r, term, trunc, info = env.step(a)
        v = _manual_com_velocity(u.model, u.data.qpos, u.data.qvel)[0]
        forward = -abs(v - 1.3) if task_type == "velocity" else -1.0 * v
        expected = forward - 0.05 * np.sum(np.clip(a, -1, 1) ** 2)
        assert r == pytest.approx(expected, abs=1e-9)
        assert info["x_velocity"] == pytest.approx(v, abs=1e-9)
        np.testing.assert_allclose(u.data.ctrl, np.clip(a, -1, 1), atol=1e-12)
        assert not term and not trunc


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_cheetah_reward_finite_difference(direction):
    env = gym.make("maml/HalfCheetahDir-v0", velocity_mode="finite_difference")
    u = env.unwrapped
    env.reset(seed=4, options={"task": {"direction": direction}})
    rng = np.random.default_rng(1)
    for _ in range(25):
        a = rng.uniform(-1.2, 1.2, size=6)
        x_before = float(u.data.qpos[0])
        _, r, *_ = env.step(a)
        x_after = float(u.data.qpos[0])
        expected = direction * (x_after - x_before) / 0.01 - 0.05 * np.sum(np.clip(a, -1, 1) ** 2)
        assert r == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_cheetah_rllab_obs_and_oracle():
    env = gym.make("maml/HalfCheetahVelOracle-v0", obs_mode="rllab")
    u = env.unwrapped
    obs, _ = env.reset(seed=0, options={"task": {"velocity": 0.7}})
    for _ in range(3):
        obs, *_ = env.step(np.full(6, 0.3))
    assert obs.shape == (21,) and obs[-1] == 0.7
    np.testing.assert_array_equal(obs[:8], u.data.qpos[1:])
    np.testing.assert_array_equal(obs[8:17], u.data.qvel)
    np.testing.assert_allclose(obs[17:20], u.data.subtree_com[u.model.body("torso").id])


def test_oracle_obs_matches_plain_obs():
    for plain_id, oracle_id, task in [
        ("maml/HalfCheetahVel-v0", "maml/HalfCheetahVelOracle-v0", {"velocity": 1.1}),
        ("maml/AntDir-v0", "maml/AntDirOracle-v0", {"direction": -1.0}),
    ]:
        e1, e2 = gym.make(plain_id), gym.make(oracle_id)
        o1, _ = e1.reset(seed=9, options={"task": task})
        o2, _ = e2.reset(seed=9, options={"task": task})
        value = next(iter(task.values()))
        np.testing.assert_array_equal(o2, np.append(o1, value))
        a = np.linspace(-1, 1, e1.action_space.shape[0])
        for _ in range(3):
            o1, r1, *_ = e1.step(a)
            o2, r2, *_ = e2.step(a)
        np.testing.assert_array_equal(o2, np.append(o1, value))
        assert r1 == r2


# ----------------------------------------------------------------------------------------- ant
@pytest.mark.parametrize("task_type", ["velocity", "direction"])
def test_ant_reward(task_type):
    env_id = "maml/AntVel-v0" if task_type == "velocity" else "maml/AntDir-v0"
    env = gym.make(env_id)
    u = env.unwrapped
    task = {"velocity": 2.2} if task_type == "velocity" else {"direction": 1.0}
    env.reset(seed=0, options={"task": task})
    # rllab initial pose: torso at 0.55, ankles at +-1 rad (plus small noise)
    assert abs(u.data.qpos[2] - 0.55) < 0.05
    rng = np.random.default_rng(0)
    saw_contact = False
    for _ in range(30):
        a = rng.uniform(-1.3, 1.3, size=8)
        _, r, term, _, info = env.step(a)
        m, d = u.model, u.data
        v = _manual_com_velocity(m, d.qpos, d.qvel)[0]
        # contact forces recomputed from the post-step state on a fresh MjData
        d2 = mujoco.MjData(m)
        d2.qpos[:], d2.qvel[:], d2.ctrl[:] = d.qpos, d.qvel, d.ctrl
        d2.qacc_warmstart[:] = d.qacc_warmstart
        mujoco.mj_forward(m, d2)
        mujoco.mj_rnePostConstraint(m, d2)
        contact = 5e-4 * np.sum(np.clip(d2.cfrc_ext, -1, 1) ** 2)
        saw_contact |= contact > 0
        ctrl = 0.005 * np.sum(np.clip(a, -1, 1) ** 2)
        if task_type == "velocity":
            expected = -abs(v - 2.2) + 1.0 - ctrl - contact + 0.05
        else:
            expected = v - ctrl - contact + 0.05
        assert r == pytest.approx(expected, abs=1e-6)
        assert term == (not (0.2 <= d.qpos[2] <= 1.0))
        if term:
            break
    assert saw_contact


def test_ant_termination():
    env = gym.make("maml/AntDir-v0")
    u = env.unwrapped
    env.reset(seed=0, options={"task": {"direction": 1.0}})
    qpos = u._rllab_init_qpos.copy()
    # torso well above 1.0: falls only a few mm in one step -> terminated
    qpos[2] = 1.5
    u.set_state(qpos, np.zeros(u.model.nv))
    _, r, term, _, _ = env.step(np.zeros(8))
    assert term and u.data.qpos[2] > 1.0
    # back in range: not terminated
    env.reset(seed=0)
    _, _, term, _, _ = env.step(np.zeros(8))
    assert not term and 0.2 <= u.data.qpos[2] <= 1.0
    # below 0.2 (falling through the floor would be stopped, so start it well below and moving down)
    qpos[2] = 0.05
    u.set_state(qpos, np.r_[0.0, 0.0, -5.0, np.zeros(u.model.nv - 3)])
    _, _, term, _, _ = env.step(np.zeros(8))
    assert term == (not (0.2 <= u.data.qpos[2] <= 1.0))
    assert u.data.qpos[2] < 0.2 and term
    # a non-finite state terminates too
    env.reset(seed=1)
    qvel = np.zeros(u.model.nv)
    qvel[0] = np.nan
    messages = []
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(messages.append)  # keep MuJoCo from writing MUJOCO_LOG.TXT
    try:
        u.set_state(u.data.qpos.copy(), qvel)
        _, _, term, _, info = env.step(np.zeros(8))
    finally:
        mujoco.set_mju_user_warning(previous)
    assert term and info["unstable"] and messages


def test_ant_rllab_obs_layout():
    env = gym.make("maml/AntVelOracle-v0", obs_mode="rllab")
    u = env.unwrapped
    env.reset(seed=0, options={"task": {"velocity": 0.5}})
    obs, *_ = env.step(np.zeros(8))
    d, torso = u.data, u.model.body("torso").id
    assert obs.shape == (126,) and obs[-1] == 0.5
    np.testing.assert_array_equal(obs[:15], d.qpos)
    np.testing.assert_array_equal(obs[15:29], d.qvel)
    np.testing.assert_array_equal(obs[29:113], np.clip(d.cfrc_ext, -1, 1).ravel())
    np.testing.assert_array_equal(obs[113:122], d.xmat[torso])
    np.testing.assert_array_equal(obs[122:125], d.subtree_com[torso])


@pytest.mark.parametrize("env_id, kwargs", [
    ("maml/HalfCheetahVel-v0", {}),
    ("maml/HalfCheetahDir-v0", {"exclude_current_positions_from_observation": False}),
    ("maml/AntVel-v0", {}),
    ("maml/AntDir-v0", {"exclude_current_positions_from_observation": False}),
    ("maml/AntVel-v0", {"include_cfrc_ext_in_observation": False}),
    ("maml/AntDir-v0", {"contact_force_range": (-0.3, 0.2), "velocity_mode": "finite_difference"}),
])
def test_gymnasium_observation_and_info_are_gymnasiums(env_id, kwargs):
    """The default observation (`_observation`, shared by `step`, `step_many` and reset) is what
    Gymnasium's own `_get_obs` of the body gives, for its observation settings; the info has the
    keys of a Gymnasium locomotion step (and the ant's positions), and the ant's `contact_cost` is
    the official one, the cost its reward subtracts."""
    from gymnasium.envs.mujoco.ant_v5 import AntEnv
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
    env = gym.make(env_id, **kwargs)
    u = env.unwrapped
    gym_obs = AntEnv._get_obs if "Ant" in env_id else HalfCheetahEnv._get_obs
    obs, _ = env.reset(seed=3, options={"task": u.sample_tasks(1, 0)[0]})
    np.testing.assert_array_equal(obs, gym_obs(u))
    rng = np.random.default_rng(2)
    keys = {"x_position", "x_velocity", "reward_forward", "reward_ctrl", "unstable"}
    if "Ant" in env_id:
        keys |= {"y_position", "z_position", "reward_contact", "reward_survive"}
    for _ in range(40):
        x_before = float(u.data.qpos[0])
        obs, r, term, _, info = env.step(rng.normal(scale=1.2, size=u.model.nu))
        np.testing.assert_array_equal(obs, gym_obs(u))
        assert set(info) == keys and all(isinstance(v, (float, bool)) for v in info.values()), info
        if kwargs.get("velocity_mode") == "finite_difference":
            assert info["x_velocity"] == pytest.approx((float(u.data.qpos[0]) - x_before) / u.dt, rel=1e-12)
        if "Ant" in env_id:
            official = u._contact_cost_weight * np.sum(np.clip(u.data.cfrc_ext, -1, 1) ** 2)
            assert u.contact_cost == pytest.approx(official, rel=1e-12) and info["reward_contact"] == -u.contact_cost
        if term:
            break


def test_observation_follows_obs_mode_changes_and_step_many_needs_one_task_type():
    """obs_mode set after construction changes what a step observes (rllab's layout); envs of one
    body but different task types are not stepped as one batch (their task term differs)."""
    env = gym.make("maml/HalfCheetahVel-v0").unwrapped
    env.reset(seed=0, options={"task": {"velocity": 1.0}})
    env.obs_mode = "rllab"
    obs, *_ = env.step(np.zeros(6))
    assert obs.shape == (20,)
    np.testing.assert_array_equal(obs[17:], env.data.subtree_com[env.model.body("torso").id])
    from maml_tf.envs.cheetah import MetaHalfCheetahEnv
    vel = MetaHalfCheetahEnv(task_type="velocity")
    same, direc = (MetaHalfCheetahEnv(task_type=t, mj_model=vel.model) for t in ("velocity", "direction"))
    assert MetaHalfCheetahEnv.can_step_many([vel, same]) and not MetaHalfCheetahEnv.can_step_many([vel, direc])


# ------------------------------------------------------------------------------ SyncVectorEnv
def test_sync_vector_mujoco_tasks():
    n = 3
    vec = gym.make_vec("maml/HalfCheetahVelOracle-v0", num_envs=n, vectorization_mode="sync")
    tasks = vec.envs[0].unwrapped.sample_tasks(n, 0)
    menvs.set_tasks(vec, tasks)
    assert menvs.get_tasks(vec) == tasks
    obs, _ = vec.reset(seed=0)
    np.testing.assert_array_equal(obs[:, -1], [t["velocity"] for t in tasks])
    rewards = []
    for _ in range(3):
        obs, r, *_ = vec.step(np.zeros((n, 6), np.float32))
        rewards.append(r)
    np.testing.assert_array_equal(obs[:, -1], [t["velocity"] for t in tasks])
    # each sub-env's reward uses its own task
    for i in range(n):
        u = vec.envs[i].unwrapped
        v = float(u.data.subtree_linvel[u.model.body("torso").id, 0])
        assert rewards[-1][i] == pytest.approx(-abs(v - tasks[i]["velocity"]), abs=1e-9)
    # the tasks survive resets; reset options set one task for all
    vec.reset()
    assert menvs.get_tasks(vec) == tasks
    obs, _ = vec.reset(options={"task": {"velocity": 0.25}})
    np.testing.assert_array_equal(obs[:, -1], 0.25)
    vec.call("set_task", {"velocity": 1.5})
    assert all(t == {"velocity": 1.5} for t in menvs.get_tasks(vec))
    vec.close()


def test_seeded_rollouts_are_deterministic():
    def rollout():
        env = gym.make("maml/AntVel-v0")
        obs, _ = env.reset(seed=123, options={"task": {"velocity": 1.0}})
        out = [obs]
        for k in range(10):
            obs, r, *_ = env.step(np.sin(np.arange(8) + k))
            out.append(np.append(obs, r))
        return np.concatenate(out)

    np.testing.assert_array_equal(rollout(), rollout())


# ------------------------------------------------------------------ ant integration, shared model
def test_ant_default_integration_is_rllab():
    """One RK4 step of 0.02 s per env step (rllab's ant.xml), not two of 0.01 or five (Gymnasium)."""
    for env_id in ("maml/AntVel-v0", "maml/AntDirOracle-v0"):
        u = gym.make(env_id).unwrapped
        assert u.frame_skip == 1
        assert u.model.opt.timestep == 0.02
        assert u.model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
        assert u.dt == pytest.approx(0.02)
        assert u.metadata["render_fps"] == 50
        u.reset(seed=0, options={"task": u.sample_tasks(1, 0)[0]})
        u.step(np.zeros(8))
        assert u.data.time == pytest.approx(0.02)  # one mj_step of 0.02 s
    # the earlier integration (two RK4 steps of 0.01) and Gymnasium's (five) stay available
    for kwargs, (timestep, frame_skip, dt) in [({"frame_skip": 2}, (0.01, 2, 0.02)),
                                               ({"timestep": 0.01, "frame_skip": 2}, (0.01, 2, 0.02)),
                                               ({"frame_skip": 5}, (0.01, 5, 0.05))]:
        u = gym.make("maml/AntVel-v0", **kwargs).unwrapped
        assert (u.model.opt.timestep, u.frame_skip) == (timestep, frame_skip)
        assert u.dt == pytest.approx(dt)
    with pytest.raises(ValueError):
        gym.make("maml/AntVel-v0", timestep=0.0)


def _sub_env_rollout(vec, tasks, seed, steps):
    """Step the sub-envs one by one (as the RL sampler does), seeded Gaussian actions."""
    menvs.set_tasks(vec, tasks)
    obs, _ = vec.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = [np.asarray(obs)]
    for _ in range(steps):
        acts = rng.standard_normal((vec.num_envs,) + vec.single_action_space.shape)
        for i, env in enumerate(vec.envs):
            o, r, term, trunc, _ = env.step(acts[i])
            out.append(np.r_[o, r, term, trunc])
    return np.concatenate([np.ravel(x) for x in out])


@pytest.mark.parametrize("env_id", ["maml/AntVel-v0", "maml/HalfCheetahDir-v0"])
def test_shared_model_rollouts_are_bit_identical(env_id):
    import pickle

    from maml_tf.rl.sampler import make_vec_env

    n, steps = 5, 60
    own = make_vec_env(env_id, n, share_model=False)
    shared = make_vec_env(env_id, n)  # the sampler's default
    models = [e.unwrapped.model for e in shared.envs]
    assert all(m is models[0] for m in models)
    assert len({id(e.unwrapped.data) for e in shared.envs}) == n
    assert len({id(e.unwrapped.model) for e in own.envs}) == n
    tasks = shared.envs[0].unwrapped.sample_tasks(n, 3)
    a = _sub_env_rollout(own, tasks, 11, steps)
    b = _sub_env_rollout(shared, tasks, 11, steps)
    np.testing.assert_array_equal(a, b)
    # the vector env's own step (autoreset bookkeeping) on the same model gives the same too
    oa, _ = own.reset(seed=5)
    ob, _ = shared.reset(seed=5)
    for k in range(10):
        act = np.full((n,) + own.single_action_space.shape, np.sin(k), np.float32)
        ra, rb = own.step(act), shared.step(act)
        for x, y in zip(ra[:4], rb[:4]):
            np.testing.assert_array_equal(x, y)
    # nothing wrote to the shared model: it still equals a freshly loaded one
    fresh = gym.make(env_id).unwrapped.model
    assert pickle.dumps(models[0]) == pickle.dumps(fresh)
    own.close()
    shared.close()


def test_ant_integration_check_return_matches_env_reward():
    """integration_check computes every task's return from one simulated trajectory: it must be
    the return the env itself pays for that task."""
    from maml_tf.envs import integration_check as ic

    acts = ic.policy_actions("gaussian", 4)
    traj = ic.rollout(menvs.MetaAntEnv(task_type="velocity"), acts, 4)
    for task in ({"velocity": 0.5}, {"velocity": 2.7}, {"direction": 1.0}, {"direction": -1.0}):
        (task_type, _), = task.items()
        env = menvs.MetaAntEnv(task_type=task_type)
        env.reset(seed=4, options={"task": task})
        ret, length = 0.0, 0
        for a in acts:
            _, r, term, _, _ = env.step(a)
            ret, length = ret + r, length + 1
            if term:
                break
        assert ic.episode_return(traj, task) == pytest.approx((ret, length), abs=1e-9)


# Tolerances of test_ant_integrations_agree, from compare_integrations(n_traj=100) (seeds 0-99; the
# integration_check module's table): the standard deviation over trajectories of the paired
# difference (2 x RK4 0.01 minus 1 x RK4 0.02, same seed and actions) was 53 / 59 (gaussian / sine
# policy) for the return of the goal-velocity-0.5 task, 69 / 76 for direction +1, and 75 / 66 for the
# episode length.  The test pools both policies, 2 x 50 = 100 paired trajectories, so the standard
# error of a mean difference is sd / 10; tolerance = 4 standard errors with sd rounded up to 60, 80
# and 80 (a 4-sigma deviation has probability 6e-5 if the two integrations behave the same).  Measured
# at n=100: +7.2 / +2.2, -2.6 / +5.6 and +5.5 / +4.8.  A wrong step (negative control: 2 x RK4 0.02,
# dt 0.04) gave -33 / -41 and -87 / -88: it must fail the velocity and length criteria.
_INTEGRATION_TOL = {"velocity 0.5": 24.0, "direction +1": 32.0, "length": 32.0}


def test_ant_integrations_agree():
    """Fixed policies (seeded Gaussian actions, a sine gait) from the same seeds: the mean return
    and episode length under one RK4 step of 0.02 (default) and two of 0.01 (before) agree within
    4 standard errors; a doubled dt (2 x RK4 0.02) is caught by the same criteria."""
    from maml_tf.envs import integration_check as ic

    tasks = {"velocity 0.5": ("velocity", 0.5), "direction +1": ("direction", 1.0)}
    wrong = "2 x RK4 0.02 s (dt 0.04)"
    out = ic.compare_integrations(n_traj=50, tasks=tasks, reference=False,
                                  integrations={**ic.INTEGRATIONS, wrong: {"frame_skip": 2, "timestep": 0.02}})
    old = list(ic.INTEGRATIONS)[1]

    def pooled(second, task, key):
        return float(np.mean(np.concatenate([p[key] for p in out["pairs"]
                                             if p["second"] == second and p["task"] == task])))

    for task in tasks:
        assert abs(pooled(old, task, "return_diffs")) < _INTEGRATION_TOL[task], (task, out["pairs"])
    assert abs(pooled(old, "velocity 0.5", "length_diffs")) < _INTEGRATION_TOL["length"]
    assert abs(pooled(wrong, "velocity 0.5", "return_diffs")) > _INTEGRATION_TOL["velocity 0.5"]
    assert abs(pooled(wrong, "velocity 0.5", "length_diffs")) > _INTEGRATION_TOL["length"]
