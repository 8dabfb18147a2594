"""Model masks back at the original frame size, as the original post-processes them.

VD-IT crops the padding at the input resolution, resizes the mask LOGITS bilinearly to the
original frame size (torch F.interpolate, align_corners=False) and only then applies the
sigmoid (inference_ytvos.py:229-232, inference_davis.py:242-244, models/postprocessors.py:
47-49, 142-145). The model hands over probabilities (vdit_jax.evaluation.prediction), so
their logits are recovered first: float32 probabilities keep logits to ~1e-6 near 0, where
the threshold decides, and saturate beyond about +-16.6 (sigmoid(17) is 1.0 in float32),
which can move a pixel only where such a pixel and one of the opposite sign are neighbours.
Thresholding a probability p at `threshold` is thresholding its logit at
log(threshold / (1 - threshold)), so masks are decided in the logit domain.
"""

import functools

import numpy as np

# Float32 probabilities strictly inside (0, 1): their logits stay finite.
_P_MIN = float(np.finfo(np.float32).tiny)
_P_MAX = 1.0 - 2.0**-24


def to_logits(probabilities: np.ndarray) -> np.ndarray:
  """Logits of probabilities (any shape), float32; 0 and 1 map to about -87.3 and 16.6."""
  p = np.clip(np.asarray(probabilities, np.float64), _P_MIN, _P_MAX)
  return (np.log(p) - np.log1p(-p)).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
  """float32 sigmoid."""
  return (1.0 / (1.0 + np.exp(-np.asarray(logits, np.float32)))).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(out_size,) source indices i0, i1 and weight of i1 of torch's bilinear resize with
  align_corners=False (aten/src/ATen/native/UpSample.h `area_pixel_compute_source_index`,
  clamped at 0; `guard_index_and_lambda`) for float32: a float32 scale, and the source index
  (o + 0.5) * scale - 0.5 rounded once, as the compiler's fused multiply-add rounds it."""
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  src = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  weight = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
  return i0, i1, weight


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(..., h, w) float -> (..., *size) float32, torch F.interpolate(mode="bilinear",
  align_corners=False, antialias=False), two taps per output pixel and axis, width first."""
  x = np.asarray(x, np.float32)
  for axis, out_size in ((-1, size[1]), (-2, size[0])):
    i0, i1, weight = _taps(x.shape[axis], int(out_size))
    shape = [1] * x.ndim
    shape[axis] = -1
    weight = weight.reshape(shape)
    x = np.take(x, i0, axis=axis) * (1 - weight) + np.take(x, i1, axis=axis) * weight
  return x


def crop(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(..., H, W) padded masks -> (..., h, w), the frames' part (padding is bottom / right)."""
  return masks[..., :int(size[0]), :int(size[1])]


def logits_at(probabilities: np.ndarray, orig_size: tuple[int, int]) -> np.ndarray:
  """(..., h, w) unpadded mask probabilities -> (..., H0, W0) logits at the original size."""
  return resize_bilinear(to_logits(probabilities), orig_size)


def binary_at(probabilities: np.ndarray, orig_size: tuple[int, int],
              threshold: float) -> np.ndarray:
  """(..., h, w) unpadded mask probabilities -> (..., H0, W0) bool, sigmoid(logit) > threshold."""
  if not 0 < threshold < 1:
    raise ValueError(f"config.eval.mask_threshold must be in (0, 1), got {threshold}")
  return logits_at(probabilities, orig_size) > np.log(threshold / (1 - threshold))
