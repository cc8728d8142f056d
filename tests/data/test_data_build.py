"""The embedded suite: shipped policies, built datasets, cache, CLI."""

import json

import h5py
import numpy as np
import pytest

from dema_lab.cli.main import main as dema_lab_main
from dema_lab.data import (
    BUILDER_VERSION,
    QUALITIES,
    DatasetError,
    build_dataset,
    load_d4rl,
    load_dataset,
    load_policy_set,
    policy_path,
)
from dema_lab.data.generate import builder as builder_mod
from dema_lab.envs.make import make_env
from dema_lab.envs.spec import ENV_SPECS, env_spec

SHIPPED = [e for e in ENV_SPECS if policy_path(e).exists()]


@pytest.fixture(scope="module")
def hopper_suite(tmp_path_factory):
    """Small hopper datasets of every quality (3000 steps each; ~3 s in all)."""
    d = tmp_path_factory.mktemp("suite")
    return {
        q: build_dataset("hopper", q, d / f"hopper-{q}.hdf5", seed=0, transitions=3000, progress=False)
        for q in QUALITIES
    }


def test_hopper_weights_are_shipped():
    assert "hopper" in SHIPPED, "dema_lab/data/generate/policies/hopper.npz is missing"


@pytest.mark.parametrize("env", SHIPPED)
def test_shipped_policies_fit_their_env_and_reach_their_return(env):
    ps = load_policy_set(env)
    spec = env_spec(env)
    assert ps.expert.W.shape == (spec.act_dim, spec.obs_dim)
    assert ps.medium.W.shape == (spec.act_dim, spec.obs_dim)
    assert len(ps.replay) >= 2 and len(ps.replay_mean_len) == len(ps.replay)
    assert ps.expert_return > 2.0 * ps.medium_return > 0
    # one deterministic expert episode in the real env gets near the recorded return
    e = make_env(env)
    try:
        obs, _ = e.reset(seed=123)
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = e.step(ps.expert(obs))
            total += r
            done = term or trunc
    finally:
        e.close()
    assert total > 0.8 * ps.expert_return


def test_mean_return_rises_from_random_to_medium_to_expert(hopper_suite):
    means = {}
    for q in ("random", "medium", "expert"):
        with h5py.File(hopper_suite[q], "r") as f:
            means[q] = f.attrs["episode_return_mean"]
        ds = load_d4rl(hopper_suite[q])
        complete = [t.total_return for t in ds][:-1] or [ds[0].total_return]  # the last one may be cut
        assert np.mean(complete) == pytest.approx(means[q], rel=0.25)
    assert means["random"] < means["medium"] < means["expert"]
    assert means["random"] < 100 and means["expert"] > 2000


def test_built_file_is_d4rl_layout_with_attrs(hopper_suite):
    path = hopper_suite["medium"]
    with h5py.File(path, "r") as f:
        for key in (
            "observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
            "next_observations",
            "infos/qpos",
            "infos/qvel",
        ):
            assert key in f, key
        assert f["observations"].shape == (3000, 11) and f["actions"].shape == (3000, 3)
        assert f["rewards"].shape == (3000,) and f["terminals"].dtype == bool
        a = dict(f.attrs)
    assert a["env"] == "hopper" and a["quality"] == "medium" and a["seed"] == 0
    assert a["builder_version"] == BUILDER_VERSION and a["gym_id"] == "Hopper-v5"
    returns = json.loads(a["policy_returns"])
    ps = load_policy_set("hopper")
    assert returns == pytest.approx({"expert": ps.expert_return, "medium": ps.medium_return})
    ds = load_d4rl(path)
    assert ds.env == "hopper" and ds.quality == "medium" and ds.num_transitions == 3000
    # every episode ends with exactly one of terminal/timeout; the file splits back into them
    assert sum(t.terminated for t in ds) == int(np.sum(h5py.File(path)["terminals"][()]))


def test_stored_states_replay_in_the_real_env(hopper_suite):
    """Restoring infos/qpos,qvel at a row and taking its action reproduces the stored reward and next state."""
    with h5py.File(hopper_suite["expert"], "r") as f:
        d = {
            k: f[k][()] for k in ("observations", "actions", "rewards", "next_observations", "infos/qpos", "infos/qvel")
        }
    e = make_env("hopper")
    try:
        u = e.unwrapped
        e.reset(seed=0)
        for i in (0, 1, 517, 2999):
            u.set_state(d["infos/qpos"][i], d["infos/qvel"][i])
            np.testing.assert_allclose(u._get_obs(), d["observations"][i], rtol=1e-5, atol=1e-5)
            obs, r, *_ = u.step(d["actions"][i].astype(np.float64))
            assert r == pytest.approx(d["rewards"][i], rel=1e-4, abs=1e-4)
            np.testing.assert_allclose(obs, d["next_observations"][i], rtol=1e-4, atol=1e-4)
    finally:
        e.close()


def test_medium_replay_follows_training_and_medium_expert_is_half_and_half(hopper_suite):
    ds = load_d4rl(hopper_suite["medium-replay"])
    r = ds.returns
    q = max(1, len(r) // 4)
    assert r[:q].mean() < r[-q - 1 : -1].mean()  # later training rollouts do better
    me = load_d4rl(hopper_suite["medium-expert"])
    with h5py.File(hopper_suite["medium-expert"], "r") as f:
        obs = f["observations"][()]
    with h5py.File(hopper_suite["medium"], "r") as f:
        medium_obs = f["observations"][()]
    np.testing.assert_array_equal(obs[:1500], medium_obs[:1500])  # first half = the medium policy, same seed stream
    with h5py.File(hopper_suite["expert"], "r") as f:
        np.testing.assert_array_equal(obs[1500:], f["observations"][:1500])  # second half = the expert's
    assert me.num_transitions == 3000


def test_build_is_deterministic_given_a_seed(tmp_path):
    a = build_dataset("hopper", "medium", tmp_path / "a.hdf5", seed=5, transitions=400, progress=False)
    b = build_dataset("hopper", "medium", tmp_path / "b.hdf5", seed=5, transitions=400, progress=False)
    c = build_dataset("hopper", "medium", tmp_path / "c.hdf5", seed=6, transitions=400, progress=False)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        for k in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(fa[k][()], fb[k][()])
        assert not np.array_equal(fa["observations"][()], fc["observations"][()])


def test_episodes_mode_and_bad_arguments(tmp_path):
    ds = load_d4rl(build_dataset("hopper", "random", tmp_path / "r.hdf5", episodes=4, progress=False))
    assert len(ds) == 4 and all(t.terminated or len(t) == 1000 for t in ds)
    with pytest.raises(DatasetError, match="unknown quality 'superb'"):
        build_dataset("hopper", "superb", tmp_path / "x.hdf5")
    with pytest.raises(ValueError, match="unknown env 'tetris'"):
        build_dataset("tetris", "random", tmp_path / "x.hdf5")


def test_load_dataset_builds_embedded_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMA_LAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(builder_mod, "DEFAULT_TRANSITIONS", 600)
    ds = load_dataset("hopper-random", progress=False)
    path = tmp_path / "cache" / "hopper-random.hdf5"
    assert path.exists() and ds.num_transitions == 600 and ds.source == str(path)
    stamp = path.stat().st_mtime_ns
    again = load_dataset("hopper-random", progress=False)
    assert path.stat().st_mtime_ns == stamp  # reused, not rebuilt
    np.testing.assert_array_equal(again[0].observations, ds[0].observations)
    with h5py.File(path, "a") as f:  # an older builder's file is rebuilt
        f.attrs["builder_version"] = BUILDER_VERSION - 1
    load_dataset("hopper-random", progress=False)
    with h5py.File(path) as f:
        assert f.attrs["builder_version"] == BUILDER_VERSION


def test_cli_build_list_info(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEMA_LAB_DATA", str(tmp_path / "cache"))
    out = tmp_path / "cli.hdf5"
    assert data_cli(["build", "hopper", "random", "--transitions", "300", "--out", str(out), "--quiet"]) == 0
    assert load_d4rl(out).num_transitions == 300
    assert "wrote" in capsys.readouterr().out
    assert data_cli(["list"]) == 0
    listing = capsys.readouterr().out
    assert "hopper-medium" in listing and "walker2d-medium-expert" in listing
    assert data_cli(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transitions"] == 300 and info["attrs"]["quality"] == "random"
    assert data_cli(["build", "tetris", "random"]) == 2
    assert "unknown env 'tetris'" in capsys.readouterr().err
    assert data_cli(["info", str(tmp_path / "missing.hdf5")]) == 1


def test_register_adds_data_command():
    import argparse

    from dema_lab.cli.data import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(["data", "build", "walker2d", "expert", "--seed", "3", "--transitions", "10"])
    assert args.func.__name__ == "_build" and args.seed == 3 and args.transitions == 10
    args = p.parse_args(["data", "train-policies", "hopper", "--minutes", "0.5"])
    assert args.func.__name__ == "_train" and args.minutes == 0.5


@pytest.mark.parametrize("env", [e for e in SHIPPED if e != "hopper"])
def test_other_envs_rise_from_random_to_medium_to_expert(env, tmp_path):
    means = []
    for q in ("random", "medium", "expert"):
        path = build_dataset(env, q, tmp_path / f"{q}.hdf5", transitions=2000, progress=False)
        with h5py.File(path, "r") as f:
            means.append(f.attrs["episode_return_mean"])
            assert f["observations"].shape == (2000, env_spec(env).obs_dim)
    assert means[0] < means[1] < means[2], means


def data_cli(argv) -> int:
    """`dema-lab data ARGV`, through the one CLI (dema_lab.cli.main.main)."""
    return dema_lab_main(["data", *argv])
