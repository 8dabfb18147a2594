"""The head's sine position encodings, computed from padding masks (DETR style, normalised).

VD-IT `models/position_encoding.py:12-85`: a pixel's (token's) position is the cumulative
count of valid pixels along each axis, normalised by the count at the end of that row or
column and scaled to [0, 2 pi]; feature 2k is sin(position / 10000^(2k / F)) and feature
2k + 1 the matching cos. The 2-D encoding subtracts 0.5 from the counts (pixel centres), the
1-D text encoding does not.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

_TEMPERATURE = 10000.0
_SCALE = 2 * math.pi
_EPS = 1e-6


def _normalized_counts(valid: jax.Array, axis: int, offset: float) -> jax.Array:
  """(count of valid entries up to here along `axis` - offset) / (the count at the end + eps)
  * 2 pi, float32."""
  count = jnp.cumsum(valid, axis=axis, dtype=jnp.float32)
  total = jax.lax.slice_in_dim(count, count.shape[axis] - 1, None, axis=axis)
  return (count - offset) / (total + _EPS) * _SCALE


def _sines(positions: jax.Array, num_pos_feats: int) -> jax.Array:
  """(...) positions -> (..., num_pos_feats): interleaved sin / cos at geometric frequencies."""
  if num_pos_feats % 2:
    raise ValueError(f"num_pos_feats must be even (sin / cos pairs), got {num_pos_feats}")
  k = np.arange(num_pos_feats) // 2
  wavelengths = (_TEMPERATURE ** (2 * k / num_pos_feats)).astype(np.float32)
  angles = positions[..., None] / wavelengths
  pairs = jnp.stack([jnp.sin(angles[..., 0::2]), jnp.cos(angles[..., 1::2])], axis=-1)
  return pairs.reshape(positions.shape + (num_pos_feats,))


def _pixel_positions(valid: jax.Array, axis: int, across: int) -> jax.Array:
  """Normalised pixel-centre positions along `axis` of (N, h, w) masks; lines along `axis`
  with no valid pixel take the positions of the frame's valid lines (see `sine_2d`)."""
  lines = jnp.any(valid, axis=across, keepdims=True)
  lines = lines | ~jnp.any(lines, axis=axis, keepdims=True)
  own = _normalized_counts(valid, axis, 0.5)
  continued = _normalized_counts(lines, axis, 0.5)
  return jnp.where(jnp.any(valid, axis=axis, keepdims=True), own, continued)


def sine_2d(pad_mask: jax.Array, num_pos_feats: int) -> jax.Array:
  """VD-IT's PositionEmbeddingSine2D(num_pos_feats, normalize=True) of a padding mask.

  Args:
    pad_mask: (N, h, w) bool, True on padded pixels.
    num_pos_feats: features per axis (even); the original's is hidden_dim // 2.

  Returns:
    (N, h, w, 2 * num_pos_feats) float32: the y encoding, then the x encoding.

  Where a column has no valid pixel (all of it is padding, e.g. right of a frame's valid
  width), the original's y position is (0 - 0.5) / 1e-6 * 2 pi, about -3e6 radians, whose
  fp32 sine is rounding noise that differs between implementations. Such a column here takes
  the y positions the frame's valid rows define: the cumulative count of rows that hold a
  valid pixel, normalised like any column. For the usual bottom / right padding that is the
  valid columns' y encoding continued into the padding. Rows with no valid pixel take the x
  positions of the valid columns the same way, and a frame with no valid pixel at all is
  encoded as an unpadded frame. Every other pixel, each valid pixel included, gets the
  original's value.
  """
  if pad_mask.ndim != 3:
    raise ValueError(f"sine_2d expects an (N, h, w) padding mask, got shape {pad_mask.shape}")
  valid = ~pad_mask.astype(bool)
  y = _sines(_pixel_positions(valid, 1, 2), num_pos_feats)
  x = _sines(_pixel_positions(valid, 2, 1), num_pos_feats)
  return jnp.concatenate([y, x], axis=-1)


def sine_1d(token_mask: jax.Array, num_pos_feats: int) -> jax.Array:
  """VD-IT's PositionEmbeddingSine1D(num_pos_feats, normalize=True) of a text mask.

  Args:
    token_mask: (B, L) bool, True on real tokens (the original takes its negation).
    num_pos_feats: features (even); the original's is hidden_dim.

  Returns:
    (B, L, num_pos_feats) float32. Positions are count / (total + 1e-6) * 2 pi with no 0.5
    offset, so a caption with no token is finite (all positions 0).
  """
  if token_mask.ndim != 2:
    raise ValueError(f"sine_1d expects a (B, L) token mask, got shape {token_mask.shape}")
  return _sines(_normalized_counts(token_mask.astype(bool), 1, 0.0), num_pos_feats)
