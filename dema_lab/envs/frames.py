"""Rendered frames for videos and dashboards: one resize for every kind of env."""

from __future__ import annotations

import numpy as np


def resize_frame(frame: np.ndarray, size: int | None) -> np.ndarray:
    """An (H, W, 3) uint8 frame as a contiguous (size, size, 3) uint8 one (area interpolation);
    unchanged but contiguous when size is None or 0."""
    if size:
        import cv2

        frame = cv2.resize(np.asarray(frame), (int(size), int(size)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame, dtype=np.uint8)
