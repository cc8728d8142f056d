"""What the dashboards read: runs of a store, their recorded episodes and checkpoints, cached.

Everything here is plain Python/numpy (no Panel), so it can be tested and reused in notebooks:

    StoreIndex(path)             the runs of a store; one unreadable run never hides the others
    StoreIndex.info(run_id)      RunInfo: config, provenance, checkpoints, recorded episodes
    StoreIndex.episode(...)      EpisodeData: one recorded episode in memory (numpy arrays)
    StoreIndex.checkpoint(...)   the model of a checkpoint, loaded once on the CPU
    StoreIndex.paper_attention   the paper's attention display of a checkpoint, if published
    StoreIndex.log(run_id, kind) a run's evaluations, decay statistics or training log, read once
                                 per version for every session of the process
    AttentionReplayer            the attention of a recorded step under another channel
                                 aggregation (or one channel), replayed incrementally
    lag_profile_of(att, query)   one token's row of a right-aligned attention, by lag
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from dema_lab.analysis.runs import family_label
from dema_lab.store.errors import EmptyStoreError, StoreError
from dema_lab.store.schema import parse_rollout_name
from dema_lab.store.zarr_store import RunStore


def friendly_error(e: BaseException) -> str:
    """One line for a message box (never a traceback)."""
    text = str(e).strip() or type(e).__name__
    return text if isinstance(e, (StoreError, ValueError)) else f"{type(e).__name__}: {text}"


def lag_profile_of(att: np.ndarray, query: int) -> np.ndarray:
    """Row `query` of a right-aligned (L, L) attention by lag: entry l is att[query, query - l]."""
    row = att[query, : query + 1][::-1]
    return np.asarray(row, dtype=np.float64)


@dataclass(frozen=True)
class EpisodeRef:
    """A recorded episode of a run, parsed from its rollout name."""

    name: str
    checkpoint: int
    mode: str
    target_index: int
    episode: int

    @classmethod
    def parse(cls, name: str) -> EpisodeRef:
        r = parse_rollout_name(name)
        return cls(name, r.step, r.mode, r.target_index, r.episode)


@dataclass
class RunInfo:
    """What the dashboards show of a run without opening its data: config, provenance, status,
    progress, checkpoints and recorded episodes."""

    run_id: str
    config: dict
    provenance: dict
    status: str
    steps_done: int
    wall_seconds: float
    checkpoints: list[int]
    episodes: list[EpisodeRef]

    @property
    def label(self) -> str:
        c = self.config
        te = self.provenance.get("timestep_embedding", c.get("timestep_embedding"))
        return f"{family_label(c.get('arch', '?'), c.get('layout', ''), te)} K={c.get('K', '?')} ({self.status})"

    def episode_checkpoints(self) -> list[int]:
        return sorted({e.checkpoint for e in self.episodes})


@dataclass
class EpisodeData:
    """One recorded episode, in memory. attention is (step, layer, L, L), NaN padded."""

    run_id: str
    name: str
    attrs: dict
    frames: np.ndarray | None
    reward: np.ndarray
    return_to_go: np.ndarray
    action: np.ndarray
    attention: np.ndarray | None
    by_lag: np.ndarray | None
    query_label: list[str]
    key_label: list[str]
    query_kind: list[str]
    tokens_per_step: int
    dataset: object = field(repr=False, default=None)  # the lazily opened xarray Dataset

    @property
    def n_steps(self) -> int:
        return int(len(self.reward))

    @property
    def n_layers(self) -> int:
        return 0 if self.attention is None else int(self.attention.shape[1])


class StoreIndex:
    """The runs of one store, read on demand and cached (thread-safe: sessions share it)."""

    def __init__(self, path, max_episodes: int = 4, max_models: int = 4):
        self.path = str(path)
        self._lock = threading.RLock()
        self._episodes: OrderedDict = OrderedDict()
        self._models: OrderedDict = OrderedDict()
        self._paper: OrderedDict = OrderedDict()  # (run_id, checkpoint) -> paper's display
        self._max_episodes, self._max_models = max_episodes, max_models
        self.errors: dict[str, str] = {}
        self.unreadable: dict[str, str] = {}

    # ------------------------------------------------------------------ the store
    def open(self) -> RunStore:
        """The store (raises EmptyStoreError for an empty or missing store, StoreError otherwise)."""
        return RunStore(self.path, mode="r")

    def is_empty(self) -> bool:
        try:
            return not self.open().run_ids()
        except EmptyStoreError:
            return True

    def run_ids(self) -> list[str]:
        """Readable runs; `self.unreadable` holds {run_id: reason} for the runs that are not."""
        try:
            store = self.open()
            ids = store.run_ids()
        except EmptyStoreError:
            self.unreadable = {}
            return []
        self.unreadable = dict(getattr(store, "unreadable", {}))
        return ids

    def info(self, run_id: str) -> RunInfo:
        """What a run holds; raises StoreError (with the reason) when it cannot be read."""
        try:
            run = self.open().run(run_id)
            attrs = run.attrs
            episodes = [EpisodeRef.parse(n) for n in run.rollouts()]
            info = RunInfo(
                run_id,
                dict(attrs.get("config", {})),
                dict(attrs.get("provenance", {})),
                str(attrs.get("status", "")),
                int(attrs.get("steps_done", 0) or 0),
                float(attrs.get("wall_seconds", 0.0) or 0.0),
                run.checkpoints(),
                episodes,
            )
        except StoreError as e:
            self.errors[run_id] = str(e)
            raise
        except Exception as e:  # noqa: BLE001 - a broken run must not break the page
            self.errors[run_id] = friendly_error(e)
            raise StoreError(f"run {run_id} cannot be read: {friendly_error(e)}") from None
        self.errors.pop(run_id, None)
        return info

    def infos(self) -> tuple[list[RunInfo], dict[str, str]]:
        """Every readable run, and {run_id: message} for the others."""
        good, bad = [], {}
        ids = self.run_ids()
        bad.update({r: f"run {r} cannot be read: {m}" for r, m in self.unreadable.items()})
        for run_id in ids:
            try:
                good.append(self.info(run_id))
            except StoreError as e:
                bad[run_id] = str(e)
        return good, bad

    def run(self, run_id: str):
        return self.open().run(run_id)

    # ------------------------------------------------------------------ a run's logs
    LOGS = {"eval": "evals", "decay": "decay", "train": "train_metrics"}
    MAX_LOGS = 96
    _logs: OrderedDict = OrderedDict()  # shared by every index of this process: a page reloaded reads none again
    _logs_lock = threading.Lock()

    def log(self, run_id: str, kind: str):
        """A run's evaluations ("eval"), decay statistics ("decay") or training metrics ("train"),
        as RunStore's evals() / decay() / train_metrics() read them, cached for every session of the
        process (a long run's training log is dozens of groups: reading them was 3 s of the 7.6 s
        of CPU a comparison page of the demo store took). A cached one is used while the run's
        published groups of that kind, their slots and its progress (steps done, wall time,
        status) are unchanged; a new evaluation, segment, rewrite or resume changes them."""
        run = self.run(run_id)
        attrs = run.attrs
        slots = attrs.get("slots", {})
        key = (
            self.path,
            run_id,
            kind,
            tuple(attrs.get("published", {}).get(kind, [])),
            tuple(sorted((k, v) for k, v in slots.items() if k.startswith(f"{kind}/"))),
            attrs.get("steps_done"),
            attrs.get("wall_seconds"),
            attrs.get("status"),
        )
        with self._logs_lock:
            if key in self._logs:
                self._logs.move_to_end(key)
                return self._logs[key]
        ds = getattr(run, self.LOGS[kind])()
        with self._logs_lock:
            self._logs[key] = ds
            while len(self._logs) > self.MAX_LOGS:
                self._logs.popitem(last=False)
        return ds

    # ------------------------------------------------------------------ episodes
    def episode(self, run_id: str, name: str) -> EpisodeData:
        key = (run_id, name)
        with self._lock:
            if key in self._episodes:
                self._episodes.move_to_end(key)
                return self._episodes[key]
        try:
            ds = self.run(run_id).open("rollout", name)
            data = _load_episode(run_id, name, ds)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001
            raise StoreError(f"episode {name} of run {run_id} cannot be read: {friendly_error(e)}") from None
        with self._lock:
            self._episodes[key] = data
            while len(self._episodes) > self._max_episodes:
                self._episodes.popitem(last=False)
        return data

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, run_id: str, step: int):
        """The checkpoint's Checkpoint (model on the CPU, extras, meta), loaded once."""
        from dema_lab.models import load_checkpoint

        key = (run_id, int(step))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        try:
            ck = load_checkpoint(self.run(run_id).checkpoint_bytes(int(step)), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise StoreError(f"checkpoint {step} of run {run_id} cannot be loaded: {friendly_error(e)}") from None
        ck.model.eval()
        with self._lock:
            self._models[key] = ck
            while len(self._models) > self._max_models:
                self._models.popitem(last=False)
        return ck

    # ------------------------------------------------------------------ the paper's display
    def paper_attention(self, run_id: str, step: int):
        """The paper's attention display of a checkpoint (analysis.paper_attention) as a loaded
        Dataset without the checkpoint dim, or None when the run has none for it (a checkpoint
        whose episodes were too short, or a store written before it existed: see
        analysis.publish_paper_attention). Cached once found."""
        from dema_lab.store.schema import checkpoint_name

        key = (run_id, int(step))
        with self._lock:
            cache = self._paper
            if key in cache:
                return cache[key]
        run = self.run(run_id)
        name = checkpoint_name(int(step))
        if name not in run.published("paper_attention"):
            return None
        try:
            ds = run.open("paper_attention", name).load()
        except Exception as e:  # noqa: BLE001
            raise StoreError(
                f"the paper's attention display of checkpoint {step} of run {run_id} cannot be "
                f"read: {friendly_error(e)}"
            ) from None
        ds = ds.isel(checkpoint=0, drop=True) if "checkpoint" in ds.dims else ds
        with self._lock:
            cache[key] = ds
            while len(cache) > self._max_episodes:
                cache.popitem(last=False)
        return ds


def _load_episode(run_id: str, name: str, ds) -> EpisodeData:
    has_att = "attention" in ds
    q_label = [str(x) for x in ds["query_label"].values] if "query_label" in ds.coords else []
    k_label = [str(x) for x in ds["key_label"].values] if "key_label" in ds.coords else []
    q_kind = [str(x) for x in ds["query_kind"].values] if "query_kind" in ds.coords else []
    tps = 3 if q_kind and q_kind[0] in ("R", "s", "a") else 1
    return EpisodeData(
        run_id=run_id,
        name=name,
        attrs=dict(ds.attrs),
        frames=np.ascontiguousarray(ds["frames"].values) if "frames" in ds else None,
        reward=ds["reward"].values.astype(np.float64),
        return_to_go=ds["return_to_go"].values.astype(np.float64),
        action=ds["action"].values,
        attention=ds["attention"].values if has_att else None,
        by_lag=ds["attention_by_lag"].values if has_att else None,
        query_label=q_label,
        key_label=k_label,
        query_kind=q_kind,
        tokens_per_step=tps,
        dataset=ds,
    )


class AttentionReplayer:
    """Attention of a recorded episode under another channel aggregation, from its checkpoint.

    Transformer-like episodes need only the window (cheap, see rollout.replay_attention).
    RNN-like ones carry state through the episode, so the replayer keeps a policy at the last
    step asked for and snapshots every `snapshot_every` steps: scrubbing forward costs one model
    step per env step, scrubbing back restarts from the nearest snapshot.
    """

    def __init__(self, checkpoint, episode: EpisodeData, snapshot_every: int = 50):
        self.ck = checkpoint
        self.episode = episode
        self.mode = episode.attrs.get("mode", "transformer")
        self.snapshot_every = snapshot_every
        self._policy = None
        self._t = -1
        self._snapshots: dict[int, object] = {}
        self._lock = threading.Lock()
        self._obs = episode.dataset["observation"].values
        self._act = episode.action

    def _new_policy(self):
        from dema_lab.models import Policy

        ck = self.ck
        policy = Policy(
            ck.model,
            self.mode,
            ck.extra["state_mean"].numpy(),
            ck.extra["state_std"].numpy(),
            float(ck.meta.get("rtg_scale", 1000.0)),
            attention="abs",
        )
        policy.reset(float(self.episode.attrs["target"]))
        return policy

    def _copy(self, policy):
        return copy.deepcopy(policy, memo={id(policy.model): policy.model})

    def channels(self, step: int) -> list[np.ndarray]:
        """Per layer: (channels, n, n) attention at `step` (n tokens of its window), replayed by
        Policy.replay_to; this class only keeps the RNN-like policy and its snapshots."""
        import torch

        step = int(step)
        record = (self._obs, self._act, self.episode.reward)
        with self._lock, torch.no_grad():
            if self.mode == "transformer":
                policy = self._new_policy()
                policy.replay_to(*record, step)
                return policy.channel_attention()
            if self._policy is None or self._t > step:  # RNN-like: from the nearest snapshot
                start = max([s for s in self._snapshots if s <= step], default=None)
                if start is None:
                    self._policy, self._t = self._new_policy(), -1
                else:
                    self._policy, self._t = self._copy(self._snapshots[start]), start
            policy = self._policy
            for t in range(self._t + 1, step + 1):
                policy.replay_to(*record, t)
                self._t = t
                if t % self.snapshot_every == 0 and t not in self._snapshots:
                    self._snapshots[t] = self._copy(policy)
            return policy.channel_attention()

    def attention(self, step: int, method: str, channel: int | None = None) -> np.ndarray:
        """(n_layer, n, n): aggregated with `method` ("minmax", "abs", "mean"), or, with
        method "channel", the signed attention of one channel."""
        import torch

        from dema_lab.ssm import aggregate_channels

        per_layer = self.channels(step)
        if method == "channel":
            c = int(channel or 0)
            return np.stack([a[min(c, a.shape[0] - 1)] for a in per_layer])
        return np.stack([aggregate_channels(torch.from_numpy(a)[None], method)[0].numpy() for a in per_layer])
