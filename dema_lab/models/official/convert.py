"""Checkpoints trained with the official DeMa code (github AndssY/dema), as dema-lab checkpoints.

    import_official("model_iter9.pkl", dataset="hopper-medium") -> Checkpoint

What the official `gym/experiment.py` saves is a torch pickle
`{'model': state_dict, 'optimizer': <AdamW object>, 'optimizer_state_dict': ...}`; the repository's
Decision Transformer is saved the same way (its loader reads 'model_state_dict', also accepted), and
a bare state_dict is accepted too. Two models are recognised, from the tensors' names and shapes:

    Mamba_mujoco (gym/decision_transformer/models/ssm.py)     -> arch "dema", token_order "RAS",
        embed_norm "none", window_padding "left", embed_dim = ret_emb's width; layout from
        backbone.embedding's input width (embed_dim: B3LD, 3 * embed_dim: BL3D)
    DecisionTransformer (gym/decision_transformer/models/decision_transformer.py, GPT-2 blocks of
        trajectory_gpt2.py)                                    -> arch "dt", activation "relu",
        Conv1D weights (in, out) transposed to nn.Linear's (out, in)

Safety: the pickle is read by `RestrictedUnpickler`, which rebuilds tensors, storages and plain
containers, stands an inert stub in for every class under `torch.optim` (the pickled AdamW), and
refuses every other global before anything is called, so a file whose `__reduce__` would run a
command fails with `UnsafeCheckpointError` and runs nothing.

What the weights cannot say: K (the context length; official default 20) and DT's n_head (official
default 1) are keywords; the state normalisation comes from the dataset (mean, std + 1e-6, over all
observations, as the official code computes it) or from the values given.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from dema_lab.models.build import build_model
from dema_lab.models.checkpoint import Checkpoint, CheckpointError, load_weights
from dema_lab.models.config import ModelConfig
from dema_lab.models.cost import memory_problem
from dema_lab.models.official.unpickler import OfficialCheckpointError, read_official

OFFICIAL_K = 20  # gym/experiment.py --K
OFFICIAL_N_HEAD = 1  # gym/experiment.py --n_head
OFFICIAL_MAX_EP_LEN = 1000
OFFICIAL_ATARI_K = 30  # atari/run_atari.py --context_length

__all__ = [
    "official_state_dict",
    "infer_official",
    "official_checkpoint",
]


# ------------------------------------------------------------------------------------------------
# Architecture inference and key mapping
# ------------------------------------------------------------------------------------------------

DROPPED_DEMA = ("predict_state.", "predict_return.")
DROPPED_DT = ("predict_state.", "predict_return.", "transformer.wte.")
DROPPED_DT_SUFFIX = (".attn.bias", ".attn.masked_bias")


def official_state_dict(obj, source: str = "the checkpoint") -> tuple[dict, dict]:
    """(state_dict of tensors, info) from what an official file holds: {'model': sd, ...},
    {'model_state_dict': sd, ...} or a bare state_dict. info: optimizer_steps (from the pickled
    optimizer state, when there), container ("model", "model_state_dict" or "state_dict")."""
    info: dict = {}
    if not isinstance(obj, dict):
        raise OfficialCheckpointError(
            f"{source} holds a {type(obj).__name__}, not a dict: expected "
            f"{{'model': state_dict, 'optimizer': ..., ...}} or a state_dict"
        )
    for key in ("model", "model_state_dict", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            sd, info["container"] = obj[key], key
            break
    else:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            sd, info["container"] = obj, "state_dict"
        else:
            kinds = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:8])
            raise OfficialCheckpointError(
                f"{source} holds no model weights: expected a dict with 'model' (or 'model_state_dict') "
                f"holding a state_dict, or a state_dict; found {{{kinds}}}"
            )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise OfficialCheckpointError(f"{source}: its state_dict has non-tensor entries {bad[:5]}")
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v.detach().clone() for k, v in sd.items()}
    steps = _optimizer_steps(obj.get("optimizer_state_dict")) or _optimizer_steps(
        getattr(obj.get("optimizer"), "state", None)
    )
    if steps:
        info["optimizer_steps"] = steps
    return sd, info


def _optimizer_steps(state) -> int | None:
    """AdamW's step count from an optimizer state dict ({'state': {i: {'step': ...}}})."""
    try:
        per_param = state["state"]
        steps = [s["step"] for s in per_param.values() if isinstance(s, dict) and "step" in s]
        return int(max(float(s) for s in steps)) if steps else None
    except (TypeError, KeyError, AttributeError, ValueError):
        return None


def describe_layout(sd: dict, limit: int = 40) -> str:
    """The state dict in brief: key patterns (layer indices as {i}, with how many) and shapes."""
    groups: dict[str, list] = {}
    for k, v in sd.items():
        pattern = re.sub(r"\.\d+\.", ".{i}.", k)
        groups.setdefault(pattern, []).append(tuple(v.shape))
    parts = [f"{p} {shapes[0]}" + (f" x{len(shapes)}" if len(shapes) > 1 else "") for p, shapes in groups.items()]
    more = f", ... ({len(parts) - limit} more)" if len(parts) > limit else ""
    return f"{len(sd)} tensors: " + ", ".join(parts[:limit]) + more


def _shape(sd, key):
    return tuple(sd[key].shape) if key in sd else None


def _layer_count(sd, prefix) -> int:
    idx = {int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    if idx and idx != set(range(max(idx) + 1)):
        raise OfficialCheckpointError(f"layers {sorted(idx)} under {prefix} are not numbered 0..n-1")
    return len(idx)


def infer_official(
    sd: dict, *, K: int | None = None, n_head: int = OFFICIAL_N_HEAD, source: str = "the checkpoint"
) -> tuple[ModelConfig, str]:
    """(ModelConfig, official class name) from an official state dict's names and shapes. K: the
    context length (default: the official 20 for MuJoCo, 30 for Atari).
    Raises OfficialCheckpointError listing what was found for a layout it does not recognise."""
    keys = set(sd)

    def fail(why: str):
        raise OfficialCheckpointError(f"{source}: {why}. Found {describe_layout(sd)}")

    if any(k.startswith("state_encoder.0.") for k in keys) or "head.weight" in keys:
        return _infer_atari_dema(sd, OFFICIAL_ATARI_K if K is None else K, fail), "DMamba"
    K = OFFICIAL_K if K is None else K
    if any(k.startswith("backbone.layers.") for k in keys) and "ret_emb.weight" in keys:
        return _infer_dema(sd, K, fail), "Mamba_mujoco"
    if any(k.startswith("transformer.h.") for k in keys) and "embed_return.weight" in keys:
        return _infer_dt(sd, K, n_head, fail), "DecisionTransformer"
    fail(
        "not a layout of the official DeMa code: expected Mamba_mujoco's (ret_emb, state_encoder, "
        "action_embeddings, backbone.embedding, backbone.layers.{i}.mixer.*, predict_action.0) or the "
        "DecisionTransformer's (embed_return, embed_state, embed_action, transformer.h.{i}.*, predict_action.0)"
    )


def _need(sd, fail, *keys):
    missing = [k for k in keys if k not in sd]
    if missing:
        fail(f"missing {', '.join(missing)}")


def _infer_dema(sd, K, fail) -> ModelConfig:
    _need(
        sd,
        fail,
        "ret_emb.weight",
        "state_encoder.weight",
        "action_embeddings.weight",
        "backbone.embedding.weight",
        "backbone.norm_f.weight",
        "predict_action.0.weight",
    )
    E = sd["ret_emb.weight"].shape[0]  # ret_emb: Linear(1, E)
    state_dim = sd["state_encoder.weight"].shape[1]
    act_dim = sd["action_embeddings.weight"].shape[1]
    has_time = "embed_timestep.weight" in sd
    return _official_dema(
        sd,
        E,
        fail,
        state_dim=state_dim,
        act_dim=act_dim,
        K=K,
        token_order="RAS",
        window_padding="left",
        timestep_embedding=has_time,
        max_ep_len=sd["embed_timestep.weight"].shape[0] if has_time else OFFICIAL_MAX_EP_LEN,
    )


def _infer_atari_dema(sd, K, fail) -> ModelConfig:
    """atari/models/mamba.py DMamba (inner_type 'conv', reward_type 'normal'): the Nature CNN
    `state_encoder` (Sequential indices 0, 2, 4 conv, 7 Linear to n_embed, Tanh), `ret_emb.0` Linear(1, E)
    + Tanh, `action_embeddings.0` Embedding + Tanh, the MixerModel backbone, `head` Linear(D, n_actions)
    without bias; tokens (a_{t-1}, R_t, s_t)."""
    _need(
        sd,
        fail,
        "ret_emb.0.weight",
        "state_encoder.0.weight",
        "state_encoder.2.weight",
        "state_encoder.4.weight",
        "state_encoder.7.weight",
        "action_embeddings.0.weight",
        "backbone.embedding.weight",
        "backbone.norm_f.weight",
        "head.weight",
    )
    E = sd["ret_emb.0.weight"].shape[0]
    n_actions, E_a = sd["action_embeddings.0.weight"].shape
    channels = sd["state_encoder.0.weight"].shape[1]
    if sd["state_encoder.7.weight"].shape != (E, 3136) or E_a != E:
        fail(
            f"state_encoder.7 is {_shape(sd, 'state_encoder.7.weight')} and action_embeddings.0 "
            f"{(n_actions, E_a)}: expected the Nature CNN on 84x84 frames ({E}, 3136) and ({n_actions}, {E})"
        )
    D = sd["backbone.embedding.weight"].shape[0]
    if sd["head.weight"].shape != (n_actions, D) or "head.bias" in sd:
        fail(
            f"head is {_shape(sd, 'head.weight')}{' with a bias' if 'head.bias' in sd else ''}: expected "
            f"Linear({D}, {n_actions}, bias=False)"
        )
    return _official_dema(
        sd,
        E,
        fail,
        state_dim=channels * 84 * 84,
        act_dim=1,
        obs_shape=(channels, 84, 84),
        n_actions=n_actions,
        K=K,
        token_order="ARS",
        window_padding="none",
        timestep_embedding=False,
    )


def _official_dema(sd, E, fail, **fields) -> ModelConfig:
    """The ModelConfig of an official DeMa (MuJoCo or Atari) whose embeddings are E wide: the
    backbone's width and layout from `backbone.embedding` (Linear(E, D) for B3LD, Linear(3E, D) for
    BL3D), its Mamba sizes from the layers, no embedding norm, no dropout at inference; `fields`
    give the rest (dims, K, token order, padding, timestep embedding)."""
    D, width_in = sd["backbone.embedding.weight"].shape
    if width_in == E:
        layout = "B3LD"
    elif width_in == 3 * E:
        layout = "BL3D"
    else:
        fail(f"backbone.embedding takes {width_in} inputs, neither the embedding width {E} (B3LD) nor 3 x {E} (BL3D)")
    n_layer, d_state, d_conv, expand = _mamba_dims(sd, D, fail)
    try:
        return ModelConfig(
            arch="dema",
            d_model=D,
            n_layer=n_layer,
            layout=layout,
            embed_dim=E,
            embed_norm="none",
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            dropout=0.0,
            **fields,
        )
    except (TypeError, ValueError) as e:
        fail(f"the inferred config is not valid ({e})")


def _mamba_dims(sd, D, fail) -> tuple[int, int, int, int]:
    """(n_layer, d_state, d_conv, expand) of a MixerModel backbone of width D, checked against
    dema-lab's Mamba (RMSNorm, no in/out_proj biases, dt_rank ceil(D / 16))."""
    n_layer = _layer_count(sd, "backbone.layers.")
    if n_layer == 0:
        fail("backbone.layers holds no layer")
    if any(k.endswith(("norm.bias", "norm_f.bias")) for k in sd):
        fail(
            "the blocks' norms have a bias (LayerNorm, rms_norm=False); dema-lab's DeMa uses RMSNorm as "
            "the official default (rms_norm=True)"
        )
    if any(k.endswith(("in_proj.bias", "out_proj.bias")) for k in sd):
        fail("the mixers have in_proj/out_proj biases (bias=True); dema-lab's Mamba has none, as the default")
    p = "backbone.layers.0.mixer."
    _need(
        sd,
        fail,
        *(
            p + n
            for n in (
                "in_proj.weight",
                "conv1d.weight",
                "conv1d.bias",
                "x_proj.weight",
                "dt_proj.weight",
                "dt_proj.bias",
                "A_log",
                "D",
                "out_proj.weight",
            )
        ),
    )
    d_inner2, d_model_in = sd[p + "in_proj.weight"].shape
    d_inner = d_inner2 // 2
    d_state = sd[p + "A_log"].shape[1]
    d_conv = sd[p + "conv1d.weight"].shape[-1]
    dt_rank = sd[p + "dt_proj.weight"].shape[1]
    if d_model_in != D or d_inner % D:
        fail(f"in_proj is {tuple(sd[p + 'in_proj.weight'].shape)}: expected (2 * expand * {D}, {D})")
    expand = d_inner // D
    if dt_rank != math.ceil(D / 16):
        fail(
            f"dt_rank is {dt_rank}, but dema-lab's Mamba uses dt_rank = ceil(d_model / 16) = "
            f"{math.ceil(D / 16)} (mamba_ssm's 'auto'); a checkpoint with another dt_rank cannot be mapped"
        )
    if sd[p + "x_proj.weight"].shape != (dt_rank + 2 * d_state, d_inner):
        fail(f"x_proj is {tuple(sd[p + 'x_proj.weight'].shape)}, expected ({dt_rank + 2 * d_state}, {d_inner})")
    return n_layer, d_state, d_conv, expand


def _infer_dt(sd, K, n_head, fail) -> ModelConfig:
    _need(
        sd,
        fail,
        "embed_return.weight",
        "embed_state.weight",
        "embed_action.weight",
        "embed_ln.weight",
        "transformer.ln_f.weight",
        "predict_action.0.weight",
    )
    H = sd["embed_return.weight"].shape[0]
    state_dim = sd["embed_state.weight"].shape[1]
    act_dim = sd["embed_action.weight"].shape[1]
    n_layer = _layer_count(sd, "transformer.h.")
    if n_layer == 0:
        fail("transformer.h holds no block")
    if (
        any(k.startswith("transformer.h.0.attn.") and k.split(".")[-2] in ("conv1d", "x_proj", "dt_proj") for k in sd)
        or "transformer.h.0.attn.A_log" in sd
    ):
        fail(
            "this DecisionTransformer was trained with attn_type='s6' (an S6 layer in place of attention); "
            "dema-lab imports the attention DT (attn_type='attn') only"
        )
    if "transformer.wpe.weight" in sd:
        fail("the GPT-2 has position embeddings (transformer.wpe), which the DT of the official code removed")
    p = "transformer.h.0."
    _need(
        sd,
        fail,
        *(
            p + n
            for n in (
                "ln_1.weight",
                "attn.c_attn.weight",
                "attn.c_proj.weight",
                "ln_2.weight",
                "mlp.c_fc.weight",
                "mlp.c_proj.weight",
            )
        ),
    )
    if _shape(sd, p + "attn.c_attn.weight") != (H, 3 * H):  # Conv1D: (in, out)
        fail(f"attn.c_attn.weight is {_shape(sd, p + 'attn.c_attn.weight')}, expected GPT-2's Conv1D ({H}, {3 * H})")
    n_inner = sd[p + "mlp.c_fc.weight"].shape[1]
    if n_inner != 4 * H:
        fail(f"the MLP is {H} -> {n_inner}; dema-lab's DT has n_inner = 4 * {H} = {4 * H}, as the official code")
    if H % n_head:
        fail(f"n_head={n_head} does not divide the width {H}")
    has_time = "embed_timestep.weight" in sd
    max_ep_len = sd["embed_timestep.weight"].shape[0] if has_time else OFFICIAL_MAX_EP_LEN
    # window_padding "none": the official DT left-pads its window to K but gives the pads attention mask
    # 0, i.e. -1e4 added to their logits, so exp() of them underflows to exactly 0 for every real query
    # and the pads never reach a real token; running the real steps alone is the same computation.
    # window_actions "previous": the repository's evaluate_episode_rtg starts its action list with a
    # zero row and appends each action after acting, so step t's action slot holds a_{t-1} (DT was
    # trained with a_t there); this reproduces that evaluation exactly.
    try:
        return ModelConfig(
            arch="dt",
            state_dim=state_dim,
            act_dim=act_dim,
            K=K,
            d_model=H,
            n_layer=n_layer,
            layout="B3LD",
            token_order="RSA",
            embed_dim=0,
            embed_norm="layernorm",
            window_padding="none",
            timestep_embedding=has_time,
            max_ep_len=max_ep_len,
            n_head=n_head,
            dropout=0.1,
            activation="relu",
            window_actions="previous",
        )
    except (TypeError, ValueError) as e:
        fail(f"the inferred config is not valid ({e})")


def map_official(sd: dict, cfg: ModelConfig) -> tuple[dict, list[str]]:
    """(dema-lab state dict, names of the official tensors dropped) for a state dict whose config
    `infer_official` gave. DT's Conv1D weights (in, out) are transposed to nn.Linear's (out, in)."""
    out, dropped = {}, []
    if cfg.arch == "dema":
        prefixes = [
            ("ret_emb.", "embed.embed_return."),
            ("state_encoder.", "embed.embed_state."),
            ("action_embeddings.", "embed.embed_action."),
            ("embed_timestep.", "embed.embed_timestep."),
            ("backbone.embedding.", "embed.embed_token."),
            ("backbone.layers.", "layers."),
            ("backbone.norm_f.", "norm_f."),
            ("predict_action.", "predict_action."),
            ("head.", "predict_action."),
        ]  # Atari's logits head
        for k, v in sd.items():
            if k.startswith(DROPPED_DEMA):
                dropped.append(k)
                continue
            new = next((n + k[len(o) :] for o, n in prefixes if k.startswith(o)), None)
            if new is None:
                dropped.append(k)
            else:
                out[new] = v
        return out, dropped
    conv1d = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
    prefixes = [
        ("embed_return.", "embed.embed_return."),
        ("embed_state.", "embed.embed_state."),
        ("embed_action.", "embed.embed_action."),
        ("embed_timestep.", "embed.embed_timestep."),
        ("embed_ln.", "embed.embed_ln."),
        ("transformer.h.", "layers."),
        ("transformer.ln_f.", "ln_f."),
        ("predict_action.", "predict_action."),
    ]
    for k, v in sd.items():
        if k.startswith(DROPPED_DT) or k.endswith(DROPPED_DT_SUFFIX):
            dropped.append(k)
            continue
        new = next((n + k[len(o) :] for o, n in prefixes if k.startswith(o)), None)
        if new is None:
            dropped.append(k)
            continue
        out[new] = v.t().contiguous() if k.endswith(conv1d) else v
    return out, dropped


# ------------------------------------------------------------------------------------------------
# import_official
# ------------------------------------------------------------------------------------------------


def _iteration(path: Path) -> int | None:
    m = re.search(r"model_iter(\d+)", path.name)
    return int(m.group(1)) if m else None


def normalisation(dataset=None, state_mean=None, state_std=None, state_dim: int | None = None):
    """(state_mean, state_std) float32 arrays: the values given, else the dataset's (mean and std over
    all observations, std + 1e-6, as the official experiment.py)."""
    if (state_mean is None) != (state_std is None):
        raise OfficialCheckpointError(
            "give both state_mean and state_std, or neither (then they come from the dataset)"
        )
    if state_mean is None:
        if dataset is None:
            raise OfficialCheckpointError(
                "the state normalisation is not in an official checkpoint: give the dataset it was trained "
                "on (dataset=...; mean and std + 1e-6 over its observations, as the official code) or "
                "state_mean= and state_std="
            )
        mean, std = np.asarray(dataset.state_mean, np.float64), np.asarray(dataset.state_std, np.float64)
    else:
        mean, std = np.asarray(state_mean, np.float64).reshape(-1), np.asarray(state_std, np.float64).reshape(-1)
    if state_dim is not None and (mean.shape != (state_dim,) or std.shape != (state_dim,)):
        raise OfficialCheckpointError(
            f"state_mean/state_std have {mean.size}/{std.size} entries; the checkpoint takes {state_dim}-dim states"
        )
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise OfficialCheckpointError("state_mean/state_std must be finite and the std positive")
    return mean.astype(np.float32), std.astype(np.float32)


def official_checkpoint(
    path,
    *,
    env: str = "",
    dataset=None,
    state_mean=None,
    state_std=None,
    rtg_scale: float | None = None,
    K: int | None = None,
    n_head: int = OFFICIAL_N_HEAD,
) -> Checkpoint:
    """A checkpoint of the official DeMa code (`model_iter{N}.pkl`: Mamba_mujoco or its
    DecisionTransformer) as a dema-lab Checkpoint, read without executing anything.

    dataset: the loaded dataset it was trained on (a TrajectoryDataset): the state normalisation
        (mean, std + 1e-6) comes from it. Or give state_mean/state_std. env: the env's name, as
        the caller resolved it (dema_lab.integrations.import_official reads both from a dataset name).
    K: the context length (not in the weights; the official default 20, Atari 30). n_head: DT's heads
        (not inferable from shapes; the official default 1). rtg_scale: the official 1000 (Atari: 1,
        returns-to-go unscaled).
    Atari (atari/models/mamba.py, a bare state_dict `models/{epoch}.pkl`): states are the env's
        uint8 frames (the official divides by 255 before its CNN, dema-lab's CNN does it inside), so
        no normalisation is needed and none is stored.
    The result's meta has the keys of a trainer checkpoint (step, run_id, env, rtg_scale, dataset,
    device) plus source="official", source_path, official_class, iteration (N of model_iter{N}),
    dropped (official tensors dema-lab does not use), optimizer_steps when the file has them.
    """
    path = Path(path).expanduser()
    obj = read_official(path)
    sd, info = official_state_dict(obj, str(path))
    cfg, cls = infer_official(sd, K=K, n_head=n_head, source=str(path))
    weights, dropped = map_official(sd, cfg)

    ds = dataset
    if ds is not None:
        if ds.obs_dim != cfg.state_dim or ds.act_dim != cfg.act_dim:
            raise OfficialCheckpointError(
                f"{path} takes {cfg.state_dim}-dim states and {cfg.act_dim}-dim actions, but dataset "
                f"{ds.name} has {ds.obs_dim} and {ds.act_dim}: it was trained on another environment"
            )
    if cfg.obs_shape:  # Atari frames: the CNN scales them (x / 255); nothing to normalise
        mean, std = np.zeros(1, np.float32), np.ones(1, np.float32)
    else:
        mean, std = normalisation(ds if state_mean is None else None, state_mean, state_std, cfg.state_dim)
    if rtg_scale is None:
        rtg_scale = 1.0 if cfg.discrete else 1000.0
    env_name = env or ""

    too_big = memory_problem(cfg, copies=2, what=f"{path}: its model")
    if too_big:
        raise OfficialCheckpointError(too_big)
    model = build_model(cfg)
    try:
        load_weights(model, weights, source=f"{path} (mapped from {cls})")
    except CheckpointError as e:
        raise OfficialCheckpointError(f"{e} Found {describe_layout(sd)}") from None
    model.eval()
    iteration = _iteration(path)
    step = info.get("optimizer_steps") or 0
    meta = {
        "step": int(step),
        "run_id": "",
        "env": env_name,
        "rtg_scale": float(rtg_scale),
        "dataset": ds.name if ds is not None else "",
        "device": "cpu",
        "source": "official",
        "source_path": str(path.resolve()),
        "official_class": cls,
        "iteration": iteration,
        "dropped": sorted(dropped),
        "container": info.get("container", ""),
    }
    if "optimizer_steps" in info:
        meta["optimizer_steps"] = info["optimizer_steps"]
    extra = {
        "state_mean": torch.as_tensor(mean, dtype=torch.float32),
        "state_std": torch.as_tensor(std, dtype=torch.float32),
    }
    return Checkpoint(model=model, config=cfg, meta=meta, extra=extra, path=None)
