"""torch.nn.functional's resizes and pixel shuffle, channels-last, index- and weight-exact.

`F.interpolate(mode="bicubic" | "bilinear", align_corners=False)` is separable: each output
row is a fixed combination of input rows. The combinations are computed here once per
(input size, output size) on the host, the way ATen's CPU kernels compute their indices and
weights (aten/src/ATen/native/UpSample.h: `area_pixel_compute_source_index`,
`guard_index_and_lambda`, `get_cubic_upsample_coefficients`), and applied as two small
matmuls, which accelerators run at full speed. `jax.image.resize(method="cubic")` is not the
same function: its Keys kernel has A = -0.5 and it renormalises at the borders, where torch
uses A = -0.75 and repeats the edge pixel.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Keys' cubic convolution parameter of torch's bicubic (UpSample.h
# `get_cubic_upsample_coefficients`).
_CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """(n,) fractional offsets -> (n, 4) weights of the taps at floor - 1 .. floor + 2."""
  a = _CUBIC_A
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


@functools.lru_cache(maxsize=None)
def _matrix(kind: str, in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float32 resize matrix of torch's `kind` interpolation, align_corners=False.

  Output index o samples the input at (o + 0.5) * in/out - 0.5; bilinear clamps that at 0,
  bicubic does not. Taps that fall outside the input read the edge pixel.
  """
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
  if kind == "bilinear":
    src = np.maximum(src, 0.0)
  base = np.minimum(np.floor(src), in_size - 1)
  t = np.clip(src - base, 0.0, 1.0)
  if kind == "bicubic":
    offsets, weights = np.arange(-1, 3), _cubic_weights(t)
  else:
    offsets, weights = np.arange(2), np.stack([1 - t, t], axis=1)
  taps = np.clip(base[:, None].astype(np.int64) + offsets, 0, in_size - 1)
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.arange(out_size)[:, None], taps), weights)
  return matrix.astype(np.float32)


def _resize_separable(x: jax.Array, size: tuple[int, int], kind: str) -> jax.Array:
  out_h, out_w = size
  in_h, in_w = x.shape[-3:-1]
  # HIGHEST: fp32 matmuls stay fp32 on accelerators (not TF32 / one bf16 pass), as in torch.
  if out_h != in_h:
    x = jnp.einsum("oh,...hwc->...owc", _matrix(kind, in_h, out_h).astype(x.dtype), x,
                   precision=jax.lax.Precision.HIGHEST)
  if out_w != in_w:
    x = jnp.einsum("pw,...hwc->...hpc", _matrix(kind, in_w, out_w).astype(x.dtype), x,
                   precision=jax.lax.Precision.HIGHEST)
  return x


def _check_image(x: jax.Array, size, what: str) -> tuple[int, int]:
  if x.ndim < 3:
    raise ValueError(f"{what} expects (..., h, w, C) arrays, got shape {x.shape}")
  size = tuple(int(s) for s in size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f"{what} needs a static (height, width) size of positive ints, got {size}")
  return size


def resize_bicubic(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(..., h, w, C) -> (..., *size, C), as torch
  `F.interpolate(mode="bicubic", align_corners=False)`."""
  return _resize_separable(x, _check_image(x, size, "resize_bicubic"), "bicubic")


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(..., h, w, C) -> (..., *size, C), as torch
  `F.interpolate(mode="bilinear", align_corners=False)`."""
  return _resize_separable(x, _check_image(x, size, "resize_bilinear"), "bilinear")


@functools.lru_cache(maxsize=None)
def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source rows of torch's legacy 'nearest' resize: floor(o * in/out), the scale in float32
  (UpSample.h `nearest_idx`)."""
  scale = np.float32(in_size) / np.float32(out_size)
  idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int32)
  return np.minimum(idx, in_size - 1)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(..., h, w, C) -> (..., *size, C), index-exact with torch `F.interpolate(mode="nearest")`.

  Works on any dtype (bool padding masks included): it only gathers.
  """
  size = _check_image(x, size, "resize_nearest")
  for axis, out_size in zip((x.ndim - 3, x.ndim - 2), size):
    in_size = x.shape[axis]
    if out_size == 2 * in_size:
      x = jnp.repeat(x, 2, axis=axis)
    elif out_size != in_size:
      x = jnp.take(x, _nearest_indices(in_size, out_size), axis=axis)
  return x


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """(..., h, w, C * r * r) -> (..., h * r, w * r, C), r = factor.

  torch `F.pixel_shuffle` on the channels-first transpose: input channel c * r * r + i * r + j
  becomes output pixel (h * r + i, w * r + j) of channel c.
  """
  *lead, h, w, channels = x.shape
  r = int(factor)
  if r < 1 or channels % (r * r):
    raise ValueError(f"pixel_shuffle by {factor}: channels {channels} are not a multiple of "
                     f"{r * r}")
  c = channels // (r * r)
  x = x.reshape(*lead, h, w, c, r, r)
  n = len(lead)
  # (..., h, w, c, i, j) -> (..., h, i, w, j, c)
  x = x.transpose(*range(n), n, n + 3, n + 1, n + 4, n + 2)
  return x.reshape(*lead, h * r, w * r, c)
