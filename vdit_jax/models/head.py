"""VD-IT's referring segmentation head: text-gated queries, a deformable transformer over the
feature pyramid, box and class heads, dynamic mask convolutions and MSO refinement.

The original is `VDIT` in VD-IT `models/diffvos_cross.py` (SgMg's head with its spectrum
fusion switched off, `diffvos_cross.py:245`), minus the backbone and RoBERTa, which run
before it here. Attribute paths are the original's state-dict names (`transformer.*`,
`input_proj.{l}.{0,1}.*`, `class_embed.{l}`, `bbox_embed.{l}.layers.{k}`, `query_tensors`,
`query_embed`, `text_proj.*`, `fusion_module.multihead_attn.*`, `controller.layers.{k}`,
`mask_refine.*`), so `vdit_jax.convert.vdit.head_rules` is a short table.

Layout: features channels-last with the frames of a clip in the batch axis, frame index
fastest (row b * T + t); boxes cxcywh in [0, 1] of the unpadded frame; masks True on padding.
"""

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax import errors
from vdit_jax.models import mask_head, position_encoding, torch_init
from vdit_jax.models.deformable_transformer import DeformableTransformer, inverse_sigmoid
from vdit_jax.models.group_norm import GroupNorm
from vdit_jax.models.head_layers import MLP, FeatureResizer
from vdit_jax.models.multihead_attention import MultiheadAttention
from vdit_jax.models.resize import pixel_shuffle, resize_bicubic, resize_nearest

# Strides of the backbone's four levels (VD-IT imitates Video-Swin-B's, 
# models/itcross_video_swin_transformer.py:735-748); the head adds a stride-64 level.
STRIDES = (4, 8, 16, 32)
# The dynamic mask head's output stride, and the pixel shuffle that takes its 16 channels to
# the stride-2 low-resolution mask (and MSO's to the stride-1 mask) (diffvos_cross.py:166-167).
_MASK_FEATURE_STRIDE = 8
_SHUFFLE = 4
_GROUP_NORM_GROUPS = 32
# The class prior of the focal-loss initialisation (diffvos_cross.py:140-142).
_PRIOR_PROB = 0.01


class VisionLanguageFusion(nnx.Module):
  """VD-IT `models/segmentation.py:94-112`: queries gated by their attention over the caption,
  q * attn(q, text + text_pos, text), no residual and no norm."""

  def __init__(self, d_model: int, nhead: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.multihead_attn = MultiheadAttention(d_model, nhead, rngs=rngs, dtype=dtype,
                                             param_dtype=param_dtype)

  def __call__(self, queries: jax.Array, text: jax.Array, text_pos: jax.Array,
               text_mask: jax.Array) -> jax.Array:
    """queries (B, Q, C); text, text_pos (B, L, C); text_mask (B, L) True on real tokens."""
    attended = self.multihead_attn(queries, text + text_pos, text, key_padding_mask=~text_mask)
    return queries * attended


def _projection(kernel: int, c_in: int, c_out: int, *, stride: int, rngs, dt) -> nnx.List:
  """The original's input_proj entry: Sequential(Conv2d, GroupNorm(32)), xavier-uniform
  kernel and zero bias (diffvos_cross.py:144-150)."""
  pad = kernel // 2
  conv = nnx.Conv(c_in, c_out, (kernel, kernel), strides=stride, padding=((pad, pad),) * 2,
                  kernel_init=nnx.initializers.xavier_uniform(),
                  bias_init=nnx.initializers.zeros_init(), rngs=rngs, **dt)
  return nnx.List([conv, GroupNorm(_GROUP_NORM_GROUPS, c_out, epsilon=1e-5, **dt)])


def _frame_masks(pad_mask: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(B, T, H, W) input padding -> (B*T, h, w) at one level, torch's legacy nearest
  (VD-IT models/itcross_video_swin_transformer.py:806, diffvos_cross.py:280)."""
  b, t, h, w = pad_mask.shape
  frames = pad_mask.reshape(b * t, h, w).transpose(1, 2, 0)
  return resize_nearest(frames, size).transpose(2, 0, 1)


class ReferringHead(nnx.Module):
  """The head of VD-IT, built from the original's option names (`config.model.head`).

  Args:
    in_channels: the backbone's 4 levels' channels (strides 4, 8, 16, 32).
    text_dim: the text encoder's width (RoBERTa-base: 768).
    hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout, num_feature_levels,
      enc_n_points, dec_n_points: the deformable transformer.
    num_queries, num_classes: queries per frame, class logits per query.
    mask_dim: the mask features' width (the transformer's, hidden_dim).
    dynamic_mask_channels, controller_layers, rel_coord: the dynamic mask convolutions.
    with_box_refine: iterative box refinement (the only mode VD-IT uses; required).
    aux_loss: also return every earlier decoder layer's outputs.
    text_dropout, text_ln_eps: the text projection's Dropout and LayerNorm epsilon.
  """

  def __init__(self, *, in_channels: Sequence[int], text_dim: int, hidden_dim: int, nheads: int,
               enc_layers: int, dec_layers: int, dim_feedforward: int, dropout: float,
               num_feature_levels: int, enc_n_points: int, dec_n_points: int,
               num_queries: int, num_classes: int, mask_dim: int, dynamic_mask_channels: int,
               controller_layers: int, rel_coord: bool, with_box_refine: bool, aux_loss: bool,
               text_dropout: float, text_ln_eps: float, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    _check_options(in_channels, hidden_dim, mask_dim, num_feature_levels, with_box_refine,
                   dynamic_mask_channels)
    dt = dict(dtype=dtype, param_dtype=param_dtype)
    self.num_queries, self.aux_loss, self.dtype = num_queries, aux_loss, dtype
    self.dynamic_mask_channels, self.controller_layers = dynamic_mask_channels, controller_layers
    self.rel_coord = rel_coord
    self.transformer = DeformableTransformer(
        hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout,
        num_feature_levels, dec_n_points, enc_n_points, rngs=rngs, **dt)
    self.input_proj = nnx.List(
        [_projection(1, c, hidden_dim, stride=1, rngs=rngs, dt=dt) for c in in_channels[1:]]
        + [_projection(3, in_channels[-1], hidden_dim, stride=2, rngs=rngs, dt=dt)])
    prior = -math.log((1 - _PRIOR_PROB) / _PRIOR_PROB)
    self.class_embed = nnx.List([
        nnx.Linear(hidden_dim, num_classes, kernel_init=torch_init.linear_default(hidden_dim),
                   bias_init=nnx.initializers.constant(prior), rngs=rngs, **dt)
        for _ in range(dec_layers)])
    self.bbox_embed = nnx.List([self._box_head(hidden_dim, first=l == 0, rngs=rngs, dt=dt)
                                for l in range(dec_layers)])
    self.query_tensors = nnx.Param(
        jax.random.normal(rngs.params(), (num_queries, hidden_dim), param_dtype))
    self.query_embed = nnx.Embed(num_queries, hidden_dim, rngs=rngs, **dt)
    self.text_proj = FeatureResizer(text_dim, hidden_dim, dropout=text_dropout,
                                    ln_eps=text_ln_eps, rngs=rngs, **dt)
    self.fusion_module = VisionLanguageFusion(hidden_dim, 8, rngs=rngs, **dt)
    self.controller = MLP(
        hidden_dim, hidden_dim,
        mask_head.dynamic_param_count(mask_dim, dynamic_mask_channels, controller_layers,
                                      rel_coord),
        3, kernel_init=nnx.initializers.xavier_uniform(),
        bias_init=nnx.initializers.zeros_init(), rngs=rngs, **dt)
    self.mask_refine = mask_head.MSO(dynamic_mask_channels, in_channels[:2], rngs=rngs, **dt)

  @staticmethod
  def _box_head(hidden_dim: int, *, first: bool, rngs: nnx.Rngs, dt) -> MLP:
    """MLP(C, C, 4, 3) whose last layer starts at zero; the first decoder layer's box starts
    small (bias of w, h at -2) (diffvos_cross.py:143-160)."""
    box = MLP(hidden_dim, hidden_dim, 4, 3, rngs=rngs, **dt)
    last = box.layers[-1]
    last.kernel[...] = jnp.zeros_like(last.kernel[...])
    last.bias[...] = jnp.array([0.0, 0.0, -2.0, -2.0] if first else [0.0] * 4,
                               last.bias[...].dtype)
    return box

  def __call__(self, features: Sequence[jax.Array], pad_mask: jax.Array, text_hidden: jax.Array,
               text_mask: jax.Array, sizes: jax.Array) -> dict[str, Any]:
    """The head's outputs for every decoder layer.

    Args:
      features: 4 arrays (B*T, h, w, C_l) at strides 4, 8, 16, 32, frame index fastest.
      pad_mask: (B, T, H, W) bool, True on padding of the input frames.
      text_hidden: (B, L, text_dim) the text encoder's token features.
      text_mask: (B, L) bool, True on real tokens.
      sizes: (B, 2) int, each clip's unpadded input (h, w).

    Returns:
      The last decoder layer's `pred_logits` (B, T, Q, num_classes), `pred_boxes` (B, T, Q, 4),
      `pred_masks_low` (B, T, Q, H/2, W/2) logits and `dynamic_masks` (B, T, Q, H/8, W/8,
      dynamic_mask_channels) (what `refine` refines); `reference_points` (B, T, Q, 2), the
      penultimate layer's refined centres, as the original returns them; `aux_outputs`, the
      first four keys for each earlier layer (empty unless aux_loss).
    """
    b, t = pad_mask.shape[:2]
    if len(features) != len(STRIDES) or features[0].shape[0] != b * t:
      raise ValueError(f"ReferringHead: expected {len(STRIDES)} feature levels with B*T = "
                       f"{b * t} rows, got {[f.shape for f in features]}")
    tgt = self._queries(text_hidden, text_mask)
    srcs, masks = self._levels(features, pad_mask)
    pos = [position_encoding.sine_2d(m, tgt.shape[-1] // 2) for m in masks]
    out = self.transformer(srcs, jnp.broadcast_to(tgt[:, None], (b, t) + tgt.shape[1:]), masks,
                           pos, self.query_embed.embedding[...], bbox_embed=self.bbox_embed)
    mask_features = sum(resize_bicubic(m, out.memory[0].shape[1:3]) for m in out.memory)
    mask_features = mask_features.reshape((b, t) + mask_features.shape[1:])
    per_layer = [self._layer_outputs(l, out, mask_features, sizes, (b, t))
                 for l in range(out.hs.shape[0])]
    penultimate = out.inter_references[-2] if len(per_layer) > 1 else out.init_reference
    outputs = dict(per_layer[-1], aux_outputs=per_layer[:-1] if self.aux_loss else [])
    outputs["reference_points"] = penultimate[..., :2].reshape(b, t, self.num_queries, 2)
    return outputs

  def _queries(self, text_hidden: jax.Array, text_mask: jax.Array) -> jax.Array:
    """(B, Q, C): the learned queries gated by the caption (diffvos_cross.py:236-243)."""
    text_mask = text_mask.astype(bool)
    text = self.text_proj(text_hidden.astype(self.dtype))
    text_pos = position_encoding.sine_1d(text_mask, text.shape[-1]).astype(self.dtype)
    queries = jnp.broadcast_to(self.query_tensors[...].astype(self.dtype),
                               (text.shape[0],) + self.query_tensors.shape)
    return self.fusion_module(queries, text, text_pos, text_mask)

  def _levels(self, features: Sequence[jax.Array], pad_mask: jax.Array
              ) -> tuple[list[jax.Array], list[jax.Array]]:
    """The transformer's inputs: strides 8, 16, 32 projected, and stride 64 from the raw
    stride-32 features (diffvos_cross.py:245-297); per-level masks from the input's."""
    srcs = [self.input_proj[l][1](self.input_proj[l][0](x.astype(self.dtype)))
            for l, x in enumerate(features[1:])]
    last = self.input_proj[len(srcs)]
    srcs.append(last[1](last[0](features[-1].astype(self.dtype))))
    return srcs, [_frame_masks(pad_mask, src.shape[1:3]) for src in srcs]

  def _layer_outputs(self, layer: int, out, mask_features: jax.Array, sizes: jax.Array,
                     bt: tuple[int, int]) -> dict[str, jax.Array]:
    """Class logits, boxes and masks of one decoder layer (diffvos_cross.py:312-350)."""
    b, t = bt
    hs = out.hs[layer]
    reference = out.init_reference if layer == 0 else out.inter_references[layer - 1]
    delta = self.bbox_embed[layer](hs).astype(jnp.float32)
    prior = inverse_sigmoid(reference)
    if prior.shape[-1] == 2:
      prior = jnp.concatenate([prior, jnp.zeros_like(prior)], axis=-1)
    unflat = lambda x: x.reshape((b, t) + x.shape[1:])
    params = unflat(self.controller(hs))
    centres = unflat(out.inter_references[layer][..., :2])
    dynamic = mask_head.dynamic_mask_logits(
        mask_features, params, centres, sizes, layers=self.controller_layers,
        channels=self.dynamic_mask_channels, rel_coord=self.rel_coord,
        stride=_MASK_FEATURE_STRIDE)
    return {
        "pred_logits": unflat(self.class_embed[layer](hs)).astype(jnp.float32),
        "pred_boxes": unflat(jax.nn.sigmoid(delta + prior)),
        "pred_masks_low": pixel_shuffle(dynamic, _SHUFFLE)[..., 0].astype(jnp.float32),
        "dynamic_masks": dynamic,
    }

  def refine(self, outputs: Mapping[str, Any], features: Sequence[jax.Array], query: jax.Array,
             layer: int = -1) -> jax.Array:
    """Stride-1 mask logits of one query per clip after MSO (diffvos_cross.py:367-373).

    Args:
      outputs: what `__call__` returned.
      features: the same 4 levels; MSO reads the raw stride-4 and stride-8 ones.
      query: (B,) int, the query to refine in each clip.
      layer: the decoder layer (-1: the last; l >= 0 counts from the first).

    Returns:
      (B, T, H, W) logits at the padded input size.
    """
    layers = list(outputs["aux_outputs"]) + [outputs]
    dynamic = layers[layer]["dynamic_masks"]
    b, t = dynamic.shape[:2]
    chosen = jnp.take_along_axis(dynamic, query[:, None, None, None, None, None], axis=2)[:, :, 0]
    chosen = chosen.reshape((b * t,) + chosen.shape[2:])
    refined = self.mask_refine(chosen, [features[0].astype(self.dtype),
                                        features[1].astype(self.dtype)])
    masks = pixel_shuffle(refined, _SHUFFLE)[..., 0].astype(jnp.float32)
    return masks.reshape((b, t) + masks.shape[1:])


def select_query(pred_logits: jax.Array) -> jax.Array:
  """(B, T, Q, K) logits -> (B,) the query with the highest mean sigmoid score over the frames
  (and classes' max), as the original picks one per video (diffvos_cross.py:389-396)."""
  scores = jax.nn.sigmoid(pred_logits.astype(jnp.float32)).mean(axis=1).max(axis=-1)
  return jnp.argmax(scores, axis=-1)


def _check_options(in_channels: Sequence[int], hidden_dim: int, mask_dim: int,
                   num_feature_levels: int, with_box_refine: bool,
                   dynamic_mask_channels: int) -> None:
  """Raises ConfigError for option values this port does not build."""
  problems = []
  if len(in_channels) != len(STRIDES):
    problems.append(f"in_channels must name {len(STRIDES)} levels (strides {STRIDES}), got "
                    f"{tuple(in_channels)}")
  if num_feature_levels != len(STRIDES):
    problems.append(f"num_feature_levels must be {len(STRIDES)} (strides 8 to 64), got "
                    f"{num_feature_levels}")
  if mask_dim != hidden_dim:
    problems.append(f"mask_dim ({mask_dim}) must equal hidden_dim ({hidden_dim}): the mask "
                    "features are the transformer's memory")
  if dynamic_mask_channels != _SHUFFLE**2:
    problems.append(f"dynamic_mask_channels must be {_SHUFFLE**2}: the pixel shuffle x"
                    f"{_SHUFFLE} makes them one mask channel (diffvos_cross.py:347)")
  if not with_box_refine:
    problems.append("with_box_refine=False is not implemented (VD-IT trains with it)")
  if hidden_dim % _GROUP_NORM_GROUPS:
    problems.append(f"hidden_dim ({hidden_dim}) must be a multiple of {_GROUP_NORM_GROUPS} "
                    "(the input projections' GroupNorm)")
  if problems:
    raise errors.ConfigError("config.model.head: " + "; ".join(problems))
