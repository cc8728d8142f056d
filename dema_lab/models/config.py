"""ModelConfig: everything needed to rebuild a DecisionMamba, a DecisionTransformer or a baseline.

Architectures (`arch`), all on the same trajectory tokens, embeddings and action head:
    dema  Decision Mamba (models/dema.py): acts Transformer-like or RNN-like
    dt    Decision Transformer (models/dt.py): Transformer-like only
    lstm, gru  a torch nn.LSTM / nn.GRU over the tokens (models/rnn.py): hidden size d_model,
          n_layer layers; trained on K-step windows, acting RNN-like (or Transformer-like)
    mlp   memoryless behaviour cloning (models/mlp.py): the action at s_t from the R_t and s_t
          tokens only; Transformer-like (the window changes nothing)
Only DeMa and DT have attention maps (`has_attention`); dema, lstm and gru carry a recurrent
state (`recurrent`).

Two DeMa flavours share one model class (see README, "Checkpoints from the official DeMa code"):

    dema-lab's own (the defaults)        official DeMa (AndssY/dema, `Mamba_mujoco`; preset "official")
    token_order  "RSA": R_t, s_t, a_t     "RAS": R_t, a_{t-1}, s_t   (a_{-1} = 0)
    embed_dim    0: tokens are d_model    128, projected to d_model 64 by a Linear (embed.embed_token)
    embed_norm   "layernorm"              "none"
    window_padding "none": shorter        "left": zero-padded to K steps; the pads go through the model
                 windows early in an episode

Atari (discrete actions, image states): `obs_shape` (4, 84, 84) encodes states with the Nature-DQN
CNN (models/cnn.py), `n_actions` > 0 embeds actions with nn.Embedding (act_dim 1 holds the index)
and predicts logits (Linear without bias) for a cross-entropy loss; the return, state and action
embeddings then end in tanh, as in the Atari DT and DeMa. Token order "ARS" is the official Atari
DeMa's (a_{t-1}, R_t, s_t) (atari/models/mamba.py). `frame_norm` "scale" feeds the CNN x / 255, as
the official code does; "center" (dema-lab's, the atari-small preset's) subtracts the training
data's mean frame and divides by its pixel std, the analogue of the MuJoCo state normalization:
Pong's 1-pixel ball is otherwise too faint against the static court for the CNN to pick up in a
few thousand steps (benchmarks/RESULTS-atari.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ARCHS = ("dema", "dt", "lstm", "gru", "mlp")
RECURRENT_ARCHS = ("dema", "lstm", "gru")  # can act RNN-like, carrying a state
ATTENTION_ARCHS = ("dema", "dt")  # have (hidden) attention maps
LAYOUTS = ("B3LD", "BL3D")
TOKEN_ORDERS = ("RSA", "RAS", "ARS")
EMBED_NORMS = ("layernorm", "none")
FRAME_NORMS = ("scale", "center")
WINDOW_PADDINGS = ("none", "left")
WINDOW_ACTIONS = ("own", "previous")
ACTIVATIONS = ("gelu", "relu")

# The largest value of each size field: what trains can always be saved, loaded and imported, and
# a checkpoint header that claims more fails by name before anything is built (the paper's DeMa:
# d_model 64 to 256, 3 to 12 layers, d_state 16 to 64). ModelConfig.validate is the one check; the
# trainer, the importer and the checkpoint loader all construct a ModelConfig.
LIMITS = {
    "state_dim": 100_000,
    "act_dim": 100_000,
    "K": 100_000,
    "d_model": 8192,
    "n_layer": 128,
    "max_ep_len": 10_000_000,
    "d_state": 1024,
    "d_conv": 64,
    "expand": 16,
    "n_head": 256,
    "embed_dim": 8192,
    "n_actions": 100_000,
}


@dataclass
class ModelConfig:
    """Everything that defines a DeMa or DT model: built by `build_model(cfg)`, saved in every
    checkpoint's header, validated on construction (a bad field fails here, by name)."""

    arch: str = "dema"  # "dema" (Decision Mamba), "dt" (Decision Transformer), "lstm", "gru", "mlp"
    state_dim: int = 11
    act_dim: int = 3
    K: int = 20  # context length in timesteps
    d_model: int = 128  # token width (embedding size)
    n_layer: int = 3
    layout: str = "B3LD"  # B3LD: three tokens per step, 3K long; BL3D: one token per step
    token_order: str = "RSA"  # RSA: (R_t, s_t, a_t), DT's; RAS: (R_t, a_{t-1}, s_t), official DeMa's
    embed_dim: int = 0  # 0: embeddings are d_model wide; N: N wide, projected to d_model
    embed_norm: str = "layernorm"  # LayerNorm on the tokens (DT, dema-lab) or "none" (official DeMa)
    window_padding: str = "none"  # Transformer-like inference: "none" or "left" (zeros to K steps)
    #: RSA windows at inference: step t's action slot holds a_t ("own", as trained) or a_{t-1}
    #: ("previous": the DeMa repository's DT evaluation)
    window_actions: str = "own"
    timestep_embedding: bool | None = None  # None: off for DeMa, on for DT (as in the papers)
    max_ep_len: int = 1000  # size of the timestep embedding table
    d_state: int = 16  # the Mamba mixer's SSM state size N, per channel
    d_conv: int = 4  # the Mamba mixer's causal conv1d width
    expand: int = 2  # the Mamba mixer's inner width, as a multiple of d_model
    n_head: int = 1  # the Transformer's attention heads
    dropout: float = 0.1  # the Transformer's dropout
    activation: str = "gelu"  # DT's MLP: gelu (nanoGPT) or relu (the DT and DeMa repositories)
    # Atari
    obs_shape: tuple = ()  # image states, e.g. (4, 84, 84): the Nature CNN encodes them; () = vectors
    n_actions: int = 0  # discrete actions: logits over n_actions, cross-entropy; 0 = continuous
    #: the CNN's input: "scale" x / 255 (official), "center" (x - the data's mean frame) / its pixel std
    #: (dema-lab's; models/cnn.py)
    frame_norm: str = "scale"

    def __post_init__(self):
        if self.timestep_embedding is None:
            self.timestep_embedding = self.arch == "dt"
        if isinstance(self.obs_shape, list):  # from a JSON header
            self.obs_shape = tuple(self.obs_shape)
        self.validate()

    def validate(self):
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch {self.arch!r} is unknown (choose {', '.join(ARCHS)})")
        for name, allowed in (
            ("layout", LAYOUTS),
            ("token_order", TOKEN_ORDERS),
            ("embed_norm", EMBED_NORMS),
            ("window_padding", WINDOW_PADDINGS),
            ("window_actions", WINDOW_ACTIONS),
            ("activation", ACTIVATIONS),
            ("frame_norm", FRAME_NORMS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} {getattr(self, name)!r} is unknown (choose {' or '.join(allowed)})")
        if self.window_actions == "previous" and self.token_order != "RSA":
            problems.append("window_actions 'previous' applies to token order RSA (RAS tokens hold a_{t-1} already)")
        if not isinstance(self.embed_dim, int) or isinstance(self.embed_dim, bool) or self.embed_dim < 0:
            problems.append(f"embed_dim must be 0 (= d_model) or a positive integer, got {self.embed_dim!r}")
        for name in (
            "state_dim",
            "act_dim",
            "K",
            "d_model",
            "n_layer",
            "max_ep_len",
            "d_state",
            "d_conv",
            "expand",
            "n_head",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if (
            isinstance(self.n_head, int)
            and self.n_head >= 1
            and isinstance(self.d_model, int)
            and self.d_model % self.n_head
        ):
            problems.append(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if not isinstance(self.obs_shape, tuple) or (
            self.obs_shape
            and (len(self.obs_shape) != 3 or not all(isinstance(x, int) and x > 0 for x in self.obs_shape))
        ):
            problems.append(f"obs_shape must be () or (channels, height, width), got {self.obs_shape!r}")
        elif self.obs_shape and self.state_dim != self.obs_shape[0] * self.obs_shape[1] * self.obs_shape[2]:
            problems.append(f"state_dim {self.state_dim} must be the size of obs_shape {self.obs_shape}")
        if not isinstance(self.n_actions, int) or isinstance(self.n_actions, bool) or self.n_actions < 0:
            problems.append(
                f"n_actions must be 0 (continuous) or the number of discrete actions, got {self.n_actions!r}"
            )
        elif self.n_actions and self.act_dim != 1:
            problems.append(f"discrete actions are one index: act_dim must be 1, got {self.act_dim}")
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                problems.append(f"{name} {value} is above the largest dema-lab builds ({name} at most {limit})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def recurrent(self) -> bool:
        """Whether the model can act RNN-like, carrying a state through the episode (DeMa, LSTM, GRU)."""
        return self.arch in RECURRENT_ARCHS

    @property
    def has_attention(self) -> bool:
        """Whether the model has attention maps to show (DeMa's hidden attention, DT's softmax)."""
        return self.arch in ATTENTION_ARCHS

    @property
    def discrete(self) -> bool:
        return self.n_actions > 0

    @property
    def tokens_per_step(self) -> int:
        return 3 if self.layout == "B3LD" else 1

    @property
    def token_width(self) -> int:
        """Width of the return, state and action embeddings (before any projection to d_model)."""
        return self.embed_dim or self.d_model

    def window_tokens(self, T: int | None = None) -> int:
        """Tokens of a T-step acting window (default K) up to and including the current state
        token: B3LD-RSA ends with s_t (the a_t slot is not fed), B3LD-RAS with s_t, BL3D one a step."""
        T = self.K if T is None else T
        if self.layout == "BL3D":
            return T
        return 3 * T - 1 if self.token_order == "RSA" else 3 * T

    def acting_steps(self, t: int) -> int:
        """Steps in the Transformer-like window at episode step t (0-based): left padding fills it to K."""
        return self.K if self.window_padding == "left" else min(t + 1, self.K)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)
