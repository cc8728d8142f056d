"""The Nature-DQN convolutional state encoder (Mnih et al. 2015), as the Atari DT and DeMa use it.

    (.., 4, 84, 84) uint8 frames / 255 -> conv 32 8x8 s4 -> ReLU -> conv 64 4x4 s2 -> ReLU
    -> conv 64 3x3 s1 -> ReLU -> flatten 64*7*7 = 3136 -> Linear -> tanh  = (.., width)

The layer indices (0, 2, 4 conv; 7 Linear) are the official Atari DeMa's `state_encoder`
Sequential's, so its weights load by name.
"""

from __future__ import annotations

import math

import torch.nn as nn


def _conv_out(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1


class NatureCNN(nn.Sequential):
    """Stacked grey frames -> a tanh embedding of `width`. Takes states shaped (*batch, C, H, W)
    or flattened (*batch, C*H*W), uint8 or float in [0, 255]; divides by 255 itself."""

    def __init__(self, obs_shape, width: int):
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

    def forward(self, x):
        """x (*batch, C, H, W) or (*batch, C*H*W) -> (*batch, width)."""
        flat_input = x.shape[-1] == self.flat and tuple(x.shape[-3:]) != self.obs_shape
        batch = x.shape[:-1] if flat_input else x.shape[:-3]
        dtype = self[0].weight.dtype
        x = x.reshape(-1, *self.obs_shape).to(dtype) / 255.0  # (n, C, H, W) in [0, 1]
        return super().forward(x).reshape(*batch, -1)
