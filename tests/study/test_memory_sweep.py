"""The `memory` sweep preset and sweep points: the grid expands to the runs the preset names, each
with its K and inference modes; `dema-lab sweep --preset memory` passes that grid on; bad points
get one line."""

import pytest

from dema_lab.study.sweep import SWEEP_PRESETS, SweepConfig, grid, parse_point, sweep_preset

MEMORY_DATASETS = ["hopper-medium-pomdp", "minigrid-memory-s13", "minigrid-memory-s31"]
# (arch, K, eval modes, seed) per dataset, written out independently of the preset
MEMORY_MODELS = {
    ("dema", 5, ("transformer",), 0),
    ("dema", 20, ("transformer", "rnn"), 0),
    ("dema", 60, ("transformer", "rnn"), 0),
    ("lstm", 20, ("rnn",), 0),
    ("gru", 20, ("rnn",), 0),
    ("dt", 20, ("transformer",), 0),
    ("mlp", 20, ("transformer",), 0),
}


def test_memory_preset_expands_to_every_model_on_every_dataset():
    configs = grid(sweep_preset("memory"))
    assert len(configs) == len(MEMORY_DATASETS) * len(MEMORY_MODELS) == 21
    assert len({c.run.run_id for c in configs}) == 21
    for dataset in MEMORY_DATASETS:
        got = {
            (c.model.arch, c.model.K, tuple(c.evaluation.eval_modes), c.optim.seed)
            for c in configs
            if c.data.dataset == dataset
        }
        assert got == MEMORY_MODELS
    for c in configs:
        assert c.run.sweep == "memory" and c.run.run_id.startswith("memory-")
        assert (c.model.d_model, c.model.n_layer, c.optim.steps, c.optim.batch_size) == (64, 3, 2000, 32)
        assert c.model.timestep_embedding == (c.model.arch == "dt")  # DT as its papers ran it
    assert not sweep_preset("memory").ablations


def test_grid_fields_and_base_override_the_preset():
    sweep = sweep_preset("memory", datasets=["hopper-medium"], seeds=[0, 1], base={"steps": 7})
    configs = grid(sweep)
    assert len(configs) == 2 * len(MEMORY_MODELS) and {c.optim.steps for c in configs} == {7}
    with pytest.raises(ValueError, match="unknown sweep preset 'nope'; sweep presets: memory"):
        sweep_preset("nope")


def test_without_points_the_archs_product_takes_each_models_own_modes():
    configs = grid(SweepConfig(K=[10], archs=["dema", "dt", "lstm", "mlp"], eval_modes=["transformer", "rnn"]))
    assert {c.model.arch: c.evaluation.eval_modes for c in configs} == {
        "dema": ["transformer", "rnn"],
        "dt": ["transformer"],
        "lstm": ["transformer", "rnn"],
        "mlp": ["transformer"],
    }
    rnn_only = grid(SweepConfig(K=[10], archs=["dt", "gru"], eval_modes=["rnn"]))
    assert [c.evaluation.eval_modes for c in rnn_only] == [None, ["rnn"]]  # DT: its default (Transformer-like)


@pytest.mark.parametrize(
    "text,message",
    [
        ("dema:20", "write a point as ARCH:K:MODES"),
        ("dema:20:rnn:0+x", "seeds are distinct integers"),
        ("dema:20:rnn:1+1", "seeds are distinct integers"),
        ("dema:20:rnn:1:2", "write a point as ARCH:K:MODES"),
        ("rnn:20:rnn", "arch 'rnn' is unknown"),
        ("dema:0:rnn", "K must be a positive integer"),
        ("dt:20:rnn", "a 'dt' model acts in transformer"),
        ("mlp:20:", "not none"),
    ],
)
def test_bad_points_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_point(text)
    with pytest.raises(ValueError, match=message):
        SweepConfig(points=[text])


def test_sweep_command_with_the_memory_preset(monkeypatch):
    from dema_lab.cli.main import main
    from dema_lab.study import sweep

    seen = {}
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg: seen.setdefault("cfg", cfg) and [])
    assert (
        main(["sweep", "--preset", "memory", "--store", "/tmp/nowhere", "--seeds", "0", "1", "--set", "steps=9"]) == 0
    )
    cfg = seen["cfg"]
    assert cfg.name == "memory" and cfg.points == SWEEP_PRESETS["memory"]["grid"]["points"]
    assert cfg.seeds == [0, 1] and cfg.base.optim.steps == 9 and cfg.base.model.d_model == 64
    assert len(grid(cfg)) == 2 * 21


def test_returns_to_go_are_unscaled_on_the_memory_tasks_only():
    configs = grid(sweep_preset("memory"))
    scales = {c.data.dataset: c.data.rtg_scale for c in configs}
    assert scales == {"hopper-medium-pomdp": 1000.0, "minigrid-memory-s13": 1.0, "minigrid-memory-s31": 1.0}
    given = grid(sweep_preset("memory", base={"rtg_scale": 10.0}))  # a scale given is kept everywhere
    assert {c.data.rtg_scale for c in given} == {10.0}


def test_a_k_no_episode_holds_is_said_and_not_trained(hopper_small, tiny_run, tmp_path):
    from dema_lab.data import load_dataset
    from dema_lab.store.zarr_store import RunStore
    from dema_lab.study.sweep import run_sweep
    from dema_lab.training import TrainConfig

    longest = int(max(load_dataset(str(hopper_small)).lengths))
    base = TrainConfig.from_flat(dataset=str(hopper_small), store=str(tmp_path / "store"), steps=5, **tiny_run)
    sweep = SweepConfig(
        name="k", datasets=[str(hopper_small)], K=[3, longest + 1], ablations=False, workers=1, base=base
    )
    lines = []
    results = {r["run_id"]: r["what"] for r in run_sweep(sweep, log=lines.append)}
    short, too_long = (c.run.run_id for c in grid(sweep))
    assert results[short] == "trained"
    assert results[too_long].startswith(f"not run: K={longest + 1} is too long for dataset")
    assert any(line.startswith(f"{too_long}: not run") for line in lines), lines
    assert RunStore(str(tmp_path / "store")).run_ids() == [short]


def test_a_point_with_its_own_seeds_runs_those_and_the_others_the_sweeps():
    assert parse_point("dema:20:transformer+rnn:0+1+2") == ("dema", 20, ["transformer", "rnn"], [0, 1, 2])
    assert parse_point("lstm:20:rnn") == ("lstm", 20, ["rnn"], None)
    configs = grid(SweepConfig(datasets=["hopper-medium"], seeds=[5], points=["dema:20:rnn:0+2", "lstm:10:rnn"]))
    assert [(c.model.arch, c.model.K, c.optim.seed, c.run.run_id) for c in configs] == [
        ("dema", 20, 0, "sweep-hopper-medium-dema-B3LD-ts0-K20-s0"),
        ("dema", 20, 2, "sweep-hopper-medium-dema-B3LD-ts0-K20-s2"),
        ("lstm", 10, 5, "sweep-hopper-medium-lstm-B3LD-ts0-K10-s5"),
    ]
