"""What a run is evaluated on when its config does not say: the targets and the inference modes."""

from __future__ import annotations

from dema_lab.envs.spec import ENV_SPECS, known_envs

# The official evaluation targets (return-to-go at the start), DeMa and DT papers.
DEFAULT_TARGETS = {
    "hopper": [3600.0, 1800.0],
    "halfcheetah": [12000.0, 6000.0],
    "walker2d": [5000.0, 2500.0],
    # Atari: the first target of each game in atari/mingpt/trainer_atari.py (the DT paper's)
    "breakout": [90.0],
    "pong": [20.0],
    "qbert": [14000.0],
    "seaquest": [1150.0],
}


# The memory tasks: their best return (MiniGrid Memory's success, POPGym's optimum)
DEFAULT_TARGETS.update({name: [1.0] for name in known_envs("minigrid") + known_envs("popgym")})


def default_targets(env: str, dataset=None) -> list[float]:
    """The papers' targets for `env` (a partially observed task: its full task's); for another env,
    the dataset's best episode return."""
    if env in ENV_SPECS and ENV_SPECS[env].full_env:
        env = ENV_SPECS[env].full_env
    if env in DEFAULT_TARGETS:
        return list(DEFAULT_TARGETS[env])
    if dataset is None:
        raise ValueError(
            f"no default target returns for env {env!r}; pass targets=[...] (--eval_targets on the command line)"
        )
    return [float(dataset.returns.max())]


def default_modes(arch: str) -> list[str]:
    """DeMa is evaluated Transformer-like and RNN-like (the paper's question); the LSTM and GRU
    RNN-like, as they are meant to act (carrying their state over the whole episode; they can
    also be asked for "transformer", a fresh state on the last K steps at every step); DT and
    the memoryless MLP have only the Transformer-like mode (the MLP's window changes nothing)."""
    if arch == "dema":
        return ["transformer", "rnn"]
    return ["rnn"] if arch in ("lstm", "gru") else ["transformer"]
