"""dema-lab: train Decision Mamba (DeMa) for offline RL, log its hidden attention into a Zarr
run store, and explore it in Panel dashboards and notebooks.

The names a notebook needs are importable from here; each is imported when first used, so
`import dema_lab` stays light (no torch, xarray or Panel until asked for).
"""

import importlib

__version__ = "0.1.0"

# public name -> the package that owns it
_PUBLIC = {
    "open_store": "dema_lab.analysis",
    "open_run": "dema_lab.store",
    "RunStore": "dema_lab.store",
    "load_dataset": "dema_lab.data",
    "load_checkpoint": "dema_lab.models",
    "build_model": "dema_lab.models",
    "ModelConfig": "dema_lab.models",
    "Policy": "dema_lab.models",
    "Mamba": "dema_lab.ssm",
    "hidden_attention": "dema_lab.ssm",
    "TrainConfig": "dema_lab.training",
    "train": "dema_lab.training",
    "evaluate_checkpoint": "dema_lab.training",
    "import_official": "dema_lab.integrations",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dema_lab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
