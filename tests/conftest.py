import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(min(2, os.cpu_count() or 1))


BROWSER_FIXTURES = {"browser", "page"}


def pytest_collection_modifyitems(config, items):
    """Markers by what a test uses: a browser fixture makes it `browser`, tests/notebooks/ `notebook`."""
    for item in items:
        if BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)
        if "notebooks" in item.path.parts:
            item.add_marker(pytest.mark.notebook)


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def hopper_small(tmp_path_factory):
    """A small hopper-medium dataset in D4RL's layout (3000 steps), built once per session."""
    from dema_lab.data import build_dataset

    path = tmp_path_factory.mktemp("data") / "hopper-medium-small.hdf5"
    return build_dataset("hopper", "medium", path, seed=0, transitions=3000, progress=False)


TINY_RUN = dict(
    K=3,
    d_model=16,
    n_layer=1,
    d_state=4,
    batch_size=8,
    eval_episodes=1,
    eval_max_steps=25,
    decay_windows=8,
    render_size=32,
    log_every=10,
    checkpoint_every=10,
    warmup_steps=5,
    lr=1e-3,
)


@pytest.fixture
def tiny_config(hopper_small, tmp_path):
    """A TrainConfig that trains, evaluates and logs in a few seconds."""
    from dema_lab.training.trainer import TrainConfig

    return TrainConfig(dataset=str(hopper_small), store=str(tmp_path / "store"), steps=20, run_id="tiny", **TINY_RUN)
