"""Shared pieces of the benchmark suite: the training step, timers, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from dema_lab.models import ModelConfig, build_model


def make_batch(cfg: ModelConfig, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    K = cfg.K
    mask = torch.ones(batch, K)
    # a few right-padded windows, as the sampler produces at episode ends
    for i in range(0, batch, 8):
        mask[i, K - 1 - (i // 8) % K :] = 0
    return dict(
        states=torch.randn(batch, K, cfg.state_dim, generator=g),
        actions=torch.rand(batch, K, cfg.act_dim, generator=g) * 2 - 1,
        returns_to_go=torch.rand(batch, K, 1, generator=g),
        timesteps=torch.randint(0, cfg.max_ep_len - K, (batch, 1), generator=g) + torch.arange(K),
    ), mask


def scan_inputs(b=64, d=128, n=64, L=60, seed=0, device="cpu"):
    """selective_scan's inputs at a benchmark size, leaves that require grad, and a (b, d, L)
    weight for the loss. Mamba's layout: delta and z are transposed views of (b, L, d) memory;
    dt around softplus(-3), A in [-16, -1]."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(
        u=r(b, d, L),
        delta=(r(b, L, d) * 0.5 - 3).transpose(1, 2),
        A=-(torch.rand(d, n, generator=g) * 15 + 1),
        B=r(b, n, L),
        C=r(b, n, L),
        D=r(d),
        z=r(b, L, d).transpose(1, 2),
        delta_bias=r(d) * 0.1,
    )
    w = r(b, d, L).to(device)
    return {k: v.to(device).requires_grad_() for k, v in x.items()}, w


def make_trainer(cfg: ModelConfig, batch: int, seed: int = 0):
    """A closure running one training step: forward, masked action MSE, backward, clip, AdamW."""
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    inputs, mask = make_batch(cfg, batch, seed)
    m = mask[..., None]
    target = inputs["actions"]

    def step():
        pred = model(**inputs)
        loss = (((pred - target) ** 2) * m).sum() / (m.sum() * cfg.act_dim)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        return loss

    return model, step


def timeit(fn, repeat: int = 10, warmup: int = 2, min_time: float = 0.0):
    """Per-call seconds: list of `repeat` samples (after `warmup` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def med(xs):
    return statistics.median(xs)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def scan_step(x: dict, w, backend: str, grad: bool = True):
    """A timed call of selective_scan on `backend` with the inputs of scan_inputs: the forward, and
    with `grad` the backward of (out * w).sum() (the inputs' grads cleared first)."""
    from dema_lab.ssm import selective_scan, use_backend

    def f():
        for v in x.values():
            v.grad = None
        with use_backend(backend), torch.set_grad_enabled(grad):
            out = selective_scan(**x, delta_softplus=True)
            if grad:
                (out * w).sum().backward()

    return f
