"""Selective state-space layers: the scan, its hidden attention and the Mamba mixer (kernels/
holds the compiled CPU code). May import common only."""

from dema_lab.ssm.hidden_attention import (
    AGGREGATIONS,
    aggregate_channels,
    apply_attention,
    hidden_attention,
    hidden_attention_row,
    segsum,
)
from dema_lab.ssm.mamba import Mamba, MambaState
from dema_lab.ssm.scan import (
    BACKENDS,
    backend_for,
    mamba_ssm_available,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    use_backend,
)

__all__ = [
    "AGGREGATIONS",
    "BACKENDS",
    "Mamba",
    "MambaState",
    "aggregate_channels",
    "apply_attention",
    "backend_for",
    "hidden_attention",
    "hidden_attention_row",
    "mamba_ssm_available",
    "segsum",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "use_backend",
]
