"""The trainer and the run store: a real tiny run, reopened, resumed, read while written."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import FAST_EVAL, wait_until

from dema_lab import open_store
from dema_lab.evaluation.rollout import replay_attention
from dema_lab.models import CheckpointError, load_checkpoint
from dema_lab.store import RunStore
from dema_lab.store.errors import StoreError
from dema_lab.training import TrainConfig, train


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dema_lab.cli.main", *args], capture_output=True, text=True, **kw)


def test_tiny_run_trains_evaluates_logs_and_reopens_in_a_new_process(tiny_config):
    run = train(tiny_config, progress=False, log=lambda *_: None)
    assert run.attrs["status"] == "finished" and run.attrs["steps_done"] == 20
    code = f"""
import json, dema_lab
summary = dema_lab.open_store({tiny_config.run.store!r})
tree = dema_lab.open_run({tiny_config.run.store!r}, "tiny")
out = {{"runs": list(summary.run.values), "train": dict(tree["train"].ds.sizes),
       "eval": dict(tree["eval"].ds.sizes), "decay": dict(tree["decay"].ds.sizes),
       "rollouts": {{k: dict(v.ds.sizes) for k, v in tree["rollout"].children.items()}},
       "loss_finite": bool(tree["train"].ds.loss.notnull().all()),
       "config": tree.attrs["config"]["K"], "backend": tree.attrs["provenance"]["backend"]}}
print(json.dumps(out))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["runs"] == ["tiny"] and out["config"] == 3 and out["loss_finite"]
    assert out["train"] == {"step": 20}
    assert out["eval"] == {"checkpoint": 1, "mode": 2, "target": 2, "episode": 1}
    L = 3 * 3 - 1
    assert out["decay"] == {"checkpoint": 1, "layer": 1, "query_kind": 3, "lag": 9, "key_kind": 3, "step_lag": 3}
    assert sorted(out["rollouts"]) == sorted(
        f"step_00000020-{m}-t{i}-e0" for m in ("transformer", "rnn") for i in (0, 1)
    )
    for sizes in out["rollouts"].values():
        assert sizes["query"] == sizes["key"] == sizes["lag"] == L and sizes["layer"] == 1
        assert sizes["y"] == sizes["x"] == 32 and sizes["rgb"] == 3 and 1 <= sizes["step"] <= 25
    assert out["backend"] in ("numba", "torch")
    listing = cli("runs", "--store", tiny_config.run.store)
    assert listing.returncode == 0 and "tiny" in listing.stdout and "finished" in listing.stdout
    # the headline scores, last and best side by side: Transformer-like, mean over targets of the
    # episodes' mean (one checkpoint here, so last = best)
    summary = open_store(tiny_config.run.store)
    want = float(run.evals()["normalized_score"].isel(checkpoint=-1).sel(mode="transformer").mean("episode").mean())
    assert summary.score_mode.item() == "transformer"
    assert summary.last_score.item() == pytest.approx(want) and summary.best_score.item() == pytest.approx(want)
    assert summary.best_score.attrs["method"].startswith("best: each target's best checkpoint")
    assert "last_score" in listing.stdout and "best_score" in listing.stdout
    assert "last: the final checkpoint" in listing.stdout and f"{want:.1f}" in listing.stdout
    # xarray conventions: every stored variable says what it is, every frame axis is labelled
    groups = {kind: run.open(kind, run.published(kind)[0]) for kind in ("train", "eval", "decay", "rollout")}
    for kind, ds in groups.items():
        for name, var in ds.data_vars.items():
            assert var.attrs.get("long_name"), f"{kind}/{name} has no long_name"
    assert list(groups["rollout"].rgb.values) == ["r", "g", "b"] and groups["rollout"].sizes["y"] == 32


def test_rollout_contents_are_consistent(tiny_config):
    run = train(tiny_config, progress=False, log=lambda *_: None)
    ro = run.open("rollout", "step_00000020-transformer-t0-e0").load()
    assert ro.attrs["return"] == pytest.approx(float(ro.reward.sum()), rel=1e-5)
    # returns-to-go fall by exactly the rewards received
    np.testing.assert_allclose(
        ro.return_to_go.values[1:], ro.return_to_go.values[:-1] - ro.reward.values[:-1], rtol=1e-5, atol=1e-3
    )
    assert ro.return_to_go.values[0] == pytest.approx(3600.0)
    assert ro.frames.dtype == np.uint8 and ro.frames.std() > 0
    # window grows until K then stays; attention rows of the current token are finite there
    diag = np.diagonal(ro.attention.isel(layer=0).values, axis1=-2, axis2=-1)  # (step, L)
    n_real = np.isfinite(diag).sum(-1)
    assert list(n_real[:4]) == [2, 5, 8, 8]
    np.testing.assert_array_equal(ro.attention_by_lag.values[:, :, 0], ro.attention.values[:, :, -1, -1])
    assert list(ro.query_label.values) == ["R-2", "s-2", "a-2", "R-1", "s-1", "a-1", "R0", "s0"]
    # the episode exports to a video that decodes to its frames (H.264 is lossy: close, not equal)
    import imageio.v3 as iio

    out = cli(
        "video",
        "tiny",
        "step_00000020-transformer-t0-e0",
        "--store",
        tiny_config.run.store,
        "--out",
        str(tiny_config.run.store + "-ep.mp4"),
        "--fps",
        "25",
    )
    assert out.returncode == 0, out.stderr
    video = iio.imread(tiny_config.run.store + "-ep.mp4")
    assert video.shape == ro.frames.shape
    assert np.abs(video.astype(float) - ro.frames.values).mean() < 6
    assert iio.immeta(tiny_config.run.store + "-ep.mp4")["fps"] == 25
    out = cli("video", "tiny", "nope", "--store", tiny_config.run.store)
    assert out.returncode == 2 and "has no episode 'nope'" in out.stderr
    from dema_lab.evaluation.rollout import export_video

    with pytest.raises(ValueError, match="recorded without frames"):
        export_video(ro.drop_vars("frames"), tiny_config.run.store + "-x.mp4")


def test_stored_attention_equals_attention_recomputed_from_the_checkpoint(tiny_config):
    run = train(tiny_config, progress=False, log=lambda *_: None)
    ck = load_checkpoint(run.checkpoint_bytes(20))
    L = ck.config.window_tokens()
    for mode in ("transformer", "rnn"):
        ro = run.open("rollout", f"step_00000020-{mode}-t0-e0").load()
        for step in (0, 1, ro.sizes["step"] - 1):
            again = replay_attention(
                ck.model,
                ro,
                step,
                "minmax",
                ck.extra["state_mean"].numpy(),
                ck.extra["state_std"].numpy(),
                ck.meta["rtg_scale"],
            )
            n = again.shape[-1]
            stored = ro.attention.isel(step=step).values[:, L - n :, L - n :]
            np.testing.assert_allclose(stored, again, rtol=1e-5, atol=1e-6)


def test_a_run_killed_midway_resumes_to_the_same_result(tiny_config, tmp_path):
    cfg = tiny_config.replace(steps=120, eval_every=0, checkpoint_every=20, log_every=5)
    args = ["train", "--quiet"] + [
        f"--{k}={v}" for k, v in cfg.to_flat().items() if v is not None and not isinstance(v, list)
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dema_lab.cli.main", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )

    def resumable() -> bool:  # a complete checkpoint is in the store
        assert proc.poll() is None, proc.stderr.read()
        try:
            return RunStore(cfg.run.store).run("tiny").published("resume")
        except StoreError:
            return False

    wait_until(resumable, 120, "the trainer's first resume checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = RunStore(cfg.run.store).run("tiny")
    assert killed.attrs["status"] == "running" and 20 <= killed.attrs["steps_done"] < 120
    resumed = cli("train", "--quiet", "--store", cfg.run.store, "--resume", "tiny")
    assert resumed.returncode == 0, resumed.stderr
    run = RunStore(cfg.run.store).run("tiny")
    assert run.attrs["status"] == "finished" and run.attrs["steps_done"] == 120
    metrics = run.train_metrics()
    assert list(metrics.step.values) == list(range(1, 121))
    # the same run without interruption ends with the same weights
    straight = train(cfg.replace(store=str(tmp_path / "straight")), progress=False, log=lambda *_: None)
    a = load_checkpoint(run.checkpoint_bytes(120)).model.state_dict()
    b = load_checkpoint(straight.checkpoint_bytes(120)).model.state_dict()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(metrics.loss.values, straight.train_metrics().loss.values, rtol=1e-4)


WRITER = """
import sys, numpy as np, xarray as xr
from dema_lab.store.zarr_store import RunStore
run = RunStore(sys.argv[1], mode="a").create_run("w", {"arch": "dema"}, {"env": "hopper"})
for i in range(int(sys.argv[2])):
    data = np.random.default_rng(i).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    ds = xr.Dataset({"frames": (("step", "y", "x", "rgb"), data), "value": ("step", np.full(40, i, np.float64))},
                    attrs={"checksum": int(data.astype(np.int64).sum()), "i": i})
    run.write("rollout", f"g{i:04d}", ds)
    run.write("ablation", "latest", ds)           # a published name rewritten again and again
print("done")
"""


def test_a_reader_polling_while_a_writer_appends_and_rewrites_sees_only_whole_groups(tmp_path):
    store = str(tmp_path / "store")
    RunStore(store, mode="a")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, store, "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def check(ds):
        assert int(ds.frames.values.astype(np.int64).sum()) == ds.attrs["checksum"]
        assert (ds.value.values == ds.attrs["i"]).all() and ds.sizes["step"] == 40

    checked, versions, polls = set(), set(), 0
    while True:
        finished = writer.poll() is not None
        s = RunStore(store)
        if "w" in s.run_ids():
            run = s.run("w")
            for name in run.rollouts():
                check(run.open("rollout", name).load())  # any error here fails the test
                checked.add(name)
            if "latest" in run.published("ablation"):
                latest = run.open("ablation", "latest").load()
                check(latest)
                versions.add(latest.attrs["i"])
        polls += 1
        if finished:
            break
    assert writer.returncode == 0, writer.stderr.read()
    assert len(checked) == 60 and polls > 3
    assert len(versions) > 3 and max(versions) == 59  # the reader saw the rewrites, whole
    # old versions do not pile up: the rewritten name keeps its ring of slots, no more
    assert sorted(p.name for p in (tmp_path / "store/runs/w/ablation").iterdir() if p.is_dir()) == [
        "latest",
        "latest.slot1",
        "latest.slot2",
    ]


def test_bad_input_gets_clear_errors(tiny_config, tmp_path):
    # an empty store, a directory of other files, a zarr group of another tool, a file
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError, match="is empty"):
        open_store(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hi")
    with pytest.raises(StoreError, match="not a dema-lab store"):
        open_store(other)
    import zarr

    zarr.open_group(str(tmp_path / "foreign"), mode="w", zarr_format=3)
    (tmp_path / "foreign" / "x").mkdir()
    with pytest.raises(StoreError, match="not a dema-lab store"):
        open_store(tmp_path / "foreign")
    with pytest.raises(StoreError, match="not a dema-lab store"):
        RunStore(other, mode="a")  # and it wrote nothing there
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    out = cli("runs", "--store", str(other))
    assert out.returncode == 2 and "not a dema-lab store" in out.stderr and "Traceback" not in out.stderr
    from dema_lab.store.errors import EmptyStoreError

    with pytest.raises(EmptyStoreError, match="the path does not exist"):
        open_store(tmp_path / "nowhere")
    # serving a store that is not one fails at once, by name (a missing or empty one is served:
    # its page says how to create a run)
    (tmp_path / "a-file").write_text("x")
    for bad, why in ((other, "not a dema-lab store"), (tmp_path / "a-file", "is a file, not a dema-lab store")):
        out = cli("serve", "--store", str(bad), "--port", "1", timeout=60)  # a regression would serve: timeout
        assert out.returncode == 2 and why in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = cli("demo", "--no-serve", "--store", str(tmp_path / "a-file"), timeout=300)
    assert out.returncode == 2 and "is a file, not a dema-lab store" in out.stderr
    assert "[demo" not in out.stdout  # refused before building or training anything
    # unknown dataset, unknown run, bad config values
    out = cli("train", "--store", str(tmp_path / "s"), "--dataset", "hopper-excellent", "--steps", "2")
    assert out.returncode == 2 and "unknown dataset 'hopper-excellent'" in out.stderr
    out = cli("train", "--store", str(tmp_path / "s"), "--resume", "nope")
    assert out.returncode == 2 and "run 'nope' is not in store" in out.stderr
    with pytest.raises(ValueError, match="steps must be >= 1"):
        TrainConfig.from_flat(steps=0)
    with pytest.raises(ValueError, match="unknown training config keys \\['kk'\\]"):
        TrainConfig.from_flat({"kk": 1})
    # a run whose checkpoint is corrupt cannot be resumed, and says which
    tiny_config = tiny_config.replace(**FAST_EVAL)
    run = train(tiny_config, progress=False, log=lambda *_: None)
    run.write_bytes("checkpoint", "step_00000020", b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        train(tiny_config.replace(steps=30), resume="tiny", progress=False, log=lambda *_: None)
    # a run id that already exists is not overwritten
    with pytest.raises(StoreError, match="already exists"):
        train(tiny_config, progress=False, log=lambda *_: None)


def test_a_model_with_nan_weights_fails_evaluation_clearly():
    import torch

    from dema_lab.evaluation.rollout import evaluate
    from dema_lab.models import ModelConfig, build_model

    model = build_model(ModelConfig(state_dim=11, act_dim=3, K=3, d_model=16, d_state=4)).eval()
    with torch.no_grad():
        model.predict_action[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite action at step 0"):
        evaluate(model, "Hopper-v5", [3600.0], 1, record=0, render_size=None, attention=None, max_steps=5)


def test_config_file_flags_and_resume_overrides(tiny_config, tmp_path):

    from dema_lab.cli.main import build_parser
    from dema_lab.cli.train import config_from_args

    def parse(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv]))

    (tmp_path / "c.json").write_text(json.dumps({"K": 7, "steps": 50, "eval_targets": [100.0]}))
    (tmp_path / "c.toml").write_text('K = 9\nlayout = "BL3D"\n')
    cfg = parse("--config", str(tmp_path / "c.json"), "--steps", "60")
    assert (cfg.model.K, cfg.optim.steps, cfg.evaluation.eval_targets, cfg.model.d_model) == (
        7,
        60,
        [100.0],
        TrainConfig().model.d_model,
    )
    cfg = parse("--config", str(tmp_path / "c.toml"))
    assert (cfg.model.K, cfg.model.layout) == (9, "BL3D")
    (tmp_path / "bad.json").write_text("{K: 3")
    with pytest.raises(ValueError, match="cannot be parsed"):
        parse("--config", str(tmp_path / "bad.json"))
    (tmp_path / "typo.toml").write_text("kk = 3\n")
    with pytest.raises(ValueError, match=r"unknown training config keys \['kk'\]"):
        parse("--config", str(tmp_path / "typo.toml"))

    # a resume continues with the run's saved config; only what is given changes
    tiny_config = tiny_config.replace(**FAST_EVAL)
    train(tiny_config, progress=False, log=lambda *_: None)
    cfg = parse("--store", tiny_config.run.store, "--resume", "tiny", "--steps", "30", "--eval_episodes", "2")
    assert (cfg.model.K, cfg.model.d_model, cfg.optim.steps, cfg.evaluation.eval_episodes) == (3, 16, 30, 2)
    out = cli(
        "train",
        "--quiet",
        "--store",
        tiny_config.run.store,
        "--resume",
        "tiny",
        "--steps",
        "30",
        "--eval_episodes",
        "2",
    )
    assert out.returncode == 0, out.stderr
    run = RunStore(tiny_config.run.store).run("tiny")
    assert run.attrs["steps_done"] == 30 and run.attrs["config"]["eval_episodes"] == 2
    assert run.evals().sel(checkpoint=30).sizes["episode"] == 2
    out = cli("train", "--quiet", "--store", tiny_config.run.store, "--resume", "tiny", "--K", "5", "--steps", "40")
    assert out.returncode == 2 and "cannot change K (3 -> 5)" in out.stderr


def test_warm_up_and_gradient_clipping():
    import torch

    from dema_lab.models import ModelConfig, build_model
    from dema_lab.training.objective import make_optimizer, masked_mse, train_step

    cfg = TrainConfig.from_flat(lr=1e-3, warmup_steps=4, grad_clip=0.01)
    model = build_model(ModelConfig(state_dim=11, act_dim=3, K=3, d_model=16, d_state=4, n_layer=1))
    opt, sched = make_optimizer(model, cfg.optim)
    g = torch.Generator().manual_seed(0)
    batch = dict(
        states=torch.randn(4, 3, 11, generator=g),
        actions=torch.rand(4, 3, 3, generator=g) * 2 - 1,
        returns_to_go=torch.ones(4, 3, 1),
        timesteps=torch.arange(3)[None].repeat(4, 1),
        mask=torch.ones(4, 3),
    )
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        _, gnorm = train_step(model, batch, opt, sched, cfg.optim.grad_clip)
        assert gnorm > cfg.optim.grad_clip  # the raw norm is reported ...
        clipped = torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
        assert float(clipped) <= cfg.optim.grad_clip * 1.0001  # ... and the step used the clipped one
    np.testing.assert_allclose(lrs, [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert float(masked_mse(torch.ones(1, 2, 3), torch.zeros(1, 2, 3), torch.tensor([[1.0, 0.0]]))) == 1.0


def test_a_dataset_from_an_unknown_env_is_refused_by_name(hopper_small, tmp_path):
    import shutil

    import h5py

    path = tmp_path / "ant.hdf5"
    shutil.copy(hopper_small, path)
    with h5py.File(path, "a") as f:
        f.attrs["env"] = "Ant-v5"
    out = cli("train", "--store", str(tmp_path / "s"), "--dataset", str(path), "--steps", "2")
    assert out.returncode == 2 and "recorded in env 'Ant-v5'" in out.stderr and "known envs" in out.stderr


def test_an_unknown_run_names_the_closest_ones(tmp_path):
    rs = RunStore(tmp_path / "s", mode="a")
    for k in (5, 10, 20, 40, 80, 160, 320, 640, 1280):
        rs.create_run(f"sweep-K{k}", {"K": k}, {})
    with pytest.raises(StoreError, match=r"'sweep-K2O' is not in store .*did you mean sweep-K20 .*lists all 9"):
        rs.run("sweep-K2O")
    with pytest.raises(StoreError, match=r"runs: sweep-K10, .* and 1 more; `dema-lab runs --store"):
        rs.run("zzz")


def test_a_live_rollout_is_saved_only_into_a_run_that_no_trainer_writes(tiny_config):
    """dema_lab.evaluation.rollout.save_rollout, the live page's rule: a finished run takes the episode under
    rollout_name(step, mode, 0, 0)-live<time>; a run being trained, or one whose writer lock a live
    process holds, is refused and nothing is written."""
    import os

    from dema_lab.envs.make import make_env
    from dema_lab.evaluation.rollout import rollout_steps, save_rollout
    from dema_lab.models import Policy
    from dema_lab.store.lock import RunLock
    from dema_lab.store.schema import parse_rollout_name

    run = train(tiny_config, progress=False)
    ck = load_checkpoint(run.checkpoint_bytes())
    env = make_env("hopper")
    try:
        records = list(rollout_steps(Policy(ck.model, "transformer", attention="minmax"), env, 3600.0, 0, max_steps=6))
    finally:
        env.close()
    step = run.checkpoints()[-1]
    attrs = {"target": 3600.0, "seed": 0, "mode": "transformer", "aggregation": "minmax", "env": "hopper"}
    name = save_rollout(tiny_config.run.store, "tiny", step, records, ck.config, attrs)
    parsed = parse_rollout_name(name)
    assert (parsed.step, parsed.mode) == (step, "transformer") and name.startswith(
        f"step_{step:08d}-transformer-t0-e0-live"
    )
    assert name in RunStore(tiny_config.run.store).run("tiny").rollouts()
    before = RunStore(tiny_config.run.store).run("tiny").rollouts()
    writable = RunStore(tiny_config.run.store, mode="a").run("tiny")
    writable.set_attrs(status="running")
    with pytest.raises(StoreError, match="being trained"):
        save_rollout(tiny_config.run.store, "tiny", step, records, ck.config, attrs)
    writable.set_attrs(status="finished")
    held = RunLock(tiny_config.run.store, "tiny").acquire()  # as a trainer in another process would
    try:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:  # another process: a lock is per process, so the refusal needs a second one
            err = pool.apply(_save_in_child, (tiny_config.run.store, step, attrs))
        assert err.startswith("RunBusyError:") and f"pid {os.getpid()}" in err, err  # names the holder
    finally:
        held.release()
    assert RunStore(tiny_config.run.store).run("tiny").rollouts() == before


def _save_in_child(store, step, attrs) -> str:
    from dema_lab.evaluation.rollout import save_rollout
    from dema_lab.models import load_checkpoint
    from dema_lab.store.zarr_store import RunStore

    ck = load_checkpoint(RunStore(store).run("tiny").checkpoint_bytes())
    try:
        save_rollout(store, "tiny", step, [], ck.config, attrs)
    except Exception as e:  # noqa: BLE001 - the refusal is what the test checks
        return f"{type(e).__name__}: {e}"
    return "saved"
