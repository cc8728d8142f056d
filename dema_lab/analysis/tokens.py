"""Token labels and window alignment: which token of a window is which (R, s, a and their step
relative to now), right-aligned so labels are the same at every step of an episode."""

from __future__ import annotations

import numpy as np
import torch


def token_labels(cfg) -> dict:
    """Labels of the right-aligned window positions: kind (R/s/a or t) and the step each token
    belongs to, relative to now. The a token of RAS step t holds a_{t-1}: it is labelled a-1
    like RSA's a_{t-1} token, so a label always names the action's own step."""
    L = cfg.window_tokens()
    if cfg.layout == "B3LD":
        # RSA: ... R_{-1} s_{-1} a_{-1} R_0 s_0   (position L-1 is s_0)
        # RAS: ... R_{-1} a_{-2} s_{-1} R_0 a_{-1} s_0
        order = getattr(cfg, "token_order", "RSA")  # ARS (Atari): ... a_{-2} R_{-1} s_{-1} a_{-1} R_0 s_0
        kinds, steps = [], []
        for p in range(L):
            back = L - 1 - p  # tokens back from s_0
            if order == "RSA":
                q = back + 1  # tokens back from a virtual a_0
                kind, step = ["a", "s", "R"][q % 3], -(q // 3)
            else:
                kind, step = (["s", "a", "R"] if order == "RAS" else ["s", "R", "a"])[back % 3], -(back // 3)
                step -= kind == "a"  # the RAS/ARS action token holds the previous step's action
            kinds.append(kind)
            steps.append(step)
    else:
        kinds = ["t"] * L
        steps = [-(L - 1 - p) for p in range(L)]
    labels = [f"{k}{s}" if s else f"{k}0" for k, s in zip(kinds, steps)]
    return {"label": labels, "kind": kinds, "step": steps}


def token_coords(cfg, dim: str) -> dict:
    lab = token_labels(cfg)
    return {
        dim: np.arange(cfg.window_tokens()),
        f"{dim}_label": (dim, lab["label"]),
        f"{dim}_kind": (dim, lab["kind"]),
        f"{dim}_step": (dim, np.asarray(lab["step"])),
    }


def opening_step(n_steps: int, K: int) -> int:
    """The step a view of a recorded episode opens on: the middle of the episode, and never before
    the window is full (step K-1), so that the heatmap and the lag profile have a whole window."""
    if n_steps <= 0:
        return 0
    return int(min(n_steps - 1, max(n_steps // 2, K - 1)))


def right_align(att: np.ndarray, L: int) -> np.ndarray:
    """(..., n, n) attention of an n-token window -> (..., L, L), right-aligned, NaN-padded."""
    n = att.shape[-1]
    out = np.full(att.shape[:-2] + (L, L), np.nan, dtype=np.float32)
    out[..., L - n :, L - n :] = att[..., -L:, -L:] if n > L else att
    return out


def query_kinds(cfg) -> list[str]:
    return ["R", "s", "a"] if cfg.layout == "B3LD" else ["t"]


def current_token(model, n_steps: int, n_tokens: int) -> int:
    """Index, in a window of `n_steps` steps and `n_tokens` tokens, of the token that predicts
    the window's last action (the current state token: the paper's "last token")."""
    pos = model.embed.action_positions(n_steps)
    if isinstance(pos, slice):
        return range(n_tokens)[pos][-1]
    return int(torch.as_tensor(pos).reshape(-1)[-1])
