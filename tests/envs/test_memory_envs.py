"""The partially observed and memory envs as dema-lab acts in them: masked MuJoCo observations,
MiniGrid's flattened view and rendered grid, POPGym's one-hot cards, and their names."""

import numpy as np
import pytest

from dema_lab.envs.make import make_env
from dema_lab.envs.spec import ENV_SPECS, env_spec
from dema_lab.evaluation.defaults import default_targets


@pytest.mark.parametrize("env, k", [("hopper-pomdp", 5), ("halfcheetah-pomdp", 8), ("walker2d-pomdp", 8)])
def test_a_pomdp_env_masks_every_observation_to_the_positions(env, k):
    """An episode's observations have the positions only and equal the simulator's qpos[1:]."""
    e = make_env(env, seed=0)
    full = make_env(ENV_SPECS[env].full_env)
    try:
        assert e.observation_space.shape == (k,) == (env_spec(env).obs_dim,)
        obs, _ = e.reset(seed=4)
        full_obs, _ = full.reset(seed=4)
        np.testing.assert_array_equal(obs, full_obs[:k])  # the same state, the velocities dropped
        rng = np.random.default_rng(0)
        for _ in range(30):
            assert obs.shape == (k,)
            np.testing.assert_allclose(obs, e.unwrapped.data.qpos[1:], rtol=0, atol=1e-12)
            obs, reward, terminated, truncated, _ = e.step(rng.uniform(-1, 1, e.action_space.shape))
            if terminated or truncated:
                break
    finally:
        e.close()
        full.close()


def test_an_evaluated_pomdp_episode_has_masked_observations():
    """The evaluation loop gets its env by the dataset's env name: a recorded episode holds 5-dim
    observations equal to the simulator's positions."""
    import torch

    from dema_lab.evaluation.rollout import rollout_steps
    from dema_lab.models import ModelConfig, Policy, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(state_dim=5, act_dim=3, K=4, d_model=16, n_layer=1, d_state=4))
    e = make_env("hopper-pomdp")
    try:
        obs, after = [], []
        for step in rollout_steps(Policy(model), e, 3600.0, seed=1, max_steps=15):
            obs.append(step.observation)
            after.append(e.unwrapped.data.qpos[1:].copy())  # after the step: the next observation's
    finally:
        e.close()
    obs = np.stack(obs)
    assert obs.shape[1] == 5 and len(obs) > 2
    np.testing.assert_allclose(obs[1:], np.stack(after)[:-1], atol=1e-6)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("hopper-pomdp", "hopper-pomdp"),
        ("hopper-medium-pomdp", "hopper-pomdp"),
        ("Walker2d-v5", "walker2d"),
        ("MiniGrid-MemoryS7-v0", "minigrid-memory-s7"),
        ("minigrid-memory-s17", "minigrid-memory-s17"),
        ("MiniGrid-MemoryS31-v0", "minigrid-memory-s31"),
        ("popgym-RepeatPreviousEasy-v0", "popgym-repeatprevious-easy"),
    ],
)
def test_names_resolve(given, expected):
    assert env_spec(given).name == expected


def test_default_targets_of_a_pomdp_task_are_its_full_tasks():
    assert default_targets("hopper-pomdp") == default_targets("hopper") == [3600.0, 1800.0]
    assert default_targets("minigrid-memory-s11") == [1.0] == default_targets("popgym-repeatprevious-easy")


@pytest.mark.parametrize("name", ["minigrid-memory-s7", "minigrid-memory-s17", "minigrid-memory-s31"])
def test_minigrid_view_actions_and_frames(name):
    pytest.importorskip("minigrid")
    spec = env_spec(name)
    e = make_env(name, render_size=96, seed=0)
    try:
        assert e.observation_space.shape == (147,) and e.action_space.n == spec.n_actions == 3
        obs, info = e.reset(seed=2)
        u = e.unwrapped
        np.testing.assert_array_equal(obs, u.gen_obs()["image"].reshape(-1))  # the symbolic 7x7x3 view
        assert obs.dtype == np.float32 and "cue_visible" in info
        first = e.render()
        assert first.shape == (96, 96, 3) and first.dtype == np.uint8 and first.std() > 5
        pos = tuple(u.agent_pos)
        obs, reward, *_ = e.step(np.array([2.0]))  # forward, as a policy's (1,) action
        np.testing.assert_array_equal(obs, u.gen_obs()["image"].reshape(-1))
        assert tuple(u.agent_pos) != pos and reward == 0.0
        e.step(0)
        assert not np.array_equal(e.render(), first)
        with pytest.raises(ValueError, match="0..2"):
            e.step(3)  # pickup and the others: not this task's actions
        assert e.spec.max_episode_steps == spec.max_episode_steps == u.max_steps
    finally:
        e.close()


def test_popgym_cards_are_one_hot_and_scored_by_the_game():
    pytest.importorskip("popgym")
    e = make_env("popgym-repeatprevious-easy", render_size=32, seed=0)
    try:
        assert e.observation_space.shape == (4,) and e.action_space.n == 4
        obs, _ = e.reset(seed=0)
        seen = []
        for _ in range(10):
            card = int(e.unwrapped.deck.show("player", ["suits_idx"])[0, -1])
            np.testing.assert_array_equal(obs, np.eye(4, dtype=np.float32)[card])
            seen.append(card)
            obs, reward, *_ = e.step(np.array([float(seen[-4]) if len(seen) >= 4 else 0.0]))
            if len(seen) >= 4:
                assert reward == pytest.approx(1 / 48)  # the card dealt 3 steps before the current one
        frame = e.render()
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and frame.max() > frame.min()
    finally:
        e.close()


def test_a_recorded_minigrid_episode_marks_the_steps_whose_view_holds_the_cue():
    """record_episode keeps MiniGrid's cue flag per step; replaying the recorded actions in a fresh env
    of the same seed, the cue cell is in the agent's unoccluded view at exactly those steps."""
    pytest.importorskip("minigrid")
    import torch

    from dema_lab.envs.minigrid_memory import cue_position
    from dema_lab.evaluation.rollout import record_episode
    from dema_lab.models import ModelConfig, Policy, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(state_dim=147, act_dim=1, n_actions=3, K=4, d_model=16, n_layer=1, d_state=4))
    marks = []
    for seed in range(3):
        e = make_env("minigrid-memory-s7")
        try:
            ep = record_episode(Policy(model), e, 1.0, seed=seed, max_steps=20)
        finally:
            e.close()
        replay = make_env("minigrid-memory-s7")
        try:
            replay.reset(seed=seed)
            u = replay.unwrapped
            seen = []
            for a in ep["action"].values[:, 0]:
                seen.append(bool(u.agent_sees(*cue_position(u))))
                replay.step(int(a))
        finally:
            replay.close()
        assert ep["cue_visible"].dtype == bool
        np.testing.assert_array_equal(ep["cue_visible"].values, seen)
        marks += seen
    assert any(marks) and not all(marks)  # both kinds of step occur
    e = make_env("hopper")
    try:
        hopper = record_episode(
            Policy(build_model(ModelConfig(K=4, d_model=16, n_layer=1, d_state=4))), e, 3600.0, 0, max_steps=3
        )
    finally:
        e.close()
    assert "cue_visible" not in hopper  # other envs say nothing about a cue
