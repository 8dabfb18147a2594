"""The one attention function every module calls.

Routing all attention through `jax.nn.dot_product_attention` lets XLA (or cuDNN flash
attention on GPUs, where shapes and dtypes allow) pick the kernel, and keeps the softmax in
fp32 when the inputs are bf16. On CPU, long unmasked sequences take a blockwise path instead.
"""

import jax
import jax.numpy as jnp

from vdit_jax.models.chunks import map_in_chunks

# Score elements per block of the CPU blockwise path: a (query block, Lk) fp32 score tile of
# at most 2 MiB stays in cache between the two matmuls. XLA's CPU attention materialises all
# (B, H, Lq, Lk) scores: on 1280-token frames it was 1.7x slower than this path. GPUs and TPUs
# keep jax.nn.dot_product_attention, whose fused kernels do this tiling themselves.
_CPU_SCORE_BLOCK = 1 << 19


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
  # Only unmasked attention needs the blockwise path: masked and causal attention here (the
  # text encoders) only ever sees short sequences.
  if (mask is None and not is_causal and jax.default_backend() == "cpu"
      and q.shape[1] * k.shape[1] > _CPU_SCORE_BLOCK):
    return _blockwise_attention(q, k, v, block=max(1, _CPU_SCORE_BLOCK // k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)


def _blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block: int) -> jax.Array:
  """Unmasked attention, one (batch, head) and about `block` queries at a time.

  Args and result as `attention`. Softmax statistics are fp32 whatever the input dtype.
  """
  b, lq, h, d = q.shape
  q, k, v = (x.transpose(0, 2, 1, 3).reshape(b * h, -1, d) for x in (q * d**-0.5, k, v))

  def one_block(q_block, k_head, v_head):
    scores = jnp.matmul(q_block, k_head.T, preferred_element_type=jnp.float32)
    weights = jnp.exp(scores - scores.max(-1, keepdims=True))
    out = jnp.matmul(weights.astype(v.dtype), v_head, preferred_element_type=jnp.float32)
    return (out / weights.sum(-1, keepdims=True)).astype(q.dtype)

  def one_head(args):
    q_head, k_head, v_head = args
    return map_in_chunks(lambda q_block: one_block(q_block, k_head, v_head), q_head, block)

  out = jax.lax.map(one_head, (q, k, v)).reshape(b, h, lq, d)
  return out.transpose(0, 2, 1, 3)


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
