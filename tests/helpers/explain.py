"""Small float64 models and windows for the explanation and faithfulness tests."""

import torch

from dema_lab.models import ModelConfig, build_model
from dema_lab.ssm import Mamba


def tiny(arch="dema", layout="B3LD", order="RSA", d_conv=4, n_actions=0, seed=0):
    """A float64 model (d_model 16, d_state 4, 2 layers, K 5) with a nonzero conv bias and D
    different in every channel, in eval mode."""
    cfg = ModelConfig(
        arch=arch,
        state_dim=3,
        act_dim=1 if n_actions else 2,
        n_actions=n_actions,
        K=5,
        d_model=16,
        d_state=4,
        d_conv=d_conv,
        n_layer=2,
        n_head=2,
        layout=layout,
        token_order=order,
    )
    torch.manual_seed(seed)
    model = build_model(cfg).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Mamba):
                m.conv1d.bias.normal_(0.0, 0.5)
                m.D.uniform_(0.3, 1.7)
    return model


def window(model, T=5, b=2, seed=1):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    if cfg.discrete:
        actions = torch.randint(0, cfg.n_actions, (b, T, 1), generator=g).double()
    else:
        actions = torch.rand(b, T, cfg.act_dim, generator=g, dtype=torch.float64) * 2 - 1
    actions[:, -1] = 0  # the current step's action slot is empty, as Policy.window() leaves it
    return {
        "states": torch.randn(b, T, cfg.state_dim, generator=g, dtype=torch.float64),
        "actions": actions,
        "returns_to_go": torch.rand(b, T, 1, generator=g, dtype=torch.float64) * 3,
        "timesteps": torch.arange(T)[None].repeat(b, 1),
        "prev_action": torch.zeros(b, cfg.act_dim, dtype=torch.float64),
    }
