"""Train DeMa or DT on an offline dataset; every run lands in the Zarr run store.

One dataclass config, one visible loop (in the spirit of CORL):

    sample K-step windows -> predict actions -> masked MSE -> AdamW (linear warm-up, clipping)
    every log_every steps:        publish the training metrics since the last flush
    every checkpoint_every steps: publish a checkpoint and the optimiser state (for --resume)
    every eval_every steps:       evaluate in the env (each target and inference mode),
                                  record episodes (frames, hidden attention) and decay statistics

`dema-lab train --help` lists every field of TrainConfig as a flag; `--config FILE` reads a
JSON or TOML file first. `--resume RUN_ID` continues a killed run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import platform
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dema_lab import __version__
from dema_lab.common.values import ConfigError, coerce, parse_fields
from dema_lab.evaluation.defaults import default_modes, default_targets
from dema_lab.models import ModelConfig, build_model, count_parameters, forward_macs, official_init, step_macs
from dema_lab.models.checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint
from dema_lab.store.errors import StoreError
from dema_lab.store.schema import checkpoint_name, rollout_name, step_of
from dema_lab.store.zarr_store import DEFAULT_STORE, Run, RunStore


@dataclass
class TrainConfig:
    """Everything one training run needs: data, model, optimisation, evaluation and logging.
    `dema-lab train` builds its flags from these fields (the comments are their help); a TOML or
    JSON file (--config) and the presets (PRESETS, --preset) set the same fields."""

    # data
    dataset: str = "hopper-medium"  # embedded name, D4RL .hdf5 path, or minari:<id>
    # model
    arch: str = "dema"  # dema | dt
    K: int = 20
    layout: str = "B3LD"  # B3LD | BL3D
    token_order: str = "RSA"  # RSA (DT's R_t, s_t, a_t) | RAS (official DeMa's R_t, a_{t-1}, s_t)
    embed_dim: int = 0  # 0: embeddings are d_model wide; N: N wide, projected to d_model
    embed_norm: str = "layernorm"  # layernorm | none (official DeMa)
    #: Atari CNN input: scale (x / 255, official) | center (minus the data's mean frame, over its
    #: pixel std; dema-lab's)
    frame_norm: str = "scale"
    window_padding: str = "none"  # Transformer-like inference: none | left (official: zeros to K steps)
    activation: str = "gelu"  # DT's MLP: gelu | relu (the DT and DeMa repositories)
    #: RSA inference windows: own (a_t in step t's slot) | previous (the DeMa repository's DT
    #: evaluation: a_{t-1})
    window_actions: str = "own"
    n_layer: int = 3
    d_model: int = 128
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    n_head: int = 1
    dropout: float = 0.1
    timestep_embedding: bool | None = None  # None: off for DeMa, on for DT
    max_ep_len: int = 1000
    # optimisation

    #: training tokens: current (R_t, as at evaluation) | previous (the official trainer's R_{t-1}
    #: with s_t, its `del_r`; RAS only)
    rtg_form: str = "current"
    decay_all: bool = False  # weight decay on every parameter (official) or on matrices only
    train_padding: str = "right"  # short training windows: right-padded, or left (the official trainer's)
    #: initial weights: torch (PyTorch's defaults) | official (mamba_ssm's _init_weights, as
    #: Mamba_mujoco: zero Linear biases but dt_proj's, embeddings N(0, 0.02), out_proj scaled
    #: by 1/sqrt(n_layer))
    init: str = "torch"
    steps: int = 10_000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 1_000
    lr_schedule: str = "constant"  # after the warm-up: constant | cosine (the official Atari trainer's)
    lr_decay_steps: int = 0  # cosine: the step where lr reaches its 10% floor; 0 = steps
    grad_clip: float = 0.25
    rtg_scale: float = 1000.0
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # evaluation and logging
    eval_every: int = 0  # 0: evaluate only at the end
    eval_episodes: int = 5
    eval_targets: list[float] | None = None  # None: the paper's targets for the env
    eval_modes: list[str] | None = None  # None: transformer and rnn (DeMa), transformer (DT)
    eval_max_steps: int = 1000
    record_episodes: int = 1  # recorded (frames + attention) episodes per (mode, target)
    render_size: int = 128  # frame size; 0 = no frames
    attention: str = "minmax"  # channel aggregation of the logged attention
    decay_windows: int = 64  # dataset windows for the decay statistics
    log_every: int = 100
    checkpoint_every: int = 1_000
    keep_resume_states: int = 3  # the newest N resume states are kept (--resume RUN --from-step S)
    # where
    store: str = DEFAULT_STORE  # the run store: a directory, or an fsspec URL (s3://bucket/path, memory://...)
    run_id: str = ""  # default: <arch>-<dataset>-K<K>-s<seed>-<time>
    sweep: str = ""  # the sweep this run belongs to, if any

    def __post_init__(self):
        try:
            coerce(self)  # every value by its declared type: "10" -> 10, "no" -> False
        except ConfigError as e:
            raise ConfigError(f"invalid training config: {e}") from None
        problems = []
        for name in (
            "steps",
            "batch_size",
            "K",
            "log_every",
            "checkpoint_every",
            "eval_episodes",
            "eval_max_steps",
            "max_ep_len",
            "keep_resume_states",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "warmup_steps", "record_episodes", "render_size", "decay_windows", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rtg_form not in ("current", "previous"):
            problems.append(f"rtg_form must be 'current' or 'previous', got {self.rtg_form!r}")
        elif self.rtg_form == "previous" and self.token_order not in ("RAS", "ARS"):
            problems.append(
                "rtg_form 'previous' is the official DeMa's training form and needs token_order RAS "
                "(or ARS, its Atari order)"
            )
        elif self.rtg_form == "previous" and self.K < 2:
            problems.append("rtg_form 'previous' trains on steps 1..K-1 of each window and needs K >= 2")
        if self.train_padding == "left" and self.token_order in ("RAS", "ARS") and self.rtg_form == "current":
            problems.append(
                "train_padding 'left' with token_order RAS is the official trainer's and needs its "
                "rtg_form 'previous' (with 'current', the first real step would see a pad action)"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.lr_decay_steps < 0:
            problems.append(f"lr_decay_steps must be >= 0, got {self.lr_decay_steps}")
        if self.init not in ("torch", "official"):
            problems.append(f"init must be 'torch' or 'official', got {self.init!r}")
        if self.train_padding not in ("right", "left"):
            problems.append(f"train_padding must be 'right' or 'left', got {self.train_padding!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            problems.append(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        for name in ("lr", "grad_clip", "rtg_scale"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_ep_len >= 1 and self.K > self.max_ep_len:
            problems.append(
                f"K={self.K} is longer than max_ep_len={self.max_ep_len}, the longest episode the "
                f"model handles; use K <= {self.max_ep_len} (or raise max_ep_len)"
            )
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))
        self.model_config(1, 1)  # the model's fields (arch, layout, sizes) fail here, before any work

    def model_config(self, state_dim: int, act_dim: int, obs_shape: tuple = (), n_actions: int = 0) -> ModelConfig:
        """The model for a dataset's states and actions (Atari: image obs_shape, n_actions discrete)."""
        return ModelConfig(
            arch=self.arch,
            state_dim=state_dim,
            act_dim=act_dim,
            K=self.K,
            d_model=self.d_model,
            obs_shape=tuple(obs_shape),
            n_actions=n_actions,
            n_layer=self.n_layer,
            layout=self.layout,
            timestep_embedding=self.timestep_embedding,
            max_ep_len=self.max_ep_len,
            d_state=self.d_state,
            d_conv=self.d_conv,
            expand=self.expand,
            n_head=self.n_head,
            dropout=self.dropout,
            token_order=self.token_order,
            embed_dim=self.embed_dim,
            embed_norm=self.embed_norm,
            frame_norm=self.frame_norm,
            window_padding=self.window_padding,
            activation=self.activation,
            window_actions=self.window_actions,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TrainConfig:
        """The config of a named preset (PRESETS, for `overrides`' arch) with `overrides` on top."""
        return cls.from_dict({**preset_fields(name, overrides.get("arch")), **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config of a dict of fields, each parsed by its declared type (dema_lab.common.values)."""
        return cls(**parse_fields(cls, d, "training config "))

    @classmethod
    def read_file(cls, path) -> dict:
        """The fields a JSON or TOML config file sets, parsed by their declared types as flags are
        (ConfigError naming the file and the field for an unknown key or a bad value)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} "
                + ("is a directory" if path.is_dir() else "does not exist")
                + "; give a JSON or TOML (.toml) file of TrainConfig fields"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read ({e})") from None
        try:
            if path.suffix == ".toml":
                import tomllib

                d = tomllib.loads(text)
            else:
                d = json.loads(text)
        except ValueError as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise ConfigError(
                f"config file {path} cannot be parsed ({e}); it must be JSON or TOML "
                f"(.toml) with TrainConfig's field names as keys"
            ) from None
        if not isinstance(d, dict):
            raise ConfigError(f"config file {path} must hold a table of TrainConfig fields, not {type(d).__name__}")
        try:
            d = parse_fields(cls, d, "training config ")
            cls(**d)
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        return d

    @classmethod
    def from_file(cls, path) -> TrainConfig:
        return cls.from_dict(cls.read_file(path))


# Named presets: `dema-lab train --preset NAME` (flags and --config still override them).
PRESETS = {
    # The official MuJoCo DeMa (github AndssY/dema, gym/experiment.py + Mamba_mujoco): tokens
    # (R, a, s), 128-wide embeddings projected to a 64-wide backbone without a LayerNorm, d_state 64,
    # mamba_ssm's initial weights, left-padded windows in training (with its pad values) and at
    # inference, the trainer's (R_{t-1}, a_{t-1}, s_t) tokens; AdamW with weight decay on every parameter, lr 1e-4,
    # wd 1e-4, 10k warm-up steps, clip 0.25, batch 64, K 20, 10 x 10k steps, evaluated after each 10k
    # (experiment.py: 100 episodes, Transformer-like) and reported as the best evaluation.
    "official": dict(
        arch="dema",
        K=20,
        layout="B3LD",
        token_order="RAS",
        embed_dim=128,
        d_model=64,
        n_layer=3,
        d_state=64,
        d_conv=4,
        expand=2,
        embed_norm="none",
        window_padding="left",
        timestep_embedding=False,
        rtg_form="previous",
        decay_all=True,
        train_padding="left",
        init="official",
        lr=1e-4,
        weight_decay=1e-4,
        warmup_steps=10_000,
        grad_clip=0.25,
        batch_size=64,
        steps=100_000,
        rtg_scale=1000.0,
        eval_every=10_000,
        eval_episodes=100,
        eval_modes=["transformer"],
        checkpoint_every=10_000,
    ),
    # The official Atari DeMa (github AndssY/dema, atari/configs/config.py MambaConfig + atari/run_atari.py):
    # tokens (a_{t-1}, R, s) trained as (a_{t-1}, R_{t-1}, s_t), the Nature CNN, tanh embeddings 128 wide
    # through backbone.embedding to d_model 128, 6 layers, d_state 128, expand 2, dropout 0.1, context 30,
    # mamba_ssm's initial weights; returns-to-go unscaled; lr 1e-4, wd 1e-4, clip 0.8, batch 8, 10 epochs
    # of 500k transitions (625k steps; its warm-up of 3000*32 tokens = 400 steps), then its cosine decay
    # whose final_tokens = 2 * 500k * 30 * 3 are 375k steps of 8 x 30 action tokens (lr_decay_steps
    # assumes 500k transitions, as the paper's data). Data: --dataset dqn-replay:/path/<Game>/1/replay_logs.
    "atari-official": dict(
        arch="dema",
        K=30,
        layout="B3LD",
        token_order="ARS",
        embed_dim=128,
        d_model=128,
        n_layer=6,
        d_state=128,
        d_conv=4,
        expand=2,
        dropout=0.1,
        embed_norm="none",
        window_padding="none",
        timestep_embedding=False,
        rtg_form="previous",
        train_padding="right",
        init="official",
        lr=1e-4,
        weight_decay=1e-4,
        warmup_steps=400,
        lr_schedule="cosine",
        lr_decay_steps=375_000,
        grad_clip=0.8,
        batch_size=8,
        steps=625_000,
        rtg_scale=1.0,
        eval_episodes=10,
        eval_every=62_500,
        checkpoint_every=62_500,
        eval_max_steps=27_000,
    ),
    # A small Atari DeMa for 2 CPU cores: the same tokens and CNN, 2 layers of width 64, K 8 (345k
    # parameters), frames centred on the data's mean frame (frame_norm "center", dema-lab's). 1500
    # steps (about 8 min of training on one core each, two runs at a time) scored 155.6 on
    # breakout-mixed and 39.7 on pong-mixed, gamer-normalized Transformer-like (10 episodes; random
    # 0); the DT 152.8 and 35.1 (benchmarks/RESULTS-atari.md).
    "atari-small": dict(
        arch="dema",
        K=8,
        layout="B3LD",
        token_order="ARS",
        embed_dim=0,
        d_model=64,
        n_layer=2,
        d_state=16,
        d_conv=4,
        expand=2,
        dropout=0.1,
        embed_norm="none",
        frame_norm="center",
        timestep_embedding=False,
        rtg_form="current",
        lr=1e-3,
        weight_decay=1e-4,
        warmup_steps=50,
        grad_clip=1.0,
        batch_size=16,
        steps=1_500,
        rtg_scale=1.0,
        eval_episodes=10,
        eval_max_steps=3_000,
        checkpoint_every=500,
        record_episodes=1,
        decay_windows=16,
    ),
}

# DT as its papers ran it (kzl/decision-transformer, gym and atari): tokens (R_t, s_t, a_t) with the
# current return-to-go, and a timestep embedding. The presets describe DeMa; a DT built from one (train
# --preset P --arch dt, or a sweep's DT points) takes these instead of DeMa's token conventions.
DT_PAPER = dict(token_order="RSA", rtg_form="current", timestep_embedding=True)


def preset_fields(name: str, arch: str | None = None) -> dict:
    """The TrainConfig fields of preset `name` for `arch` (default: the preset's own, DeMa); for DT
    with DT_PAPER's tokens on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    fields = {**PRESETS[name], **({"arch": arch} if arch else {})}
    return {**fields, **DT_PAPER} if fields.get("arch") == "dt" else fields


# What a run is: a resume cannot change these (it may change the rest, e.g. steps or evaluation).
RESUME_FIXED = (
    "dataset",
    "arch",
    "K",
    "layout",
    "token_order",
    "embed_dim",
    "embed_norm",
    "frame_norm",
    "window_padding",
    "activation",
    "window_actions",
    "n_layer",
    "d_model",
    "d_state",
    "d_conv",
    "expand",
    "n_head",
    "dropout",
    "timestep_embedding",
    "max_ep_len",
    "seed",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "lr_schedule",
    "lr_decay_steps",
    "grad_clip",
    "rtg_scale",
    "rtg_form",
    "decay_all",
    "train_padding",
)


def resumed_config(store, run_id: str, overrides: dict | None = None) -> TrainConfig:
    """The config a run was trained with, with `overrides` (more steps, other evaluation settings)."""
    saved = TrainConfig.from_dict(RunStore(store, mode="r").run(run_id).config)
    return dataclasses.replace(saved, store=str(store), **(overrides or {}))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def masked_mse(pred, target, mask):
    """Mean squared error over the real (unpadded) steps. pred, target (b, K, a); mask (b, K)."""
    err = ((pred - target) ** 2).sum(-1)  # (b, K)
    return (err * mask).sum() / (mask.sum().clamp_min(1) * target.shape[-1])


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """lr / cfg.lr at optimiser step `step` (0-based): a linear warm-up over warmup_steps, then
    constant, or the official Atari trainer's cosine (atari/mingpt/trainer_atari.py, in steps rather
    than tokens): max(0.1, (1 + cos(pi p)) / 2) with p going from 0 after the warm-up to 1 at
    lr_decay_steps. As there, p is not clipped: past lr_decay_steps the cosine rises again above
    its 10% floor (the official 10 epochs run to p of about 1.7)."""
    warmup = max(1, cfg.warmup_steps)
    if step + 1 < warmup or cfg.lr_schedule == "constant":
        return min(1.0, (step + 1) / warmup)
    end = cfg.lr_decay_steps or cfg.steps
    progress = (step + 1 - warmup) / max(1, end - warmup)
    return max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model, cfg: TrainConfig):
    """AdamW with linear warm-up. Weight decay on matrices only (no decay on biases, norms, A_log
    and D), or with decay_all on every parameter, as the official DeMa trainer does."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if not cfg.decay_all and (p.dim() < 2 or getattr(p, "_no_weight_decay", False)) else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg, step))
    return opt, sched


def training_form(batch: dict, rtg_form: str = "current") -> dict:
    """The model's inputs and targets for a batch of K-step windows.

    current:  step t is (R_t, s_t, a_t) or (R_t, a_{t-1}, s_t), as at evaluation; K predictions.
    previous: the official DeMa trainer's form (`del_r`): step t is (R_{t-1}, a_{t-1}, s_t) with
              step t-1's timestep, for t = 1..K-1 of the window; K-1 predictions of a_1..a_{K-1}.
    """
    if rtg_form == "current":
        return batch
    if rtg_form != "previous":
        raise ValueError(f"rtg_form must be 'current' or 'previous', got {rtg_form!r}")
    return {
        "states": batch["states"][:, 1:],
        "actions": batch["actions"][:, 1:],
        "returns_to_go": batch["returns_to_go"][:, :-1],
        "timesteps": batch["timesteps"][:, :-1],
        "mask": batch["mask"][:, 1:],
        "prev_action": batch["actions"][:, 0],
    }


def masked_cross_entropy(logits, target, mask):
    """Cross-entropy over the real (unpadded) steps, for discrete actions. logits (b, K, n_actions);
    target (b, K, 1) action indices; mask (b, K)."""
    nll = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), target[..., 0].round().long(), reduction="none"
    )  # (b, K)
    return (nll * mask).sum() / mask.sum().clamp_min(1)


def action_loss(model, pred, target, mask):
    """The training loss: masked MSE for continuous actions, masked cross-entropy for discrete ones."""
    return (masked_cross_entropy if model.cfg.discrete else masked_mse)(pred, target, mask)


def train_step(model, batch, opt, sched, grad_clip: float, rtg_form: str = "current") -> tuple[float, float]:
    """One optimisation step on a batch of windows; returns (loss, grad norm)."""
    model.train()
    batch = training_form(batch, rtg_form)
    pred = model(
        batch["states"],
        batch["actions"],
        batch["returns_to_go"],
        batch["timesteps"],
        prev_action=batch.get("prev_action"),
    )
    loss = action_loss(model, pred, batch["actions"], batch["mask"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    return loss.item(), float(gnorm)


def full_windows(sampler, n: int, seed: int = 0) -> dict:
    """n windows of exactly K real steps (no padding), the same ones for a given seed, so that
    statistics at different checkpoints are computed on the same data."""
    K = sampler.K
    starts = np.concatenate(
        [np.arange(s, e - K + 1) for s, e in zip(sampler.starts, sampler.ends) if e - s >= K] or [np.zeros(0, np.int64)]
    )
    if not len(starts):
        raise ValueError(f"no episode in the dataset is at least K={K} steps long; use a smaller K")
    pick = np.random.default_rng(seed).choice(starts, size=min(n, len(starts)), replace=False)
    return sampler.windows(np.sort(pick))


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _default_run_id(cfg: TrainConfig, dataset_name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = Path(dataset_name).stem if dataset_name.endswith((".hdf5", ".h5")) else dataset_name.replace(":", "-")
    return f"{cfg.arch}-{name}-K{cfg.K}-s{cfg.seed}-{stamp}"


def evaluate_checkpoint(
    run,
    model,
    step: int,
    cfg: TrainConfig,
    env: str,
    targets,
    modes,
    sampler,
    scorer,
    device=None,
    log=print,
    attrs: dict | None = None,
):
    """Evaluate a model as the run's checkpoint `step` and publish what the trainer publishes at each
    evaluation: eval/ (returns and normalized scores by mode, target, episode), rollout/ (the
    recorded episodes), decay/ (dema-lab's decay statistics on `sampler`'s dataset windows) and
    paper_attention/ (the paper's display, from a recorded Transformer-like episode of 20+ steps).
    Used by the trainer and by `dema-lab import`. Returns the eval Dataset."""
    from dema_lab.analysis import decay_statistics
    from dema_lab.evaluation.paper import publish_paper_attention
    from dema_lab.evaluation.rollout import evaluate, rollout_encoding

    name = checkpoint_name(step)
    start = time.perf_counter()
    results, recordings = evaluate(
        model,
        env,
        targets,
        cfg.eval_episodes,
        modes,
        cfg.rtg_scale,
        sampler.state_mean,
        sampler.state_std,
        seed=cfg.seed,
        record=cfg.record_episodes,
        render_size=cfg.render_size or None,
        attention=cfg.attention,
        max_steps=cfg.eval_max_steps,
        scorer=scorer,
    )
    for (mode, target_index, episode), ds in recordings.items():
        ds.attrs.update(checkpoint=step, run_id=run.run_id)
        run.write("rollout", rollout_name(step, mode, target_index, episode), ds, encoding=rollout_encoding(ds))
    results.attrs.update(seconds=round(time.perf_counter() - start, 2), **(attrs or {}))
    run.write("eval", name, results.expand_dims(checkpoint=[step]))
    if cfg.decay_windows:
        try:
            batch = full_windows(sampler, cfg.decay_windows, cfg.seed)
        except ValueError as e:  # no episode as long as K: no windows to measure on
            log(f"no decay statistics: {e}")
        else:
            batch = {k: v.to(device) if device is not None else v for k, v in batch.items()}
            run.write("decay", name, decay_statistics(model, batch, checkpoint=step))
    publish_paper_attention(
        run, step, model, sampler.state_mean, sampler.state_std, cfg.rtg_scale, if_short="skip", log=log
    )
    score = results["normalized_score"].mean("episode")
    summary = ", ".join(
        f"{m}@{t:g}: {float(score.sel(mode=m, target=t)):.1f}"
        for m in results.mode.values
        for t in results.target.values
    )
    log(f"{run.run_id} step {step}: normalized score {summary} ({time.perf_counter() - start:.0f} s)")
    return results


class Trainer:
    """Holds the pieces of one run; `run()` is the loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        resume: str | None = None,
        progress: bool = True,
        log=print,
        from_step: int | None = None,
    ):
        """A new run, or with `resume` the run of that id continued from its newest resume state (or
        from the one of step `from_step`). Either way this trainer is the run's one writer: it holds
        the run's lock (store.Run.claim) until run_loop ends."""
        self.run = None
        self.resumed_from: int | None = None  # the step of the state a resume restored
        try:
            self._setup(cfg, resume, progress, log, from_step)
        except BaseException:
            if self.run is not None:
                self.run.release()
            raise

    def _setup(self, cfg: TrainConfig, resume: str | None, progress: bool, log, from_step: int | None):
        from dema_lab.data import WindowSampler, load_dataset
        from dema_lab.data.windows import check_context_length
        from dema_lab.envs.spec import env_spec
        from dema_lab.ssm import backend_for

        self.log = log
        self.progress = progress
        if from_step is not None and not resume:
            raise ValueError("--from-step goes with --resume RUN: it picks which saved state to resume from")
        self.store = RunStore(cfg.store, mode="a")
        if resume:
            run = self.run = self.store.run(resume).claim()  # a second writer is refused here, by name
            saved = TrainConfig.from_dict(run.config)
            # a resume may extend a run (more steps, other evaluation settings) but not change what it is
            changed = [
                f"{k} ({getattr(saved, k)!r} -> {getattr(cfg, k)!r})"
                for k in RESUME_FIXED
                if getattr(cfg, k) != getattr(saved, k)
            ]
            if changed:
                raise ValueError(
                    f"--resume {resume}: cannot change {', '.join(changed)} of an existing run; "
                    f"train a new run for that"
                )
            cfg = dataclasses.replace(cfg, run_id=resume, sweep=saved.sweep)
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)

        self.dataset = load_dataset(cfg.dataset, progress=progress)
        if not self.dataset.env:
            raise ValueError(
                f"dataset {cfg.dataset!r} does not say which environment it comes from, so it "
                f"cannot be evaluated; give a D4RL file whose attrs name the env"
            )
        try:
            self.env = env_spec(self.dataset.env).name
        except ValueError as e:
            raise ValueError(
                f"dataset {cfg.dataset!r} was recorded in env {self.dataset.env!r}, which cannot be evaluated here: {e}"
            ) from None
        check_context_length(self.dataset, cfg.K)  # before any training, not at the first evaluation
        self.sampler = WindowSampler(
            self.dataset, cfg.K, rtg_scale=cfg.rtg_scale, seed=cfg.seed, padding=cfg.train_padding
        )
        self.model_cfg = cfg.model_config(
            self.dataset.obs_dim,
            self.dataset.act_dim,
            self.dataset.obs_shape if self.dataset.is_image else (),
            self.dataset.n_actions,
        )
        self.model = build_model(self.model_cfg)
        if cfg.init == "official" and not resume:
            official_init(self.model)
        if self.model_cfg.frame_norm == "center" and not resume:  # a resume loads them with the weights
            self.model.embed.embed_state.set_frame_stats(*self.dataset.frame_stats())
        self.model = self.model.to(self.device)
        self.opt, self.sched = make_optimizer(self.model, cfg)
        self.targets = cfg.eval_targets or default_targets(self.env, self.dataset)
        self.modes = cfg.eval_modes or default_modes(cfg.arch)
        self.step = 0
        self.metrics: dict[str, list] = {k: [] for k in ("step", "loss", "lr", "grad_norm", "steps_per_second")}
        self.wall = 0.0  # training seconds, summed over resumes
        self.tracker = None  # live tracker (export.LiveTensorBoard): update(run) after publishing

        if resume:
            self.run = run
            self._load_resume_state(from_step)
        else:
            run_id = cfg.run_id or _default_run_id(cfg, self.dataset.name)
            self.cfg = cfg = dataclasses.replace(cfg, run_id=run_id)
            provenance = {
                "dataset": self.dataset.name,
                "dataset_source": str(self.dataset.source or ""),
                "dataset_attrs": {
                    k: v for k, v in self.dataset.attrs.items() if isinstance(v, (str, int, float, bool))
                },
                "env": self.env,
                "episodes": len(self.dataset),
                "transitions": self.dataset.num_transitions,
                "code_version": __version__,
                "git_commit": _git_commit(),
                "device": str(self.device),
                "backend": backend_for(self.device) if self.model_cfg.arch == "dema" else "attention",
                "torch": torch.__version__,
                "host": socket.gethostname(),
                "python": platform.python_version(),
                "model_config": self.model_cfg.to_dict(),
                "timestep_embedding": self.model_cfg.timestep_embedding,
                "parameters": count_parameters(self.model),
                "forward_macs": forward_macs(self.model_cfg),
                "step_macs": {m: step_macs(self.model_cfg, m) for m in self.modes},
                "eval_targets": list(self.targets),
                "eval_modes": list(self.modes),
            }
            self.run = self.store.create_run(run_id, asdict(cfg), provenance, hold_lock=True)

    # ------------------------------------------------------------------ checkpoints
    def _extra(self):
        return {
            "state_mean": torch.as_tensor(self.sampler.state_mean),
            "state_std": torch.as_tensor(self.sampler.state_std),
        }

    def checkpoint(self):
        meta = {
            "step": self.step,
            "run_id": self.run.run_id,
            "env": self.env,
            "rtg_scale": self.cfg.rtg_scale,
            "dataset": self.dataset.name,
            "device": str(self.device),
        }
        name = checkpoint_name(self.step)
        self.run.write_bytes("checkpoint", name, checkpoint_bytes(self.model, meta, self._extra()), attrs=meta)
        buf = io.BytesIO()
        torch.save(
            {
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": self.step,
                "wall": self.wall,
            },
            buf,
        )
        # the newest keep_resume_states states are kept (--from-step); the older ones are dropped
        old = sorted(n for n in self.run.published("resume") if n != name)
        drop = old[: max(0, len(old) - (self.cfg.keep_resume_states - 1))]
        # the resume state completes the checkpoint; steps_done moves with it, in the same write
        self.run.write_bytes(
            "resume",
            name,
            buf.getvalue(),
            attrs={"step": self.step, "sampler_rng": self.sampler.rng.bit_generator.state},
            replace=tuple(drop),
            run_attrs={"steps_done": self.step, "wall_seconds": round(self.wall, 2)},
        )

    def resume_steps(self) -> list[int]:
        """Steps of the run's saved resume states, oldest first (what --from-step can take)."""
        return sorted(step_of(n) for n in self.run.published("resume"))

    def _load_resume_state(self, from_step: int | None = None):
        """Restore the newest saved state (or that of step `from_step`): weights, optimiser, RNGs.
        States, checkpoints and evaluations after it belong to the line of training this resume
        abandons; they are unpublished (their data stays until the new line rewrites it)."""
        steps = self.resume_steps()
        if not steps:
            raise StoreError(
                f"run {self.run.run_id} has no checkpoint to resume from (it was stopped before its "
                f"first one); delete it (dema-lab delete {self.run.run_id} --store {self.store.path}) "
                f"and train it again, or train under another run id"
            )
        if from_step is not None and from_step not in steps:
            raise StoreError(
                f"run {self.run.run_id} has no saved state of step {from_step} to resume from; it "
                f"keeps those of steps {', '.join(map(str, steps))} (the newest keep_resume_states "
                f"of its checkpoints): use --from-step with one of them"
            )
        name = checkpoint_name(steps[-1] if from_step is None else from_step)
        try:
            ck = load_checkpoint(
                self.run.read_bytes("checkpoint", name), map_location=self.device, expect=self.model_cfg
            )
            self.model.load_state_dict(ck.model.state_dict())
            state = torch.load(
                io.BytesIO(self.run.read_bytes("resume", name)), map_location=self.device, weights_only=True
            )
        except StoreError:
            raise  # a damaged blob: the message names it and the other states
        except CheckpointError as e:
            raise CheckpointError(f"run {self.run.run_id}, checkpoint {name}: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"run {self.run.run_id}: checkpoint {name} cannot be read ({e})") from None
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.wall = int(state["step"]), float(state["wall"])
        attrs = self.run.blob_attrs("resume", name)
        self.sampler.rng.bit_generator.state = attrs["sampler_rng"]
        # metrics logged after the checkpoint belong to steps that will be trained again
        later = [n for n in self.run.published("train") if int(n.split("_")[-2]) > self.step]
        self.run.unpublish("train", later)
        abandoned = [s for s in steps if s > self.step]
        if abandoned:  # --from-step: what came after it is trained again
            for kind in ("checkpoint", "resume", "eval", "decay", "paper_attention", "rollout"):
                gone = [n for n in self.run.published(kind) if step_of(n) > self.step]
                self.run.unpublish(kind, gone)
        self.resumed_from = self.step
        self.run.set_attrs(
            status="running", config=asdict(self.cfg), steps_done=self.step
        )  # what it now continues with
        self.log(
            f"resuming run {self.run.run_id} from step {self.step}"
            + (f" (the later states of steps {', '.join(map(str, abandoned))} are set aside)" if abandoned else "")
        )

    # ------------------------------------------------------------------ logging
    def flush_metrics(self):
        import xarray as xr

        if not self.metrics["step"]:
            return
        m = self.metrics
        ds = xr.Dataset(
            {k: ("step", np.asarray(v, np.float64)) for k, v in m.items() if k != "step"},
            coords={"step": np.asarray(m["step"], np.int64)},
        )
        ds["loss"].attrs = {"long_name": "masked action MSE", "units": "action units squared"}
        ds["lr"].attrs = {"long_name": "learning rate (AdamW, linear warm-up, then cfg.lr_schedule)"}
        ds["grad_norm"].attrs = {"long_name": "gradient norm before clipping", "clip": self.cfg.grad_clip}
        ds["steps_per_second"].attrs = {"long_name": "training throughput", "units": "steps/s"}
        ds.attrs = {"run_id": self.run.run_id, "batch_size": self.cfg.batch_size}
        self.run.write("train", f"steps_{m['step'][0]:08d}_{m['step'][-1]:08d}", ds)
        self.metrics = {k: [] for k in m}
        self._track()

    def evaluate(self):
        """Evaluate the current weights, record episodes, decay statistics and the paper's attention
        display, publish them."""
        results = evaluate_checkpoint(
            self.run,
            self.model,
            self.step,
            self.cfg,
            self.env,
            self.targets,
            self.modes,
            self.sampler,
            self.dataset.normalized_score,
            device=self.device,
            log=self.log,
        )
        self._track()
        return results

    def _track(self):
        """Send what is newly published to the live tracker, if any; a tracker failure never stops training."""
        if self.tracker is None:
            return
        try:
            self.tracker.update(self.run)
        except Exception as e:  # noqa: BLE001
            self.log(f"live tracker stopped: {type(e).__name__}: {e}")
            self.tracker = None

    # ------------------------------------------------------------------ the loop
    def run_loop(self):
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.step >= cfg.steps:
            self.log(f"run {self.run.run_id} has already trained {self.step} of {cfg.steps} steps")
        evaluated = set(step_of(n) for n in self.run.published("eval"))
        if self.step and self.step not in evaluated and (self._is_eval_step(self.step) or self.step >= cfg.steps):
            try:
                self.evaluate()  # killed between its checkpoint and its evaluation
            except BaseException:
                self.run.release()
                raise
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not self.progress,
            desc=self.run.run_id,
            unit="step",
            dynamic_ncols=True,
        )
        tick, tick_step = time.perf_counter(), self.step
        try:
            while self.step < cfg.steps:
                batch = {
                    k: v.to(self.device, non_blocking=True) for k, v in self.sampler.sample(cfg.batch_size).items()
                }
                t0 = time.perf_counter()
                loss, gnorm = train_step(self.model, batch, self.opt, self.sched, cfg.grad_clip, cfg.rtg_form)
                self.wall += time.perf_counter() - t0
                self.step += 1
                if not math.isfinite(loss):
                    raise FloatingPointError(self._diverged(loss))
                now = time.perf_counter()
                rate = (self.step - tick_step) / max(now - tick, 1e-9)
                for k, v in (
                    ("step", self.step),
                    ("loss", loss),
                    ("lr", self.sched.get_last_lr()[0]),
                    ("grad_norm", gnorm),
                    ("steps_per_second", rate),
                ):
                    self.metrics[k].append(v)
                tick, tick_step = now, self.step
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                last = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or last:
                    self.flush_metrics()
                if self.step % cfg.checkpoint_every == 0 or last or self._is_eval_step(self.step):
                    self.flush_metrics()
                    self.checkpoint()
                if self._is_eval_step(self.step) or last:
                    self.evaluate()
        except BaseException:
            bar.close()
            self.flush_metrics_safely()
            try:
                self.run.set_attrs(status="interrupted", steps_done=self.step)
            finally:
                self.run.release()  # no longer its writer: a resume may take it
            raise
        bar.close()
        try:
            self.run.set_attrs(status="finished", steps_done=self.step, wall_seconds=round(self.wall, 2))
        finally:
            self.run.release()
        return self.run

    def _diverged(self, loss) -> str:
        """The message for a non-finite loss: which state a resume restored, the earlier ones it can
        go back to (--from-step), and what needs a new run (a resume keeps lr and the batches)."""
        run_id, lr = self.run.run_id, self.cfg.lr
        new_run = (
            f"a resume keeps the run's lr ({lr:g}) and replays its batches, so for a lower one train a "
            f"new run (--lr {lr / 10:g}, or a longer --warmup_steps)"
        )
        if self.resumed_from is None:
            return f"loss became {loss} at step {self.step}: the run diverged; {new_run}"
        others = [s for s in self.resume_steps() if s != self.resumed_from][::-1]
        back = (
            f"resume from another saved state: dema-lab train --resume {run_id} --from-step S "
            f"(S: {', '.join(map(str, others))}); if it diverges again, "
            if others
            else "no other state is kept to resume from; "
        )
        return (
            f"loss became {loss} at step {self.step}, {self.step - self.resumed_from} steps after resuming "
            f"run {run_id} from its checkpoint of step {self.resumed_from} "
            f"({checkpoint_name(self.resumed_from)}); {back}{new_run}"
        )

    def flush_metrics_safely(self):
        try:
            # metrics past the last checkpoint are dropped on resume anyway; keep them for inspection
            self.flush_metrics()
        except Exception:  # noqa: BLE001 - never mask the original error
            pass

    def _is_eval_step(self, step: int) -> bool:
        return bool(self.cfg.eval_every) and step % self.cfg.eval_every == 0


def train(
    cfg: TrainConfig,
    resume: str | None = None,
    progress: bool = True,
    log=print,
    tracker=None,
    from_step: int | None = None,
) -> Run:
    """Train (or resume) a run; returns it once finished. `tracker` (export.LiveTensorBoard) gets
    every publication live. `from_step` (with `resume`): resume from that saved state, not the newest."""
    trainer = Trainer(cfg, resume=resume, progress=progress, log=log, from_step=from_step)
    trainer.tracker = tracker
    try:
        return trainer.run_loop()
    finally:
        if tracker is not None:
            tracker.close()


def ensure_trained(cfg: TrainConfig, progress: bool = True, log=print) -> tuple[Run, str]:
    """Make sure the run `cfg.run_id` is finished: skip it if it is, resume it from its last
    checkpoint if it was interrupted, start it otherwise. Returns (run, "skipped" | "resumed" |
    "trained"). A run killed before its first checkpoint holds nothing to keep and restarts."""
    if not cfg.run_id:
        raise ValueError("ensure_trained needs a fixed run_id, so that a rerun finds the run again")
    store = RunStore(cfg.store, mode="a")
    if cfg.run_id in store.run_ids():
        run = store.run(cfg.run_id)
        if run.attrs.get("status") == "finished" and run.attrs.get("steps_done", 0) >= cfg.steps:
            return run, "skipped"
        if run.published("resume"):
            return train(cfg, resume=cfg.run_id, progress=progress, log=log), "resumed"
        store.delete_run(cfg.run_id)  # not while another process still writes it (RunBusyError)
    return train(cfg, progress=progress, log=log), "trained"
