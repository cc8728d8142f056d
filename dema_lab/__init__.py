"""dema-lab: train Decision Mamba (DeMa) for offline RL, log its hidden attention into a Zarr
run store, and explore it in Panel dashboards and notebooks."""

__version__ = "0.1.0"
