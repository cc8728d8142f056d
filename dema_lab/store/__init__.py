"""The run store: many runs in one Zarr v3 hierarchy, read through xarray.

errors: StoreError and its kinds; schema: the store version, the kinds of group and the grammar of
every name; zarr_store: RunStore and Run (write whole groups, then publish them); lock: one writer
per run; remote: fsspec URLs and their storage options. May import common, ssm, models, envs and
data; scores and display labels live above it (dema_lab.analysis).
"""

from dema_lab.store.errors import EmptyStoreError, IntegrityError, StoreError, StoreFullError
from dema_lab.store.lock import RunBusyError, RunLock
from dema_lab.store.schema import KINDS, STORE_VERSION, checkpoint_name, parse_rollout_name, rollout_name, step_of
from dema_lab.store.zarr_store import DEFAULT_STORE, Run, RunStore, check_store, open_run

__all__ = [
    "DEFAULT_STORE",
    "KINDS",
    "STORE_VERSION",
    "EmptyStoreError",
    "IntegrityError",
    "Run",
    "RunBusyError",
    "RunLock",
    "RunStore",
    "StoreError",
    "StoreFullError",
    "check_store",
    "checkpoint_name",
    "open_run",
    "parse_rollout_name",
    "rollout_name",
    "step_of",
]
