import os
import types
from pathlib import Path

import pytest
import torch
from helpers.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from helpers.markers import is_slow

os.environ.setdefault("MUJOCO_GL", "egl")
# the cores shared out between pytest-xdist's workers (`make test` runs more workers than cores):
# this process's torch threads, and those of the processes a test starts (CLI runs, servers,
# notebook kernels), which read OMP_NUM_THREADS; more threads than cores would spin at OpenMP's
# barriers against the other workers
THREADS = max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)


BROWSER_FIXTURES = {"browser", "page"}


def pytest_configure(config):
    """Before pytest-xdist's workers start: the CPU kernels compiled into
    numba's disk cache, once, one process per dtype. Otherwise every worker, and every process a
    test starts, would compile the same kernels on a fresh clone."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return  # an xdist worker (its controller did it), or one process that compiles only what it uses
    from dema_lab.ssm.kernels.warm import warm_up_in_processes

    warm_up_in_processes()


def pytest_collection_modifyitems(config, items):
    """Markers by what a test uses: a browser fixture makes it `browser`, tests/notebooks/ `notebook`;
    the tests helpers.markers.SLOW lists are `slow`."""
    weight: dict = {}  # module -> its heavy (browser, notebook, slow) tests
    for item in items:
        if BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)
        if "notebooks" in item.path.parts:
            item.add_marker(pytest.mark.notebook)
        if is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)
        if any(item.get_closest_marker(m) for m in ("browser", "notebook", "slow")):
            weight[item.path] = weight.get(item.path, 0) + 1
    # The modules with the most heavy tests first, each module's tests in their own order (its
    # module-scoped browser and server made once): under pytest-xdist the long tests start early,
    # and the run ends on short ones instead of waiting on one long test started last.
    items.sort(key=lambda item: -weight.get(item.path, 0))


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
    from dema_lab.training import TrainConfig

    return TrainConfig.from_flat(
        dataset=str(hopper_small), store=str(tmp_path / "store"), steps=20, run_id="tiny", **TINY_RUN
    )


@pytest.fixture(scope="session")
def tiny_run():
    """TINY_RUN, read-only: the TrainConfig fields of a run that trains, evaluates and logs in seconds
    (`TrainConfig.from_flat(..., **tiny_run)`, `{**tiny_run, "K": 5}`)."""
    return types.MappingProxyType(TINY_RUN)


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium (helpers.browser.CHROMIUM_ARGS), one per test module. Without it
    or playwright the test is skipped; `make test` sets DEMA_LAB_REQUIRE_BROWSER=1, which fails it."""
    required = os.environ.get("DEMA_LAB_REQUIRE_BROWSER") == "1"
    try:
        import playwright.sync_api as pw_api
    except ImportError:
        (pytest.fail if required else pytest.skip)("playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        (pytest.fail if required else pytest.skip)(f"{CHROMIUM} is missing (make apt installs Debian's chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
