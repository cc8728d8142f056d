"""One CLI: `dema-lab train` and `dema-lab sweep` take their flags and help from
TrainConfig and SweepConfig by tyro (each field's comment is its help), both spellings of a flag
work, and every error, a command line's too, is one line `dema-lab COMMAND: ...` with exit status 2."""

import subprocess
import sys

import pytest

from dema_lab.cli.main import build_parser, main
from dema_lab.cli.train import config_from_args


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "dema_lab.cli.main", *args], capture_output=True, text=True, timeout=300
    )


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_train_help_is_the_field_comments():
    out = run("train", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.replace("│", " ").split())
    # the model's fields are flags without their section's prefix (--K, not --model.K)
    assert "--token_order STR" in text and "--model." not in text
    assert "--n_layer INT (default: 3)" in text
    # dataset's comment in TrainConfig's data section, as the help of --dataset
    assert "--dataset STR embedded name, D4RL .hdf5 path, or minari:<id> (default: hopper-medium)" in text
    # a comment above a field (#:) is that field's help, not the next one's; a choice lists its values
    assert "--rtg_form {current,previous} training tokens: current (R_t, as at evaluation)" in text
    assert "`del_r`; RAS only) (default: current)" in text
    assert "--attention {minmax,abs,mean}" in text
    # every field has its own help (none inherits a section comment written above it), and the
    # groups are the config's sections by name
    assert "--d_state INT the Mamba mixer's SSM state size N, per channel (default: 16)" in text
    assert "--n_head INT the Transformer's attention heads (default: 1)" in text
    assert "--window_actions STR RSA windows at inference" in text
    for section in ("model", "data", "optim", "evaluation", "run"):
        assert f"─ {section} options ─" in text, section
    assert "training." not in text
    for flag in (
        "--preset",
        "--config",
        "--resume",
        "--from_step",
        "--quiet",
        "--log_to",
        "--storage_option",
        "--store",
    ):
        assert flag in text, flag


def test_sweep_help_lists_its_flags():
    out = run("sweep", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.replace("│", " ").split())
    for flag in ("--preset", "--K INT [INT ...] context lengths", "--no-ablations", "--set", "--storage-option"):
        assert flag in text, flag
    assert "--base " not in text  # SweepConfig.base is --preset, --base-config and --set


@pytest.mark.parametrize("flag", ["--eval-episodes", "--eval_episodes"])
def test_both_spellings_of_a_flag(flag):
    cfg = parse(flag, "2", "--decay-all", "yes", "--eval_targets", "3600", "1800")
    assert (cfg.evaluation.eval_episodes, cfg.optim.decay_all, cfg.evaluation.eval_targets) == (
        2,
        True,
        [3600.0, 1800.0],
    )


def test_only_typed_flags_override_the_preset(tmp_path):
    cfg = parse("--preset", "official", "--steps", "7")
    official = parse("--preset", "official")
    assert cfg.optim.steps == 7 and cfg.model.d_model == official.model.d_model != parse().model.d_model
    args = build_parser().parse_args(["train", "--quiet", "--from-step", "4", "--log-to", "tensorboard", "tb"])
    assert (args.quiet, args.from_step, args.log_to, args.typed) == (True, 4, ["tensorboard", "tb"], {})


def test_sweep_flags_become_the_sweep_config(monkeypatch, capsys, tmp_path):
    from dema_lab.study import sweep

    seen = {}
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg: seen.setdefault("cfg", cfg) and [])
    argv = ["sweep", "--K", "5", "10", "--timestep-embedding", "off", "on", "--no-ablations"]
    assert main([*argv, "--eval_modes", "rnn", "--store", str(tmp_path / "s"), "--set", "steps=3"]) == 0
    cfg = seen["cfg"]
    assert (cfg.K, cfg.timestep_embedding, cfg.ablations, cfg.eval_modes) == ([5, 10], [False, True], False, ["rnn"])
    assert (cfg.base.optim.steps, cfg.base.run.store, cfg.datasets) == (3, str(tmp_path / "s"), ["hopper-medium"])
    capsys.readouterr()
    assert main(["sweep", "--layouts", "B4LD"]) == 2
    assert capsys.readouterr().err.strip() == "dema-lab sweep: layouts: invalid choice 'B4LD'; choose from B3LD, BL3D"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--steps", "ten"], "dema-lab train: steps: expected an integer, got 'ten'"),
        (["train", "--stepz", "3"], "dema-lab train: Unrecognized options: --stepz, 3; did you mean --steps?"),
        (["train", "--preset", "nope"], "dema-lab train: preset: expected one of 'atari-official', 'atari-small'"),
        (["train", "--log-to", "tensorboard"], "dema-lab train: Missing value for argument --log_to"),
        (["sweep", "--K", "x"], "dema-lab sweep: K: expected a list of integers, got ['x']"),
        (["runs", "--bogus"], "dema-lab runs: unrecognized arguments: --bogus"),
        (["data", "build", "tetris", "random"], "dema-lab data build: unknown env 'tetris'"),
    ],
)
def test_a_bad_command_line_is_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "╭" not in err, err


def test_a_bad_value_in_a_process_is_one_line_and_exit_2(tmp_path):
    out = run("train", "--eval-episodes", "two", "--store", str(tmp_path / "store"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["dema-lab train: eval_episodes: expected an integer, got 'two'"]
    assert not (tmp_path / "store").exists()
