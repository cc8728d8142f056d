"""Atari games through ale-py with the DQN preprocessing, and their gamer-normalized scores."""

import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from dema_lab.data.scores import normalized_score, reference_scores  # noqa: E402
from dema_lab.envs.make import make_env  # noqa: E402
from dema_lab.envs.spec import ENV_SPECS, env_spec, known_envs

GAMES = {
    "breakout": ("ALE/Breakout-v5", 4),
    "pong": ("ALE/Pong-v5", 6),
    "qbert": ("ALE/Qbert-v5", 6),
    "seaquest": ("ALE/Seaquest-v5", 18),
}


def test_atari_games_are_registered_with_the_mujoco_tasks():
    assert set(known_envs("atari")) == set(GAMES)
    full = {"hopper", "halfcheetah", "walker2d"}
    assert set(known_envs("mujoco")) == full | {f"{e}-pomdp" for e in full}  # and their positions-only tasks
    for name, (gym_id, n) in GAMES.items():
        spec = env_spec(name)
        assert (spec.gym_id, spec.n_actions, spec.obs_shape, spec.act_dim) == (gym_id, n, (4, 84, 84), 1)
        assert spec.discrete and spec.max_episode_steps * 4 == 108_000
        assert env_spec(gym_id) is spec and env_spec(name.capitalize()) is spec


@pytest.mark.parametrize("name", sorted(GAMES))
def test_dqn_preprocessing(name):
    spec = env_spec(name)
    env = make_env(name, seed=0)
    try:
        ale = env.unwrapped.ale
        assert ale.getFloat("repeat_action_probability") == 0.0  # no sticky actions
        assert ale.getInt("max_num_frames_per_episode") == 108_000
        assert env.action_space.n == spec.n_actions  # minimal action set
        obs, _ = env.reset(seed=1)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        frames0 = ale.getEpisodeFrameNumber()
        obs, *_ = env.step(0)
        assert ale.getEpisodeFrameNumber() - frames0 == 4  # frame skip 4
        colour = env.render()
        assert colour.shape == (210, 160, 3) and colour.dtype == np.uint8
        # the newest stacked frame is the max of the last two screens, grey, resized to 84x84
        import cv2

        grey = ale.getScreenGrayscale()
        assert obs[-1].shape == (84, 84)
        ref = cv2.resize(grey, (84, 84), interpolation=cv2.INTER_AREA)
        assert np.all(obs[-1].astype(int) >= ref.astype(int) - 1)  # max-pool >= the last screen
    finally:
        env.close()


def test_render_size_and_seeded_resets_are_reproducible():
    a, b = make_env("pong", seed=3, render_size=64), make_env("pong", seed=3)
    try:
        assert a.render().shape == (64, 64, 3)
        oa, _ = a.reset()
        ob, _ = b.reset()
        np.testing.assert_array_equal(oa, ob)
        for act in [1, 2, 3, 0, 2]:
            oa = a.step(act)[0]
            ob = b.step(act)[0]
        np.testing.assert_array_equal(oa, ob)
    finally:
        a.close()
        b.close()


def test_gamer_normalized_scores_use_the_human_references():
    table = {"breakout": (1.7, 30.5), "pong": (-20.7, 14.6), "qbert": (163.9, 13455.0), "seaquest": (68.4, 42054.7)}
    for game, (rnd, human) in table.items():
        assert reference_scores(game) == (rnd, human)
        assert reference_scores(ENV_SPECS[game].gym_id) == (rnd, human)
        assert normalized_score(game, human) == pytest.approx(100.0)
        assert normalized_score(game, rnd) == pytest.approx(0.0)
    assert normalized_score("breakout", 16.1) == pytest.approx(100 * (16.1 - 1.7) / 28.8)
    np.testing.assert_allclose(normalized_score("pong", [-20.7, 14.6]), [0.0, 100.0])


def test_unknown_game_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        make_env("ALE/Tetris-v5")
    msg = str(err.value)
    assert "Tetris" in msg and "breakout" in msg and "seaquest" in msg and "hopper" in msg
