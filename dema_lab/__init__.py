"""dema-lab: train Decision Mamba (DeMa) for offline RL, log its hidden attention into a Zarr
run store, and explore it in Panel dashboards and notebooks."""

__version__ = "0.1.0"

__all__ = ["__version__", "open_run", "open_store"]


def __getattr__(name):
    # the store pulls in xarray and zarr; import it only when asked for
    if name in ("open_store", "open_run"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'dema_lab' has no attribute {name!r}")
