"""The deformable transformer of VD-IT's head (VD-IT models/deformable_transformer.py: Deformable
DETR as modified by ReferFormer and SgMg, single-stage, with iterative box refinement).

Frames travel in the batch axis (N = B*T, frame index fastest), feature maps channels-last
(N, h, w, C), padding masks True on padding.

State-dict names: every key of the original's `transformer.*` is the dotted attribute path
here with `transformer.` stripped, e.g. `transformer.encoder.layers.0.self_attn.value_proj.weight`
-> ('encoder', 'layers', 0, 'self_attn', 'value_proj', 'kernel'), so the converter needs
  core.Rules(renames=[(r"^transformer\\.", "")],
             ignore=[r"transformer\\.decoder\\.bbox_embed\\..*"])
and the project's layout rules (vdit_jax/convert/core.py): Linear weights transposed, LayerNorm
weight -> scale, `level_embed` and the decoder's `self_attn.in_proj_weight` / `in_proj_bias`
copied as they are. `transformer.decoder.bbox_embed.*` are aliases of the head's `bbox_embed`
(the original assigns the head's module list to `transformer.decoder.bbox_embed`), which the
decoder here receives as a call argument instead.
"""

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models import torch_init
from vdit_jax.models.deformable import MSDeformAttn
from vdit_jax.models.multihead_attention import MultiheadAttention

SpatialShapes = Sequence[tuple[int, int]]


def inverse_sigmoid(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """log(x / (1 - x)) with x clamped to [0, 1] and both terms to at least eps
  (VD-IT util/misc.py:560)."""
  x = jnp.clip(x, 0.0, 1.0)
  return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


def valid_ratios(mask: jax.Array) -> jax.Array:
  """(N, h, w) padding mask -> (N, 2): the unpadded fraction of the width and the height, read
  off the first row and the first column (VD-IT models/deformable_transformer.py:125)."""
  _, h, w = mask.shape
  valid_h = jnp.sum(~mask[:, :, 0], axis=1)
  valid_w = jnp.sum(~mask[:, 0, :], axis=1)
  return jnp.stack([valid_w / w, valid_h / h], axis=-1).astype(jnp.float32)


def encoder_reference_points(spatial_shapes: SpatialShapes, ratios: jax.Array) -> jax.Array:
  """The encoder's reference points: every pixel centre of every level, normalised by the level's
  valid size, seen from each level (VD-IT models/deformable_transformer.py:269).

  Args:
    spatial_shapes: static (h, w) per level.
    ratios: (N, L, 2) valid ratios (w, h) per level.

  Returns:
    (N, S, L, 2) as (x, y).
  """
  points = []
  for l, (h, w) in enumerate(spatial_shapes):
    y, x = jnp.meshgrid(jnp.linspace(0.5, h - 0.5, h), jnp.linspace(0.5, w - 0.5, w),
                        indexing="ij")
    x = x.reshape(-1)[None] / (ratios[:, None, l, 0] * w)
    y = y.reshape(-1)[None] / (ratios[:, None, l, 1] * h)
    points.append(jnp.stack([x, y], axis=-1))
  return jnp.concatenate(points, axis=1)[:, :, None] * ratios[:, None]


class _PostNormLayer(nnx.Module):
  """What the encoder and decoder layers share: the FFN (linear1, ReLU, linear2) with the
  original's initialisation (its _reset_parameters: xavier-uniform weights; the biases keep
  torch's default), post-norm residual blocks and inactive-by-default dropout."""

  def __init__(self, d_model: int, d_ffn: int, dtype, param_dtype, rngs: nnx.Rngs):
    linear = lambda n_in, n_out: nnx.Linear(
        n_in, n_out, kernel_init=nnx.initializers.xavier_uniform(),
        bias_init=torch_init.linear_default(n_in), dtype=dtype, param_dtype=param_dtype,
        rngs=rngs)
    self.linear1, self.linear2 = linear(d_model, d_ffn), linear(d_ffn, d_model)

  @staticmethod
  def _norms(count: int, d_model: int, dtype, param_dtype, rngs: nnx.Rngs):
    return [nnx.LayerNorm(d_model, epsilon=1e-5, use_fast_variance=False, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs) for _ in range(count)]

  @staticmethod
  def _dropouts(count: int, rate: float, rngs: nnx.Rngs):
    return [nnx.Dropout(rate, deterministic=True, rngs=rngs) for _ in range(count)]

  def _ffn(self, x: jax.Array, dropout_in: nnx.Dropout, dropout_out: nnx.Dropout,
           norm: nnx.LayerNorm) -> jax.Array:
    """norm(x + dropout_out(linear2(dropout_in(relu(linear1(x))))))."""
    return norm(x + dropout_out(self.linear2(dropout_in(jax.nn.relu(self.linear1(x))))))


class DeformableTransformerEncoderLayer(_PostNormLayer):
  """Deformable self-attention over all levels, then the FFN; post-norm."""

  def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int,
               n_points: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(d_model, d_ffn, dtype, param_dtype, rngs)
    self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)
    self.dropout1, self.dropout2, self.dropout3 = self._dropouts(3, dropout, rngs)
    self.norm1, self.norm2 = self._norms(2, d_model, dtype, param_dtype, rngs)

  def __call__(self, src: jax.Array, pos: jax.Array, reference_points: jax.Array,
               spatial_shapes: SpatialShapes, padding_mask: jax.Array | None) -> jax.Array:
    """src, pos (N, S, C); reference_points (N, S, L, 2); padding_mask (N, S) -> (N, S, C)."""
    attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
    src = self.norm1(src + self.dropout1(attended.astype(src.dtype)))
    return self._ffn(src, self.dropout2, self.dropout3, self.norm2)


class DeformableTransformerDecoderLayer(_PostNormLayer):
  """Self-attention over the queries of a frame (-> norm2), deformable cross-attention into the
  encoder memory (-> norm1), FFN (-> norm3): the norms keep the original's names, which do not
  follow the order they are applied in."""

  def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int,
               n_points: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(d_model, d_ffn, dtype, param_dtype, rngs)
    dt = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, **dt)
    self.self_attn = MultiheadAttention(d_model, n_heads, dropout=dropout,
                                        out_kernel_init=nnx.initializers.xavier_uniform(), **dt)
    self.dropout1, self.dropout2, self.dropout3, self.dropout4 = self._dropouts(4, dropout, rngs)
    self.norm1, self.norm2, self.norm3 = self._norms(3, d_model, dtype, param_dtype, rngs)

  def __call__(self, tgt: jax.Array, query_pos: jax.Array, reference_points: jax.Array,
               src: jax.Array, spatial_shapes: SpatialShapes,
               padding_mask: jax.Array | None) -> jax.Array:
    """tgt, query_pos (N, Q, C); reference_points (N, Q, L, 2 or 4); src (N, S, C);
    padding_mask (N, S) -> (N, Q, C)."""
    q = tgt + query_pos
    tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, q, tgt)))
    attended = self.cross_attn(tgt + query_pos, reference_points, src, spatial_shapes,
                               padding_mask)
    tgt = self.norm1(tgt + self.dropout1(attended.astype(tgt.dtype)))
    return self._ffn(tgt, self.dropout3, self.dropout4, self.norm3)


class DeformableTransformerEncoder(nnx.Module):
  """A stack of encoder layers sharing one set of reference points."""

  def __init__(self, layers: Sequence[DeformableTransformerEncoderLayer]):
    self.layers = nnx.List(layers)

  def __call__(self, src: jax.Array, spatial_shapes: SpatialShapes, ratios: jax.Array,
               pos: jax.Array, padding_mask: jax.Array | None) -> jax.Array:
    """src, pos (N, S, C); ratios (N, L, 2); padding_mask (N, S) -> memory (N, S, C)."""
    reference_points = encoder_reference_points(spatial_shapes, ratios)
    for layer in self.layers:
      src = layer(src, pos, reference_points, spatial_shapes, padding_mask)
    return src


class DeformableTransformerDecoder(nnx.Module):
  """A stack of decoder layers with iterative box refinement (VD-IT
  models/deformable_transformer.py:350; the top-k sampling points it also keeps, for
  visualisation only, are not computed)."""

  def __init__(self, layers: Sequence[DeformableTransformerDecoderLayer]):
    self.layers = nnx.List(layers)

  def __call__(self, tgt: jax.Array, reference_points: jax.Array, src: jax.Array,
               spatial_shapes: SpatialShapes, ratios: jax.Array, query_pos: jax.Array,
               padding_mask: jax.Array | None,
               bbox_embed: Sequence[Callable[[jax.Array], jax.Array]] | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """Runs the layers, refining the reference points after each.

    Args:
      tgt, query_pos: (N, Q, C).
      reference_points: (N, Q, 2) initial (x, y) in [0, 1] of the unpadded frame.
      src: (N, S, C) encoder memory; ratios (N, L, 2); padding_mask (N, S).
      bbox_embed: one callable (N, Q, C) -> (N, Q, 4) per layer (the head's box MLPs), or None
        for no refinement. After layer l, the references become sigmoid(bbox_embed[l](output)
        + inverse_sigmoid(references)) (only x, y get the inverse sigmoid added while the
        references are still points), with gradients stopped.

    Returns:
      hs (L_dec, N, Q, C): every layer's output; references (L_dec, N, Q, 4) after each layer's
      refinement (the last is never used as an input), or (L_dec, N, Q, 2), the unchanged
      initial points, without refinement.
    """
    if bbox_embed is not None and len(bbox_embed) != len(self.layers):
      raise ValueError(f"DeformableTransformerDecoder: {len(bbox_embed)} bbox_embed callables "
                       f"for {len(self.layers)} layers")
    outputs, references = [], []
    for lid, layer in enumerate(self.layers):
      scale = ratios if reference_points.shape[-1] == 2 else jnp.concatenate([ratios] * 2, -1)
      tgt = layer(tgt, query_pos, reference_points[:, :, None] * scale[:, None], src,
                  spatial_shapes, padding_mask)
      if bbox_embed is not None:
        delta = bbox_embed[lid](tgt)
        prior = inverse_sigmoid(reference_points)
        if prior.shape[-1] == 2:
          prior = jnp.concatenate([prior, jnp.zeros_like(prior)], axis=-1)
        reference_points = jax.lax.stop_gradient(jax.nn.sigmoid(delta + prior))
      outputs.append(tgt)
      references.append(reference_points)
    return jnp.stack(outputs), jnp.stack(references)


class TransformerOutput(NamedTuple):
  """What `DeformableTransformer` returns (the original's first four outputs)."""
  hs: jax.Array  # (L_dec, N, Q, C) every decoder layer's output
  # the encoder memory of the first L-1 levels (strides 8 to 32), (N, h, w, C); the original
  # returns no more (VD-IT models/deformable_transformer.py:205)
  memory: tuple[jax.Array, ...]
  init_reference: jax.Array  # (N, Q, 2) sigmoid(reference_points(query_embed))
  # (L_dec, N, Q, 4) the references after each decoder layer ((..., 2) without refinement)
  inter_references: jax.Array


class DeformableTransformer(nnx.Module):
  """Encoder over the flattened feature levels, decoder of the text-gated queries per frame."""

  def __init__(self, d_model: int, nhead: int, num_encoder_layers: int, num_decoder_layers: int,
               dim_feedforward: int, dropout: float, num_feature_levels: int, dec_n_points: int,
               enc_n_points: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    dt = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    layer_args = (d_model, dim_feedforward, dropout, num_feature_levels, nhead)
    self.encoder = DeformableTransformerEncoder(
        [DeformableTransformerEncoderLayer(*layer_args, enc_n_points, **dt)
         for _ in range(num_encoder_layers)])
    self.decoder = DeformableTransformerDecoder(
        [DeformableTransformerDecoderLayer(*layer_args, dec_n_points, **dt)
         for _ in range(num_decoder_layers)])
    self.level_embed = nnx.Param(
        nnx.initializers.normal(1.0)(rngs.params(), (num_feature_levels, d_model), param_dtype))
    self.reference_points = nnx.Linear(
        d_model, 2, kernel_init=nnx.initializers.xavier_uniform(),
        bias_init=nnx.initializers.zeros_init(), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, srcs: Sequence[jax.Array], tgt: jax.Array, masks: Sequence[jax.Array],
               pos_embeds: Sequence[jax.Array], query_embed: jax.Array,
               bbox_embed: Sequence[Callable[[jax.Array], jax.Array]] | None = None
               ) -> TransformerOutput:
    """Encodes the levels and decodes the queries of every frame.

    Args:
      srcs: per level (N, h, w, C) projected features, N = B*T.
      tgt: (B, T, Q, C) decoder input queries (the same for every frame in VD-IT).
      masks: per level (N, h, w) bool, True on padding.
      pos_embeds: per level (N, h, w, C) position encodings (level embeddings added here).
      query_embed: (Q, C) learned query positions.
      bbox_embed: per decoder layer a box MLP (N, Q, C) -> (N, Q, 4), see
        `DeformableTransformerDecoder`; None disables the refinement.

    Returns:
      TransformerOutput.
    """
    if not len(srcs) == len(masks) == len(pos_embeds) == self.level_embed.shape[0]:
      raise ValueError(f"DeformableTransformer: {len(srcs)} sources, {len(masks)} masks and "
                       f"{len(pos_embeds)} position maps for {self.level_embed.shape[0]} levels")
    n, c = srcs[0].shape[0], srcs[0].shape[-1]
    spatial_shapes = tuple(src.shape[1:3] for src in srcs)
    flat = lambda x: x.reshape(n, -1, *x.shape[3:])
    src = jnp.concatenate([flat(x) for x in srcs], axis=1).astype(self.dtype)
    mask = jnp.concatenate([flat(m) for m in masks], axis=1)
    level_embed = self.level_embed[...].astype(self.dtype)
    pos = jnp.concatenate([flat(p).astype(self.dtype) + level_embed[l]
                           for l, p in enumerate(pos_embeds)], axis=1)
    ratios = jnp.stack([valid_ratios(m) for m in masks], axis=1)
    memory = self.encoder(src, spatial_shapes, ratios, pos, mask)

    b, t, q, _ = tgt.shape
    if b * t != n:
      raise ValueError(f"DeformableTransformer: tgt {tgt.shape} has {b * t} frames, the "
                       f"features {n}")
    query_pos = jnp.broadcast_to(query_embed.astype(self.dtype), (n, q, c))
    init_reference = jax.nn.sigmoid(self.reference_points(query_pos).astype(jnp.float32))
    hs, inter_references = self.decoder(tgt.reshape(n, q, c).astype(self.dtype), init_reference,
                                        memory, spatial_shapes, ratios, query_pos, mask,
                                        bbox_embed)
    starts = [0]
    for h, w in spatial_shapes:
      starts.append(starts[-1] + h * w)
    levels = tuple(memory[:, starts[l]:starts[l + 1]].reshape(n, h, w, c)
                   for l, (h, w) in enumerate(spatial_shapes[:-1]))
    return TransformerOutput(hs, levels, init_reference, inter_references)
