"""Reader for the DQN-Replay dataset (Agarwal et al. 2020), the data the official Atari DeMa and
DT train on: ``--dataset dqn-replay:/path/Breakout/1/replay_logs``.

A run folder ``<Game>/<run>/replay_logs`` holds, per checkpoint N, dopamine's
``OutOfGraphReplayBuffer`` arrays, each ``np.save``d into a gzip file:

    $store$_observation_ckpt.N.gz   (capacity, 84, 84) uint8   one grey frame per transition
    $store$_action_ckpt.N.gz        (capacity,) int32
    $store$_reward_ckpt.N.gz        (capacity,) float32
    $store$_terminal_ckpt.N.gz      (capacity,) uint8          1 at an episode's last step
    add_count_ckpt.N.gz             ()  int                    transitions ever added
    invalid_range_ckpt.N.gz         (k,) int                   (not needed here)

The buffer is circular: with add_count <= capacity the first add_count rows are the data; past
that, the oldest row is at add_count % capacity, and the episode cut by the cursor is dropped.
Episodes end at terminal steps (the tail is an unfinished episode). Frames are kept as single
frames and stacked by 4 when read (:class:`dema_lab.data.WindowSampler`).

Which checkpoints: ``dqn-replay:FOLDER`` reads the last one; ``dqn-replay:FOLDER@3`` checkpoint 3,
``@1,2,5`` several, ``@all`` every one (1M transitions, about 7 GB of frames, each).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from dema_lab.data.trajectory import DatasetError, Trajectory, TrajectoryDataset

__all__ = ["load_dqn_replay", "replay_checkpoints", "STORE_KEYS"]

STORE_KEYS = ("observation", "action", "reward", "terminal")
_CKPT = re.compile(r"^\$store\$_observation_ckpt\.(\d+)\.gz$")


def replay_checkpoints(folder: str | Path) -> list[int]:
    """Checkpoint numbers with an observation file in a replay_logs folder, ascending."""
    folder = Path(folder)
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _CKPT.match(p.name)))


def _load(path: Path) -> np.ndarray:
    if not path.exists():
        raise DatasetError(
            f"{path}: missing; a DQN-Replay checkpoint needs $store$_{{{','.join(STORE_KEYS)}}}"
            f"_ckpt.N.gz and add_count_ckpt.N.gz"
        )
    try:
        with gzip.open(path, "rb") as f:
            return np.load(f, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise DatasetError(
            f"{path}: not a gzipped numpy array ({type(err).__name__}: {err}); "
            "re-download this file of the DQN-Replay run"
        ) from None


def _check_values(name, actions, rewards, rows: np.ndarray, n_actions: int | None, game: str) -> None:
    """DatasetError naming the file and the first bad index among `rows` (the rows in use; dopamine
    leaves the rest of its buffer uninitialised): actions that are not indices 0..n-1 of
    the game's actions (a negative one would index the embedding table from its end, one past the
    end fails inside training), rewards that are NaN or infinite (the loss would diverge, and the
    divergence would look like a learning-rate problem)."""
    actions, rewards = actions[rows], rewards[rows]

    def first(bad) -> tuple[int, int]:  # (position in rows, index in the file) of the first bad row
        k = int(np.flatnonzero(bad)[0])
        return k, int(rows[k])

    bad = ~np.isfinite(rewards) if rewards.dtype.kind == "f" else np.zeros(len(rewards), bool)
    if bad.any():
        k, i = first(bad)
        raise DatasetError(
            f"{name('reward')}: reward {rewards[k]} at index {i} ({int(bad.sum())} rewards are NaN or "
            f"infinite); the file is damaged: re-download this file of the DQN-Replay run"
        )
    if actions.dtype.kind == "f":
        bad = ~np.isfinite(actions) | (actions != np.round(actions))
        if bad.any():
            k, i = first(bad)
            raise DatasetError(f"{name('action')}: action {actions[k]} at index {i} is not an action index")
    bad = actions < 0
    if n_actions:
        bad |= actions >= n_actions
    if bad.any():
        k, i = first(bad)
        allowed = f"0..{n_actions - 1} ({game} has {n_actions} actions)" if n_actions else "0 or more"
        hint = "; is this another game's folder? (pass env)" if n_actions and actions[k] >= n_actions else ""
        raise DatasetError(
            f"{name('action')}: action {actions[k]} at index {i} ({int(bad.sum())} actions are outside "
            f"{allowed}){hint}; the file is damaged or from another game"
        )


def _read_checkpoint(folder: Path, n: int, n_actions: int | None = None, game: str = "") -> dict[str, np.ndarray]:
    """The valid transitions of checkpoint n, oldest first, starting at an episode's start; actions
    and rewards checked (_check_values) before anything is built from them."""
    a = {k: _load(folder / f"$store$_{k}_ckpt.{n}.gz") for k in STORE_KEYS}
    count_path = folder / f"add_count_ckpt.{n}.gz"
    add_count = int(np.asarray(_load(count_path)).reshape(-1)[0]) if count_path.exists() else None
    obs = a["observation"]
    name = lambda k: folder / f"$store$_{k}_ckpt.{n}.gz"  # noqa: E731
    if obs.ndim != 3 or obs.dtype != np.uint8:
        raise DatasetError(
            f"{name('observation')}: holds {obs.dtype} {obs.shape}, expected uint8 frames (capacity, 84, 84)"
        )
    cap = len(obs)
    for k in ("action", "reward", "terminal"):
        if a[k].shape != (cap,):
            raise DatasetError(f"{name(k)}: has shape {a[k].shape}, expected ({cap},) like the observations")
        if a[k].dtype.kind not in "iufb":
            raise DatasetError(f"{name(k)}: has dtype {a[k].dtype}, expected numbers")
    if add_count is None:
        add_count = cap
    if add_count <= 0:
        raise DatasetError(f"{count_path}: add_count is {add_count}; checkpoint {n} holds no transitions")
    if add_count <= cap:
        order = np.arange(add_count)
        first = 0
    else:  # circular: oldest at the cursor; drop the episode the cursor cut
        order = np.roll(np.arange(cap), -(add_count % cap))
        ends = np.flatnonzero(a["terminal"][order])
        first = int(ends[0]) + 1 if len(ends) else 0
    order = order[first:]
    if not len(order):
        raise DatasetError(f"{folder}: checkpoint {n} holds no complete episode start")
    _check_values(name, a["action"], a["reward"], order, n_actions, game)  # the rows in use only
    return {k: v[order] for k, v in a.items()}


def load_dqn_replay(spec: str | Path, env: str | None = None) -> TrajectoryDataset:
    """Load a DQN-Replay run folder (see the module docstring for ``FOLDER[@N|@N,M|@all]``).
    env: the game (default: the folder two above replay_logs, e.g. ``Breakout``)."""
    from dema_lab.envs.spec import env_spec

    text = str(spec)
    folder_text, _, which = text.rpartition("@") if "@" in Path(text).name else (text, "", "")
    folder = Path(folder_text).expanduser()
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: no such folder; give a DQN-Replay run's replay_logs folder "
            "(dqn-replay:/path/Breakout/1/replay_logs)"
        )
    available = replay_checkpoints(folder)
    if not available:
        raise DatasetError(f"{folder}: no $store$_observation_ckpt.N.gz file; is this a DQN-Replay replay_logs folder?")
    if not which:
        chosen = available[-1:]
    elif which == "all":
        chosen = available
    else:
        try:
            chosen = [int(x) for x in which.split(",")]
        except ValueError:
            raise DatasetError(f"{text}: checkpoint selector {which!r} must be N, N,M,... or all") from None
        missing = [c for c in chosen if c not in available]
        if missing:
            raise DatasetError(f"{folder}: no checkpoint {missing[0]}; it has {available}")
    game = env or folder.resolve().parent.parent.name
    try:
        espec = env_spec(game)
    except ValueError:
        espec = None
    if env is not None and espec is None:
        env_spec(env)  # raises the clear unknown-env error
    trajs = []
    for n in chosen:
        a = _read_checkpoint(folder, n, espec.n_actions if espec is not None else None, espec.name if espec else game)
        done = a["terminal"] != 0
        ends = np.flatnonzero(done) + 1
        if not len(ends) or ends[-1] != len(done):
            ends = np.append(ends, len(done))
        starts = np.concatenate([[0], ends[:-1]])
        actions = a["action"].astype(np.float32)[:, None]
        rewards = a["reward"].astype(np.float32)
        for s, e in zip(starts, ends):
            trajs.append(
                Trajectory(
                    observations=a["observation"][s:e],
                    actions=actions[s:e],
                    rewards=rewards[s:e],
                    terminated=bool(done[e - 1]),
                )
            )
    n_actions = (
        espec.n_actions if espec is not None and espec.n_actions else int(max(t.actions.max() for t in trajs)) + 1
    )
    attrs = {
        "frame_stack": 4,
        "n_actions": n_actions,
        "checkpoints": ",".join(map(str, chosen)),
        "format": "dqn-replay",
    }
    if espec is not None:
        attrs.update(env=espec.name, d4rl_key=espec.d4rl_key)
    return TrajectoryDataset(
        trajs, env=espec.name if espec else None, quality=None, source=f"dqn-replay:{folder}", attrs=attrs
    )
