"""The memory a training run needs, estimated before anything is allocated, against what the machine
has: a config that cannot fit is refused in one line that names the values to lower, before a run
is created (instead of the kernel's out-of-memory killer, or torch's allocator text, mid-run)."""

from __future__ import annotations

import torch

from dema_lab.models.cost import available_memory, format_bytes, parameter_count

FLOAT = 4  # bytes of a float32


def training_bytes(model_cfg, batch_size: int, parameters: int | None = None) -> int:
    """A lower estimate of the bytes one training step needs: the weights, their gradients and
    AdamW's two moments; the batch; and the activations kept for the backward pass, per layer about
    a dozen token-wide tensors (the Mamba mixer's are expand x wider, with a d_state-wide scan
    state; DT's attention maps, n_head x L x L), plus the CNN's feature maps for image states."""
    p = parameter_count(model_cfg) if parameters is None else parameters
    L = model_cfg.tokens_per_step * model_cfg.K  # sequence length in tokens
    tokens = batch_size * L
    d = model_cfg.d_model
    if model_cfg.arch == "dema":
        inner = model_cfg.expand * d
        per_layer = tokens * (4 * d + 6 * inner + inner * model_cfg.d_state)
    elif model_cfg.arch in ("lstm", "gru", "mlp"):
        per_layer = tokens * 12 * d
    else:
        per_layer = tokens * 12 * d + 2 * batch_size * model_cfg.n_head * L * L
    steps = batch_size * model_cfg.K
    state = model_cfg.state_dim
    cnn = steps * (32 * 20 * 20 + 64 * 9 * 9 + 64 * 7 * 7 + 512) if model_cfg.obs_shape else 0
    batch = steps * (state + model_cfg.act_dim + 3)
    embed = tokens * (model_cfg.token_width + d) * 2
    return FLOAT * (4 * p + batch + embed + cnn + model_cfg.n_layer * per_layer)


def available_bytes(device: torch.device) -> tuple[int | None, str]:
    """(free bytes, what they are) of `device`: the GPU's free memory, or the machine's available
    memory (dema_lab.models.cost.available_memory); None where it cannot be told."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"{device} has"
    return available_memory(), "the machine has"


def check_memory(model_cfg, batch_size: int, device: torch.device, available: int | None = None) -> int:
    """The estimated bytes of a training step; ValueError naming batch_size and the model's size when
    they exceed the device's available memory (`available`: given, or measured now)."""
    need = training_bytes(model_cfg, batch_size)
    where = "the machine has"
    if available is None:
        available, where = available_bytes(device)
    if available is not None and need > available:
        raise ValueError(
            f"--batch_size {batch_size} with --K {model_cfg.K}, --d_model {model_cfg.d_model} and "
            f"--n_layer {model_cfg.n_layer} needs ~{format_bytes(need)}, {where} {format_bytes(available)} available; "
            f"lower --batch_size (or --K, --d_model, --n_layer)"
        )
    return need
