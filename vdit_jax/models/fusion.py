"""VD-IT's text-image fusion: the image-token projection and the text-to-image cross attention.

The caption's CLIP text states attend to the frame's projected CLIP image tokens; the result
is the UNet's per-frame context (VD-IT `Text-To-Video-Finetuning/train_itcross_pn.py:49-152`).
Attribute names follow that file's state dict (`cros_attn.w_qs`, `pos_ffn.w_1`,
`linear1`, ...), so the released weights convert without renames. These layers are trained
from scratch there, so they keep torch's default initialisation.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models import torch_init
from vdit_jax.models.attention import attention, merge_heads, split_heads


def _linear(n_in: int, n_out: int, *, use_bias: bool = True, rngs: nnx.Rngs, dtype,
            param_dtype) -> nnx.Linear:
  """nnx.Linear initialised like torch's nn.Linear."""
  return nnx.Linear(n_in, n_out, use_bias=use_bias, **torch_init.defaults(n_in), rngs=rngs,
                    dtype=dtype, param_dtype=param_dtype)


def _layer_norm(width: int, eps: float, *, rngs: nnx.Rngs, dtype, param_dtype) -> nnx.LayerNorm:
  # Two-pass variance, as torch's LayerNorm.
  return nnx.LayerNorm(width, epsilon=eps, use_fast_variance=False, rngs=rngs, dtype=dtype,
                       param_dtype=param_dtype)


class ResidualProjection(nnx.Module):
  """`ResidualMLP` (`train_itcross_pn.py:126-136`): y = l1 + linear2(l1), l1 = linear1(x).

  No activation between the two linears; maps CLIP image tokens (1280 wide for ViT-H/14) to
  the text width (1024).
  """

  def __init__(self, in_width: int, out_width: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    dt = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.linear1 = _linear(in_width, out_width, **dt)
    self.linear2 = _linear(out_width, out_width, **dt)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., in_width) -> (..., out_width)."""
    first = self.linear1(x)
    return self.linear2(first) + first


class MultiHeadAttention(nnx.Module):
  """`MultiHeadAttention` (`train_itcross_pn.py:49-104`) at d_k = width / heads.

  Bias-free q / k / v / output projections (`w_qs`, `w_ks`, `w_vs`, `fc`), softmax(q k^T /
  sqrt(d_k)) v, the raw query added back, then LayerNorm (post-norm).
  """

  def __init__(self, width: int, heads: int, *, ln_eps: float, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    if width % heads:
      raise ValueError(f"cross attention: width {width} is not divisible by {heads} heads")
    dt = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.heads = heads
    self.w_qs = _linear(width, width, use_bias=False, **dt)
    self.w_ks = _linear(width, width, use_bias=False, **dt)
    self.w_vs = _linear(width, width, use_bias=False, **dt)
    self.fc = _linear(width, width, use_bias=False, **dt)
    self.layer_norm = _layer_norm(width, ln_eps, **dt)

  def __call__(self, queries: jax.Array, keys: jax.Array) -> jax.Array:
    """queries (N, Lq, width) attend to keys = values (N, Lk, width) -> (N, Lq, width)."""
    q, k, v = (split_heads(proj(x), self.heads)
               for proj, x in ((self.w_qs, queries), (self.w_ks, keys), (self.w_vs, keys)))
    return self.layer_norm(self.fc(merge_heads(attention(q, k, v))) + queries)


class PositionwiseFeedForward(nnx.Module):
  """`PositionwiseFeedForward` (`train_itcross_pn.py:106-124`): w_2(relu(w_1(x))) + x, then
  LayerNorm."""

  def __init__(self, width: int, hidden: int, *, ln_eps: float, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    dt = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.w_1 = _linear(width, hidden, **dt)
    self.w_2 = _linear(hidden, width, **dt)
    self.layer_norm = _layer_norm(width, ln_eps, **dt)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., width) -> (..., width)."""
    return self.layer_norm(self.w_2(jax.nn.relu(self.w_1(x))) + x)


class CrossAttention(nnx.Module):
  """`Crossattn` (`train_itcross_pn.py:139-152`): attention (`cros_attn`, the original's
  spelling), then the feed-forward block (`pos_ffn`)."""

  def __init__(self, width: int, *, heads: int, ffn_dim: int, ln_eps: float, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    dt = dict(ln_eps=ln_eps, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.cros_attn = MultiHeadAttention(width, heads, **dt)
    self.pos_ffn = PositionwiseFeedForward(width, ffn_dim, **dt)

  def __call__(self, text: jax.Array, image: jax.Array) -> jax.Array:
    """text (N, L, width) queries, image (N, M, width) keys and values -> (N, L, width)."""
    return self.pos_ffn(self.cros_attn(text, image))
