"""A trained policy out of the lab: an ONNX or TorchScript file per inference mode, with a JSON
beside it that holds everything needed to act (dema-lab not required to run it).

Transformer-like graph ("transformer"), the window Policy.window() builds, fixed at K steps:
    states        (b, K, state_dim) float32 normalised states; Atari: (b, K, 4, 84, 84) raw frames
    actions       (b, K, act_dim)   float32 the window's actions, the current step's slot zero
                                    (Atari: the action index as a number)
    returns_to_go (b, K, 1)         float32 returns-to-go / rtg_scale
    timesteps     (b, K)            int64
    prev_action   (b, act_dim)      float32 the action before the window (zeros at the start)
    window_steps  (b,)              int64  padding "none" only: how many steps of the window are
                                           real; the window is right-padded with zeros to K (both
                                           backbones are causal, so the pads never reach the
                                           current step: exactly Policy's shorter window)
  padding "left": the window is left-padded with zeros to K (the pads go through the model) and
  there is no window_steps input.
  -> action (b, act_dim) for the last real step; Atari: logits (b, n_actions) and action (b, 1)
     int64, the argmax (Policy samples from softmax(logits)).

RNN-like graph ("rnn": DeMa, LSTM, GRU), one env step:
    state (b, state_dim) [Atari (b, 4, 84, 84)], prev_action (b, act_dim) (zeros at t = 0),
    return_to_go (b, 1), timestep (b,) int64, and the carried state (batch axis 1):
      DeMa: conv_state (n_layer, b, d_inner, d_conv): each layer's last d_conv conv inputs, oldest first
            ssm_state  (n_layer, b, d_inner, d_state): each layer's SSM state h
      LSTM: hidden_state, cell_state (n_layer, b, d_model): torch.nn.LSTM's (h, c)
      GRU:  hidden_state (n_layer, b, d_model): torch.nn.GRU's h
  -> action (Atari: logits and action), then new_X for every carried input X. Zeros start an
     episode; feed each new_X back as X at the next step (the JSON's "recurrent_state" lists them
     with their axes and sizes). timestep 0 marks the episode's first step (token order RSA then
     feeds no a_{t-1} token).

The MLP baseline is memoryless (its action at step t reads only step t's tokens) and acts
Transformer-like in dema-lab, so it exports as the window graph above, the one its Policy runs:
the window's earlier steps do not change the action, and the runner needs no second code path.

Inputs a model does not use (timesteps without a timestep embedding, prev_action with RSA) are
not in an ONNX graph: feed the session's inputs (the JSON lists them).

The window graph's selective scan goes through the "chunked" backend
(ssm.scan.selective_scan_chunked: the window's L tokens as about sqrt(L) chunks, two short loops
of whole-tensor ops unrolled at export, exact to float rounding), not a per-token loop: its big
ops work on whole blocks of the window, where the loop made 3K x n_layer steps of small ones
(benchmarks/RESULTS.md has the speeds). The graphs hold only standard ONNX ops. ONNX files come
from torch.onnx.export's TorchScript-based exporter (dynamo=False: no onnxscript needed),
nn.RMSNorm written out (ExplicitRMSNorm), and pass onnx.checker; TorchScript files are
torch.jit.trace of the same graphs.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dema_lab.envs.spec import env_spec
from dema_lab.models.checkpoint import Checkpoint, load_checkpoint
from dema_lab.models.policy import MODES, inference_modes
from dema_lab.models.rnn import RecurrentState
from dema_lab.ssm import MambaState, use_backend
from dema_lab.store.zarr_store import Run

FORMATS = ("onnx", "torchscript")
EXPORTABLE_ARCHS = ("dema", "dt", "lstm", "gru", "mlp")
MIN_OPSET, DEFAULT_OPSET = 17, 17  # LayerNormalization is an ONNX op from opset 17
DEPLOY_FORMAT = 1  # the version of the JSON's layout


class ExportError(ValueError):
    """A policy that cannot be exported as asked (one line: what and what to do)."""


# ------------------------------------------------------------------------------------------ graphs
class WindowGraph(nn.Module):
    """The Transformer-like forward pass as a graph: a K-step window -> the current step's action."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg = model, model.cfg

    def forward(self, states, actions, returns_to_go, timesteps, prev_action, window_steps=None):
        preds = self.model(states, actions, returns_to_go, timesteps, prev_action=prev_action)  # (b, K, act)
        if window_steps is None:  # left padding: the last step is the current one
            pred = preds[:, -1]
        else:
            idx = (window_steps - 1).reshape(-1, 1, 1).expand(-1, 1, preds.shape[-1])
            pred = preds.gather(1, idx)[:, 0]  # (b, act)
        return head_outputs(self.cfg, pred)


class StepGraph(nn.Module):
    """The RNN-like step as a graph: one env step's tokens through the model's carried state,
    functional (the carried tensors come in and go out; model.step updates copies of them)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg = model, model.cfg

    def forward(self, state, prev_action, return_to_go, timestep, *carried):
        cfg, model = self.cfg, self.model
        first = timestep == 0  # (b,)
        prev_action = torch.where(first[:, None], torch.zeros_like(prev_action), prev_action)
        # first=False always: token order RSA then leads with a_{t-1}, whose update is undone at t = 0
        tokens = model.embed.step_tokens(state, prev_action, return_to_go, timestep, first=False)  # (b, n, d)
        memory = model_state(model, carried)
        if cfg.layout == "B3LD" and cfg.token_order == "RSA":
            model.step(tokens[:, :1], memory)
            kept = [
                torch.where(first.reshape(1, -1, *[1] * (old.dim() - 2)), old, new)  # the batch axis is 1
                for old, new in zip(carried, state_tensors(memory))
            ]
            memory, tokens = model_state(model, kept), tokens[:, 1:]
        pred = model.predict_action(model.step(tokens, memory))  # (b, act) or logits
        return (*head_outputs(cfg, pred), *state_tensors(memory))


def model_state(model, carried):
    """The model's own recurrent state from the graph's carried tensors (copies: model.step may
    update in place). DeMa: one MambaState per layer; LSTM/GRU: a RecurrentState."""
    if model.cfg.arch == "dema":
        conv, ssm = carried  # (n_layer, b, d_inner, d_conv), (n_layer, b, d_inner, d_state)
        return [MambaState(conv[i].clone(), ssm[i].clone()) for i in range(model.cfg.n_layer)]
    return RecurrentState(*(t.clone() for t in carried))  # h [, c], (n_layer, b, d_model) each


def state_tensors(memory) -> list:
    """The graph's carried tensors from the model's state (model_state's inverse)."""
    if isinstance(memory, RecurrentState):
        return memory.tensors()
    return [torch.stack([s.conv for s in memory]), torch.stack([s.ssm for s in memory])]


def state_layout(cfg) -> dict[str, list[str]]:
    """The carried state of the RNN-like graph: input name -> its axes (each comes back as output
    "new_" + name). The batch axis is 1 in all of them."""
    if cfg.arch == "dema":  # per layer: the last d_conv conv inputs (oldest first) and the SSM state h
        return {
            "conv_state": ["n_layer", "batch", "d_inner", "d_conv"],
            "ssm_state": ["n_layer", "batch", "d_inner", "d_state"],
        }
    names = ["hidden_state", "cell_state"] if cfg.arch == "lstm" else ["hidden_state"]  # torch's (h, c) / h
    return {name: ["n_layer", "batch", "d_model"] for name in names}


def state_sizes(cfg) -> dict[str, int]:
    """The sizes of state_layout's named axes."""
    if cfg.arch == "dema":
        return {
            "n_layer": cfg.n_layer,
            "d_inner": cfg.expand * cfg.d_model,
            "d_conv": cfg.d_conv,
            "d_state": cfg.d_state,
        }
    return {"n_layer": cfg.n_layer, "d_model": cfg.d_model}


def head_outputs(cfg, pred) -> tuple:
    """Continuous: (action,). Discrete: (logits, argmax index (b, 1) int64)."""
    if cfg.discrete:
        return pred, pred.argmax(-1, keepdim=True)
    return (pred,)


class ExplicitRMSNorm(nn.Module):
    """nn.RMSNorm written out (x * rsqrt(mean(x^2) + eps) * weight): the legacy ONNX exporter has
    no symbolic for aten::rms_norm before opset 23."""

    def __init__(self, norm: nn.RMSNorm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def onnx_ready(model):
    """A copy of `model` (float32, CPU, eval) with every nn.RMSNorm written out."""
    model = copy.deepcopy(model).float().cpu().eval()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.RMSNorm):
                setattr(module, child_name, ExplicitRMSNorm(child))
    return model


# ------------------------------------------------------------------------------------------ names
def output_names(cfg, mode: str) -> list[str]:
    heads = ["logits", "action"] if cfg.discrete else ["action"]
    return heads + (["new_" + name for name in state_layout(cfg)] if mode == "rnn" else [])


def batch_dim(name: str) -> int:
    """The batch axis of a graph input or output: 1 for the stacked per-layer states, else 0."""
    return 1 if name.endswith("_state") else 0


def example_inputs(cfg, mode: str, batch: int = 1, dtype=torch.float32) -> dict:
    """Zero inputs of the graph of `mode` (what tracing and the JSON's shapes come from)."""
    obs = tuple(cfg.obs_shape) if cfg.obs_shape else (cfg.state_dim,)
    if mode == "rnn":
        sizes = state_sizes(cfg) | {"batch": batch}
        return {
            "state": torch.zeros(batch, *obs, dtype=dtype),
            "prev_action": torch.zeros(batch, cfg.act_dim, dtype=dtype),
            "return_to_go": torch.zeros(batch, 1, dtype=dtype),
            "timestep": torch.zeros(batch, dtype=torch.long),
        } | {name: torch.zeros([sizes[a] for a in axes], dtype=dtype) for name, axes in state_layout(cfg).items()}
    K = cfg.K
    inputs = {
        "states": torch.zeros(batch, K, *obs, dtype=dtype),
        "actions": torch.zeros(batch, K, cfg.act_dim, dtype=dtype),
        "returns_to_go": torch.zeros(batch, K, 1, dtype=dtype),
        "timesteps": torch.zeros(batch, K, dtype=torch.long),
        "prev_action": torch.zeros(batch, cfg.act_dim, dtype=dtype),
    }
    if cfg.window_padding == "none":
        inputs["window_steps"] = torch.full((batch,), K, dtype=torch.long)
    return inputs


# ------------------------------------------------------------------------------------------ checks
def check_exportable(model, mode: str, fmt: str, opset: int = DEFAULT_OPSET) -> None:
    """ExportError (one line) unless `model` can be exported in `mode` as `fmt`."""
    cfg = model.cfg
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is unknown; choose {' or '.join(FORMATS)}")
    if mode not in MODES:
        raise ExportError(f"inference mode {mode!r} is unknown; choose {' or '.join(MODES)}")
    if cfg.arch not in EXPORTABLE_ARCHS:
        raise ExportError(
            f"arch {cfg.arch!r} cannot be exported yet (export-policy knows {', '.join(EXPORTABLE_ARCHS)})"
        )
    if mode not in inference_modes(cfg.arch):
        raise ExportError(f"{cfg.arch.upper()} policies act Transformer-like only; export them with --mode transformer")
    if fmt == "onnx" and int(opset) < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old for LayerNormalization; use --opset {MIN_OPSET} or newer")
    ablation = getattr(model, "ablation", None)  # set on evaluation.ablation.ablate's copies
    if ablation:
        raise ExportError(
            f"the model is ablated ({' '.join(map(str, ablation))}); export the run's own checkpoint, "
            f"not an ablated copy"
        )
    hooked = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        raise ExportError(
            f"the model is ablated (forward hooks on {hooked[0]}{', ...' if len(hooked) > 1 else ''}); "
            f"export the run's own checkpoint, not an ablated copy"
        )


# ------------------------------------------------------------------------------------------ export
def export_model(
    model, mode: str, fmt: str, out, opset: int = DEFAULT_OPSET, metadata: dict | None = None, scan: str = "chunked"
) -> Path:
    """Write `model` (float32, CPU) as the graph of `mode` to `out` in `fmt`; ONNX files carry
    `metadata` (string values) as metadata_props. `scan`: the selective-scan backend the window
    graph is traced with ("chunked"; "reference", the per-token loop, only to compare). Returns the path."""
    check_exportable(model, mode, fmt, opset)
    model = onnx_ready(model) if fmt == "onnx" else copy.deepcopy(model).float().cpu().eval()
    model.requires_grad_(False)  # a deployed graph computes no gradient
    graph = (StepGraph if mode == "rnn" else WindowGraph)(model).eval()
    inputs = example_inputs(model.cfg, mode)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), use_backend(scan), warnings.catch_warnings():
        # the input checks' Python conditions on shapes are constants of the fixed-shape graph
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # nn.LSTM/GRU without h0 (the window graph): ONNX's RNN ops start from zeros of any batch
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1")
        if fmt == "torchscript":
            traced = torch.jit.trace(graph, tuple(inputs.values()), check_trace=False)
            torch.jit.save(traced, str(out))
            return out
        import onnx

        names = output_names(model.cfg, mode)
        dynamic = {name: {batch_dim(name): "batch"} for name in [*inputs, *names]}
        torch.onnx.export(
            graph,
            tuple(inputs.values()),
            str(out),
            input_names=list(inputs),
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=int(opset),
            dynamo=False,
        )
    proto = onnx.load(str(out))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


# ------------------------------------------------------------------------------------------ the JSON
def compact(values) -> float | list[float]:
    """A state statistic for the JSON: one number when every entry is the same (Atari's), else a list."""
    a = np.asarray(values, np.float64).reshape(-1)
    return float(a[0]) if a.size and np.all(a == a[0]) else [float(x) for x in a]


def deploy_info(checkpoint: Checkpoint, mode: str, fmt: str, opset: int, graph_inputs, provenance=None) -> dict:
    """Everything a runner needs to act with the exported file, besides the file itself."""
    cfg, meta = checkpoint.config, checkpoint.meta
    mean, std = checkpoint.state_normalization()
    provenance = dict(provenance or {})
    targets = provenance.get("eval_targets") or meta.get("eval_targets")
    if not targets and meta.get("env"):
        from dema_lab.evaluation.defaults import default_targets

        try:
            targets = default_targets(meta["env"])
        except ValueError:
            targets = []
    example = example_inputs(cfg, mode)
    env = meta.get("env", provenance.get("env", ""))
    spec = env_spec(env) if env else None
    return {
        "dema_lab_policy": DEPLOY_FORMAT,
        "format": fmt,
        "mode": mode,
        "opset": int(opset) if fmt == "onnx" else None,
        "env": env,
        "gym_id": spec.gym_id if spec else "",
        "env_kind": spec.kind if spec else "",
        "max_episode_steps": spec.max_episode_steps if spec else None,
        "run_id": meta.get("run_id", ""),
        "checkpoint_step": meta.get("step"),
        "state_mean": compact(mean),
        "state_std": compact(std),
        "obs_shape": list(cfg.obs_shape) or [cfg.state_dim],
        "rtg_scale": float(meta.get("rtg_scale", 1000.0)),
        "target_returns": [float(t) for t in targets or []],
        "K": cfg.K,
        "token_order": cfg.token_order,
        "layout": cfg.layout,
        "window_padding": cfg.window_padding,
        "window_actions": cfg.window_actions,
        "action_space": (
            {"type": "discrete", "n": cfg.n_actions, "choose": "sample from softmax(logits) (dema-lab) or argmax"}
            if cfg.discrete
            else {"type": "box", "shape": [cfg.act_dim], "low": -1.0, "high": 1.0}
        ),
        "inputs": {
            name: {
                "shape": ["batch" if i == batch_dim(name) else n for i, n in enumerate(example[name].shape)],
                "dtype": str(example[name].dtype).split(".")[1],
            }
            for name in graph_inputs
        },
        "outputs": output_names(cfg, mode),
        "recurrent_state": (
            {
                "inputs": list(state_layout(cfg)),
                "outputs": ["new_" + name for name in state_layout(cfg)],
                "axes": state_layout(cfg),
                "sizes": state_sizes(cfg),
                "start": "zeros of each input's shape; feed output new_X back as input X at the next step",
            }
            if mode == "rnn"
            else None
        ),
        "model_config": cfg.to_dict(),
        "dataset": meta.get("dataset", provenance.get("dataset", "")),
        "provenance": provenance,
    }


def sidecar(path) -> Path:
    """The JSON beside an exported file: policy.onnx -> policy.onnx.json (a TorchScript file of the
    same stem keeps its own)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_policy(
    checkpoint: Checkpoint, mode: str, fmt: str, out, opset: int = DEFAULT_OPSET, provenance=None, scan: str = "chunked"
) -> tuple[Path, Path]:
    """Export a loaded checkpoint as the `mode` graph in `fmt` to `out`, with its JSON beside it
    (also inside the file: ONNX metadata_props "dema_lab_policy", a TorchScript extra file
    "dema_lab_policy.json"). `scan`: as export_model's. Returns (file, json)."""
    check_exportable(checkpoint.model, mode, fmt, opset)
    checkpoint.state_normalization()  # fails by name before anything is written
    out = Path(out)
    inputs = example_inputs(checkpoint.config, mode)
    info = deploy_info(checkpoint, mode, fmt, opset, list(inputs), provenance)
    text = json.dumps(info, indent=1)
    path = export_model(checkpoint.model, mode, fmt, out, opset, metadata={"dema_lab_policy": text}, scan=scan)
    if fmt == "onnx":  # inputs the model does not use (timesteps without a timestep embedding, ...) are left out
        import onnx

        kept = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
        info["inputs"] = {k: v for k, v in info["inputs"].items() if k in kept}
        text = json.dumps(info, indent=1)
        proto = onnx.load(str(path))
        next(p for p in proto.metadata_props if p.key == "dema_lab_policy").value = text
        onnx.save(proto, str(path))
    else:
        traced = torch.jit.load(str(path))
        torch.jit.save(traced, str(path), _extra_files={"dema_lab_policy.json": text})
    sidecar(path).write_text(text + "\n")
    return path, sidecar(path)


def run_checkpoint(run: Run, step: int | None = None) -> Checkpoint:
    """A finished run's checkpoint `step` (default its last), loaded; ExportError for an unfinished
    run or a step it has no checkpoint of."""
    status = run.attrs.get("status")
    if status != "finished":
        raise ExportError(
            f"run {run.run_id} is {status or 'unfinished'}: export a finished run "
            f"(resume it with `dema-lab train --resume {run.run_id}`)"
        )
    steps = run.checkpoints()
    if not steps:
        raise ExportError(f"run {run.run_id} has no checkpoint")
    if step is not None and int(step) not in steps:
        raise ExportError(
            f"run {run.run_id} has no checkpoint at step {step}; its checkpoints: {', '.join(map(str, steps))}"
        )
    return load_checkpoint(run.checkpoint_bytes(None if step is None else int(step)))


def export_run_policy(
    run: Run, mode: str, fmt: str, out, step: int | None = None, opset: int = DEFAULT_OPSET
) -> tuple[Path, Path]:
    """Export a run's checkpoint (`step`, default the last) with the run's provenance in the JSON."""
    checkpoint = run_checkpoint(run, step)
    return export_policy(checkpoint, mode, fmt, out, opset, provenance=run.attrs.get("provenance", {}))
