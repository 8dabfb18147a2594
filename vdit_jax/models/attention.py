"""The one attention function every module calls.

Routing all attention through `jax.nn.dot_product_attention` lets XLA (or cuDNN flash
attention on GPUs, where shapes and dtypes allow) pick the kernel, and keeps the softmax in
fp32 when the inputs are bf16.
"""

from typing import Literal

import jax
import jax.numpy as jnp

Implementation = Literal["xla", "cudnn"] | None


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    is_causal: bool = False,
    implementation: Implementation = None,
) -> jax.Array:
  """Multi-head scaled dot-product attention with scale head_dim**-0.5.

  Args:
    q: (B, Lq, H, D) queries.
    k: (B, Lk, H, D) keys.
    v: (B, Lk, H, D) values.
    mask: boolean, broadcastable to (B, H, Lq, Lk); True where attention is allowed.
    is_causal: apply a causal mask (CLIP text).
    implementation: None lets JAX choose; "xla" or "cudnn" force one.

  Returns:
    (B, Lq, H, D) in the dtype of q.
  """
  if mask is not None and mask.ndim != 4:
    raise ValueError(f"attention mask must be 4-D (B, H, Lq, Lk), got shape {mask.shape}")
  return jax.nn.dot_product_attention(
      q, k, v, mask=mask, is_causal=is_causal, implementation=implementation)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """(B, L, H*D) -> (B, L, H, D)."""
  b, l, c = x.shape
  if c % num_heads:
    raise ValueError(f"width {c} is not divisible by {num_heads} heads")
  return x.reshape(b, l, num_heads, c // num_heads)


def merge_heads(x: jax.Array) -> jax.Array:
  """(B, L, H, D) -> (B, L, H*D)."""
  b, l, h, d = x.shape
  return x.reshape(b, l, h * d)


def padding_mask(valid: jax.Array) -> jax.Array:
  """(B, Lk) bool keys-valid -> (B, 1, 1, Lk) mask for `attention`."""
  return jnp.asarray(valid, bool)[:, None, None, :]
