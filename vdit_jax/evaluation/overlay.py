"""A predicted mask drawn over its frame, for a glance at what a model does (TensorBoard)."""

import numpy as np

RED = (255, 40, 40)


def mask_overlay(frame: np.ndarray, mask: np.ndarray, colour=RED,
                 alpha: float = 0.5) -> np.ndarray:
  """(h, w, 3) uint8 frame with the (h, w) bool mask blended in `colour`: (h, w, 3) uint8."""
  frame = np.asarray(frame, np.float32)
  mask = np.asarray(mask, bool)
  if frame.shape[:2] != mask.shape:
    raise ValueError(f"frame {frame.shape} and mask {mask.shape} differ in size")
  blended = np.where(mask[..., None], (1 - alpha) * frame + alpha * np.asarray(colour), frame)
  return np.round(blended).astype(np.uint8)
