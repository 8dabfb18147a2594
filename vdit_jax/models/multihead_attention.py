"""torch.nn.MultiheadAttention with batch-first arrays, at its state-dict names.

Weight conversion is a plain copy: `in_proj_weight` (3C, C) and `in_proj_bias` (3C,) are kept
in torch's layout (rows: query, key, value projections) under the same names, and `out_proj`
is an nnx.Linear (`out_proj.weight` -> `out_proj.kernel` transposed, the project's Linear rule
in vdit_jax/convert/core.py).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models import torch_init
from vdit_jax.models.attention import merge_heads, split_heads


class MultiheadAttention(nnx.Module):
  """torch.nn.MultiheadAttention(embed_dim, num_heads, dropout) with bias and equal q/k/v widths.

  Its attention is written out rather than taken from `vdit_jax.models.attention.attention`
  because torch drops attention probabilities (`dropout`, in training mode only); the sequences
  here (queries, caption tokens) are short. Initialisation follows torch: in_proj xavier-uniform,
  out_proj torch's Linear default unless `out_kernel_init` says otherwise, zero biases.
  """

  def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0,
               out_kernel_init=None, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if embed_dim % num_heads:
      raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} is not divisible by "
                       f"{num_heads} heads")
    self.num_heads, self.dtype = num_heads, dtype
    xavier = nnx.initializers.xavier_uniform(in_axis=1, out_axis=0)
    self.in_proj_weight = nnx.Param(xavier(rngs.params(), (3 * embed_dim, embed_dim), param_dtype))
    self.in_proj_bias = nnx.Param(jnp.zeros((3 * embed_dim,), param_dtype))
    self.out_proj = nnx.Linear(embed_dim, embed_dim,
                               kernel_init=out_kernel_init or torch_init.linear_default(embed_dim),
                               bias_init=nnx.initializers.zeros_init(), dtype=dtype,
                               param_dtype=param_dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, deterministic=True, rngs=rngs)

  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array,
               key_padding_mask: jax.Array | None = None) -> jax.Array:
    """Attention of query over key/value.

    Args:
      query: (B, Lq, C).
      key, value: (B, Lk, C).
      key_padding_mask: (B, Lk) bool, True on keys to ignore (torch's convention), or None.
        A query whose keys are all ignored averages every value (torch returns NaN there).

    Returns:
      (B, Lq, C) in `dtype`; torch's second output (the averaged weights) is not returned.
    """
    weight = self.in_proj_weight[...].astype(self.dtype)
    bias = self.in_proj_bias[...].astype(self.dtype)
    q, k, v = (split_heads(jnp.einsum("blc,oc->blo", x.astype(self.dtype), w) + b, self.num_heads)
               for x, w, b in zip((query, key, value), jnp.split(weight, 3), jnp.split(bias, 3)))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q * q.shape[-1]**-0.5, k,
                        preferred_element_type=jnp.float32)
    if key_padding_mask is not None:
      scores = jnp.where(key_padding_mask[:, None, None, :], jnp.finfo(jnp.float32).min, scores)
    probs = self.dropout(jax.nn.softmax(scores, axis=-1)).astype(self.dtype)
    return self.out_proj(merge_heads(jnp.einsum("bhqk,bkhd->bqhd", probs, v)))
