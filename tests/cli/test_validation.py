"""Bad input is refused early, with one line that names the problem and what to do:
config values parsed by their declared types, the dataset checked against K,
K against max_ep_len, unreadable and stale runs listed, runs deleted, a read-only store refused."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from dema_lab.analysis.runs import runs_summary
from dema_lab.cli.main import main
from dema_lab.common.values import ConfigError, parse_value
from dema_lab.store.errors import StoreError
from dema_lab.store.zarr_store import RunStore
from dema_lab.training import TrainConfig


def _cli(capsys, *argv):
    """(exit status, stdout, stderr) of `dema-lab argv` run in this process."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- config values by their types
@pytest.mark.parametrize(
    "text, expected",
    [
        ('"no"', False),
        ('"false"', False),
        ('"off"', False),
        ("false", False),
        ('"yes"', True),
        ("true", True),
        ('"none"', None),
    ],
)
def test_toml_timestep_embedding_is_parsed_as_a_bool(tmp_path, text, expected):
    """A TOML string "no" used to be kept as the string, which is truthy: the embedding was on."""
    path = tmp_path / "c.toml"
    path.write_text(f"timestep_embedding = {text}\n")
    assert TrainConfig.read_file(path)["timestep_embedding"] is expected
    cfg = TrainConfig.from_file(path)
    want = bool(expected) if expected is not None else False  # None: off for DeMa
    assert cfg.model.timestep_embedding is want and cfg.model_config(11, 3).timestep_embedding is want


def test_file_values_are_parsed_like_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {"steps": "30", "lr": "3e-4", "eval_targets": "3600, 1800", "K": 10.0, "eval_modes": "rnn", "decay_all": 1}
        )
    )
    cfg = TrainConfig.from_file(path)
    assert (
        cfg.optim.steps,
        cfg.optim.lr,
        cfg.evaluation.eval_targets,
        cfg.model.K,
        cfg.evaluation.eval_modes,
        cfg.optim.decay_all,
    ) == (
        30,
        3e-4,
        [3600.0, 1800.0],
        10,
        ["rnn"],
        True,
    )
    assert type(cfg.optim.steps) is int and type(cfg.model.K) is int and type(cfg.optim.lr) is float
    from dema_lab.cli.main import build_parser
    from dema_lab.cli.train import config_from_args

    flags = config_from_args(
        build_parser().parse_args(
            [
                "train",
                "--steps",
                "30",
                "--lr",
                "3e-4",
                "--eval_targets",
                "3600",
                "1800",
                "--K",
                "10",
                "--eval_modes",
                "rnn",
                "--decay_all",
                "1",
            ]
        )
    )
    assert flags == cfg


@pytest.mark.parametrize(
    "line, field, expected",
    [
        ('steps = "ten"', "steps", "an integer"),
        ("K = 2.5", "K", "an integer"),
        ('timestep_embedding = "maybe"', "timestep_embedding", "true or false"),
        ("lr = true", "lr", "a number"),
        ("dataset = 5", "dataset", "a string"),
        ('eval_targets = ["high"]', "eval_targets", "a list of numbers"),
    ],
)
def test_a_bad_config_value_is_one_line_naming_field_and_type(tmp_path, capsys, line, field, expected):
    path = tmp_path / "bad.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=f"{field}: expected {expected}"):
        TrainConfig.from_file(path)
    rc, _, err = _cli(capsys, "train", "--config", path, "--store", tmp_path / "store")
    assert rc == 2
    msg = _one_line_error(err)
    assert str(path) in msg and f"{field}: expected {expected}" in msg
    assert not (tmp_path / "store").exists()  # refused before any work


def test_bad_values_from_python_and_flags_are_refused_too(capsys, tmp_path):
    with pytest.raises(ConfigError, match="steps: expected an integer, got 'ten'"):
        TrainConfig.from_flat(steps="ten")
    assert TrainConfig.from_flat(steps="10").optim.steps == 10
    rc, _, err = _cli(capsys, "train", "--timestep_embedding", "maybe")
    assert rc == 2 and _one_line_error(err).startswith("dema-lab train: timestep_embedding: expected true or false")
    rc, _, err = _cli(capsys, "sweep", "--set", "steps=ten", "--store", tmp_path / "store")
    assert rc == 2 and "steps: expected an integer, got 'ten'" in _one_line_error(err)
    with pytest.raises(ConfigError, match=r"unknown training config keys \['stepz'\]"):
        TrainConfig.from_flat({"stepz": 3})


def test_sweep_set_values_are_parsed_like_the_train_flags():
    from dema_lab.cli.study import parse_set

    assert parse_set(["steps=30", "eval_modes=transformer,rnn", "timestep_embedding=no", "lr=1e-3"]) == {
        "steps": 30,
        "eval_modes": ["transformer", "rnn"],
        "timestep_embedding": False,
        "lr": 1e-3,
    }
    with pytest.raises(ConfigError, match=r"unknown training config keys \['step'\]"):
        parse_set(["step=30"])


def test_parse_value_against_python_s_own_parsers():
    """An independent reference: int(), float() and the literal lists."""
    for text in ("0", "7", "-3", "10_000", "1e4"):
        assert parse_value(int, text, "x") == int(float(text.replace("_", "")))
    for text in ("1e-4", "0.25", "3"):
        assert parse_value(float, text, "x") == float(text)
    for bad in ("nan", "inf"):
        with pytest.raises(ConfigError):
            parse_value(float, bad, "x")
    assert parse_value(list[int], "5,10, 20", "K") == [5, 10, 20]
    assert parse_value(list[bool], ["off", "on"], "t") == [False, True]
    assert parse_value(bool | None, "null", "t") is None


def test_a_directory_as_config_file_is_one_line(tmp_path, capsys):
    rc, _, err = _cli(capsys, "train", "--config", tmp_path)
    assert rc == 2 and "is a directory" in _one_line_error(err)


@pytest.mark.timeout(60)  # reading the FIFO would block: the check must stat it, never open it
@pytest.mark.parametrize("flag", ["--config", "--dataset"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_fifo_or_a_device_as_config_or_dataset_is_not_a_regular_file(tmp_path, capsys, flag, kind):
    path = tmp_path / "fifo" if kind == "fifo" else kind
    if kind == "fifo":
        os.mkfifo(path)
    rc, _, err = _cli(capsys, "train", flag, path, "--steps", 1, "--store", tmp_path / "store")
    line = _one_line_error(err)
    assert rc == 2 and f"{path}" in line and "is not a regular file" in line, line
    assert "does not exist" not in line and "empty" not in line
    if flag == "--dataset":
        assert f"({'a FIFO' if kind == 'fifo' else 'a device'}); give an HDF5 file" in line


# ---------------------------------------------------------------- K against max_ep_len and the dataset
def test_K_longer_than_max_ep_len_is_refused_at_once(capsys, tmp_path):
    with pytest.raises(ConfigError, match="K=100000 is longer than max_ep_len=1000"):
        TrainConfig.from_flat(K=100000)
    assert TrainConfig.from_flat(K=50, max_ep_len=50).model.K == 50
    rc, _, err = _cli(capsys, "train", "--K", "100000", "--store", tmp_path / "store")
    assert rc == 2 and "use K <= 1000" in _one_line_error(err)


def _lengths_dataset(lengths):
    from dema_lab.data import Trajectory, TrajectoryDataset

    return TrajectoryDataset(
        [
            Trajectory(np.zeros((n, 2), np.float32), np.zeros((n, 1), np.float32), np.ones(n, np.float32))
            for n in lengths
        ],
        env="test",
    )


@pytest.mark.parametrize("lengths", [[30] * 19 + [200], [5, 8, 12, 40, 41, 90] * 7, [17]])
def test_the_K_that_the_dataset_check_suggests_fits(lengths):
    from dema_lab.data.trajectory import DatasetError
    from dema_lab.data.windows import MIN_FULL_EPISODES, check_context_length

    ds = _lengths_dataset(lengths)
    need = max(1, int(np.ceil(MIN_FULL_EPISODES * len(lengths))))
    K_bad = max(lengths) + 1
    with pytest.raises(DatasetError, match=r"use K <= (\d+)") as info:
        check_context_length(ds, K_bad)
    suggested = int(info.value.args[0].split("use K <= ")[1].split(",")[0])
    assert sum(n >= suggested for n in lengths) >= need  # it fits ...
    assert sum(n >= suggested + 1 for n in lengths) < need  # ... and is the largest that does
    check_context_length(ds, suggested)


def test_episodes_shorter_than_K_are_refused_before_training(hopper_small, tmp_path, capsys):
    """Before, K longer than every episode trained, then failed (or measured nothing) at evaluation."""
    store = tmp_path / "store"
    rc, _, err = _cli(
        capsys,
        "train",
        "--dataset",
        hopper_small,
        "--store",
        store,
        "--K",
        "600",
        "--steps",
        "2",
        "--d_model",
        "8",
        "--n_layer",
        "1",
        "--run_id",
        "toolong",
    )
    msg = _one_line_error(err)
    assert rc == 2 and "K=600 is too long" in msg and "use K <= " in msg
    assert "toolong" not in (RunStore(store, mode="r").run_ids() if store.exists() else [])


# ---------------------------------------------------------------- unreadable, stale and deleted runs
def _store_with_runs(path, *run_ids):
    store = RunStore(path, mode="a")
    for run_id in run_ids:
        store.create_run(run_id, TrainConfig.from_flat(run_id=run_id).to_flat(), {})
        store.run(run_id).set_attrs(status="finished")
    return store


def test_runs_lists_an_unreadable_run_with_its_reason(tmp_path, capsys):
    """A run with corrupt metadata used to vanish from `dema-lab runs` without a word."""
    _store_with_runs(tmp_path / "s", "good", "broken")
    (tmp_path / "s" / "runs" / "broken" / "zarr.json").write_text('{"garbage')
    rc, out, _ = _cli(capsys, "runs", "--store", tmp_path / "s")
    assert rc == 0 and "good" in out
    line = next(line for line in out.splitlines() if "broken" in line)
    assert "unreadable" in line and "JSONDecodeError" in line and "dema-lab delete broken" in line
    store = RunStore(tmp_path / "s", mode="r")
    assert store.run_ids() == ["good"] and set(store.unreadable) == {"broken"}
    assert "unreadable" in str(runs_summary(store).status.sel(run="broken").item())


def test_delete_asks_and_deletes_readable_and_unreadable_runs(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s"
    _store_with_runs(path, "keep", "drop", "broken")
    (path / "runs" / "broken" / "zarr.json").write_text("not json")
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # not a terminal: nobody to ask
    rc, _, err = _cli(capsys, "delete", "drop", "--store", path)
    assert rc == 2 and "--yes" in _one_line_error(err)
    assert "drop" in RunStore(path, mode="r").run_ids()  # nothing lost
    rc, _, err = _cli(capsys, "delete", "dorp", "--store", path, "--yes")
    assert rc == 2 and "did you mean drop" in _one_line_error(err)
    for run_id in ("drop", "broken"):
        rc, out, _ = _cli(capsys, "delete", run_id, "--store", path, "--yes")
        assert rc == 0 and "deleted" in out and not (path / "runs" / run_id).exists()
    store = RunStore(path, mode="r")
    assert store.run_ids() == ["keep"] and store.unreadable == {}


def test_delete_refuses_a_run_with_a_live_writer(tmp_path):
    from dema_lab.store.lock import RunBusyError

    store = _store_with_runs(tmp_path / "s", "busy")
    writer = RunStore(tmp_path / "s", mode="a").run("busy").claim()
    try:
        with pytest.raises(RunBusyError, match=f"pid {os.getpid()}"):
            store.delete_run("busy")
        assert "busy" in store.run_ids()
    finally:
        writer.release()
    store.delete_run("busy")
    assert store.run_ids() == []
    with pytest.raises(StoreError, match="read-only"):
        RunStore(tmp_path / "s", mode="r").delete_run("busy")


def test_runs_stale_lists_runs_running_without_a_live_writer(tmp_path, capsys):
    """A run killed before its first checkpoint stayed "running" forever; resume and a new run with
    its id gave contradictory advice, and no command deleted it."""
    path = tmp_path / "s"
    store = _store_with_runs(path, "done")
    code = (
        f"import json, sys; from dema_lab.store.zarr_store import RunStore; "
        f"RunStore({str(path)!r}, mode='a').create_run('killed', json.loads(sys.argv[1]), {{}})"
    )
    config = json.dumps(TrainConfig.from_flat(run_id="killed").to_flat())
    subprocess.run([sys.executable, "-c", code, config], check=True, timeout=300)  # the process dies, "running"
    store.create_run("alive", TrainConfig.from_flat(run_id="alive").to_flat(), {})
    live = store.run("alive").claim()
    try:
        assert RunStore(path, mode="r").stale_runs() == ["killed"]
        rc, out, _ = _cli(capsys, "runs", "--store", path, "--stale")
        assert rc == 0 and [line.split()[0] for line in out.splitlines()] == ["killed"]
        assert "before its first checkpoint" in out and "dema-lab delete killed" in out
        rc, out, _ = _cli(capsys, "runs", "--store", path)
        lines = out.splitlines()
        status = lines[0].split().index("status")
        assert next(line for line in lines if line.startswith("killed")).split()[status] == "stale"
        assert next(line for line in lines if line.startswith("alive")).split()[status] == "running"
    finally:
        live.release()
    rc, _, err = _cli(capsys, "train", "--run_id", "killed", "--store", path)
    msg = _one_line_error(err)
    assert rc == 2 and "no checkpoint to resume from" in msg and "dema-lab delete killed" in msg
    assert "resume it" not in msg


# ---------------------------------------------------------------- tracebacks -> one line
def _as_unprivileged():
    """A command prefix under which file permissions apply (root ignores them), or None."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") and subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-U"]  # a user namespace: uid nobody, no override of permissions
    return None


COMMANDS_THAT_WRITE = [
    ["train", "--run_id", "new", "--steps", "2"],
    ["ablate", "done", "--method", "mixer-zeros"],
    ["delete", "done", "--yes"],
    ["demo", "--no-serve", "--no-sweep"],
]


def test_a_read_only_store_is_one_line_not_a_traceback():
    """Each command that writes, as a user who cannot write the store (one process for all)."""
    prefix = _as_unprivileged()
    if prefix is None:
        pytest.skip("running as root without user namespaces: permissions cannot be tested")
    top = tempfile.mkdtemp(prefix="dema-ro-")
    try:
        os.chmod(top, 0o755)
        path = os.path.join(top, "store")
        _store_with_runs(path, "done")
        for root, dirs, files in os.walk(path):
            for name in dirs + files + [""]:
                p = os.path.join(root, name)
                os.chmod(p, stat.S_IMODE(os.stat(p).st_mode) & ~0o222 | 0o444 | (0o111 if os.path.isdir(p) else 0))
        code = (
            "import contextlib, io, json, sys; from dema_lab.cli.main import main\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        rc = main(argv)\n"
            "    print(json.dumps([rc, err.getvalue()]))\n"
        )
        argvs = [argv + ["--store", path] for argv in COMMANDS_THAT_WRITE]
        proc = subprocess.run(
            prefix + [sys.executable, "-c", code, json.dumps(argvs)], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
        assert len(results) == len(argvs), proc.stdout
        for argv, (rc, err) in zip(argvs, results):
            assert rc == 2, (argv, err)
            msg = _one_line_error(err)
            assert "read-only" in msg and path in msg, (argv, msg)
        assert os.path.exists(os.path.join(path, "runs", "done", "zarr.json"))
    finally:
        for root, dirs, _ in os.walk(top):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        shutil.rmtree(top, ignore_errors=True)


def test_a_directory_given_as_a_checkpoint_is_one_line(tmp_path, capsys):
    rc, _, err = _cli(capsys, "import", tmp_path, "--dataset", "hopper-medium", "--out", tmp_path / "x.safetensors")
    assert rc == 2 and "not a file" in _one_line_error(err)
    from dema_lab.cli.main import error_line

    try:
        open(tmp_path, "rb")
    except IsADirectoryError as e:
        line = error_line(e)
    assert str(tmp_path) in line and "is a directory: give a file" in line


def test_a_killed_run_without_checkpoint_is_deleted_and_trained_again(tiny_config):
    """ensure_trained (the sweep's) restarts such a run through RunStore.delete_run, not by
    deleting the store's internals."""

    from dema_lab.training import ensure_trained

    cfg = tiny_config.replace(
        steps=2,
        eval_modes=["transformer"],
        render_size=0,
        decay_windows=0,
        eval_targets=[3600.0],
        run_id="restart",
    )
    code = (
        f"import json, sys; from dema_lab.store.zarr_store import RunStore; "
        f"RunStore({cfg.run.store!r}, mode='a').create_run('restart', json.loads(sys.argv[1]), {{}})"
    )
    subprocess.run([sys.executable, "-c", code, json.dumps(cfg.to_flat())], check=True, timeout=300)
    assert RunStore(cfg.run.store, mode="r").stale_runs() == ["restart"]
    run, what = ensure_trained(cfg, progress=False, log=lambda *a: None)
    assert what == "trained" and run.attrs["status"] == "finished" and run.checkpoints() == [2]
    assert RunStore(cfg.run.store, mode="r").stale_runs() == []
