"""Policy rollouts in the environment: the step stream, recorded episodes, and evaluation.

rollout_steps(policy, env, target, seed)   yields one StepRecord per env step (live dashboards)
record_episode(...)                        one episode as an xarray Dataset (the run store's
                                           rollout/<name> group): frames, observations,
                                           actions, rewards, returns-to-go, hidden attention
                                           (memory tasks: whether the cue was in view)
rollout_batch(policy, envs, targets, seeds) N episodes in lockstep, one model call per env step
                                           for the live ones (BatchPolicy): returns and lengths
evaluate(...)                              returns by (mode, target, episode), plus recordings
                                           keyed by (mode, target index, episode);
                                           the unrecorded episodes of a mode run as one batch
replay_attention(...)                      the attention at a recorded step, recomputed from a
                                           checkpoint (other aggregations, or to verify the log)
export_video(episode, "ep.mp4")            a recorded episode's frames as mp4 or gif
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from dema_lab.analysis import lag_profile, right_align, token_coords
from dema_lab.models import BatchPolicy, Policy
from dema_lab.ssm import AGGREGATIONS


@dataclass
class StepRecord:
    """One env step of a rollout as the policy saw it: observation, action, reward, conditioning
    return-to-go, the frame and the aggregated hidden attention of the window it acted on."""

    t: int
    observation: np.ndarray  # (obs_dim,) the observation acted on
    action: np.ndarray  # (act_dim,)
    reward: float
    return_to_go: float  # the conditioning return-to-go at this step, env units
    done: bool
    frame: np.ndarray | None  # (H, W, 3) uint8, the scene the action was chosen in
    attention: np.ndarray | None  # (n_layer, n, n) aggregated, window ending at s_t
    act_seconds: float  # time to choose the action (model + attention)
    cue_visible: bool | None = None  # memory tasks (MiniGrid): the cue is in the observation acted on


def _check_finite(action: np.ndarray, t: int):
    if not np.isfinite(action).all():
        raise FloatingPointError(
            f"the policy produced a non-finite action at step {t} ({action}); its weights "
            f"or inputs hold NaN or inf: check the checkpoint and the dataset's state "
            f"statistics"
        )


def rollout_steps(
    policy: Policy, env, target: float, seed: int, render: bool = False, max_steps: int | None = None, detail=None
):
    """Run one episode, yielding a StepRecord after every env step. Stop early by closing the generator.
    detail(t) -> bool, if given, picks the steps that get a frame (with `render`) and hidden
    attention (the live page: only those it shows); Transformer-like, the others run the model
    without attention."""
    method = policy.attention_method
    policy.reset(target)
    obs, info = env.reset(seed=int(seed))
    limit = max_steps or getattr(env.spec, "max_episode_steps", None) or 1000
    try:
        for t in range(limit):
            full = detail is None or detail(t)
            frame = env.render() if render and full else None
            if policy.mode == "transformer":
                policy.attention_method = method if full else None
            rtg = policy.rtg * policy.rtg_scale
            start = time.perf_counter()
            action = policy.act(obs)
            act_seconds = time.perf_counter() - start
            _check_finite(action, t)
            cue = info.get("cue_visible")
            next_obs, reward, terminated, truncated, info = env.step(action)
            policy.observe(reward)
            done = bool(terminated or truncated) or t == limit - 1
            attention = policy.attention if full else None
            yield StepRecord(
                t, np.asarray(obs, np.float32), action, float(reward), rtg, done, frame, attention, act_seconds, cue
            )
            obs = next_obs
            if done:
                return
    finally:
        policy.attention_method = method


def rollout_batch(policy: BatchPolicy, envs, targets, seeds, max_steps: int | None = None, on_done=None):
    """Run len(envs) episodes in lockstep: row i in envs[i], reset with seeds[i], aiming for
    targets[i]; one policy call per env step for the live rows, a finished episode's row dropped.
    Episode for episode the same as rollout_steps (same seeds, limit and termination; returns
    summed as evaluate sums them). on_done(i, return, length) as each ends.
    Returns (returns (n,) float64, lengths (n,) int64)."""
    n = len(envs)
    if not (len(targets) == len(seeds) == n):
        raise ValueError(
            f"rollout_batch needs one target and one seed per env, got {len(targets)} targets and "
            f"{len(seeds)} seeds for {n} envs"
        )
    returns, lengths = np.zeros(n), np.zeros(n, np.int64)
    if n == 0:
        return returns, lengths
    policy.reset(targets)
    obs = np.stack([np.asarray(env.reset(seed=int(sd))[0], np.float32) for env, sd in zip(envs, seeds)])
    limit = max_steps or getattr(envs[0].spec, "max_episode_steps", None) or 1000
    live = np.arange(n)  # env index of each policy row
    rewards: list[list[float]] = [[] for _ in range(n)]
    for t in range(limit):
        actions = policy.act(obs)  # (live, act_dim)
        _check_finite(actions, t)
        step_rewards, done, next_obs = np.zeros(len(live)), np.zeros(len(live), bool), []
        for row, i in enumerate(live):
            o, reward, terminated, truncated, _ = envs[i].step(actions[row])
            step_rewards[row] = float(reward)
            rewards[i].append(float(reward))
            done[row] = bool(terminated or truncated) or t == limit - 1
            next_obs.append(np.asarray(o, np.float32))
        policy.observe(step_rewards)
        for row in np.flatnonzero(done):
            i = live[row]
            returns[i], lengths[i] = float(np.sum(rewards[i])), len(rewards[i])  # as evaluate sums one episode
            if on_done:
                on_done(int(i), returns[i], int(lengths[i]))
        if done.all():
            break
        if done.any():
            policy.keep(~done)
            live = live[~done]
        obs = np.stack([o for o, d in zip(next_obs, done) if not d])
    return returns, lengths


def record_episode(
    policy: Policy,
    env,
    target: float,
    seed: int,
    render_size: int | None = None,
    max_steps: int | None = None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """One episode as a Dataset with dims step, layer, query, key, lag (+ y, x, rgb with frames)."""
    cfg = policy.cfg
    steps = list(rollout_steps(policy, env, target, seed, render=render_size is not None, max_steps=max_steps))
    return steps_to_dataset(
        steps,
        cfg,
        attrs={
            "target": float(target),
            "seed": int(seed),
            "mode": policy.mode,
            "aggregation": policy.attention_method or "",
            **(attrs or {}),
        },
    )


def steps_to_dataset(steps: list[StepRecord], cfg, attrs: dict | None = None) -> xr.Dataset:
    T = len(steps)
    L = cfg.window_tokens()
    data = {
        # flat (step, obs_dim); Atari's stacked frames as uint8 (they are whole numbers 0..255)
        "observation": (
            ("step", "obs_dim"),
            np.stack([s.observation.reshape(-1) for s in steps]).astype(
                np.uint8 if getattr(cfg, "obs_shape", ()) else np.float32
            ),
        ),
        "action": (("step", "act_dim"), np.stack([s.action for s in steps]).astype(np.float32)),
        "reward": ("step", np.array([s.reward for s in steps], np.float32)),
        "return_to_go": ("step", np.array([s.return_to_go for s in steps], np.float32)),
        "act_seconds": ("step", np.array([s.act_seconds for s in steps], np.float32)),
    }
    coords = {"step": np.arange(T)}
    if steps and steps[0].cue_visible is not None:
        data["cue_visible"] = ("step", np.array([bool(s.cue_visible) for s in steps]))
    if steps and steps[0].frame is not None:
        data["frames"] = (("step", "y", "x", "rgb"), np.stack([s.frame for s in steps]))
        h, w = steps[0].frame.shape[:2]
        coords.update(y=np.arange(h), x=np.arange(w), rgb=["r", "g", "b"])
    if steps and steps[0].attention is not None:
        att = np.stack([right_align(s.attention, L) for s in steps])  # (T, layer, L, L)
        data["attention"] = (("step", "layer", "query", "key"), att)
        data["attention_by_lag"] = (("step", "layer", "lag"), lag_profile(att))
        coords.update(
            layer=np.arange(att.shape[1]), lag=np.arange(L), **token_coords(cfg, "query"), **token_coords(cfg, "key")
        )
    ds = xr.Dataset(data, coords=coords)
    ret = float(ds.reward.sum()) if T else 0.0
    ds.attrs = {"return": ret, "length": T, **(attrs or {})}
    ds["return_to_go"].attrs = {"long_name": "return-to-go conditioning", "units": "env reward"}
    ds["reward"].attrs = {"long_name": "env reward", "units": "env reward"}
    ds["action"].attrs = {"long_name": "action taken (tanh head)", "range": [-1.0, 1.0]}
    ds["observation"].attrs = {"long_name": "observation acted on (not normalised)"}
    ds["act_seconds"].attrs = {"long_name": "time to choose the action (model + attention)", "units": "s"}
    if "frames" in ds:
        ds["frames"].attrs = {"long_name": "rendered env frame, before the action", "export": "dema-lab video"}
    if "cue_visible" in ds:
        ds["cue_visible"].attrs = {"long_name": "the memory task's cue is in the observation acted on"}
    if "attention" in ds:
        ds["attention"].attrs = {
            "long_name": "hidden attention, channels aggregated",
            "layout": "right-aligned: the last query is the current state token",
            "aggregation": ds.attrs.get("aggregation", ""),
        }
        ds["attention_by_lag"].attrs = {"long_name": "current state token's attention by lag", "lag_unit": "tokens"}
    return ds


def export_video(episode: xr.Dataset, path, fps: float = 30.0) -> Path:
    """Write a recorded episode's frames (the store's rollout/<name> group) to a video file:
    mp4 (H.264, through imageio's bundled ffmpeg) or, by the suffix, gif. Returns the path."""
    import imageio.v2 as imageio

    path = Path(path)
    if "frames" not in episode:
        raise ValueError(
            "this episode was recorded without frames (render_size=0); record one with frames "
            "(e.g. `dema-lab train --render_size 128`) or save a live rollout"
        )
    if episode.sizes["step"] == 0:
        raise ValueError("this episode has no steps to export")
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"cannot write {path.name}: choose a .mp4 or .gif file name")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = episode["frames"].values  # (T, H, W, 3) uint8
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, list(frames), duration=1000.0 / fps, loop=0)
        return path
    # H.264 in yuv420p (what every player opens) needs even sizes: pad an odd edge by one pixel
    pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
    frames = np.pad(frames, pad, mode="edge") if any(p[1] for p in pad) else frames
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def rollout_encoding(ds: xr.Dataset) -> dict:
    """Zarr v3 encoding for a rollout: Zstd, 50-step chunks, one shard per variable."""
    from zarr.codecs import ZstdCodec

    enc = {}
    T = max(1, ds.sizes.get("step", 1))
    for name, var in ds.data_vars.items():
        if "step" not in var.dims:
            continue
        chunk = tuple(min(50, T) if d == "step" else ds.sizes[d] for d in var.dims)
        shard = tuple(-(-T // chunk[0]) * chunk[0] if d == "step" else ds.sizes[d] for d in var.dims)
        enc[name] = {"chunks": chunk, "shards": shard, "compressors": (ZstdCodec(level=3),)}
    return enc


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch (and so the numba scan, which follows torch's thread count) on n threads, then
    restore the count. torch's thread count is process-wide, so use this only where nothing else
    in the process is computing (the trainer's evaluation)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_threaded():
    """torch_threads(1). Acting at batch 1: its ops are far too small to split, and on a busy
    machine idle-spinning thread pools made each step 20-50x slower."""
    return torch_threads(1)


def evaluate(
    model,
    env_name: str,
    targets,
    episodes: int,
    modes=("transformer",),
    rtg_scale: float = 1000.0,
    state_mean=None,
    state_std=None,
    seed: int = 0,
    record: int = 1,
    render_size: int | None = 128,
    attention: str | None = "minmax",
    max_steps: int | None = None,
    on_episode=None,
    scorer=None,
    batch_threads: int | None = None,
):
    """Evaluate a model: `episodes` episodes per (mode, target).

    The first `record` episodes of each (mode, target) are recorded (frames, attention), one at
    a time; the others run without logging, all (target, episode) pairs of a mode as one batch
    (rollout_batch: one model call per env step). Returns (results Dataset with dims (mode,
    target, episode), {name: recorded episode Dataset}). Episode seeds are shared across modes.
    scorer(returns) gives normalized scores (default: D4RL's reference returns for the env).
    on_episode(mode, target, episode, return, length) as each episode ends.
    batch_threads: torch threads for the batched model calls (None: the count in effect when
    evaluate is called, i.e. the run's --threads; a sweep worker's 1). The recorded episodes run
    at batch 1 on one thread; a batch of 10 windows is large enough to split (measured on 2 cores,
    paper-size DeMa at K 20: 11.2 ms a call on 1 thread, benchmarks/RESULTS.md).
    """
    import torch

    from dema_lab.data import normalized_score
    from dema_lab.envs.make import make_env
    from dema_lab.envs.spec import env_spec

    spec = env_spec(env_name)
    scorer = scorer or (lambda r: normalized_score(spec.name, r))
    targets = [float(x) for x in targets]
    returns = np.full((len(modes), len(targets), episodes), np.nan)
    lengths = np.zeros_like(returns, dtype=np.int64)
    recordings = {}
    batch = [(i, e) for i in range(len(targets)) for e in range(max(0, record), episodes)]  # unrecorded
    batch_threads = torch.get_num_threads() if batch_threads is None else batch_threads
    with single_threaded(), contextlib.ExitStack() as cleanup:
        envs = []
        for _ in range(max(1, len(batch))):  # one env per batch row; envs[0] also records
            envs.append(make_env(spec.name))
            cleanup.callback(envs[-1].close)
        rendering = make_env(spec.name, render_size=render_size) if record and render_size else None
        if rendering is not None:
            cleanup.callback(rendering.close)
        for m, mode in enumerate(modes):
            for i, target in enumerate(targets):
                for e in range(min(max(0, record), episodes)):
                    policy = Policy(model, mode, state_mean, state_std, rtg_scale, attention=attention)
                    ds = record_episode(
                        policy,
                        rendering or envs[0],
                        target,
                        seed + 10_000 * i + e,
                        render_size=render_size if rendering else None,
                        max_steps=max_steps,
                        attrs={"env": spec.name, "episode": e},
                    )
                    ds.attrs["normalized_score"] = float(scorer(ds.attrs["return"]))
                    recordings[(mode, i, e)] = ds
                    returns[m, i, e], lengths[m, i, e] = ds.attrs["return"], ds.attrs["length"]
                    if on_episode:
                        on_episode(mode, target, e, ds.attrs["return"], ds.attrs["length"])
            if not batch:
                continue

            def done(row, ret, length, m=m, mode=mode):
                i, e = batch[row]
                returns[m, i, e], lengths[m, i, e] = ret, length
                if on_episode:
                    on_episode(mode, targets[i], e, ret, length)

            with torch_threads(batch_threads if len(batch) > 1 else 1):
                rollout_batch(
                    BatchPolicy(model, mode, state_mean, state_std, rtg_scale),
                    envs[: len(batch)],
                    [targets[i] for i, _ in batch],
                    [seed + 10_000 * i + e for i, e in batch],
                    max_steps=max_steps,
                    on_done=done,
                )
    results = xr.Dataset(
        {
            "return": (("mode", "target", "episode"), returns),
            "length": (("mode", "target", "episode"), lengths),
            "normalized_score": (("mode", "target", "episode"), np.asarray(scorer(returns), np.float64)),
        },
        coords={"mode": list(modes), "target": targets, "episode": np.arange(episodes)},
        attrs={"env": spec.name, "rtg_scale": rtg_scale},
    )
    results["normalized_score"].attrs = {"long_name": "D4RL normalized score", "units": "0-100"}
    results["return"].attrs = {"long_name": "episode return", "units": "env reward"}
    results["length"].attrs = {"long_name": "episode length", "units": "env steps"}
    return results, recordings


def replay_attention(
    model,
    rollout: xr.Dataset,
    step: int,
    method: str = "minmax",
    state_mean=None,
    state_std=None,
    rtg_scale: float = 1000.0,
    aggregate: bool = True,
):
    """The attention at `step` of a recorded episode, recomputed by replaying its observations
    and rewards through a fresh policy of the same mode. Returns (n_layer, n, n) aggregated with
    `method`, or with aggregate=False a list of per-channel (d_inner|heads, n, n) arrays."""
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown channel aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")
    policy = Policy(model, rollout.attrs.get("mode", "transformer"), state_mean, state_std, rtg_scale, attention=method)
    policy.reset(float(rollout.attrs["target"]))
    policy.replay_to(rollout["observation"].values, rollout["action"].values, rollout["reward"].values, step)
    return policy.attention if aggregate else policy.channel_attention()


def replay_windows(
    model, rollout: xr.Dataset, steps, state_mean=None, state_std=None, rtg_scale: float = 1000.0
) -> list[dict]:
    """The Transformer-like inputs the policy acted on at `steps` of a recorded episode: for each
    step (ascending), what `Policy.window()` builds there (the model's keyword arguments, batch
    1), rebuilt from the recorded observations, actions and rewards without running the model
    (as replay_attention does)."""
    mode = rollout.attrs.get("mode", "transformer")
    if mode != "transformer":
        what = "RNN-like" if mode == "rnn" else f"in mode {mode!r}"
        raise ValueError(
            f"the episode was recorded {what}; Transformer-like windows (and the paper's attention "
            f"display) replay only a Transformer-like episode (mode 'transformer')"
        )
    steps = sorted(int(s) for s in steps)
    n = int(rollout.sizes["step"])
    if steps and not 0 <= steps[0] <= steps[-1] < n:
        raise ValueError(f"steps {steps[0]}..{steps[-1]} are outside the episode's {n} steps")
    obs = rollout["observation"].values
    act = rollout["action"].values
    rewards = rollout["reward"].values
    policy = Policy(model, "transformer", state_mean, state_std, rtg_scale)
    policy.reset(float(rollout.attrs["target"]))
    out, want = [], set(steps)
    for t in range(steps[-1] + 1 if steps else 0):
        policy.states.append((obs[t] - policy.state_mean) / policy.state_std)
        policy.rtgs.append(policy.rtg)
        if t in want:
            out.append(policy.window())
        policy.actions.append(act[t])
        policy.observe(rewards[t])
    return out


def save_rollout(store, run_id: str, step: int, steps: list[StepRecord], cfg, attrs: dict) -> str:
    """Save an episode played outside training (the live page's) into the run whose checkpoint of
    `step` played it, as rollout/<rollout_name(step, mode, 0, 0)>-live<time>; returns the name.

    Only a run that no trainer writes is written: a "running" run, or one whose writer lock
    another process holds, is refused with a StoreError that says to save again once it has
    finished. The run's lock is held while the episode is written. `attrs` must give "mode"."""
    import datetime as _dt

    from dema_lab.store.errors import StoreError
    from dema_lab.store.schema import rollout_name
    from dema_lab.store.zarr_store import RunStore

    run = RunStore(store, mode="a").run(run_id)
    status = run.attrs.get("status")
    if status not in ("finished", "interrupted"):
        raise StoreError(
            f"run {run_id} is being trained (status {status}); its trainer is the only writer. "
            f"Save again once it has finished."
        )
    run.claim()  # RunBusyError (a StoreError) naming a live writer
    try:
        ds = steps_to_dataset(steps, cfg, attrs={**attrs, "checkpoint": int(step), "run_id": run_id, "source": "live"})
        stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        name = rollout_name(step, attrs["mode"], 0, 0, suffix=f"-live{stamp}")
        run.write("rollout", name, ds, encoding=rollout_encoding(ds))
    finally:
        run.release()
    return name
