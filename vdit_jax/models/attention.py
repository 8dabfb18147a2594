"""The one attention function every module calls.

Routing all attention through `jax.nn.dot_product_attention` lets XLA (or cuDNN flash
attention on GPUs, where shapes and dtypes allow) pick the kernel, and keeps the softmax in
fp32 when the inputs are bf16. On CPU, unmasked attention takes a path of its own instead.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vdit_jax.models.chunks import map_in_chunks

# Score elements (all batch rows and heads together) per query block of the CPU path: 8 MiB
# of fp32 scores. XLA's CPU dot_product_attention was 1.2-3x slower than this path on the
# UNet's shapes; GPUs and TPUs keep jax.nn.dot_product_attention, whose fused kernels tile.
_CPU_SCORE_BLOCK = 1 << 21
# Up to this many query blocks are static slices; beyond, lax.map keeps the compiled program
# small (it was 10% slower than slices on 1280-token frames in 4 blocks).
_CPU_MAX_SLICES = 8


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    is_causal: bool = False,
) -> jax.Array:
  """Multi-head scaled dot-product attention with scale head_dim**-0.5.

  Args:
    q: (B, Lq, H, D) queries.
    k: (B, Lk, H, D) keys.
    v: (B, Lk, H, D) values.
    mask: boolean, broadcastable to (B, H, Lq, Lk); True where attention is allowed.
    is_causal: apply a causal mask (CLIP text).

  Returns:
    (B, Lq, H, D) in the dtype of q.
  """
  if mask is not None and mask.ndim != 4:
    raise ValueError(f"attention mask must be 4-D (B, H, Lq, Lk), got shape {mask.shape}")
  # Masked and causal attention here (the text encoders) only ever sees short sequences.
  if mask is None and not is_causal and jax.default_backend() == "cpu":
    return _cpu_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)


def _cpu_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Unmasked attention as two batched matmuls around the softmax, every (batch, head) pair
  at once, the queries in blocks of about _CPU_SCORE_BLOCK score elements.

  Args and result as `attention`. Softmax statistics are fp32 whatever the input dtype.
  """
  b, lq, h, d = q.shape
  q, k, v = (x.transpose(0, 2, 1, 3).reshape(b * h, -1, d) for x in (q * d**-0.5, k, v))
  attend = lambda q_block: _softmax_attend(q_block, k, v)
  num_blocks = min(lq, math.ceil(b * h * lq * k.shape[1] / _CPU_SCORE_BLOCK))
  if num_blocks <= _CPU_MAX_SLICES:
    bounds = np.linspace(0, lq, num_blocks + 1).round().astype(int)
    out = jnp.concatenate([attend(q[:, i:j]) for i, j in zip(bounds[:-1], bounds[1:])], axis=1)
  else:
    by_query = lambda q_rows: attend(q_rows.swapaxes(0, 1)).swapaxes(0, 1)
    out = map_in_chunks(by_query, q.swapaxes(0, 1), math.ceil(lq / num_blocks)).swapaxes(0, 1)
  return out.reshape(b, h, lq, d).transpose(0, 2, 1, 3)


def _softmax_attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """q (N, l, D) prescaled, k, v (N, Lk, D) -> (N, l, D) in q's dtype."""
  scores = jnp.einsum("nqd,nkd->nqk", q, k, preferred_element_type=jnp.float32)
  weights = jnp.exp(scores - scores.max(-1, keepdims=True))
  out = jnp.einsum("nqk,nkd->nqd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return (out / weights.sum(-1, keepdims=True)).astype(q.dtype)


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


def key_valid_mask(valid: jax.Array) -> jax.Array:
  """(B, Lk) bool keys-valid -> (B, 1, 1, Lk) mask for `attention`."""
  return jnp.asarray(valid, bool)[:, None, None, :]
