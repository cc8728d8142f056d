"""Importing checkpoints of the official DeMa code (github AndssY/dema).

The official checkpoints here are built from random weights in the official names and shapes and
saved as gym/experiment.py saves them (the AdamW object included). The reference they are checked
against (tests/helpers/official.py) is written from the official code's definitions, in float64
numpy, independent of dema-lab's models."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.official import (
    ACT_DIM,
    STATE_DIM,
    RefDeMa,
    RefDT,
    official_dema_sd,
    official_dt_sd,
    save_official,
    silu,
)

from dema_lab.integrations import import_official
from dema_lab.models import Policy, load_checkpoint
from dema_lab.models.official import OfficialCheckpointError, UnsafeCheckpointError, read_official

EPISODE = 30


def episode_data(seed=1, n=EPISODE):
    """A fixed sequence of raw observations and rewards (no env needed), and the normalisation."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(0.5, 2.0, (n, STATE_DIM)).astype(np.float32)
    rewards = rng.uniform(0.0, 4.0, n)
    mean = rng.normal(0.3, 0.5, STATE_DIM).astype(np.float32)
    std = rng.uniform(0.5, 2.0, STATE_DIM).astype(np.float32)
    return obs, rewards, mean, std


def run_reference(ref, mode, obs, rewards, mean, std, target, scale=1000.0, dt_slots="aligned"):
    """The official evaluation loop (evaluate_episode_rtg) around a reference model, in float64.
    The action slots: DeMa (R_t, a_{t-1}, s_t) with a_{-1} = 0. DT ("aligned"): slot t holds a_t, the
    current one 0 (kzl/decision-transformer's loop, the alignment DT is trained with); DT ("official"):
    the DeMa repository's evaluate_episode_rtg, whose action list starts with a zero row, so slot t
    holds a_{t-1}."""
    s_norm = (obs.astype(np.float64) - mean.astype(np.float64)) / std.astype(np.float64)
    rtg = [target / scale]
    actions = []
    if mode == "rnn":
        ref.rnn_reset()
    for t in range(len(obs)):
        ts = np.arange(t + 1)
        if isinstance(ref, RefDT) and dt_slots == "official":  # evaluate_episode_rtg's list
            a = ref.get_action(s_norm[: t + 1], np.array([np.zeros(ACT_DIM)] + actions), np.array(rtg), ts)
        elif isinstance(ref, RefDT):
            slots = np.array(actions + [np.zeros(ACT_DIM)])
            a = ref.get_action(s_norm[: t + 1], slots, np.array(rtg), ts)
        else:
            prev = np.array([np.zeros(ACT_DIM)] + actions)  # slot t: a_{t-1}
            if mode == "transformer":
                a = ref.get_action2(s_norm[: t + 1], prev, np.array(rtg), ts)
            else:
                a = ref.get_action(s_norm[t], prev[t], rtg[-1], t)
        actions.append(a)
        rtg.append(rtg[-1] - rewards[t] / scale)
    return np.array(actions)


def run_policy(ck, mode, obs, rewards, target):
    policy = Policy(
        ck.model, mode, ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy(), rtg_scale=ck.meta["rtg_scale"]
    )
    policy.reset(target)
    out = []
    for t in range(len(obs)):
        out.append(policy.act(obs[t]))
        policy.observe(rewards[t])
    return np.array(out, np.float64)


# ------------------------------------------------------------------------------------------------
# The reference against itself: the recurrent and the sequence forms agree
# ------------------------------------------------------------------------------------------------


def test_reference_recurrent_and_sequence_forms_agree():
    ref = RefDeMa(official_dema_sd(time_embd=True), K=64)
    rng = np.random.default_rng(0)
    T = 7
    states, slots, rtg = rng.normal(size=(T, STATE_DIM)), rng.normal(size=(T, ACT_DIM)), rng.normal(size=T)
    ts = np.arange(T)
    ref.rnn_reset()
    rec = [ref.get_action(states[t], slots[t], rtg[t], t) for t in range(T)]
    seq = [ref.forward_last(states[: t + 1], slots[: t + 1], rtg[: t + 1], ts[: t + 1]) for t in range(T)]
    np.testing.assert_allclose(rec, seq, atol=1e-12)
    assert np.abs(np.diff(np.array(rec), axis=0)).max() > 1e-3  # the actions do depend on the step


# ------------------------------------------------------------------------------------------------
# Equivalence: the imported model acts like the official one
# ------------------------------------------------------------------------------------------------

K_TEST = 6


@pytest.mark.parametrize("time_embd", [False, True], ids=["no-timestep", "timestep"])
def test_dema_b3ld_acts_like_the_official_in_both_modes(tmp_path, time_embd):
    sd = official_dema_sd(time_embd=time_embd)
    path = save_official(sd, tmp_path / "model_iter4.pkl")
    obs, rewards, mean, std = episode_data()
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST)
    cfg = ck.config
    assert (cfg.arch, cfg.layout, cfg.token_order, cfg.embed_norm, cfg.window_padding) == (
        "dema",
        "B3LD",
        "RAS",
        "none",
        "left",
    )
    assert (cfg.embed_dim, cfg.d_model, cfg.n_layer, cfg.d_state, cfg.d_conv, cfg.expand) == (32, 16, 2, 8, 4, 2)
    assert cfg.timestep_embedding is time_embd and cfg.K == K_TEST
    assert ck.meta["official_class"] == "Mamba_mujoco" and ck.meta["iteration"] == 4
    assert ck.meta["source"] == "official" and ck.meta["step"] == 3  # AdamW's step count
    assert set(ck.meta["dropped"]) == {
        "predict_state.weight",
        "predict_state.bias",
        "predict_return.weight",
        "predict_return.bias",
    }
    ref = RefDeMa(sd, K_TEST)
    target = 3600.0
    for mode in ("transformer", "rnn"):
        want = run_reference(ref, mode, obs, rewards, mean, std, target)
        got = run_policy(ck, mode, obs, rewards, target)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"mode {mode}")
    # the modes differ once the window is full (and early on, by the left padding): the test tells them apart
    tr = run_reference(ref, "transformer", obs, rewards, mean, std, target)
    rnn = run_reference(ref, "rnn", obs, rewards, mean, std, target)
    assert np.abs(tr - rnn).max() > 1e-3


def test_dema_bl3d_transformer_like_acts_like_the_official(tmp_path):
    sd = official_dema_sd(layout="BL3D", time_embd=True, seed=3)
    path = save_official(sd, tmp_path / "model_iter0.pkl")
    obs, rewards, mean, std = episode_data(seed=2)
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST)
    assert ck.config.layout == "BL3D"
    want = run_reference(RefDeMa(sd, K_TEST), "transformer", obs, rewards, mean, std, 1800.0)
    np.testing.assert_allclose(run_policy(ck, "transformer", obs, rewards, 1800.0), want, atol=1e-5)


@pytest.mark.parametrize("key", ["model", "model_state_dict"])
def test_dt_acts_like_the_official(tmp_path, key):
    sd = official_dt_sd()
    path = save_official(sd, tmp_path / "model_iter2.pkl", key=key)
    obs, rewards, mean, std = episode_data(seed=4)
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST)
    cfg = ck.config
    assert (cfg.arch, cfg.activation, cfg.embed_norm, cfg.token_order, cfg.timestep_embedding) == (
        "dt",
        "relu",
        "layernorm",
        "RSA",
        True,
    )
    assert ck.meta["official_class"] == "DecisionTransformer" and ck.meta["container"] == key
    assert "transformer.wte.weight" in ck.meta["dropped"] and "transformer.h.0.attn.bias" in ck.meta["dropped"]
    assert cfg.window_actions == "previous"  # the repository's own DT evaluation, exactly
    want = run_reference(RefDT(sd, K_TEST), "transformer", obs, rewards, mean, std, 5000.0, dt_slots="official")
    np.testing.assert_allclose(run_policy(ck, "transformer", obs, rewards, 5000.0), want, atol=1e-5)
    # with the alignment DT was trained with (kzl/decision-transformer's loop)
    import dataclasses

    from dema_lab.models import build_model

    own = build_model(dataclasses.replace(cfg, window_actions="own"))
    own.load_state_dict(ck.model.state_dict())
    aligned = dataclasses.replace(ck, model=own.eval(), config=own.cfg)
    want = run_reference(RefDT(sd, K_TEST), "transformer", obs, rewards, mean, std, 5000.0)
    np.testing.assert_allclose(run_policy(aligned, "transformer", obs, rewards, 5000.0), want, atol=1e-5)
    assert np.abs(run_policy(ck, "transformer", obs, rewards, 5000.0) - want).max() > 1e-3


def test_dt_n_head_is_a_keyword(tmp_path):
    sd = official_dt_sd(seed=5)
    path = save_official(sd, tmp_path / "model_iter1.pkl")
    obs, rewards, mean, std = episode_data(seed=5, n=12)
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST, n_head=4)
    assert ck.config.n_head == 4
    want = run_reference(
        RefDT(sd, K_TEST, n_head=4), "transformer", obs, rewards, mean, std, 5000.0, dt_slots="official"
    )
    np.testing.assert_allclose(run_policy(ck, "transformer", obs, rewards, 5000.0), want, atol=1e-5)
    one = run_reference(
        RefDT(sd, K_TEST, n_head=1), "transformer", obs, rewards, mean, std, 5000.0, dt_slots="official"
    )
    assert np.abs(one - want).max() > 1e-3  # heads matter: the check bites


def test_hidden_attention_matches_the_definition(tmp_path):
    sd = official_dema_sd(time_embd=True, seed=7)
    ck = import_official(
        save_official(sd, tmp_path / "model_iter1.pkl"), state_mean=np.zeros(STATE_DIM), state_std=np.ones(STATE_DIM)
    )
    ref = RefDeMa(sd, K=20)
    rng = np.random.default_rng(7)
    T = 6
    states, actions, rtg = rng.normal(size=(T, STATE_DIM)), rng.uniform(-1, 1, (T, ACT_DIM)), rng.normal(size=T)
    ts = np.arange(3, 3 + T)
    slots = np.concatenate([np.zeros((1, ACT_DIM)), actions[:-1]])  # a_{t-1}, a_{-1} = 0
    f32 = lambda x: torch.as_tensor(x, dtype=torch.float32)[None]  # noqa: E731
    attn = ck.model.attention(f32(states), f32(actions), f32(rtg)[..., None], torch.as_tensor(ts)[None], aggregate=None)
    inputs, _ = ref.layer_inputs(ref.tokens(states, slots, rtg, ts))
    L = 3 * T
    for layer, (mixer, h) in enumerate(zip(ref.mixers, inputs)):
        u, z, delta, B, C = mixer.inputs(h)
        alpha = np.zeros((mixer.Di, L, L))
        for i in range(L):
            for j in range(i + 1):
                decay = np.ones((mixer.Di, mixer.N))
                for k in range(j + 1, i + 1):  # prod_{k=j+1..i} exp(delta_k A)
                    decay = decay * np.exp(delta[k][:, None] * mixer.A)
                alpha[:, i, j] = (decay * (delta[j][:, None] * B[j][None, :]) * C[i][None, :]).sum(-1)
        # the definition is the scan: y = (alpha u + D u) silu(z)
        y = (np.einsum("dij,jd->id", alpha, u) + mixer.p["D"] * u) * silu(z)
        np.testing.assert_allclose(y @ mixer.p["out_proj.weight"].T, mixer.forward(h), atol=1e-10)
        got = attn[layer][0].double().numpy()
        assert got.shape == alpha.shape
        np.testing.assert_allclose(got, alpha, atol=1e-5 * np.abs(alpha).max())


# ------------------------------------------------------------------------------------------------
# Safety: nothing in the pickle runs
# ------------------------------------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("how", ["torch.save", "legacy torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    sd = official_dema_sd()
    payload = {"model": sd, "optimizer": _RunsCommand(os.system, (f"touch {marker}",))}
    path = tmp_path / "model_iter0.pkl"
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "legacy torch.save":  # the pre-1.6 format
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UnsafeCheckpointError, match=r"refuses global (posix|os|nt)\.system"):
        import_official(path, state_mean=np.zeros(STATE_DIM), state_std=np.ones(STATE_DIM))
    assert not marker.exists()
    # control: the same pickle, loaded unrestricted, does run the command (so the test would catch a leak)
    with open(path, "rb") as f:
        torch.load(f, weights_only=False) if how != "pickle.dump" else pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize(
    "fn, args, name",
    [
        (eval, ("__import__('os').getcwd()",), "builtins.eval"),
        (subprocess.Popen, (["true"],), "subprocess.Popen"),
        (getattr, (_RunsCommand(__import__, ("os",)), "system"), "builtins.getattr"),
    ],
)
def test_other_dangerous_globals_are_refused_by_name(tmp_path, fn, args, name):
    path = tmp_path / "model_iter0.pkl"
    torch.save({"model": official_dema_sd(), "x": _RunsCommand(fn, args)}, path)
    with pytest.raises(UnsafeCheckpointError, match=f"refuses global {name}"):
        read_official(path)


def test_a_pickled_model_object_is_refused_with_how_to_fix(tmp_path):
    path = tmp_path / "model_iter0.pkl"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module, not a state_dict
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict"):
        read_official(path)


@pytest.mark.parametrize("how", ["legacy torch.save", "pickle.dump", "bare state_dict"])
def test_other_pickle_formats_are_read(tmp_path, how):
    sd = official_dema_sd()
    path = tmp_path / "model_iter0.pkl"
    if how == "legacy torch.save":
        torch.save({"model": sd}, path, _use_new_zipfile_serialization=False)
    elif how == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump({"model": sd}, f)
    else:
        torch.save(sd, path)
    ck = import_official(path, state_mean=np.zeros(STATE_DIM), state_std=np.ones(STATE_DIM))
    got = ck.model.state_dict()
    for name, theirs in (
        ("embed.embed_token.weight", "backbone.embedding.weight"),
        ("layers.1.mixer.A_log", "backbone.layers.1.mixer.A_log"),
    ):
        torch.testing.assert_close(got[name], sd[theirs], rtol=0, atol=0)


def test_the_pickled_adamw_is_an_inert_stub(tmp_path):
    path = save_official(official_dema_sd(), tmp_path / "model_iter0.pkl")
    obj = read_official(path)
    opt = obj["optimizer"]
    assert not isinstance(opt, torch.optim.Optimizer) and "AdamW" in repr(opt)
    assert set(opt.state) == {"defaults", "state", "param_groups"}  # kept, never run


# ------------------------------------------------------------------------------------------------
# Clear errors
# ------------------------------------------------------------------------------------------------


def test_unknown_layouts_list_what_was_found(tmp_path):
    path = tmp_path / "model_iter0.pkl"
    torch.save({"model": {"encoder.weight": torch.zeros(4, 3), "encoder.bias": torch.zeros(4)}}, path)
    with pytest.raises(
        OfficialCheckpointError,
        match=r"not a layout of the official DeMa code.*"
        r"encoder\.weight \(4, 3\).*encoder\.bias \(4,\)",
    ):
        import_official(path, state_mean=np.zeros(3), state_std=np.ones(3))
    atari = {
        "state_encoder.0.weight": torch.zeros(32, 4, 8, 8),
        "ret_emb.0.weight": torch.zeros(128, 1),
        "head.weight": torch.zeros(4, 128),
        "backbone.layers.0.mixer.A_log": torch.zeros(256, 128),
    }
    torch.save(atari, tmp_path / "5.pkl")  # atari/: a bare state_dict
    with pytest.raises(
        OfficialCheckpointError, match=r"missing state_encoder\.2\.weight.*state_encoder\.\{i\}\.weight"
    ):
        import_official(tmp_path / "5.pkl", state_mean=np.zeros(3), state_std=np.ones(3))


def test_clear_errors_for_files_and_inputs(tmp_path):
    with pytest.raises(OfficialCheckpointError, match="does not exist"):
        import_official(tmp_path / "nope.pkl", state_mean=np.zeros(3), state_std=np.ones(3))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(OfficialCheckpointError, match="not a torch checkpoint"):
        import_official(tmp_path / "notes.txt", state_mean=np.zeros(3), state_std=np.ones(3))
    path = save_official(official_dema_sd(), tmp_path / "model_iter0.pkl")
    with pytest.raises(OfficialCheckpointError, match="give the dataset"):
        import_official(path)
    with pytest.raises(OfficialCheckpointError, match="takes 11-dim states"):
        import_official(path, state_mean=np.zeros(4), state_std=np.ones(4))
    bad = official_dema_sd(D=40)  # dt_rank ceil(40/16) = 3 ...
    bad["backbone.layers.0.mixer.dt_proj.weight"] = torch.zeros(80, 2)  # ... but stored as 2
    torch.save({"model": bad}, tmp_path / "model_iter1.pkl")
    with pytest.raises(OfficialCheckpointError, match=r"dt_rank is 2.*ceil\(d_model / 16\) = 3"):
        import_official(tmp_path / "model_iter1.pkl", state_mean=np.zeros(STATE_DIM), state_std=np.ones(STATE_DIM))


# ------------------------------------------------------------------------------------------------
# Normalisation from the dataset, and the command
# ------------------------------------------------------------------------------------------------


def test_normalisation_comes_from_the_dataset_as_the_official_code(tmp_path, hopper_small):
    from dema_lab.data import load_dataset

    path = save_official(official_dema_sd(), tmp_path / "model_iter0.pkl")
    ck = import_official(path, dataset=str(hopper_small))
    obs = np.concatenate([t.observations for t in load_dataset(str(hopper_small), progress=False)])
    np.testing.assert_allclose(ck.extra["state_mean"].numpy(), np.mean(obs, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ck.extra["state_std"].numpy(), np.std(obs, axis=0) + 1e-6, rtol=1e-5)
    assert ck.extra["state_std"].dtype == torch.float32
    assert ck.meta["env"] == "hopper"


IMPORTED_RUN = "official-dema-hopper-medium-iter7"


@pytest.fixture(scope="module")
def imported(tmp_path_factory, hopper_small):
    """An official DeMa (B3LD, timestep embedding) imported with the command, to a file and to a store."""
    from dema_lab.cli.main import main

    tmp = tmp_path_factory.mktemp("official")
    sd = official_dema_sd(time_embd=True, max_ep_len=1000)
    src = save_official(sd, tmp / "model_iter7.pkl")
    out, store = tmp / "official.safetensors", tmp / "store"
    assert main(["import", str(src), "--dataset", str(hopper_small), "--K", str(K_TEST), "--out", str(out)]) == 0
    args = [
        "import",
        str(src),
        "--dataset",
        str(hopper_small),
        "--K",
        str(K_TEST),
        "--store",
        str(store),
        "--eval-episodes",
        "1",
        "--eval-max-steps",
        "12",
        "--render-size",
        "32",
        "--targets",
        "3600",
        "--quiet",
    ]
    assert main(args) == 0
    return {"sd": sd, "src": src, "out": out, "store": store, "args": args}


def test_cli_imports_to_a_file(imported):
    ck = load_checkpoint(imported["out"])
    assert ck.config.token_order == "RAS" and ck.meta["source"] == "official" and ck.meta["iteration"] == 7
    obs, rewards, _, _ = episode_data(seed=9, n=10)
    mean, std = ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy()
    want = run_reference(RefDeMa(imported["sd"], K_TEST), "transformer", obs, rewards, mean, std, 3600.0)
    np.testing.assert_allclose(run_policy(ck, "transformer", obs, rewards, 3600.0), want, atol=1e-5)


def test_cli_imports_to_a_store_as_a_finished_run(imported, capsys):
    import json

    from dema_lab.cli.main import main

    assert main(imported["args"]) == 2  # the run id exists now
    assert "already exists" in capsys.readouterr().err
    code = (
        "import dema_lab, json; t = dema_lab.open_run(%r, %r); "
        "print(json.dumps([t.attrs['status'], t.attrs['provenance']['source'], t.attrs['config']['token_order'], "
        "sorted(t['rollout'].children), float(t['eval'].ds['return'].sum())]))" % (str(imported["store"]), IMPORTED_RUN)
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    status, source, order, rollouts, ret = json.loads(done.stdout.strip().splitlines()[-1])
    assert (status, source, order) == ("finished", "official", "RAS")
    assert rollouts == ["step_00000003-rnn-t0-e0", "step_00000003-transformer-t0-e0"]
    assert ret != 0.0


def test_the_dashboards_open_the_imported_run(imported):
    import holoviews as hv

    from dema_lab.dashboard import AttentionExplorer, RolloutWorker, SequenceComparison, StoreIndex

    store = str(imported["store"])
    view = AttentionExplorer(store, run=IMPORTED_RUN)
    ex = view.state
    ex.run = IMPORTED_RUN
    ex.episode = "step_00000003-transformer-t0-e0"
    assert isinstance(view.heatmap(), hv.Image)
    ex.step = min(5, ex.param.step.bounds[1])
    ex.aggregation = "abs"  # recomputed from the checkpoint
    assert np.isfinite(ex.matrix()).any() and "Cannot recompute" not in ex.message
    # the logged attention is what the imported checkpoint gives when the episode is replayed
    from dema_lab.analysis import right_align
    from dema_lab.evaluation.rollout import replay_attention

    ck = StoreIndex(store).checkpoint(IMPORTED_RUN, 3)
    ro = ex.episode_data.dataset.load()
    want = replay_attention(
        ck.model,
        ro,
        ex.step,
        "minmax",
        ck.extra["state_mean"].numpy(),
        ck.extra["state_std"].numpy(),
        ck.meta["rtg_scale"],
    )
    np.testing.assert_allclose(
        ro.attention.values[ex.step], right_align(want, ck.config.window_tokens()), rtol=1e-5, atol=1e-6, equal_nan=True
    )
    table = SequenceComparison(store).table
    assert list(table["run"]) == [IMPORTED_RUN] and table["parameters"].iloc[0] > 0
    w = RolloutWorker(ck, "hopper", 3600.0, "rnn", "minmax", render_size=32, max_steps=5, fps=0)
    w.start()
    w.join(60)
    assert w.done and not w.error and len(w.records) == 5


def test_cli_errors_are_clear(tmp_path, hopper_small, capsys):
    from dema_lab.cli.main import main

    src = save_official(official_dema_sd(), tmp_path / "model_iter0.pkl")
    assert (
        main(
            [
                "import",
                str(tmp_path / "missing.pkl"),
                "--dataset",
                str(hopper_small),
                "--out",
                str(tmp_path / "a.safetensors"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["import", str(src), "--dataset", "nosuch-dataset", "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert (
        main(
            [
                "import",
                str(src),
                "--dataset",
                str(hopper_small),
                "--env",
                "tetris",
                "--out",
                str(tmp_path / "a.safetensors"),
            ]
        )
        == 2
    )
    assert "unknown env" in capsys.readouterr().err
    assert main(["import", str(src), "--dataset", str(hopper_small)]) == 2
    assert "either --out" in capsys.readouterr().err


def test_dema_with_embeddings_as_wide_as_the_backbone_keeps_its_projection(tmp_path):
    """embedding_dim == d_model: the official model still has backbone.embedding, and so does the import."""
    sd = official_dema_sd(E=16, D=16, seed=5)
    path = save_official(sd, tmp_path / "model_iter1.pkl")
    obs, rewards, mean, std = episode_data(seed=6)
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST)
    assert ck.config.embed_dim == ck.config.d_model == 16 and ck.model.embed.embed_token is not None
    for mode in ("transformer", "rnn"):
        want = run_reference(RefDeMa(sd, K_TEST), mode, obs, rewards, mean, std, 3600.0)
        np.testing.assert_allclose(run_policy(ck, mode, obs, rewards, 3600.0), want, atol=1e-5)


@pytest.mark.parametrize("name", ["has_cuda", "_dynamo", "onnx"])
def test_a_torch_attribute_that_is_not_a_dtype_is_refused_without_being_touched(tmp_path, name, monkeypatch):
    """`ctorch\\n<name>\\n.` must not reach torch's module __getattr__ (which calls functions or
    imports submodules); only real dtypes found in torch's namespace are allowed."""
    touched = []
    real = vars(torch).get("__getattr__")

    def spy(attr):
        touched.append(attr)
        return real(attr)

    monkeypatch.setattr(torch, "__getattr__", spy, raising=False)
    if name not in vars(torch):
        getattr(torch, name, None)  # the spy bites: a plain lookup reaches it
        assert name in touched
        touched.clear()
    path = tmp_path / "model_iter0.pkl"
    path.write_bytes(b"ctorch\n" + name.encode() + b"\n.")
    with pytest.raises((UnsafeCheckpointError, OfficialCheckpointError), match=f"torch.{name}"):
        read_official(path)
    assert touched == []
