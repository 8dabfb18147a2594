"""The head's mask branch: the dynamic (per-query) mask convolution and the MSO refiner.

Each decoder query's controller output holds the weights of a small per-query network of
1x1 convolutions (CondInst-style), run over the stride-8 mask features plus the relative
coordinates of the query's reference point (VD-IT `models/diffvos_cross.py:457-591`). Its
16 output channels are a 4x4 pixel-shuffled stride-2 mask; MSO (`models/decoder.py`) refines
them with the backbone's stride-8 and stride-4 features before a last shuffle to stride 1.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models import torch_init
from vdit_jax.models.resize import resize_bilinear


def _layer_shapes(in_channels: int, channels: int, layers: int,
                  rel_coord: bool) -> list[tuple[int, int]]:
  """(inputs, outputs) of each dynamic conv; the first sees the features (+ x, y offsets)."""
  first = in_channels + (2 if rel_coord else 0)
  return [(first, channels)] + [(channels, channels)] * (layers - 1)


def dynamic_param_count(in_channels: int, channels: int, layers: int, rel_coord: bool) -> int:
  """Controller outputs per query: every dynamic conv's weights and biases
  (`diffvos_cross.py:167-188`); 4,416 for 256 feature channels, 16 channels, 2 layers."""
  return sum(i * o + o for i, o in _layer_shapes(in_channels, channels, layers, rel_coord))


def _split_params(params: jax.Array, shapes: list[tuple[int, int]]):
  """(..., P) -> ([(..., out, in) weights], [(..., out) biases]): all weights first, then all
  biases, each weight out-major (`diffvos_cross.py:534-551`)."""
  sizes = [i * o for i, o in shapes] + [o for _, o in shapes]
  if params.shape[-1] != sum(sizes):
    raise ValueError(f"dynamic mask head: {params.shape[-1]} parameters per query, but "
                     f"{len(shapes)} layers of (in, out) {shapes} need {sum(sizes)}")
  starts = [sum(sizes[:k]) for k in range(len(sizes))]
  chunks = [params[..., s:s + n] for s, n in zip(starts, sizes)]
  weights = [c.reshape(c.shape[:-1] + (o, i)) for c, (i, o) in zip(chunks, shapes)]
  return weights, chunks[len(shapes):]


def _relative_coords(reference_xy: jax.Array, sizes: jax.Array, h: int, w: int,
                     stride: int) -> tuple[jax.Array, jax.Array]:
  """Reference point minus each stride-`stride` cell centre, in unpadded input pixels:
  x (B, T, Q, w) and y (B, T, Q, h) (`diffvos_cross.py:476-493,578-591`)."""
  scale = sizes[:, ::-1].astype(jnp.float32)[:, None, None, :]  # (w, h) of each video
  ref = reference_xy.astype(jnp.float32) * scale
  centres = lambda n: stride * jnp.arange(n, dtype=jnp.float32) + stride // 2
  return ref[..., :1] - centres(w), ref[..., 1:] - centres(h)


def dynamic_mask_logits(mask_features: jax.Array, params: jax.Array, reference_xy: jax.Array,
                        sizes: jax.Array, *, layers: int, channels: int, rel_coord: bool,
                        stride: int = 8) -> jax.Array:
  """Each query's own 1x1-conv network over the mask features, ReLU between the layers.

  Args:
    mask_features: (B, T, h, w, C) on the stride-`stride` grid of the padded input.
    params: (B, T, Q, P) controller outputs, P = dynamic_param_count(C, channels, layers,
      rel_coord).
    reference_xy: (B, T, Q, 2) reference points (x, y) in [0, 1] of the unpadded frame.
    sizes: (B, 2) int, each video's unpadded input (h, w) in pixels.
    layers: dynamic convs (the original's controller_layers).
    channels: their width (dynamic_mask_channels); also the output channels.
    rel_coord: append the relative (x, y) coordinates to the features of the first conv.
    stride: the mask features' stride in input pixels.

  Returns:
    (B, T, Q, h, w, channels) logits; `pixel_shuffle(·, 4)` makes them the stride-2 mask.
  """
  b, t, h, w, c = mask_features.shape
  if params.shape[:2] != (b, t) or reference_xy.shape != params.shape[:3] + (2,):
    raise ValueError(f"dynamic mask head: mask features {mask_features.shape}, parameters "
                     f"{params.shape} and reference points {reference_xy.shape} do not agree "
                     "on (B, T, Q)")
  weights, biases = _split_params(params, _layer_shapes(c, channels, layers, rel_coord))
  bias = lambda k: biases[k][:, :, :, None, None, :]
  # The first conv, split into its feature part (one matmul per frame for all queries) and
  # its two coordinate inputs, which vary along one axis each: no (B, T, Q, C + 2, h, w) copy.
  x = jnp.einsum("bthwc,btqoc->btqhwo", mask_features, weights[0][..., :c]) + bias(0)
  if rel_coord:
    rel_x, rel_y = _relative_coords(reference_xy, sizes, h, w, stride)
    x = (x + rel_x[..., None, :, None] * weights[0][..., None, None, :, c]
         + rel_y[..., :, None, None] * weights[0][..., None, None, :, c + 1])
  for k in range(1, layers):
    x = jnp.einsum("btqhwi,btqoi->btqhwo", jax.nn.relu(x), weights[k]) + bias(k)
  return x


class MSO(nnx.Module):
  """VD-IT `models/decoder.py:14-43` (SgMg's multi-scale optimiser), channels-last.

  Two residual refinements of the mask channels: with the stride-8 features, then, after a
  bilinear upsample, with the stride-4 features. Each is mask += conv2(relu(conv1(relu(
  cat(mask, features))))), 3x3 convs. The original's `out_dim` argument is stored but
  unused; it is left out.
  """

  def __init__(self, mask_dim: int, img_dim: Sequence[int], *, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    """img_dim: (stride-4 channels, stride-8 channels) of the backbone features."""
    def conv(cin):
      return nnx.Conv(cin, mask_dim, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
                      param_dtype=param_dtype, **torch_init.defaults(cin * 9), rngs=rngs)

    fine_channels, coarse_channels = img_dim
    self.conv1_1div8 = conv(mask_dim + coarse_channels)
    self.conv2_1div8 = conv(mask_dim)
    self.conv1_1div4 = conv(mask_dim + fine_channels)
    self.conv2_1div4 = conv(mask_dim)

  def __call__(self, masks: jax.Array, features: Sequence[jax.Array]) -> jax.Array:
    """masks (N, h8, w8, mask_dim); features (stride-4 (N, h4, w4, img_dim[0]), stride-8
    (N, h8, w8, img_dim[1])) -> (N, h4, w4, mask_dim)."""
    fine, coarse = features
    if masks.shape[:3] != coarse.shape[:3]:
      raise ValueError(f"MSO: masks {masks.shape} and stride-8 features {coarse.shape} differ "
                       "in (N, h, w)")
    x = jnp.concatenate([masks, coarse], axis=-1)
    masks = masks + self.conv2_1div8(jax.nn.relu(self.conv1_1div8(jax.nn.relu(x))))
    masks = resize_bilinear(masks, fine.shape[1:3])
    x = jnp.concatenate([masks, fine], axis=-1)
    return masks + self.conv2_1div4(jax.nn.relu(self.conv1_1div4(jax.nn.relu(x))))
