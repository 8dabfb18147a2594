"""Multi-scale deformable attention (Deformable DETR, arXiv:2010.04159 section 4.1) in pure JAX.

`ms_deform_attn` is the sampling core that the original runs as a CUDA op (VD-IT
models/ops/src, with `ms_deform_attn_core_pytorch` in models/ops/functions/ms_deform_attn_func.py
as its grid_sample formulation); `MSDeformAttn` is the module around it
(models/ops/modules/ms_deform_attn.py).

How the core is laid out, and why (figures from bench/deformable_attention.py, CPU):
  * Every level is zero-padded by one pixel and all levels, batch rows and heads are flattened
    into one (rows, Dh) table, so a bilinear corner is one row index and out-of-range corners
    land on padding instead of needing a mask in the hot loop. Locations are clipped to the
    padded frame first, which keeps far-away points (any value) on zero rows.
  * Row indices and corner weights (times the attention weights) are computed once per call and
    materialised (`optimization_barrier`): left to fusion, XLA recomputes their arithmetic for
    each of the Dh channels.
  * The weighted sum over the L*P*4 corners is an explicit chain of adds of single-row gathers,
    which XLA fuses into one loop over the output. A `sum` over a gathered (..., L*P*4, Dh)
    array is a reduce, which the project's CPU options (vdit_jax/xla_options.py) hand to
    YNNPACK; the gather then cannot fuse and the gathered tensor (1.7 GB at the full encoder's
    shapes) is written out.
  * A custom VJP keeps only the inputs as residuals. Autodiff would keep the gathered tensor and
    scatter one equally large update tensor; here the backward pass recomputes the corners,
    takes the corner-gradient dot products as one fused pass over the Dh channel planes, and
    scatter-adds the value gradient one corner slot at a time in a `fori_loop`, so the largest
    temporary is (B, Lq, H, Dh).
It runs unchanged on CPU, GPU and TPU; TPUs gather 32-wide rows slowly (scenic's
projects/baselines/deformable_detr/attention.py packs the four corners into one wider row for
them), which this layout does not do.
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SpatialShapes = tuple[tuple[int, int], ...]


def ms_deform_attn(value: jax.Array, spatial_shapes: Sequence[tuple[int, int]],
                   sampling_locations: jax.Array, attention_weights: jax.Array) -> jax.Array:
  """Bilinear multi-scale sampling, weighted and summed over levels and points.

  Sampling follows `torch.nn.functional.grid_sample(mode="bilinear", padding_mode="zeros",
  align_corners=False)` at grid = 2 * location - 1: pixel (i, j) of a level of size (h, w)
  covers [j/w, (j+1)/w) x [i/h, (i+1)/h), and corners outside the level read zero. Pixel
  coordinates are location * size - 0.5, as in the original's CUDA kernel
  (models/ops/src/cuda/ms_deform_im2col_cuda.cuh:285). Computed in fp32 whatever the input
  dtypes.

  Args:
    value: (B, S, H, Dh), S = sum of h*w over the levels, level-major, row-major in a level.
    spatial_shapes: static (h, w) per level.
    sampling_locations: (B, Lq, H, L, P, 2) as (x, y), [0, 1] inside the level (any value).
    attention_weights: (B, Lq, H, L, P).

  Returns:
    (B, Lq, H*Dh) in value's dtype.
  """
  shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
  _check_inputs(value.shape, shapes, sampling_locations.shape, attention_weights.shape)
  out = _sample(value.astype(jnp.float32), shapes, sampling_locations.astype(jnp.float32),
                attention_weights.astype(jnp.float32))
  return out.astype(value.dtype)


def _check_inputs(value_shape, shapes: SpatialShapes, loc_shape, weights_shape) -> None:
  if len(value_shape) != 4:
    raise ValueError(f"ms_deform_attn: value must be (B, S, H, Dh), got shape {value_shape}")
  b, s, h, _ = value_shape
  if s != sum(lh * lw for lh, lw in shapes):
    raise ValueError(f"ms_deform_attn: value has {s} positions but spatial_shapes {shapes} "
                     f"hold {sum(lh * lw for lh, lw in shapes)}")
  if len(loc_shape) != 6 or loc_shape[0] != b or loc_shape[2:4] != (h, len(shapes)) \
      or loc_shape[5] != 2:
    raise ValueError(f"ms_deform_attn: sampling_locations must be (B={b}, Lq, H={h}, "
                     f"L={len(shapes)}, P, 2), got shape {loc_shape}")
  if tuple(weights_shape) != tuple(loc_shape[:5]):
    raise ValueError(f"ms_deform_attn: attention_weights must be {tuple(loc_shape[:5])} "
                     f"(sampling_locations without the last axis), got {weights_shape}")


def _padded_offsets(shapes: SpatialShapes) -> list[int]:
  """Start of each level in the padded position axis, and its total length last."""
  return [0] + np.cumsum([(h + 2) * (w + 2) for h, w in shapes]).tolist()


def _padded_rows(value: jax.Array, shapes: SpatialShapes) -> jax.Array:
  """(B, S, H, Dh) -> (B * S_padded * H, Dh), each level zero-padded by one pixel."""
  b, _, heads, dh = value.shape
  levels, start = [], 0
  for h, w in shapes:
    level = value[:, start:start + h * w].reshape(b, h, w, heads, dh)
    level = jnp.pad(level, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
    levels.append(level.reshape(b, -1, heads, dh))
    start += h * w
  return jnp.concatenate(levels, axis=1).reshape(-1, dh)


def _unpad(rows: jax.Array, shapes: SpatialShapes, batch: int, heads: int) -> jax.Array:
  """Inverse of `_padded_rows` (dropping the padding): -> (B, S, H, Dh)."""
  padded = rows.reshape(batch, -1, heads, rows.shape[-1])
  offsets = _padded_offsets(shapes)
  levels = [padded[:, offsets[l]:offsets[l + 1]].reshape(batch, h + 2, w + 2, heads, -1)
            [:, 1:-1, 1:-1].reshape(batch, h * w, heads, -1) for l, (h, w) in enumerate(shapes)]
  return jnp.concatenate(levels, axis=1)


def _pixel_coords(loc: jax.Array, h: int, w: int):
  """(..., 2) locations on an (h, w) level -> top-left corner, fractions, inside masks.

  Returns x0, y0 (int32, in [-1, w-1] and [-1, h-1]), fx, fy (in [0, 1]) and inside_x,
  inside_y: whether the unclipped coordinate lies strictly inside (-1, w) / (-1, h), the range
  where the sample reads any pixel (outside it, output and location gradient are zero).
  """
  px, py = loc[..., 0] * w - 0.5, loc[..., 1] * h - 0.5
  inside_x, inside_y = (px > -1) & (px < w), (py > -1) & (py < h)
  px, py = jnp.clip(px, -1, w), jnp.clip(py, -1, h)
  x0, y0 = jnp.minimum(jnp.floor(px), w - 1), jnp.minimum(jnp.floor(py), h - 1)
  return x0.astype(jnp.int32), y0.astype(jnp.int32), px - x0, py - y0, inside_x, inside_y


def _corners(shapes: SpatialShapes, loc: jax.Array, weights: jax.Array):
  """Rows of `_padded_rows` and weights of every bilinear corner.

  Returns:
    index (B, Lq, H, L*P*4) int32 and coef (B, Lq, H, L*P*4) fp32 (bilinear weight times
    attention weight), corners ordered (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1).
  """
  b, _, heads = loc.shape[:3]
  offsets = _padded_offsets(shapes)
  batch = jnp.arange(b, dtype=jnp.int32)[:, None, None, None] * offsets[-1]
  head = jnp.arange(heads, dtype=jnp.int32)[None, None, :, None]
  index, coef = [], []
  for l, (h, w) in enumerate(shapes):
    x0, y0, fx, fy, _, _ = _pixel_coords(loc[:, :, :, l], h, w)
    top_left = (batch + offsets[l] + (y0 + 1) * (w + 2) + x0 + 1) * heads + head
    index.append(top_left[..., None] + jnp.array([0, 1, w + 2, w + 3], jnp.int32) * heads)
    wx = jnp.stack([1 - fx, fx, 1 - fx, fx], -1)
    wy = jnp.stack([1 - fy, 1 - fy, fy, fy], -1)
    coef.append(wx * wy * weights[:, :, :, l, :, None])
  flat = lambda parts: jnp.stack(parts, 3).reshape(parts[0].shape[:3] + (-1,))
  return jax.lax.optimization_barrier((flat(index), flat(coef)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _sample(value: jax.Array, shapes: SpatialShapes, loc: jax.Array,
            weights: jax.Array) -> jax.Array:
  """fp32 `ms_deform_attn`."""
  b, _, heads, dh = value.shape
  rows = _padded_rows(value, shapes)
  index, coef = _corners(shapes, loc, weights)
  out = 0.0
  for k in range(index.shape[-1]):
    out = out + coef[..., k, None] * rows[index[..., k]]
  return out.reshape(b, loc.shape[1], heads * dh)


def _sample_fwd(value, shapes, loc, weights):
  return _sample(value, shapes, loc, weights), (value, loc, weights)


def _sample_bwd(shapes, residuals, grad_out):
  value, loc, weights = residuals
  b, _, heads, dh = value.shape
  lq, num_levels, num_points = loc.shape[1], loc.shape[3], loc.shape[4]
  grad_out = grad_out.reshape(b, lq, heads, dh)
  rows = _padded_rows(value, shapes)
  index, coef = _corners(shapes, loc, weights)
  # dots[..., k] = <value row of corner k, grad_out>, one channel plane at a time so the sum
  # stays a fused chain of gathers (see the module docstring).
  planes = rows.T
  dots = 0.0
  for d in range(dh):
    dots = dots + planes[d][index] * grad_out[..., d, None]
  dots = dots.reshape(b, lq, heads, num_levels, num_points, 4)
  grad_loc, grad_weights = [], []
  for l, (h, w) in enumerate(shapes):
    _, _, fx, fy, inside_x, inside_y = _pixel_coords(loc[:, :, :, l], h, w)
    d00, d01, d10, d11 = (dots[:, :, :, l, :, c] for c in range(4))
    a = weights[:, :, :, l]
    grad_weights.append((d00 * (1 - fx) + d01 * fx) * (1 - fy) + (d10 * (1 - fx) + d11 * fx) * fy)
    grad_x = ((d01 - d00) * (1 - fy) + (d11 - d10) * fy) * jnp.where(inside_x, a * w, 0.0)
    grad_y = ((d10 - d00) * (1 - fx) + (d11 - d01) * fx) * jnp.where(inside_y, a * h, 0.0)
    grad_loc.append(jnp.stack([grad_x, grad_y], -1))
  # One corner slot per iteration: the scatter's update is (B*Lq*H, Dh), not 64 times that.
  index, coef = index.reshape(-1, index.shape[-1]), coef.reshape(-1, coef.shape[-1])
  grad_rows_out = grad_out.reshape(-1, dh)

  def scatter_corner(k, grad_rows):
    column = lambda x: jax.lax.dynamic_index_in_dim(x, k, 1, keepdims=False)
    return grad_rows.at[column(index)].add(column(coef)[:, None] * grad_rows_out)

  grad_rows = jax.lax.fori_loop(0, index.shape[1], scatter_corner, jnp.zeros_like(rows))
  return (_unpad(grad_rows, shapes, b, heads), jnp.stack(grad_loc, 3),
          jnp.stack(grad_weights, 3))


_sample.defvjp(_sample_fwd, _sample_bwd)


def _offset_bias_init(n_heads: int, n_levels: int, n_points: int):
  """The original's sampling-offset bias (ms_deform_attn.py `_reset_parameters`): head i points
  along angle 2*pi*i/H, scaled so the larger of |x|, |y| is 1, times (point index + 1)."""

  def init(key, shape, dtype=jnp.float32):
    del key
    theta = np.arange(n_heads) * (2.0 * math.pi / n_heads)
    direction = np.stack([np.cos(theta), np.sin(theta)], -1)
    direction /= np.abs(direction).max(-1, keepdims=True)
    grid = direction[:, None, None, :] * np.arange(1, n_points + 1)[None, None, :, None]
    grid = np.broadcast_to(grid, (n_heads, n_levels, n_points, 2))
    return jnp.asarray(grid.reshape(shape), dtype)

  return init


class MSDeformAttn(nnx.Module):
  """Multi-scale deformable attention module (VD-IT models/ops/modules/ms_deform_attn.py).

  The attention runs in fp32 whatever `dtype` is: the original calls it under
  `autocast(enabled=False)` (VD-IT models/deformable_transformer.py:250, 329). `dtype` is the
  dtype of the output, handed back to the surrounding layers.
  """

  def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if d_model % n_heads:
      raise ValueError(f"MSDeformAttn: d_model {d_model} is not divisible by {n_heads} heads")
    self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
    self.dtype = dtype
    zeros, xavier = nnx.initializers.zeros_init(), nnx.initializers.xavier_uniform()
    linear = functools.partial(nnx.Linear, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
    samples = n_heads * n_levels * n_points
    self.sampling_offsets = linear(d_model, samples * 2, kernel_init=zeros,
                                   bias_init=_offset_bias_init(n_heads, n_levels, n_points))
    self.attention_weights = linear(d_model, samples, kernel_init=zeros, bias_init=zeros)
    self.value_proj = linear(d_model, d_model, kernel_init=xavier, bias_init=zeros)
    self.output_proj = linear(d_model, d_model, kernel_init=xavier, bias_init=zeros)

  def __call__(self, query: jax.Array, reference_points: jax.Array, input_flatten: jax.Array,
               spatial_shapes: Sequence[tuple[int, int]],
               padding_mask: jax.Array | None = None) -> jax.Array:
    """Deformable attention of the queries into the flattened levels.

    Args:
      query: (N, Lq, C).
      reference_points: (N, Lq, L, 2) as (x, y) in [0, 1] of the padded input, or
        (N, Lq, L, 4) boxes (cx, cy, w, h): offsets are then in units of half the box size
        over n_points.
      input_flatten: (N, S, C), the levels flattened as in `ms_deform_attn`.
      spatial_shapes: static (h, w) per level.
      padding_mask: (N, S) bool, True on padding (those values read as zero), or None.

    Returns:
      (N, Lq, C) in `dtype`.
    """
    n, lq, _ = query.shape
    h, l, p = self.n_heads, self.n_levels, self.n_points
    if len(spatial_shapes) != l:
      raise ValueError(f"MSDeformAttn: {len(spatial_shapes)} spatial shapes for {l} levels")
    query, input_flatten = query.astype(jnp.float32), input_flatten.astype(jnp.float32)
    reference_points = reference_points.astype(jnp.float32)
    value = self.value_proj(input_flatten)
    if padding_mask is not None:
      value = jnp.where(padding_mask[..., None], 0.0, value)
    value = value.reshape(n, -1, h, value.shape[-1] // h)
    offsets = self.sampling_offsets(query).reshape(n, lq, h, l, p, 2)
    logits = self.attention_weights(query).reshape(n, lq, h, l * p)
    weights = jax.nn.softmax(logits, axis=-1).reshape(n, lq, h, l, p)
    ref = reference_points[:, :, None, :, None, :]
    if reference_points.shape[-1] == 2:
      wh = jnp.array([(w, hh) for hh, w in spatial_shapes], jnp.float32)
      locations = ref + offsets / wh[:, None, :]
    elif reference_points.shape[-1] == 4:
      locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
    else:
      raise ValueError("MSDeformAttn: reference_points must end in 2 (points) or 4 (boxes), "
                       f"got shape {reference_points.shape}")
    out = ms_deform_attn(value, spatial_shapes, locations, weights)
    return self.output_proj(out).astype(self.dtype)
