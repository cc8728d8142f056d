"""`dema-lab train` on Atari data end to end: cross-entropy training, evaluation in the game with
gamer-normalized scores, a recorded episode with colour frames and (a, R, s) attention, decay stats."""

import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from dema_lab.data.generate.atari import build_atari_dataset  # noqa: E402
from dema_lab.store.zarr_store import RunStore  # noqa: E402
from dema_lab.training import TrainConfig, train  # noqa: E402


def test_train_and_evaluate_a_tiny_atari_dema(tmp_path):
    data = build_atari_dataset("breakout", "mixed", tmp_path / "bm.hdf5", transitions=120, progress=False)
    cfg = TrainConfig.from_preset(
        "atari-small",
        dataset=str(data),
        steps=4,
        batch_size=2,
        K=3,
        d_model=16,
        n_layer=1,
        d_state=4,
        eval_episodes=1,
        eval_max_steps=8,
        record_episodes=1,
        render_size=32,
        decay_windows=2,
        checkpoint_every=2,
        log_every=2,
        store=str(tmp_path / "store"),
        run_id="atari",
    )
    run = train(cfg, progress=False, log=lambda m: None)
    assert run.attrs["status"] == "finished"
    store = RunStore(tmp_path / "store", mode="r")
    r = store.run("atari")
    ev = r.open("eval", r.published("eval")[-1]).load()
    ev = ev.isel(checkpoint=-1) if "checkpoint" in ev.dims else ev
    ret = ev["return"].values
    np.testing.assert_allclose(ev["normalized_score"].values, 100 * (ret - 1.7) / (30.5 - 1.7))
    assert set(ev.mode.values) == {"transformer", "rnn"} and list(ev.target.values) == [90.0]
    name = [n for n in r.published("rollout") if "transformer" in n][0]
    ep = r.open("rollout", name).load()
    assert ep["frames"].shape[1:] == (32, 32, 3)  # colour frames
    assert ep["observation"].dtype == np.uint8 and ep["observation"].shape[1] == 4 * 84 * 84
    assert set(np.unique(ep["action"].values)) <= {0.0, 1.0, 2.0, 3.0}
    assert "attention" in ep and r.published("decay")
    # discrete actions are trained with cross-entropy, and the logged loss says so
    loss = r.open("train", r.published("train")[0])["loss"]
    assert (loss.attrs["long_name"], loss.attrs["units"]) == ("masked action cross-entropy", "nats")
    # the preset centres frames on the training data's mean frame, which the checkpoint carries
    from dema_lab.data import load_d4rl
    from dema_lab.models import load_checkpoint

    ck = load_checkpoint(r.checkpoint_bytes(4), map_location="cpu")
    cnn = ck.model.embed.embed_state
    mean, std = load_d4rl(data).frame_stats()
    assert ck.config.frame_norm == "center" and cnn.norm == "center"
    np.testing.assert_allclose(cnn.frame_mean.numpy(), mean, rtol=1e-6)
    assert float(cnn.frame_std) == pytest.approx(std) and 20 < std < 120


def test_an_atari_sweep_from_the_preset_gives_dt_its_own_tokens():
    """`dema-lab sweep --preset atari-small --archs dema dt`: DeMa keeps the official Atari tokens
    (a, R, s); DT gets the DT paper's (R, s, a) with its timestep embedding."""
    from dema_lab.study.sweep import SweepConfig, grid
    from dema_lab.training import PRESETS, preset_fields

    base = TrainConfig.from_flat(preset_fields("atari-small"))
    dema, dt = grid(SweepConfig(datasets=["breakout-mixed"], K=[8], archs=["dema", "dt"], base=base))
    assert (dema.model.token_order, dema.model.timestep_embedding, dema.data.rtg_scale) == ("ARS", False, 1.0)
    assert (dt.model.arch, dt.model.token_order, dt.data.rtg_form, dt.model.timestep_embedding) == (
        "dt",
        "RSA",
        "current",
        True,
    )
    assert dt.data.rtg_scale == dema.data.rtg_scale == PRESETS["atari-small"]["rtg_scale"]  # the rest is the preset's
    assert TrainConfig.from_preset("atari-small", arch="dt").model.token_order == "RSA"
    assert TrainConfig.from_preset("atari-small").model.token_order == "ARS"
