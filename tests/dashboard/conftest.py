"""Fixtures of the dashboard tests: a store with two small real runs and a broken one."""

import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dash_store(hopper_small, tiny_run, tmp_path_factory):
    """Two small real runs (K 3 and K 5, frames 96x96, 40-step episodes) and one run whose
    metadata is corrupt, in one store, built once per session."""
    from dema_lab.training import TrainConfig, train

    reuse = os.environ.get("DEMA_LAB_TEST_DASH_STORE")  # developers: keep the store between sessions
    if reuse and (Path(reuse) / "runs" / "broken").exists():
        return reuse
    store = Path(reuse) if reuse else tmp_path_factory.mktemp("dash") / "store"
    base = TrainConfig.from_flat(
        dataset=str(hopper_small),
        store=str(store),
        steps=20,
        run_id="tiny-K3",
        **{**tiny_run, "render_size": 96, "eval_max_steps": 40},
    )
    train(base, progress=False, log=lambda *_: None)
    train(
        base.replace(K=5, run_id="tiny-K5", eval_modes=["transformer"]),
        progress=False,
        log=lambda *_: None,
    )
    broken = store / "runs" / "broken"
    shutil.copytree(store / "runs" / "tiny-K5", broken)
    text = (broken / "zarr.json").read_text()
    (broken / "zarr.json").write_text(text[: len(text) // 2])  # a truncated write
    return str(store)
