"""ModelConfig: everything needed to rebuild a DecisionMamba or a DecisionTransformer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ARCHS = ("dema", "dt")
LAYOUTS = ("B3LD", "BL3D")


@dataclass
class ModelConfig:
    arch: str = "dema"                # "dema" (Decision Mamba) or "dt" (Decision Transformer)
    state_dim: int = 11
    act_dim: int = 3
    K: int = 20                       # context length in timesteps
    d_model: int = 128                # token width (embedding size)
    n_layer: int = 3
    layout: str = "B3LD"              # B3LD: (R, s, a) tokens, 3K long; BL3D: one token per step
    timestep_embedding: bool | None = None  # None: off for DeMa, on for DT (as in the papers)
    max_ep_len: int = 1000            # size of the timestep embedding table
    # Mamba mixer
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    # Transformer
    n_head: int = 1
    dropout: float = 0.1

    def __post_init__(self):
        if self.timestep_embedding is None:
            self.timestep_embedding = self.arch == "dt"
        self.validate()

    def validate(self):
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch {self.arch!r} is unknown (choose {' or '.join(ARCHS)})")
        if self.layout not in LAYOUTS:
            problems.append(f"layout {self.layout!r} is unknown (choose {' or '.join(LAYOUTS)})")
        for name in ("state_dim", "act_dim", "K", "d_model", "n_layer", "max_ep_len", "d_state",
                     "d_conv", "expand", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.n_head, int) and self.n_head >= 1 and isinstance(self.d_model, int) \
                and self.d_model % self.n_head:
            problems.append(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def tokens_per_step(self) -> int:
        return 3 if self.layout == "B3LD" else 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)
