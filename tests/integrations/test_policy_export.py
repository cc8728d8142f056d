"""export-policy: ONNX and TorchScript files of a policy in both inference modes act as dema-lab's
Policy does. The reference is Policy.act; the ONNX side is examples/run_onnx_policy.py's own numpy
windowing, so the window rules are checked twice, independently."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from copy import deepcopy as copy_module
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dema_lab.evaluation.ablation import ablate
from dema_lab.evaluation.rollout import single_threaded
from dema_lab.integrations.policy_export import ExportError, export_policy, export_run_policy
from dema_lab.models import ModelConfig, build_model
from dema_lab.models.checkpoint import checkpoint_bytes, load_checkpoint
from dema_lab.models.policy import Policy, inference_modes
from dema_lab.store.schema import checkpoint_name
from dema_lab.store.zarr_store import RunStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "run_onnx_policy.py"
STEPS = 200


@pytest.fixture(autouse=True)
def one_thread():
    """Batch-1 acting on one torch thread (a busy 2-core machine makes thread pools spin)."""
    with single_threaded():
        yield


def example_module():
    spec = importlib.util.spec_from_file_location("run_onnx_policy", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_checkpoint_model(folder):
    """The official DeMa's pickle (random weights, tests/helpers/official.py) imported as dema-lab does."""
    from helpers.official import official_dema_sd, save_official

    from dema_lab.models.official import official_checkpoint

    path = save_official(official_dema_sd(seed=3, E=16, D=16, n_layer=2, d_state=4), folder / "model_iter1.pkl")
    return official_checkpoint(path, state_mean=[0.0] * 11, state_std=[1.0] * 11, K=4).model


CASES = {
    "dema-B3LD-RSA": dict(arch="dema"),
    "dema-BL3D-RSA": dict(arch="dema", layout="BL3D"),
    "dema-B3LD-RAS-left": dict(arch="dema", token_order="RAS", window_padding="left"),
    "dema-BL3D-RAS": dict(arch="dema", layout="BL3D", token_order="RAS"),
    "dt": dict(arch="dt", n_head=2),
    "dt-previous": dict(arch="dt", window_actions="previous", window_padding="left"),
    "official": None,
    "lstm-B3LD-RSA": dict(arch="lstm"),
    "lstm-BL3D-RAS": dict(arch="lstm", layout="BL3D", token_order="RAS", window_padding="left"),
    "gru-B3LD-RAS": dict(arch="gru", token_order="RAS"),
    "gru-B3LD-RSA-left": dict(arch="gru", window_padding="left"),
    "mlp-RAS": dict(arch="mlp", token_order="RAS"),
    "mlp-BL3D-left": dict(arch="mlp", layout="BL3D", window_padding="left"),
    "atari": dict(arch="dema", obs_shape=(4, 84, 84), state_dim=4 * 84 * 84, act_dim=1, n_actions=4, token_order="ARS"),
}


TORCHSCRIPT_CASES = [
    "dema-B3LD-RSA",
    "dema-BL3D-RAS",
    "official",
    "dt",
    "atari",
    "lstm-B3LD-RSA",
    "gru-B3LD-RAS",
    "mlp-RAS",
]


def make_checkpoint(name, path):
    torch.manual_seed(len(name))
    if CASES[name] is None:
        model = official_checkpoint_model(path.parent)
    else:
        kw = dict(state_dim=11, act_dim=3, K=4, d_model=16, n_layer=2, d_state=4, max_ep_len=300) | CASES[name]
        model = build_model(ModelConfig(**kw)).eval()
    cfg, g = model.cfg, np.random.default_rng(0)
    mean = np.zeros(cfg.state_dim) if cfg.discrete else g.normal(size=cfg.state_dim)
    std = np.ones(cfg.state_dim) if cfg.discrete else g.uniform(0.5, 2, size=cfg.state_dim)
    meta = {"env": "pong" if cfg.discrete else "hopper", "rtg_scale": 20.0 if cfg.discrete else 1000.0, "step": 7}
    extra = {"state_mean": torch.tensor(mean, dtype=torch.float32), "state_std": torch.tensor(std, dtype=torch.float32)}
    path.write_bytes(checkpoint_bytes(model, meta, extra))
    return load_checkpoint(path)


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """name -> (checkpoint, {(format, mode): path}) for every case, exported once per session."""
    root, out = tmp_path_factory.mktemp("exports"), {}
    with single_threaded():
        for name in CASES:
            out[name] = export_case(name, root)
    return out


def export_case(name, root):
    ck = make_checkpoint(name, root / f"{name}.safetensors")
    modes = inference_modes(ck.config.arch)
    files = {}
    formats = (("onnx", "onnx"), ("torchscript", "pt")) if name in TORCHSCRIPT_CASES else (("onnx", "onnx"),)
    for fmt, ext in formats:
        for mode in modes:
            files[fmt, mode] = export_policy(ck, mode, fmt, root / f"{name}-{mode}.{ext}")[0]
    return ck, files


def observations(cfg, n=STEPS, seed=0):
    g = np.random.default_rng(seed)
    if cfg.discrete:
        return g.integers(0, 256, size=(n, *cfg.obs_shape)).astype(np.uint8), g.integers(0, 2, n).astype(float)
    return g.normal(size=(n, cfg.state_dim)).astype(np.float32) * 2, g.normal(1, 1, n)


def reference_episode(ck, mode, obs, rewards, target):
    """Policy.act's actions (and, for logits, the model's predictions) over the episode."""
    policy = Policy(ck.model, mode, *ck.state_normalization(), rtg_scale=ck.meta["rtg_scale"])
    preds, choose = [], ck.model.choose_action
    ck.model.choose_action = lambda pred, **kw: (preds.append(pred.numpy().copy()), choose(pred, **kw))[1]
    try:
        policy.reset(target)
        actions = []
        for o, r in zip(obs, rewards):
            actions.append(policy.act(o))
            policy.observe(r)
    finally:
        del ck.model.choose_action
    return np.array(actions), np.array(preds)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", ["transformer", "rnn"])
def test_onnx_runtime_acts_as_policy_act_over_200_steps(exports, name, mode):
    ck, files = exports[name]
    if ("onnx", mode) not in files:
        pytest.skip("a DT or an MLP acts Transformer-like only")
    onnx.checker.check_model(onnx.load(str(files["onnx", mode])))
    obs, rewards = observations(ck.config)
    target = 5.0 if ck.config.discrete else 3600.0
    want, preds = reference_episode(ck, mode, obs, rewards, target)
    runner = example_module().OnnxPolicy(files["onnx", mode])
    runner.reset(target)
    got = []
    for t, (o, r) in enumerate(zip(obs, rewards)):
        got.append(runner.act(o))
        if ck.config.discrete:  # Policy sampled: follow its choice, compare the logits it sampled from
            logits = runner.last["logits"][0]
            np.testing.assert_allclose(logits, preds[t], atol=1e-4, err_msg=f"step {t}")
            runner.A[-1] = want[t]
        runner.observe(r)
    if not ck.config.discrete:
        np.testing.assert_allclose(np.array(got), want, atol=1e-4)
        assert np.abs(want[1:] - want[:-1]).max() > 1e-3  # the episode exercises the policy


@pytest.mark.parametrize("name", TORCHSCRIPT_CASES)
@pytest.mark.parametrize("mode", ["transformer", "rnn"])
def test_torchscript_file_gives_the_onnx_outputs(exports, name, mode):
    """The TorchScript file reloaded gives what onnxruntime gives for the same inputs (which the test
    above ties to Policy.act), on a batch of 3 random inputs."""
    import onnxruntime as ort

    ck, files = exports[name]
    if ("onnx", mode) not in files:
        pytest.skip("a DT or an MLP acts Transformer-like only")
    sess = ort.InferenceSession(str(files["onnx", mode]))
    extra = {"dema_lab_policy.json": ""}
    script = torch.jit.load(str(files["torchscript", mode]), _extra_files=extra)
    info = json.loads(extra["dema_lab_policy.json"])
    assert info["mode"] == mode and info["format"] == "torchscript"
    from dema_lab.integrations.policy_export import example_inputs

    g = torch.Generator().manual_seed(1)
    feed = {}
    for k, v in example_inputs(ck.config, mode, batch=3).items():
        if v.dtype == torch.long:
            feed[k] = torch.randint(1, ck.config.K + 1 if k == "window_steps" else 50, v.shape, generator=g)
        elif k in ("actions", "prev_action") and ck.config.discrete:
            feed[k] = torch.randint(0, ck.config.n_actions, v.shape, generator=g).float()
        else:
            feed[k] = torch.randn(v.shape, generator=g) * (50 if ck.config.discrete and k in ("state", "states") else 1)
    names = [i.name for i in sess.get_inputs()]
    want = sess.run(None, {k: feed[k].numpy() for k in names})
    got = script(*feed.values())
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-4, rtol=1e-5)


def test_json_and_metadata_hold_what_acting_needs(exports):
    ck, files = exports["dema-BL3D-RAS"]
    path = files["onnx", "rnn"]
    info = json.loads(Path(f"{path}.json").read_text())
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["dema_lab_policy"]) == info
    mean, std = ck.state_normalization()
    np.testing.assert_allclose(info["state_mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(info["state_std"], std, rtol=1e-6)
    assert info["rtg_scale"] == 1000.0 and info["target_returns"] == [3600.0, 1800.0]
    assert (info["token_order"], info["window_padding"], info["K"]) == ("RAS", "none", 4)
    assert info["action_space"] == {"type": "box", "shape": [3], "low": -1.0, "high": 1.0}
    assert info["inputs"]["ssm_state"]["shape"] == [2, "batch", 32, 4]
    assert info["model_config"] == ck.config.to_dict() | {"obs_shape": []}
    assert set(info["inputs"]) == {i.name for i in onnx.load(str(path)).graph.input}


@pytest.mark.parametrize("name", ["lstm-B3LD-RSA", "gru-B3LD-RAS"])
def test_json_lists_the_carried_state_of_an_lstm_and_a_gru(exports, name):
    """The runner needs no per-arch code: the JSON names every carried input, its axes and sizes,
    and each comes back as new_<name> with the input's shape."""
    import onnxruntime as ort

    ck, files = exports[name]
    path = files["onnx", "rnn"]
    info = json.loads(Path(f"{path}.json").read_text())
    names = ["hidden_state", "cell_state"] if ck.config.arch == "lstm" else ["hidden_state"]
    layout = info["recurrent_state"]
    assert layout["inputs"] == names and layout["outputs"] == ["new_" + n for n in names]
    assert layout["axes"] == {n: ["n_layer", "batch", "d_model"] for n in names}
    assert layout["sizes"] == {"n_layer": 2, "d_model": 16}
    assert all(info["inputs"][n]["shape"] == [2, "batch", 16] for n in names)
    sess = ort.InferenceSession(str(path))
    shapes = {o.name: o.shape for o in sess.get_outputs()}
    assert info["outputs"] == [o.name for o in sess.get_outputs()] == ["action", *layout["outputs"]]
    assert all(shapes["new_" + n][0] == 2 and shapes["new_" + n][2] == 16 for n in names)


def one_line_error(fn) -> str:
    with pytest.raises(ExportError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_refusals_are_one_line(exports, tmp_path):
    ck, _ = exports["dema-B3LD-RSA"]
    dt, _ = exports["dt"]
    assert "Transformer-like only" in one_line_error(lambda: export_policy(dt, "rnn", "onnx", tmp_path / "a.onnx"))
    mlp, _ = exports["mlp-RAS"]
    assert "MLP policies act Transformer-like only" in one_line_error(
        lambda: export_policy(mlp, "rnn", "onnx", tmp_path / "a.onnx")
    )
    assert "opset 13 is too old" in one_line_error(
        lambda: export_policy(ck, "transformer", "onnx", tmp_path / "a.onnx", opset=13)
    )
    for method in ("alpha-zeros", "mixer-zeros", "no_timestep"):
        with ablate(dt.model if method == "no_timestep" else ck.model, method) as ablated:
            copy = type(ck)(ablated, ablated.cfg, ck.meta, ck.extra)
            assert f"the model is ablated ({method} all)" in one_line_error(
                lambda: export_policy(copy, "transformer", "onnx", tmp_path / "a.onnx")  # noqa: B023
            )
    hooked = type(ck)(copy_module(ck.model), ck.config, ck.meta, ck.extra)
    hooked.model.layers[0].mixer.register_forward_hook(lambda *a: None)
    assert "forward hooks on layers.0.mixer" in one_line_error(
        lambda: export_policy(hooked, "transformer", "onnx", tmp_path / "a.onnx")
    )
    other = type(ck)(ck.model, ck.config, ck.meta, ck.extra)
    other.model = torch.nn.Module()
    other.model.cfg = ModelConfig(arch="dema")
    object.__setattr__(other.model.cfg, "arch", "s4")  # an arch export-policy does not know
    assert "arch 's4' cannot be exported" in one_line_error(
        lambda: export_policy(other, "transformer", "onnx", tmp_path / "a.onnx")
    )
    assert not list(tmp_path.iterdir())


def store_run(tmp_path, ck_path, status):
    store = RunStore(tmp_path / "store", mode="a")
    run = store.create_run("r1", {"arch": "dema"}, {"env": "hopper", "eval_targets": [3600.0]})
    ck = load_checkpoint(ck_path)
    run.write_bytes("checkpoint", checkpoint_name(7), checkpoint_bytes(ck.model, ck.meta, ck.extra), attrs=ck.meta)
    run.set_attrs(status=status)
    return run


def test_run_refusals_and_the_cli(exports, tmp_path):
    ck, files = exports["dema-B3LD-RSA"]
    path = tmp_path / "ck.safetensors"
    path.write_bytes(checkpoint_bytes(ck.model, ck.meta, ck.extra))
    run = store_run(tmp_path, path, "running")
    assert "is running" in one_line_error(lambda: export_run_policy(run, "rnn", "onnx", tmp_path / "p.onnx"))
    run.set_attrs(status="finished")
    assert "no checkpoint at step 9; its checkpoints: 7" in one_line_error(
        lambda: export_run_policy(run, "rnn", "onnx", tmp_path / "p.onnx", step=9)
    )
    cli = [sys.executable, "-m", "dema_lab.cli.main", "export-policy", "r1", "--store", str(tmp_path / "store")]
    bad = subprocess.run(cli + ["--format", "onnx", "--mode", "rnn", "--out", "x.onnx", "--checkpoint", "3"],
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no checkpoint at step 3" in bad.stderr
    ok = subprocess.run(cli + ["--format", "onnx", "--mode", "rnn", "--out", "p.onnx"], capture_output=True, text=True,
                        cwd=tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    info = json.loads((tmp_path / "p.onnx.json").read_text())
    assert info["provenance"]["eval_targets"] == [3600.0] and info["target_returns"] == [3600.0]
    assert info["checkpoint_step"] == 7 and info["run_id"] == ""
    onnx.checker.check_model(onnx.load(str(tmp_path / "p.onnx")))


@pytest.mark.parametrize("name", ["dema-B3LD-RSA", "lstm-B3LD-RSA", "gru-B3LD-RAS", "mlp-RAS"])
@pytest.mark.parametrize("mode", ["transformer", "rnn"])
def test_example_plays_hopper_with_dema_labs_return(exports, name, mode):
    """The example, in a process of its own, gets the return dema-lab's rollout gets for the seed."""
    from dema_lab.envs import make_env
    from dema_lab.evaluation.rollout import rollout_steps

    ck, files = exports[name]
    if ("onnx", mode) not in files:
        pytest.skip("an MLP acts Transformer-like only")
    policy = Policy(ck.model, mode, *ck.state_normalization(), rtg_scale=1000.0)
    env = make_env("hopper")
    want = sum(s.reward for s in rollout_steps(policy, env, 3600.0, seed=5))
    env.close()
    out = subprocess.run([sys.executable, str(EXAMPLE), str(files["onnx", mode]), "--seed", "5"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == f"return {want:.3f}"


@pytest.mark.parametrize("mode", ["transformer", "rnn"])
def test_example_plays_pong_greedily_as_dema_lab_does(exports, mode):
    from dema_lab.envs import make_env
    from dema_lab.evaluation.rollout import rollout_steps

    ck, files = exports["atari"]
    policy = Policy(ck.model, mode, *ck.state_normalization(), rtg_scale=20.0)
    choose = ck.model.choose_action
    ck.model.choose_action = lambda pred, **kw: choose(pred, sample=False)  # the example's argmax
    try:
        env = make_env("pong")
        steps = list(rollout_steps(policy, env, 5.0, seed=2, max_steps=60))
        env.close()
    finally:
        del ck.model.choose_action
    assert len(steps) == 60
    got = example_module().play(files["onnx", mode], seed=2, max_steps=60)
    assert got == sum(s.reward for s in steps)
