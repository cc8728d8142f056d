"""Ablations of the hidden attention: the paper's parameter-level method (merge_exp.py) and
dema-lab's α-level one, their evaluation, the store layout (old stores too) and `dema-lab ablate`."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import xarray as xr

from dema_lab.evaluation.ablation import (
    ablate,
    ablated_attention,
    ablated_state_dict,
    ablation_table,
    evaluate_ablation,
    methods_for,
    score_drop,
)
from dema_lab.models import ModelConfig, build_model
from dema_lab.ssm import Mamba, apply_attention, hidden_attention

MIXER_EDITED = ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D")


def _model(n_layer=3, **kw):
    torch.manual_seed(0)
    cfg = dict(state_dim=5, act_dim=2, K=3, d_model=16, d_state=4, n_layer=n_layer) | kw
    return build_model(ModelConfig(**cfg)).eval()


def _inputs(T=3):
    g = torch.Generator().manual_seed(1)
    return dict(
        states=torch.randn(2, T, 5, generator=g),
        actions=torch.randn(2, T, 2, generator=g),
        returns_to_go=torch.rand(2, T, 1, generator=g),
        timesteps=torch.arange(T).repeat(2, 1) + 7,
    )


def _old_ablated_attention(alpha, kind, seed, layer):
    """The α-level ablation as dema-lab computed it inside Mamba before (ssm/mamba.py)."""
    if kind == "zeros":
        return torch.zeros_like(alpha)
    L = alpha.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    scale = alpha.masked_select(causal).view(*alpha.shape[:2], -1).pow(2).mean(-1).sqrt()
    gen = torch.Generator(device="cpu").manual_seed(hash((seed, layer, L)) % (2**63))
    noise = torch.randn(alpha.shape, generator=gen, dtype=alpha.dtype)
    return (noise * scale[..., None, None]).masked_fill(~causal, 0.0)


class _OldAblatedMixer(nn.Module):
    """A mixer computing the old in-kernel α-level ablation: scan rebuilt from the ablated alpha."""

    def __init__(self, mixer, kind, seed, layer):
        super().__init__()
        self.mixer, self.kind, self.seed, self.layer = mixer, kind, seed, layer

    def forward(self, h, return_attention=False):
        m = self.mixer
        x, z, dt, B, C, A = m._ssm_inputs(h)
        alpha = hidden_attention(dt, A, B, C, delta_bias=m.dt_proj.bias.float(), delta_softplus=True)
        # row by row: evaluation ran it at batch 1, and batched evaluation must score each episode the same
        alpha = torch.cat(
            [_old_ablated_attention(alpha[r : r + 1], self.kind, self.seed, self.layer) for r in range(alpha.shape[0])]
        )
        y = apply_attention(alpha, x, m.D, z).to(x.dtype)
        return m.out_proj(y.transpose(1, 2))


def test_mamba_has_no_ablation_state():
    m = Mamba(16, d_state=4)
    assert not hasattr(m, "ablation") and not hasattr(Mamba, "_ablated")
    import dema_lab.ssm.mamba as mamba_module

    assert not hasattr(mamba_module, "ablated_attention")


@pytest.mark.parametrize("kind", ["zeros", "random"])
def test_alpha_ablations_equal_the_old_in_kernel_formula(kind):
    model, x = _model(), _inputs()
    with torch.no_grad():
        reference = copy.deepcopy(model)
        for i, block in enumerate(reference.layers):
            block.mixer = _OldAblatedMixer(block.mixer, kind, 3, i)
        expected = reference(**x)
        base = model(**x)
        with ablate(model, f"alpha-{kind}", "all", seed=3) as ablated:
            got = ablated(**x)
            again = ablated(**x)
            _, attn = ablated(**x, return_attention=True)  # the logged attention stays the model's own
        _, own = model(**x, return_attention=True)
        # one layer: only that mixer is hooked
        reference_one = copy.deepcopy(model)
        reference_one.layers[1].mixer = _OldAblatedMixer(reference_one.layers[1].mixer, kind, 3, 1)
        with ablate(model, f"alpha-{kind}", 1, seed=3) as ablated:
            one = ablated(**x)
    assert torch.equal(got, expected) and torch.equal(got, again)
    assert not torch.allclose(got, base)
    assert torch.equal(one, reference_one(**x).detach())
    for a, b in zip(attn, own):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(model(**x), base)  # the caller's model is untouched
    assert not any(m._forward_hooks for m in model.modules())


def test_alpha_zeros_leaves_only_the_skip_and_gate():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4).eval()
    h = torch.randn(2, 7, 16)
    x, z, dt, B, C, A = m._ssm_inputs(h)
    expected = m.out_proj((x * m.D[:, None] * F.silu(z)).transpose(1, 2))
    with ablate(m, "alpha-zeros") as ablated:
        torch.testing.assert_close(ablated(h), expected)


def test_random_alpha_matches_each_channels_scale_and_is_reproducible():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4).eval()
    h = torch.randn(1, 40, 16)
    x, z, dt, B, C, A = m._ssm_inputs(h)
    alpha = hidden_attention(dt, A, B, C, m.dt_proj.bias, True)
    rand = ablated_attention(alpha, "random", seed=3, layer=0)
    causal = torch.ones(40, 40, dtype=torch.bool).tril()
    assert rand.masked_select(~causal).abs().max() == 0
    real_rms = alpha.masked_select(causal).view(32, -1).pow(2).mean(-1).sqrt()
    rand_rms = rand.masked_select(causal).view(32, -1).pow(2).mean(-1).sqrt()
    assert torch.allclose(rand_rms, real_rms, rtol=0.15)  # 820 samples per channel
    # a window of one token (BL3D at an episode's first step): finite, at that token's scale
    one = ablated_attention(alpha[..., :1, :1], "random", seed=3, layer=0)
    assert torch.isfinite(one).all() and (one != 0).any()
    assert torch.allclose(one.abs().mean(), alpha[..., :1, :1].abs().mean(), rtol=1.0)
    assert torch.equal(rand, ablated_attention(alpha, "random", seed=3, layer=0))
    assert not torch.equal(rand, ablated_attention(alpha, "random", seed=4, layer=0))
    with pytest.raises(ValueError, match="unknown hidden-attention ablation"):
        ablated_attention(alpha, "ones")


@pytest.mark.parametrize("layers", ["all", 1])
def test_mixer_zeros_makes_each_ablated_layer_a_pure_residual(layers):
    model, x = _model(), _inputs()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    chosen = [0, 1, 2] if layers == "all" else [layers]
    skipped = copy.deepcopy(model)  # the reference: those blocks removed outright
    for i in chosen:
        skipped.layers[i] = nn.Identity()
    with torch.no_grad(), ablate(model, "mixer-zeros", layers) as ablated:
        torch.testing.assert_close(ablated(**x), skipped(**x), rtol=0, atol=0)
        assert not torch.allclose(ablated(**x), model(**x))
        h = torch.randn(2, 6, 16)
        for i in chosen:
            mixer = ablated.layers[i].mixer
            assert torch.equal(mixer(h), torch.zeros_like(h))  # Transformer-like
            state = mixer.allocate_state(2)
            assert torch.equal(mixer.step(h[:, :1], state), torch.zeros(2, 1, 16))  # RNN-like
        sd = ablated.state_dict()
        for k, v in sd.items():
            layer = int(k.split(".")[1]) if k.startswith("layers.") else None
            edited = layer in chosen and k.split(".mixer.")[-1] in MIXER_EDITED
            assert torch.equal(v, torch.zeros_like(v)) if edited else torch.equal(v, saved[k]), k
    for k, v in model.state_dict().items():  # the caller's weights are untouched
        assert torch.equal(v, saved[k]), k


def test_mixer_random_is_seeded_uniform_in_parameter_order():
    model = _model(n_layer=2)
    sd = ablated_state_dict(model, "mixer-random", "all", seed=5)
    gen = torch.Generator().manual_seed(5)
    for i in range(2):
        for name, p in model.layers[i].mixer.named_parameters():
            key = f"layers.{i}.mixer.{name}"
            if name.startswith(("in_proj", "out_proj")):
                assert sd[key] is model.state_dict()[key] or torch.equal(sd[key], model.state_dict()[key])
                continue
            assert name in MIXER_EDITED
            expected = torch.rand(p.shape, generator=gen)
            assert torch.equal(sd[key], expected), key
            assert (sd[key] >= 0).all() and (sd[key] < 1).all()
    same = ablated_state_dict(model, "mixer-random", "all", seed=5)
    other = ablated_state_dict(model, "mixer-random", "all", seed=6)
    assert all(torch.equal(same[k], sd[k]) for k in sd)
    assert not torch.equal(other["layers.0.mixer.A_log"], sd["layers.0.mixer.A_log"])
    one = ablated_state_dict(model, "mixer-random", 1, seed=5)
    assert torch.equal(one["layers.0.mixer.A_log"], model.layers[0].mixer.A_log.detach())


def test_swap_takes_the_mixer_parameters_of_another_model_with_the_same_shapes():
    model, x = _model(n_layer=2), _inputs()
    torch.manual_seed(9)
    other = build_model(ModelConfig(state_dim=11, act_dim=3, K=5, d_model=16, d_state=4, n_layer=2)).eval()
    sd = ablated_state_dict(model, "swap", "all", swap_from=other)
    for k, v in sd.items():
        if ".mixer." in k and k.split(".mixer.")[-1] in MIXER_EDITED:
            assert torch.equal(v, other.state_dict()[k]), k
        else:
            assert torch.equal(v, model.state_dict()[k]), k
    only1 = ablated_state_dict(model, "swap", 1, swap_from=other)
    assert torch.equal(only1["layers.0.mixer.D"], model.layers[0].mixer.D.detach())
    assert torch.equal(only1["layers.1.mixer.D"], other.layers[1].mixer.D.detach())
    with torch.no_grad(), ablate(model, "swap", swap_from=model) as same:
        torch.testing.assert_close(same(**x), model(**x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="same shapes"):
        ablated_state_dict(model, "swap", swap_from=_model(n_layer=2, d_model=32))
    with pytest.raises(ValueError, match="has no layers.2.mixer"):
        ablated_state_dict(_model(n_layer=3), "swap", swap_from=model)
    with pytest.raises(ValueError, match="needs swap_from"):
        ablated_state_dict(model, "swap")


def test_methods_layers_and_models_are_validated():
    dema, x = _model(n_layer=2), _inputs()
    dt = build_model(ModelConfig(arch="dt", state_dim=5, act_dim=2, K=3, d_model=16)).eval()
    assert methods_for(dema) == ("none", "mixer-zeros", "mixer-random", "alpha-zeros", "alpha-random")
    assert methods_for(dt) == ("none", "no_timestep")
    with pytest.raises(ValueError, match="layer 2 does not exist: the model has 2 layer"):
        with ablate(dema, "mixer-zeros", 2):
            pass
    with pytest.raises(ValueError, match="layers must be 'all' or a layer index"):
        with ablate(dema, "alpha-zeros", "first"):
            pass
    with pytest.raises(ValueError, match="unknown ablation method 'zeros'"):
        with ablate(dema, "zeros"):
            pass
    for method in ("mixer-zeros", "alpha-random", "swap"):
        with pytest.raises(ValueError, match="needs a DeMa model"):
            with ablate(dt, method, swap_from=dema):
                pass
    with pytest.raises(ValueError, match="acts on the whole model"):
        with ablate(dt, "no_timestep", 0):
            pass
    with torch.no_grad(), ablate(dema, "none") as same:
        torch.testing.assert_close(same(**x), dema(**x), rtol=0, atol=0)


def test_timestep_embedding_ablation_drops_it_from_a_copy():
    x = dict(
        states=torch.randn(1, 3, 5),
        actions=torch.zeros(1, 3, 2),
        returns_to_go=torch.ones(1, 3, 1),
        timesteps=torch.tensor([[400, 401, 402]]),
    )
    dt = build_model(ModelConfig(arch="dt", state_dim=5, act_dim=2, K=3, d_model=16)).eval()
    dema_te = _model(n_layer=1, timestep_embedding=True)
    assert methods_for(dema_te)[-1] == "no_timestep"
    for model in (dt, dema_te):
        base = model(**x)
        with ablate(model, "no_timestep") as ablated:
            out = ablated(**x)
            # without the embedding the timesteps no longer matter
            torch.testing.assert_close(ablated(**{**x, "timesteps": torch.tensor([[0, 1, 2]])}), out)
        assert not torch.allclose(out, base)
        torch.testing.assert_close(model(**x), base)
    with pytest.raises(ValueError, match="needs a model trained with a timestep embedding"):
        with ablate(_model(n_layer=1), "no_timestep"):
            pass


def test_old_ablation_groups_read_as_alpha_methods(tmp_path):
    from dema_lab.store.zarr_store import RunStore

    run = RunStore(tmp_path / "store", mode="a").create_run("old", {"seed": 2}, {})
    scores = np.arange(4 * 2 * 3, dtype=float).reshape(1, 4, 2, 3)  # (checkpoint, ablation, target, episode)
    old = xr.Dataset(
        {
            "normalized_score": (("checkpoint", "ablation", "target", "episode"), scores),
            "return": (("checkpoint", "ablation", "target", "episode"), scores * 10),
            "length": (("checkpoint", "ablation", "target", "episode"), np.ones_like(scores, int)),
        },
        coords={
            "checkpoint": [40],
            "ablation": ["none", "zeros", "random", "no_timestep"],
            "target": [3600.0, 1800.0],
            "episode": [0, 1, 2],
        },
        attrs={"mode": "transformer", "random_scale": "rms"},
    )
    run.write("ablation", "step_00000040", old)
    older = old.assign_coords(checkpoint=[20]).drop_attrs()  # 'random' of the std-scaled method
    run.write("ablation", "step_00000020", older)
    table = ablation_table(run)
    assert list(table.ablation.values) == ["none", "alpha-zeros", "alpha-random", "no_timestep"]
    assert list(table.layers.values) == ["all"] and list(table.seed.values) == [2]
    assert list(table.checkpoint.values) == [20, 40] and list(table.mode.values) == ["transformer"]
    got = table["normalized_score"].sel(checkpoint=40, layers="all", seed=2, mode="transformer")
    np.testing.assert_array_equal(got.values, scores[0])
    assert table["normalized_score"].sel(checkpoint=20, ablation="alpha-random").isnull().all()
    assert dict(zip(table.ablation.values, table.family.values))["alpha-zeros"] == "dema-lab: α-level"
    drop = score_drop(table).sel(checkpoint=40, layers="all", seed=2, mode="transformer")
    np.testing.assert_allclose(drop.values, scores[0].mean((1, 2)) - scores[0, 0].mean())


@pytest.fixture
def tiny_runs(tiny_config):
    """A tiny trained DeMa (2 layers) and DT in one store."""
    from dema_lab.store.zarr_store import RunStore
    from dema_lab.training import train

    base = tiny_config.replace(
        steps=10,
        checkpoint_every=10,
        render_size=0,
        eval_max_steps=10,
        eval_targets=[3600.0],
        decay_windows=2,
    )
    train(base.replace(run_id="ab-dema", n_layer=2), progress=False)
    train(base.replace(run_id="ab-dt", arch="dt"), progress=False)
    rs = RunStore(base.run.store, mode="a")
    return base.run.store, rs.run("ab-dema"), rs.run("ab-dt")


def test_evaluate_ablation_cli_and_completion(tiny_runs, capsys):
    from dema_lab.cli.main import main
    from dema_lab.evaluation.ablation import complete_ablations
    from dema_lab.models import load_checkpoint

    store, run, dt_run = tiny_runs
    ck = load_checkpoint(run.checkpoint_bytes())
    weights = {k: v.clone() for k, v in ck.model.state_dict().items()}
    ds = evaluate_ablation(ck, "mixer-zeros", 1, episodes=2, seed=4, targets=[3600.0], max_steps=12)
    assert ds["normalized_score"].dims == ("mode", "target", "episode") and ds.sizes["episode"] == 2
    assert (ds.ablation.item(), ds.layers.item(), ds.seed.item(), ds.checkpoint.item()) == ("mixer-zeros", "1", 4, 10)
    assert ds.family.item() == "paper: parameter-level (merge_exp.py)" and ds.attrs["family"] == ds.family.item()
    assert all(torch.equal(v, weights[k]) for k, v in ck.model.state_dict().items())
    # swapping in the run's own mixer parameters changes nothing: the same episodes, the same scores
    same = evaluate_ablation(ck, "swap", episodes=1, targets=[3600.0], max_steps=12, swap_from=ck)
    none = evaluate_ablation(ck, "none", episodes=1, targets=[3600.0], max_steps=12)
    xr.testing.assert_equal(
        same["normalized_score"].drop_vars(["ablation", "family"]),
        none["normalized_score"].drop_vars(["ablation", "family"]),
    )
    with pytest.raises(ValueError, match="RNN-like inference has none to replace"):
        evaluate_ablation(ck, "alpha-zeros", modes=("rnn",))

    args = [
        "ablate",
        "ab-dema",
        "--method",
        "mixer-zeros",
        "--layers",
        "all",
        "--episodes",
        "1",
        "--max-steps",
        "12",
        "--store",
        store,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "unablated" in out and "mixer-zeros, all layers" in out and "paper: parameter-level" in out
    table = ablation_table(run)
    assert set(table.ablation.values) == {"none", "mixer-zeros"} and list(table.layers.values) == ["all"]
    assert run.published("ablation") == ["step_00000010-mixer-zeros-all-s0", "step_00000010-none-all-s0"]
    assert (
        main(
            [
                "ablate",
                "ab-dema",
                "--method",
                "swap",
                "--swap-from",
                "ab-dema",
                "--episodes",
                "1",
                "--max-steps",
                "12",
                "--store",
                store,
            ]
        )
        == 0
    )
    assert "drop +0.0" in capsys.readouterr().out
    for bad, message in (
        (["ablate", "nope", "--method", "mixer-zeros"], "run 'nope' is not in store"),
        (["ablate", "ab-dt", "--method", "mixer-zeros"], "needs a DeMa model"),
        (["ablate", "ab-dema", "--method", "mixer-zeros", "--layers", "5"], "layer 5 does not exist"),
        (["ablate", "ab-dema", "--method", "zeros"], "unknown ablation method"),
        (["ablate", "ab-dema", "--method", "swap", "--swap-from", "ab-dt"], "has no layers.0.mixer"),
        (["ablate", "ab-dema", "--method", "none", "--checkpoint", "3"], "no checkpoint at step 3"),
    ):
        assert main(bad + ["--store", store, "--episodes", "1", "--max-steps", "5"]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    # the sweep's completion: the paper's and dema-lab's methods, all layers; then each layer when asked
    _, added = complete_ablations(run, episodes=3, max_steps=12, seed=0)
    assert added == ("mixer-random", "alpha-zeros", "alpha-random")  # none, mixer-zeros, swap were there
    assert complete_ablations(run, max_steps=12)[1] == ()
    table, added = complete_ablations(run, max_steps=12, layers=("all", "each"))
    assert added == tuple(
        f"{m} layer {i}" for m in ("mixer-zeros", "mixer-random", "alpha-zeros", "alpha-random") for i in (0, 1)
    )
    assert list(table.layers.values) == ["all", "0", "1"]
    present = table["normalized_score"].notnull().any(("checkpoint", "seed", "mode", "target"))
    assert int(present.sum("episode").sel(ablation="mixer-random", layers="0")) == 1  # as many episodes as before
    assert dict(zip(table.ablation.values, table.swap_from.values))["swap"] == "ab-dema"
    dt_table, dt_added = complete_ablations(dt_run, episodes=1, max_steps=12)
    assert dt_added == ("none", "no_timestep") and list(dt_table.ablation.values) == ["none", "no_timestep"]

    # the report and the study dashboard: a table of method × layers naming each method's family
    import panel as pn

    from dema_lab.dashboard import StudyReport
    from dema_lab.study.report import build_report

    rep = build_report(store, latency=False)
    title = next(t for t in rep.tables if "method × layers" in t)
    rows = rep.tables[title].reset_index()
    assert len(rows) == 1 + 3 * 4 + 1 and set(rows.layers) == {"all", "0", "1"}  # none, 4 methods x 3, swap
    by = rows.set_index(["method", "layers"])
    assert by.loc[("mixer-zeros", "1"), "family"] == "paper: parameter-level (merge_exp.py)"
    assert by.loc[("swap", "all"), "drop against unablated"] == "0.0"
    verdicts = [f for f, _, _ in rep.findings if f.startswith("Hidden attention matters")]
    assert len(verdicts) == 4
    frames = [p.object for p in StudyReport(store, latency=False)._tables().objects if isinstance(p, pn.pane.DataFrame)]
    assert any({"family", "method", "layers", "drop against unablated"} <= set(f.columns) for f in frames)
