"""ARS trainer: running statistics, rollouts and a short real training run."""

import numpy as np
import pytest

from dema_lab.data import LinearPolicy, load_policy_set
from dema_lab.data.generate.ars import ARSConfig, RunningStat, rollout, train_ars
from dema_lab.envs.make import make_env


def test_running_stat_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 5)) * [1, 2, 3, 4, 0] + [0, 1, 2, 3, 7]
    st = RunningStat(5)
    for chunk in np.array_split(x, 7):
        st.push(chunk)
    mean, std = st.mean_std()
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(std[:4], x.std(0)[:4], rtol=1e-9)
    assert std[4] == 1.0  # a constant feature is left unscaled


def test_rollout_returns_and_survival_shift():
    e = make_env("hopper")
    try:
        W = np.zeros((3, 11))
        ret, shifted, T, states = rollout(e, W, np.zeros(11), np.ones(11), seed=1, shift=1.0, keep_states=True)
        assert states.shape == (T, 11) and 0 < T <= 1000
        assert shifted == pytest.approx(ret - T)
        ret2, *_ = rollout(e, W, np.zeros(11), np.ones(11), seed=1)
        assert ret2 == ret  # same seed, same episode
    finally:
        e.close()


def test_short_training_run_improves_and_writes_loadable_weights(tmp_path):
    cfg = ARSConfig(eval_every=4, eval_episodes=2, final_eval_episodes=2)  # hopper's N=8, b=4
    out = tmp_path / "hopper.npz"
    ps = train_ars(
        "hopper", minutes=10, seed=0, config=cfg, out=out, log=None, max_iterations=12
    )  # seeded: the same run everywhere
    again = load_policy_set(out)
    np.testing.assert_array_equal(again.expert.W, ps.expert.W)
    assert isinstance(again.medium, LinearPolicy) and len(again.replay) >= 1
    assert np.abs(ps.expert.W).sum() > 0  # it moved away from the zero policy
    curve = again.meta["eval_return"]
    assert len(curve) == 4 and again.meta["iterations"] == 12 and again.meta["train_env_steps"] > 0
    assert ps.expert_return > curve[0]  # better than the zero policy it started from
    assert again.meta["config"]["shift"] == 1.0  # hopper's survival bonus removed in training


def test_noisy_evaluation_is_seeded_and_differs_from_deterministic():
    from dema_lab.data.generate.ars import evaluate

    ps = load_policy_set("hopper")
    e = make_env("hopper")
    try:
        clean = evaluate(e, ps.expert, [5, 6])
        noisy = evaluate(e, ps.expert, [5, 6], action_noise=0.3)
        again = evaluate(e, ps.expert, [5, 6], action_noise=0.3)
    finally:
        e.close()
    np.testing.assert_array_equal(noisy, again)  # the noise stream is seeded
    assert not np.allclose(noisy, clean)
    assert clean.mean() > 0.8 * ps.expert_return
