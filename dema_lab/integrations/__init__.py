"""dema-lab and the world around it: checkpoints of the official DeMa code imported as runs, and
runs replayed into trackers (TensorBoard, W&B), policies exported as ONNX or TorchScript graphs for
acting without dema-lab (policy_export).

May import every layer up to study.
"""

from dema_lab.integrations.official import import_official, import_to_store
from dema_lab.integrations.trackers import export_run

__all__ = ["export_run", "import_official", "import_to_store"]
