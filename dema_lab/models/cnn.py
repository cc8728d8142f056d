"""The Nature-DQN convolutional state encoder (Mnih et al. 2015), as the Atari DT and DeMa use it.

    (.., 4, 84, 84) uint8 frames, normalised -> conv 32 8x8 s4 -> ReLU -> conv 64 4x4 s2 -> ReLU
    -> conv 64 3x3 s1 -> ReLU -> flatten 64*7*7 = 3136 -> Linear -> tanh  = (.., width)

The layer indices (0, 2, 4 conv; 7 Linear) are the official Atari DeMa's `state_encoder`
Sequential's, so its weights load by name.

Normalisation ("norm"): "scale" is the official x / 255; "center" is (x - frame_mean) / frame_std,
with the training data's mean frame (H, W) and pixel std held as buffers (set_frame_stats), so
they travel with the checkpoint. The official keys have no such buffers: their models are "scale".
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def _conv_out(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1


class NatureCNN(nn.Sequential):
    """Stacked grey frames -> a tanh embedding of `width`. Takes states shaped (*batch, C, H, W)
    or flattened (*batch, C*H*W), uint8 or float in [0, 255], and normalises them itself (module
    docstring: x / 255, or centred on the data's mean frame with norm "center")."""

    def __init__(self, obs_shape, width: int, norm: str = "scale"):
        c, h, w = (int(x) for x in obs_shape)
        for k, s in ((8, 4), (4, 2), (3, 1)):
            h, w = _conv_out(h, k, s), _conv_out(w, k, s)
        if h < 1 or w < 1:
            raise ValueError(f"frames of shape {tuple(obs_shape)} are too small for the Nature CNN (needs >= 36x36)")
        super().__init__(
            nn.Conv2d(c, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * h * w, width),
            nn.Tanh(),
        )
        self.obs_shape = (c, *(int(x) for x in obs_shape[1:]))
        self.flat = math.prod(self.obs_shape)
        if norm not in ("scale", "center"):
            raise ValueError(f"frame normalisation {norm!r} is unknown (choose 'scale' or 'center')")
        self.norm = norm
        if norm == "center":  # until set_frame_stats: mid-grey and the scale of x / 255
            self.register_buffer("frame_mean", torch.full(self.obs_shape[1:], 127.5))  # (H, W)
            self.register_buffer("frame_std", torch.tensor(255.0))  # ()

    @torch.no_grad()
    def set_frame_stats(self, mean, std) -> None:
        """The training data's mean frame (H, W) and pixel std (a scalar), in [0, 255] units."""
        if self.norm != "center":
            raise ValueError("frame statistics are used by norm 'center' only")
        mean = torch.as_tensor(mean, dtype=self.frame_mean.dtype)
        if tuple(mean.shape) != tuple(self.frame_mean.shape):
            raise ValueError(f"mean frame of shape {tuple(mean.shape)}, expected {tuple(self.frame_mean.shape)}")
        if not float(std) > 0:
            raise ValueError(f"the pixel std must be positive, got {float(std)}")
        self.frame_mean.copy_(mean)
        self.frame_std.fill_(float(std))

    def forward(self, x):
        """x (*batch, C, H, W) or (*batch, C*H*W) -> (*batch, width)."""
        flat_input = x.shape[-1] == self.flat and tuple(x.shape[-3:]) != self.obs_shape
        batch = x.shape[:-1] if flat_input else x.shape[:-3]
        dtype = self[0].weight.dtype
        x = x.reshape(-1, *self.obs_shape).to(dtype)  # (n, C, H, W) in [0, 255]
        if self.norm == "center":
            x = (x - self.frame_mean.to(dtype)) / self.frame_std.to(dtype)  # 0 where nothing moves
        else:
            x = x / 255.0  # in [0, 1]
        return super().forward(x).reshape(*batch, -1)
