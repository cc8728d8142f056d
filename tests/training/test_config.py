"""TrainConfig composed of sections: the flat form (flags, files, stored runs) round-trips, what a
resume may not change is derived from the sections, and every check that can run before the
first step does, leaving no run behind."""

import dataclasses
import json
import shutil

import h5py
import pytest

from dema_lab.cli.main import build_parser, main
from dema_lab.cli.train import config_from_args
from dema_lab.common.values import ConfigError
from dema_lab.models import ModelConfig
from dema_lab.store.zarr_store import RunStore
from dema_lab.training import RESUME_FIXED, TrainConfig, train
from dema_lab.training.config import FROM_DATA
from dema_lab.training.memory import check_memory, training_bytes

# The flat config as the previous release stored it (asdict of its flat TrainConfig): every run in
# an existing store holds one of these as its `config` attribute.
OLD_FLAT = {
    "dataset": "hopper-medium", "arch": "dema", "K": 20, "layout": "B3LD", "token_order": "RSA",
    "embed_dim": 0, "embed_norm": "layernorm", "frame_norm": "scale", "window_padding": "none",
    "activation": "gelu", "window_actions": "own", "n_layer": 3, "d_model": 128, "d_state": 16,
    "d_conv": 4, "expand": 2, "n_head": 1, "dropout": 0.1, "timestep_embedding": None,
    "max_ep_len": 1000, "rtg_form": "current", "decay_all": False, "train_padding": "right",
    "init": "torch", "steps": 10000, "batch_size": 64, "lr": 0.0001, "weight_decay": 0.0001,
    "warmup_steps": 1000, "lr_schedule": "constant", "lr_decay_steps": 0, "grad_clip": 0.25,
    "rtg_scale": 1000.0, "seed": 0, "device": "auto", "threads": 0, "eval_every": 0,
    "eval_episodes": 5, "eval_targets": None, "eval_modes": None, "eval_max_steps": 1000,
    "record_episodes": 1, "render_size": 128, "attention": "minmax", "decay_windows": 64,
    "log_every": 100, "checkpoint_every": 1000, "keep_resume_states": 3, "store": "store",
    "run_id": "", "sweep": "",
}  # fmt: skip

# The previous release's hand-written list of what a resume may not change.
OLD_RESUME_FIXED = (
    "dataset arch K layout token_order embed_dim embed_norm frame_norm window_padding activation "
    "window_actions n_layer d_model d_state d_conv expand n_head dropout timestep_embedding max_ep_len "
    "seed batch_size lr weight_decay warmup_steps lr_schedule lr_decay_steps grad_clip rtg_scale "
    "rtg_form decay_all train_padding"
).split()


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_the_model_is_a_model_config_not_a_copy_of_its_fields():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert names == ["model", "data", "optim", "evaluation", "run"]
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - set(FROM_DATA)
    for section in names[1:]:  # no other section declares a model field again
        assert not model_fields & {f.name for f in dataclasses.fields(type(getattr(TrainConfig(), section)))}
    cfg = TrainConfig.from_flat(K=7, d_model=32, n_layer=2, steps=5)
    assert isinstance(cfg.model, ModelConfig) and (cfg.model.K, cfg.model.d_model, cfg.model.n_layer) == (7, 32, 2)
    mc = cfg.model_config(17, 6)
    assert (mc.state_dim, mc.act_dim, mc.K, mc.d_model) == (17, 6, 7, 32)


def test_old_flat_configs_load_and_round_trip(tmp_path):
    cfg = TrainConfig.from_flat(OLD_FLAT)
    flat = cfg.to_flat()
    assert set(flat) == set(OLD_FLAT) | {"burn_in"}  # the previous release's keys, and the burn-in
    assert flat.pop("burn_in") == 0  # an old config trains on every step of its windows
    assert {k: v for k, v in flat.items() if k != "timestep_embedding"} == {
        k: v for k, v in OLD_FLAT.items() if k != "timestep_embedding"
    }
    assert flat["timestep_embedding"] is False  # None: off for DeMa
    assert TrainConfig.from_flat(flat) == cfg
    with pytest.raises(ConfigError, match="burn_in=4 leaves no step of a K=4 window"):
        TrainConfig.from_flat(K=4, burn_in=4)
    # a config file written by the previous release (flat keys) loads through --config
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"K": 20, "d_model": 64, "steps": 30, "eval_modes": ["transformer"]}))
    cfg = parse("--config", str(path), "--eval-episodes", "3")
    assert (cfg.model.K, cfg.model.d_model, cfg.optim.steps, cfg.evaluation.eval_episodes) == (20, 64, 30, 3)
    # and so does a file of sections (asdict of a TrainConfig)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps(dataclasses.asdict(TrainConfig.from_flat(K=9))))
    assert parse("--config", str(nested)).model.K == 9


def test_resume_fixed_is_derived_from_the_sections():
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - set(FROM_DATA)
    assert model_fields <= set(RESUME_FIXED)  # every model field, with no list to keep in step
    assert set(OLD_RESUME_FIXED) <= set(RESUME_FIXED)  # what the hand-written list held
    # the initial weights and the burn-in are what the run is too
    assert set(RESUME_FIXED) - set(OLD_RESUME_FIXED) == {"init", "burn_in"}
    for free in ("steps", "eval_episodes", "eval_every", "store", "log_every", "device"):
        assert free not in RESUME_FIXED


def test_the_flat_command_line_builds_the_sections():
    cfg = parse("--K", "20", "--d_model", "64", "--eval_episodes", "3", "--attention", "abs", "--lr-schedule", "cosine")
    assert (cfg.model.K, cfg.model.d_model, cfg.evaluation.eval_episodes) == (20, 64, 3)
    assert (cfg.evaluation.attention, cfg.optim.lr_schedule) == ("abs", "cosine")
    assert parse("--eval-episodes", "4").evaluation.eval_episodes == 4
    # the Makefile's and README's command lines
    assert parse("--dataset", "hopper-medium", "--K", "20", "--steps", "10000").optim.steps == 10000
    assert parse("--preset", "official", "--arch", "dt").model.token_order == "RSA"


def test_the_flags_classes_do_not_subclass_the_configs():
    from dema_lab.cli.study import SweepFlags
    from dema_lab.cli.train import TrainFlags
    from dema_lab.study.sweep import SweepConfig

    assert not issubclass(TrainFlags, TrainConfig) and not issubclass(SweepFlags, SweepConfig)
    with pytest.raises(ValueError, match="sweep dimension K is empty"):
        SweepConfig(K=[])  # the parent's check is not emptied out by a subclass


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--attention", "bogus"], "attention: expected one of 'minmax', 'abs', 'mean', got 'bogus'"),
        (["--lr_schedule", "linear"], "lr_schedule: expected one of 'constant', 'cosine'"),
        # the checkpoint loader's bound (ModelConfig): a run it could not open is not trained
        (["--n_layer", "129"], "n_layer"),
    ],
)
def test_a_bad_choice_or_bound_is_refused_before_a_run_exists(tmp_path, capsys, argv, message):
    store = tmp_path / "store"
    assert main(["train", "--quiet", "--store", str(store), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dema-lab train: ") and message in err and err.count("\n") == 1, err
    assert not store.exists()


def test_the_checkpoint_loaders_bounds_are_the_configs():
    with pytest.raises(ValueError) as loader:
        ModelConfig(n_layer=129)
    with pytest.raises(ConfigError) as config:
        TrainConfig.from_flat(n_layer=129)
    assert str(loader.value).removeprefix("invalid model config: ") in str(config.value)


@pytest.mark.parametrize(
    "ref, why",
    [((100.0, 100.0), "must differ"), (("abc", 3000.0), "abc")],
)
def test_bad_reference_scores_are_refused_before_training(tiny_config, hopper_small, tmp_path, ref, why):
    path = tmp_path / f"refs-{ref[0]}.hdf5"
    shutil.copy(hopper_small, path)
    with h5py.File(path, "a") as f:
        f.attrs["ref_min_score"], f.attrs["ref_max_score"] = ref
    cfg = tiny_config.replace(dataset=str(path))
    with pytest.raises(ValueError, match="reference scores") as e:
        train(cfg, progress=False, log=lambda *_: None)
    assert why in str(e.value) and "ref_min_score" in str(e.value)
    store = RunStore(cfg.run.store, mode="a")
    assert "tiny" not in store.run_ids()  # nothing was created, so nothing is left "interrupted"


def test_memory_estimate_refuses_what_cannot_fit(tiny_config, tmp_path, capsys):
    mc = tiny_config.model_config(11, 3)
    small, big = training_bytes(mc, 8), training_bytes(mc, 8000)
    assert 0 < small < big and big > 500 * small  # the activations grow with the batch
    # independent lower bound: the batch's float32 states alone
    assert training_bytes(mc, 10**8) > 4 * 10**8 * mc.K * mc.state_dim
    assert check_memory(mc, 8, None, available=10**12) == small
    with pytest.raises(
        ValueError, match=r"^--batch_size 8000 .* needs ~.* [KMGT]iB, the machine has .* [KMGT]iB available; lower"
    ):
        check_memory(mc, 8000, None, available=small)
    store = tmp_path / "store"
    flags = [
        f"--{k}={v}" for k, v in tiny_config.to_flat().items() if v is not None and k not in ("store", "eval_modes")
    ]
    assert main(["train", "--quiet", *flags, "--store", str(store), "--batch_size", "100000000"]) == 2
    err = capsys.readouterr().err
    assert "dema-lab train: --batch_size 100000000" in err and "iB available" in err and err.count("\n") == 1
    assert "tiny" not in RunStore(store, mode="a").run_ids()


def test_the_loss_is_named_by_the_loss():
    from dema_lab.training.objective import loss_for

    mujoco = ModelConfig(state_dim=11, act_dim=3)
    atari = ModelConfig(state_dim=4 * 84 * 84, act_dim=1, obs_shape=(4, 84, 84), n_actions=6)
    assert loss_for(mujoco).long_name == "masked action MSE"
    assert loss_for(atari).long_name == "masked action cross-entropy" and loss_for(atari).units == "nats"


def test_hooks_see_the_loop(tiny_config):
    from dema_lab.training import Hook

    class Recorder(Hook):
        def __init__(self):
            self.events = []

        def on_start(self, trainer):
            self.events.append(("start", trainer.step))

        def on_step(self, trainer):
            self.events.append(("step", trainer.step))

        def on_checkpoint(self, trainer):
            published = "step_%08d" % trainer.step in trainer.run.published("checkpoint")
            self.events.append(("checkpoint", trainer.step, published))

        def on_end(self, trainer, error):
            self.events.append(("end", trainer.step, error))

    rec = Recorder()
    cfg = tiny_config.replace(steps=12, checkpoint_every=5, log_every=4, eval_modes=["transformer"], render_size=0)
    run = train(cfg, progress=False, log=lambda *_: None, hooks=[rec])
    assert rec.events[0] == ("start", 0) and rec.events[-1] == ("end", 12, None)
    assert [e[1] for e in rec.events if e[0] == "step"] == list(range(1, 13))
    assert [e for e in rec.events if e[0] == "checkpoint"] == [("checkpoint", s, True) for s in (5, 10, 12)]
    assert run.attrs["status"] == "finished" and run.attrs["config"] == cfg.to_flat()
    # the metrics hook published every step, in groups of log_every and at the checkpoints
    assert list(run.train_metrics().step.values) == list(range(1, 13))
    assert run.open("train", run.published("train")[0])["loss"].attrs["long_name"] == "masked action MSE"


@pytest.mark.parametrize(
    "line",
    [
        "train --dataset hopper-medium --K 20 --steps 10000",
        "train --preset official --dataset hopper-medium",
        "train --device cuda --dataset hopper-medium",
        "train --dataset hopper-medium --eval_episodes 3 --eval-max-steps 200 --d_model 64",
        "sweep --K 5 10 20 40 --archs dema dt",
        "sweep --name mine --datasets hopper-medium w.hdf5 --K 5 10 20 40 --archs dema dt --layouts B3LD BL3D "
        "--seeds 0 1 2 --set steps=10000",
        "sweep --name atari --preset atari-small --datasets breakout-mixed pong-mixed --archs dema dt --K 8 --workers 2",
        "sweep --executor ray --address 10.0.0.1:6379 --store s3://bucket/study --name full --datasets hopper-medium "
        "--K 5 10 --archs dema dt --seeds 0 1 2 --num-cpus 2 --num-gpus 0.25 --set steps=100000 eval_episodes=100",
    ],
)
def test_the_readmes_command_lines_parse(line):
    from dema_lab.cli.study import parse_set

    args = build_parser().parse_args(line.split())
    if line.startswith("train"):
        cfg = config_from_args(args)
        assert isinstance(cfg, TrainConfig)
    else:
        assert TrainConfig.from_flat(parse_set(args.set)).optim.steps in (10_000, 100_000, TrainConfig().optim.steps)
        assert args.sweep_fields["archs"] == ["dema", "dt"] or args.sweep_fields["archs"] == ["dema"]


def test_a_new_arch_takes_its_timestep_embedding_default():
    dema = TrainConfig.from_flat(K=5)
    assert dema.model.timestep_embedding is False
    assert dema.replace(arch="dt").model.timestep_embedding is True  # DT's default, as TrainConfig(arch=dt)
    assert dema.replace(arch="dt", timestep_embedding=False).model.timestep_embedding is False
    assert dema.replace(K=6).model.timestep_embedding is False
