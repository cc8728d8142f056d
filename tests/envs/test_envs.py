"""dema_lab.envs.spec: names, facts and headless rendering of the MuJoCo tasks."""

import numpy as np
import pytest

from dema_lab.envs.make import make_env
from dema_lab.envs.spec import ENV_SPECS, env_spec


@pytest.mark.parametrize("name", sorted(n for n, s in ENV_SPECS.items() if s.kind == "mujoco"))
def test_spec_dims_match_the_live_env(name):
    spec = env_spec(name)
    env = make_env(name)
    try:
        assert env.observation_space.shape == (spec.obs_dim,)
        assert env.action_space.shape == (spec.act_dim,)
        assert env.spec.id == spec.gym_id
        assert env.spec.max_episode_steps == spec.max_episode_steps
        np.testing.assert_array_equal(env.action_space.low, -1.0)
        np.testing.assert_array_equal(env.action_space.high, 1.0)
        if spec.healthy_reward:
            assert env.unwrapped._healthy_reward == spec.healthy_reward
    finally:
        env.close()


@pytest.mark.parametrize(
    "given, expected",
    [
        ("hopper", "hopper"),
        ("Hopper-v5", "hopper"),
        ("HalfCheetah-v5", "halfcheetah"),
        ("half_cheetah", "halfcheetah"),
        ("walker2d", "walker2d"),
        ("Walker2d-v5", "walker2d"),
        ("hopper-medium-v2", "hopper"),
    ],
)
def test_names_resolve(given, expected):
    assert env_spec(given).name == expected


def test_d4rl_keys_and_dims():
    assert (env_spec("hopper").obs_dim, env_spec("hopper").act_dim) == (11, 3)
    assert (env_spec("halfcheetah").obs_dim, env_spec("halfcheetah").act_dim) == (17, 6)
    assert env_spec("walker2d").d4rl_key == "walker2d"


def test_unknown_env_names_it_and_lists_known():
    with pytest.raises(ValueError) as err:
        make_env("Pendulum-v1")
    msg = str(err.value)
    assert "Pendulum-v1" in msg
    for name in ENV_SPECS:
        assert name in msg


def test_seed_makes_resets_reproducible():
    a, b = make_env("hopper", seed=3), make_env("hopper", seed=3)
    c = make_env("hopper", seed=4)
    try:
        oa, ob, oc = a.reset()[0], b.reset()[0], c.reset()[0]
        np.testing.assert_array_equal(oa, ob)
        assert not np.array_equal(oa, oc)
    finally:
        for e in (a, b, c):
            e.close()


def test_render_frames_are_small_uint8_with_expensive_effects_off():
    import mujoco

    env = make_env("hopper", render_size=64, seed=0)
    try:
        first = env.render()
        assert first.shape == (64, 64, 3) and first.dtype == np.uint8
        assert first.std() > 5  # a real picture, not a blank buffer
        flags = env.unwrapped.mujoco_renderer._viewers["rgb_array"].scn.flags
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
        ):
            assert flags[flag] == 0
        assert env.unwrapped.model.vis.quality.offsamples == 0  # a thumbnail: no multisampling
        for _ in range(20):
            env.step(np.ones(3))
        later = env.render()
        assert not np.array_equal(first, later)  # the hopper moved
    finally:
        env.close()


def test_bad_render_size():
    with pytest.raises(ValueError, match="render_size"):
        make_env("hopper", render_size=0)


def test_the_rendered_camera_follows_the_hopper():
    """Frames track the torso (the env's camera config): a hopper 8 m down the track is still in
    the picture, drawn as at the start (Gymnasium's camera_id -1 made the camera free, and the
    agent left the frame within a few hundred steps of a good episode)."""

    from dema_lab.envs.make import make_env

    def body(frame):  # the hopper's brown pixels
        return (frame[..., 0] > 120) & (frame[..., 1] < 110) & (frame[..., 2] < 80)

    env = make_env("hopper", render_size=128, seed=0)
    try:
        start = env.render()
        u = env.unwrapped
        q = u.data.qpos.copy()
        q[0] += 8.0
        u.set_state(q, u.data.qvel)
        moved = env.render()
    finally:
        env.close()
    assert u.model.vis.quality.offsamples == 4  # MuJoCo's anti-aliasing kept at 128 px
    assert body(start).sum() > 20
    assert abs(int(body(moved).sum()) - int(body(start).sum())) <= 0.2 * body(start).sum()
