"""DeMa and DT train and evaluate on the memory datasets: vector states with discrete actions
(MiniGrid, POPGym) and positions-only MuJoCo; the runs open in the store with their episodes."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("minigrid")
pytest.importorskip("popgym")

from dema_lab.data import build_dataset  # noqa: E402
from dema_lab.store.zarr_store import RunStore  # noqa: E402
from dema_lab.training import TrainConfig, train  # noqa: E402

# the conftest's tiny run, evaluated long enough for a POPGym episode, returns-to-go in env units
MEMORY_RUN = {"steps": 20, "eval_max_steps": 60, "rtg_scale": 1.0}


@pytest.mark.parametrize(
    "env, arch",
    [("minigrid-memory-s7", "dema"), ("minigrid-memory-s11", "dt"), ("popgym-repeatprevious-easy", "dema")],
)
def test_train_and_evaluate_on_a_memory_task(tmp_path, tiny_run, env, arch):
    data = build_dataset(env, "mixed", tmp_path / f"{env}.hdf5", transitions=600, progress=False)
    run_cfg = {**tiny_run, **MEMORY_RUN}
    cfg = TrainConfig.from_flat(dataset=str(data), store=str(tmp_path / "store"), run_id="m", arch=arch, **run_cfg)
    run = train(cfg, progress=False, log=lambda *_: None)
    assert run.attrs["status"] == "finished" and run.attrs["steps_done"] == 20
    r = RunStore(tmp_path / "store", mode="r").run("m")
    loss = r.open("train", r.published("train")[0])["loss"]
    assert loss.attrs["long_name"] == "masked action cross-entropy" and np.isfinite(loss.values).all()
    ev = r.open("eval", r.published("eval")[-1]).load().isel(checkpoint=-1)
    assert list(ev.target.values) == [1.0]  # the task's best return
    ref_min = -0.5 if env.startswith("popgym") else 0.0  # success rate; POPGym: random 0, optimum 100
    np.testing.assert_allclose(ev["normalized_score"].values, 100 * (ev["return"].values - ref_min) / (1 - ref_min))
    ep = r.open("rollout", r.published("rollout")[0]).load()
    obs_dim, n_actions = (147, 3) if env.startswith("minigrid") else (4, 4)
    assert ep["observation"].shape[1] == obs_dim and ep["frames"].shape[1:] == (32, 32, 3)
    assert set(np.unique(ep["action"].values)) <= set(map(float, range(n_actions)))
    if env.startswith("minigrid"):
        assert set(np.unique(ep["reward"].values)) <= {0.0, 1.0}
    else:  # POPGym: the env's own score per step
        assert ep.attrs["length"] == min(51, run_cfg["eval_max_steps"])
    assert "attention" in ep


def test_train_a_pomdp_run_from_the_cli_and_reopen_it_in_a_new_process(tmp_path, tiny_run):
    data = build_dataset("hopper-pomdp", "medium", tmp_path / "hp.hdf5", transitions=800, progress=False)
    store = tmp_path / "store"
    flags = [f"--{k}={v}" for k, v in {**tiny_run, "steps": 20, "eval_max_steps": 20}.items()]
    cmd = [sys.executable, "-m", "dema_lab.cli.main", "train", "--quiet", "--dataset", str(data), "--store", str(store)]
    done = subprocess.run([*cmd, "--run_id", "p", *flags], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    code = f"""
from dema_lab.store.zarr_store import RunStore
r = RunStore({str(store)!r}, mode="r").run("p")
ep = r.open("rollout", r.published("rollout")[0]).load()
ev = r.open("eval", r.published("eval")[-1]).load()
print(r.attrs["status"], ep["observation"].shape[1], sorted(ev.target.values.tolist()), r.attrs["provenance"]["env"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "finished 5 [1800.0, 3600.0] hopper-pomdp"  # the full task's targets


def test_the_cli_leaves_memory_task_returns_unscaled_unless_told(capsys):
    from dema_lab.cli.main import build_parser
    from dema_lab.cli.train import config_from_args

    def parse(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv]))

    assert parse("--dataset", "minigrid-memory-s7").data.rtg_scale == 1.0
    assert "returns-to-go unscaled" in capsys.readouterr().err
    assert parse("--dataset", "popgym-repeatprevious-easy", "--rtg_scale", "10").data.rtg_scale == 10.0
    assert parse("--dataset", "hopper-medium-pomdp").data.rtg_scale == 1000.0  # MuJoCo returns
