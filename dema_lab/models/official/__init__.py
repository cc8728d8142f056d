"""Checkpoints of the official DeMa code (github AndssY/dema) as dema-lab models.

unpickler: reads the pickle without running it; convert: infers the architecture from the tensors'
names and shapes and maps them onto dema-lab's models. The state normalisation and the env are
passed in (dema_lab.integrations.official reads them from a dataset), so nothing here loads data.
"""

from dema_lab.models.official.convert import (
    OFFICIAL_K,
    OFFICIAL_N_HEAD,
    infer_official,
    map_official,
    official_checkpoint,
    official_state_dict,
)
from dema_lab.models.official.unpickler import (
    OfficialCheckpointError,
    RestrictedUnpickler,
    UnsafeCheckpointError,
    read_official,
)

__all__ = [
    "OFFICIAL_K",
    "OFFICIAL_N_HEAD",
    "OfficialCheckpointError",
    "RestrictedUnpickler",
    "UnsafeCheckpointError",
    "infer_official",
    "map_official",
    "official_checkpoint",
    "official_state_dict",
    "read_official",
]
