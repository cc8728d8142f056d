"""One definition of a model config's bounds (ModelConfig), shared by training, importing and loading,
and the weights' memory estimate (models.cost) that they check before they allocate."""

import itertools
import json

import pytest
import torch
from helpers.official import official_dema_sd, save_official

from dema_lab.models import CheckpointError, ModelConfig, build_model, count_parameters, load_checkpoint
from dema_lab.models.checkpoint import checkpoint_bytes, save_checkpoint
from dema_lab.models.config import LIMITS
from dema_lab.models.cost import memory_problem, parameter_bytes, parameter_count
from dema_lab.models.official import OfficialCheckpointError, infer_official

# A small config with each bounded field at its largest value (the others small enough to build);
# d_model's largest (8192) is too big to build in a test, its bound is checked without building.
AT_BOUND = {
    "state_dim": dict(state_dim=LIMITS["state_dim"], d_model=4),
    "act_dim": dict(act_dim=LIMITS["act_dim"], d_model=4),
    "K": dict(K=LIMITS["K"]),
    "n_layer": dict(n_layer=LIMITS["n_layer"], d_model=4),
    "max_ep_len": dict(max_ep_len=LIMITS["max_ep_len"], timestep_embedding=True, d_model=1, embed_dim=1),
    "d_state": dict(d_state=LIMITS["d_state"], d_model=4),
    "d_conv": dict(d_conv=LIMITS["d_conv"], d_model=4),
    "expand": dict(expand=LIMITS["expand"], d_model=4),
    "n_head": dict(arch="dt", n_head=LIMITS["n_head"], d_model=LIMITS["n_head"]),
    "embed_dim": dict(embed_dim=LIMITS["embed_dim"], d_model=4),
    "n_actions": dict(n_actions=LIMITS["n_actions"], act_dim=1, d_model=4),
}
SMALL = dict(state_dim=3, act_dim=2, K=4, d_model=8, n_layer=1, d_state=4)


def test_every_bound_is_covered():
    assert set(AT_BOUND) | {"d_model"} == set(LIMITS)


def _fake_checkpoint(config: dict) -> bytes:
    """A dema-lab checkpoint header holding `config`, with one tiny tensor."""
    from safetensors.torch import save

    header = {"format": "dema-lab-checkpoint", "version": "1", "arch": config["arch"]}
    return save({"model.x": torch.zeros(1)}, metadata={**header, "model_config": json.dumps(config), "meta": "{}"})


@pytest.mark.parametrize("field", sorted(LIMITS))
def test_one_past_a_bound_is_refused_by_modelconfig_with_the_loaders_message(field):
    base = {**SMALL, **AT_BOUND.get(field, dict(d_model=LIMITS["d_model"]))}
    ModelConfig(**base)  # the bound itself is accepted
    over = {**base, field: LIMITS[field] + 1}
    with pytest.raises(ValueError) as refused:
        ModelConfig(**over)
    message = str(refused.value)
    assert f"{field} {LIMITS[field] + 1} is above the largest dema-lab builds ({field} at most {LIMITS[field]})" in (
        message
    )
    header = dict(ModelConfig(**SMALL).to_dict(), **{k: v for k, v in over.items()})
    with pytest.raises(CheckpointError) as loading:
        load_checkpoint(_fake_checkpoint(header))
    assert message in str(loading.value)  # the same words: one definition


@pytest.mark.parametrize("field", sorted(AT_BOUND))
def test_a_model_at_each_bound_saves_and_loads(tmp_path, field):
    cfg = ModelConfig(**{**SMALL, **AT_BOUND[field]})
    assert getattr(cfg, field) == LIMITS[field]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg)
    path = save_checkpoint(tmp_path / "bound.safetensors", model)
    ck = load_checkpoint(path)
    assert ck.config == cfg
    loaded = ck.model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[k], v), k


def test_an_import_whose_K_is_past_the_bound_is_refused_before_anything_is_built():
    sd = official_dema_sd()
    cfg, _ = infer_official(sd, K=LIMITS["K"])
    assert cfg.K == LIMITS["K"]
    with pytest.raises(OfficialCheckpointError, match="K 100000000 is above the largest dema-lab builds"):
        infer_official(sd, K=100_000_000)


CONFIGS = [
    dict(arch=arch, layout=layout, embed_dim=embed_dim, timestep_embedding=time, embed_norm=norm)
    for arch, layout, embed_dim, time, norm in itertools.product(
        ("dema", "dt"), ("B3LD", "BL3D"), (0, 24), (False, True), ("layernorm", "none")
    )
] + [
    dict(obs_shape=(4, 84, 84), state_dim=4 * 84 * 84, act_dim=1, n_actions=6, frame_norm=norm, token_order="ARS")
    for norm in ("scale", "center")
]


@pytest.mark.parametrize("fields", CONFIGS, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_the_parameter_estimate_is_exact_against_a_built_model(fields):
    cfg = ModelConfig(
        **{**dict(d_model=32, n_head=2, n_layer=2, max_ep_len=50, d_state=8, expand=3, d_conv=3), **fields}
    )
    model = build_model(cfg)
    assert parameter_count(cfg) == count_parameters(model)
    assert parameter_bytes(cfg) == sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert parameter_bytes(cfg, torch.float16) == parameter_bytes(cfg) // 2


def test_the_memory_check_names_the_size_and_refuses_before_loading(tmp_path, monkeypatch):
    huge = ModelConfig(d_model=8192, n_layer=128)  # within bounds, but ~0.4 TB of float32 weights
    assert parameter_bytes(huge) > 10**11
    problem = memory_problem(huge, available=16 * 2**30, what="this model")
    assert problem.startswith("this model needs about ") and "d_model 8192, n_layer 128" in problem
    assert "more than the 16.0 GiB available" in problem and "\n" not in problem
    small = ModelConfig(**SMALL)
    assert memory_problem(small, available=16 * 2**30) is None
    # the loader asks before it builds: a machine with less memory than two copies refuses it
    data = checkpoint_bytes(build_model(small))
    import dema_lab.models.cost as cost

    monkeypatch.setattr(cost, "available_memory", lambda: parameter_bytes(small))
    with pytest.raises(CheckpointError, match="loading its model needs about .* more than the .* available"):
        load_checkpoint(data)
    monkeypatch.setattr(cost, "available_memory", lambda: 2 * parameter_bytes(small))
    assert load_checkpoint(data).config == small


def test_the_importer_checks_memory_before_it_builds(tmp_path, monkeypatch):
    import dema_lab.models.cost as cost
    from dema_lab.models.official import official_checkpoint

    sd = official_dema_sd()
    path = save_official(sd, tmp_path / "model_iter1.pkl")
    cfg, _ = infer_official(sd)
    normalisation = dict(state_mean=[0.0] * cfg.state_dim, state_std=[1.0] * cfg.state_dim)
    monkeypatch.setattr(cost, "available_memory", lambda: parameter_bytes(cfg))
    with pytest.raises(OfficialCheckpointError, match="its model needs about .* more than the .* available"):
        official_checkpoint(path, **normalisation)
    monkeypatch.setattr(cost, "available_memory", lambda: 2 * parameter_bytes(cfg))
    assert official_checkpoint(path, **normalisation).config == cfg
