"""`dema-lab export` to TensorBoard and offline W&B, and `dema-lab train --log-to tensorboard`:
what the trackers hold is read back with their own readers and checked against the store."""

import glob
import json
import struct

import numpy as np
import pytest

pytest.importorskip("tensorboard", reason="the cluster extra (tensorboard) is not installed")


@pytest.fixture(scope="module")
def run(hopper_small, tiny_run, tmp_path_factory):
    """A tiny run with two evaluated checkpoints (steps 10 and 20)."""
    from dema_lab.training import TrainConfig, train

    store = tmp_path_factory.mktemp("export") / "store"
    cfg = TrainConfig.from_flat(
        dataset=str(hopper_small), store=str(store), steps=20, eval_every=10, run_id="tiny", **tiny_run
    )
    return train(cfg, progress=False, log=lambda *_: None)


def _expected_scores(run):
    """last and best (Transformer-like, mean over targets) at each checkpoint, by hand from the
    stored normalized scores: best is each target's maximum over the checkpoints so far."""
    ns = run.evals()["normalized_score"].sel(mode="transformer").transpose("checkpoint", "target", "episode").values
    per = ns.mean(axis=2)  # (checkpoint, target)
    steps = [int(s) for s in run.evals().checkpoint.values]
    return {s: (per[i].mean(), per[: i + 1].max(axis=0).mean()) for i, s in enumerate(steps)}


def _accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _check_tensorboard(acc, run):
    tags = acc.Tags()
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    train = run.train_metrics()
    assert sorted(loss) == [int(s) for s in train.step.values] == list(range(1, 21))
    np.testing.assert_allclose([loss[s] for s in sorted(loss)], train["loss"].values, rtol=1e-6)
    expected = _expected_scores(run)
    last = {e.step: e.value for e in acc.Scalars("eval/transformer/last")}
    best = {e.step: e.value for e in acc.Scalars("eval/transformer/best")}
    assert sorted(last) == sorted(best) == [10, 20]
    for step, (want_last, want_best) in expected.items():
        assert last[step] == pytest.approx(want_last, rel=1e-5)
        assert best[step] == pytest.approx(want_best, rel=1e-5)
    decay = run.decay()
    half = {e.step: e.value for e in acc.Scalars("decay/layer0/s_half_life")}
    for step in (10, 20):
        assert half[step] == pytest.approx(
            float(decay["half_life"].sel(checkpoint=step, layer=0, query_kind="s")), rel=1e-5
        )
    # every recorded episode (2 targets x 2 modes per checkpoint) as an animated GIF at its checkpoint
    videos = [t for t in tags["images"] if t.startswith("rollout/")]
    assert sorted(videos) == [
        "rollout/rnn-t0-e0",
        "rollout/rnn-t1-e0",
        "rollout/transformer-t0-e0",
        "rollout/transformer-t1-e0",
    ]
    shots = acc.Images("rollout/transformer-t0-e0")
    assert [s.step for s in shots] == [10, 20]
    assert shots[0].encoded_image_string[:6] == b"GIF89a" and shots[0].width == 32


def test_export_tensorboard(run, tmp_path):
    from dema_lab.cli.main import main

    assert main(["export", "tiny", "--store", run.store.path, "--to", "tensorboard", str(tmp_path / "tb")]) == 0
    acc = _accumulator(tmp_path / "tb" / "tiny")
    _check_tensorboard(acc, run)
    final = _expected_scores(run)[20]
    assert acc.Scalars("score/best")[-1].value == pytest.approx(final[1], rel=1e-5)
    assert acc.Scalars("score/last")[-1].value == pytest.approx(final[0], rel=1e-5)
    assert "config" in "".join(acc.Tags()["tensors"])


def _scalar_records(folder) -> dict[str, int]:
    """How many scalar records each tag has in the folder's event files, every file read in full
    (EventAccumulator's default drops the records that a later file 'orphans', hiding doubles
    that TensorBoard's own reader shows)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    return {tag: len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}


def test_export_tensorboard_again_replaces_the_previous_export(run, tmp_path, capsys):
    """Exporting twice into one folder (or after a killed export) doubled every scalar."""
    from dema_lab.cli.main import main

    argv = ["export", "tiny", "--store", run.store.path, "--to", "tensorboard", str(tmp_path / "tb")]
    out = tmp_path / "tb" / "tiny"
    assert main(argv) == 0
    first = _scalar_records(out)
    assert first["train/loss"] == 20 and first["eval/transformer/last"] == 2
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 1
    # a second export, and one after an export killed while writing (its hidden folder is left)
    killed = tmp_path / "tb" / ".tiny.export-killed"
    killed.mkdir()
    (killed / files[0]).write_bytes((out / files[0]).read_bytes())
    for _ in range(2):
        assert main(argv) == 0
        assert _scalar_records(out) == first
        assert len(list(out.iterdir())) == 1 and sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["tiny"]
    _check_tensorboard(_accumulator(out), run)
    assert "note:" not in capsys.readouterr().out
    # event files that the export did not write (live logging) are kept, and named
    (out / "events.out.tfevents.1.host.1.0").write_bytes((out / next(out.iterdir()).name).read_bytes())
    assert main(argv) == 0
    assert "events.out.tfevents.1.host.1.0" in capsys.readouterr().out
    assert (out / "events.out.tfevents.1.host.1.0").exists() and len(list(out.iterdir())) == 2


def test_train_logs_live_to_tensorboard(hopper_small, tiny_run, tmp_path):
    from dema_lab.cli.main import main
    from dema_lab.store.zarr_store import RunStore

    args = [
        "train",
        "--dataset",
        str(hopper_small),
        "--store",
        str(tmp_path / "store"),
        "--steps",
        "20",
        "--eval_every",
        "10",
        "--run_id",
        "live",
        "--quiet",
        "--log-to",
        "tensorboard",
        str(tmp_path / "tb"),
    ]
    for key, value in tiny_run.items():
        args += [f"--{key}", str(value)]
    assert main(args) == 0
    run = RunStore(tmp_path / "store").run("live")
    _check_tensorboard(_accumulator(tmp_path / "tb" / "live"), run)


def _wandb_records(path):
    """The records of an offline W&B run file: a 7-byte W&B header, then LevelDB-log framing (32 KiB
    blocks; each chunk: crc32, length, type FULL/FIRST/MIDDLE/LAST) around protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_export_wandb_offline(run, tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the cluster extra (wandb) is not installed")
    from dema_lab.cli.main import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: a contact would fail
    monkeypatch.setenv("WANDB_MODE", "online")  # the export forces offline anyway
    assert main(["export", "tiny", "--store", run.store.path, "--to", "wandb", str(tmp_path)]) == 0
    folders = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(folders) == 1
    files = glob.glob(folders[0] + "/run-*.wandb")
    assert len(files) == 1
    history, summary, config = [], {}, {}
    for r in _wandb_records(files[0]):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "run":
            assert r.run.display_name == "tiny" and r.run.project == "dema-lab"
            config = {i.key: json.loads(i.value_json) for i in r.run.config.update}
    assert [h["_step"] for h in history] == list(range(1, 21))
    train = run.train_metrics()
    np.testing.assert_allclose([h["train/loss"] for h in history], train["loss"].values, rtol=1e-6)
    by_step = {h["_step"]: h for h in history}
    for step, (want_last, want_best) in _expected_scores(run).items():
        assert by_step[step]["eval/transformer/last"] == pytest.approx(want_last, rel=1e-6)
        assert by_step[step]["eval/transformer/best"] == pytest.approx(want_best, rel=1e-6)
        assert by_step[step]["rollout/transformer-t0-e0/_type"] == "video-file"
    assert summary["score/best"] == pytest.approx(_expected_scores(run)[20][1], rel=1e-6)
    assert config["K"] == tiny_run["K"] and config["run_id"] == "tiny"
    gifs = glob.glob(folders[0] + "/files/media/videos/rollout/*.gif")
    assert len(gifs) == 8 and all(open(g, "rb").read(6) == b"GIF89a" for g in gifs)


def test_export_errors_are_one_line(run, tmp_path, capsys):
    from dema_lab.cli.main import main

    assert main(["export", "nope", "--store", run.store.path, "--to", "tensorboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "run 'nope' is not in store" in err and len(err.strip().splitlines()) == 1
    assert main(["export", "tiny", "--store", run.store.path, "--to", "comet"]) == 2
    assert "choose one of tensorboard, wandb" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
