"""Minari datasets through the trajectory interface (optional extra)."""

import sys

import numpy as np
import pytest

from dema_lab.data import DatasetError, load_dataset, load_minari


def test_without_minari_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)  # makes `import minari` fail
    with pytest.raises(ImportError, match=r"pip install 'dema-lab\[minari\]'"):
        load_minari("mujoco/hopper/expert-v0")
    with pytest.raises(ImportError, match="dema-lab\\[minari\\]"):
        load_dataset("minari:mujoco/hopper/expert-v0")


@pytest.fixture
def local_minari(tmp_path, monkeypatch):
    """A two-episode Hopper dataset written to a private local Minari directory."""
    minari = pytest.importorskip("minari")
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rng = np.random.default_rng(0)
    episodes = []
    for i, T in enumerate([5, 8]):
        episodes.append(
            dict(
                observations=rng.standard_normal((T + 1, 11)),
                actions=rng.uniform(-1, 1, (T, 3)).astype(np.float32),
                rewards=rng.standard_normal(T),
                terminations=np.r_[np.zeros(T - 1, bool), i == 0],
                truncations=np.r_[np.zeros(T - 1, bool), i == 1],
            )
        )
    buffers = [EpisodeBuffer(id=i, infos={}, **ep) for i, ep in enumerate(episodes)]
    minari.create_dataset_from_buffers(
        "dema/hopper-test-v0",
        buffers,
        env="Hopper-v5",
        eval_env="Hopper-v5",
        description="random Hopper episodes for dema-lab's Minari reader tests",
        algorithm_name="random",
        author="dema-lab tests",
        author_email="tests@example.com",
        code_permalink="https://example.com",
        ref_min_score=0.0,
        ref_max_score=10.0,
    )
    return episodes


def test_minari_episodes_load_exactly(local_minari):
    ds = load_minari("dema/hopper-test-v0")
    assert len(ds) == 2 and ds.env == "hopper" and ds.source == "minari:dema/hopper-test-v0"
    assert [t.terminated for t in ds] == [True, False]
    for t, ep in zip(ds, local_minari):
        T = len(ep["rewards"])
        np.testing.assert_allclose(t.observations, ep["observations"][:T], rtol=1e-6)
        np.testing.assert_allclose(t.next_observations, ep["observations"][1:], rtol=1e-6)
        np.testing.assert_array_equal(t.actions, ep["actions"])
        np.testing.assert_allclose(t.rewards, ep["rewards"], rtol=1e-6)
    # the dataset's own reference scores override D4RL's table
    assert ds.normalized_score(5.0) == pytest.approx(50.0)
    same = load_dataset("minari:dema/hopper-test-v0")
    np.testing.assert_array_equal(same[1].actions, ds[1].actions)


def test_minari_errors(local_minari):
    with pytest.raises(DatasetError, match="not in the local Minari directory.*dema/hopper-test-v0"):
        load_minari("mujoco/hopper/expert-v0")
    with pytest.raises(DatasetError, match="obs/act dims 11/3 but walker2d"):
        load_minari("dema/hopper-test-v0", env="walker2d")
