"""diffusers' transformer layers, channels-last: attention projections, GEGLU feed-forward,
BasicTransformerBlock, and the spatial (Transformer2DModel) and temporal
(TransformerTemporalModel) wrappers used by the ModelScope UNet3D.

Attribute names follow the diffusers state dict except for three renames kept in the
converter's rule table: `to_out.0` -> `to_out`, `ff.net.0` -> `ff.geglu`, `ff.net.2` ->
`ff.proj_out` (torch keeps parameter-free Dropout modules at the missing list indices).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models.attention import attention, merge_heads, split_heads
from vdit_jax.models.chunks import map_in_chunks
from vdit_jax.models.group_norm import GroupNorm

# Activation elements (tokens x width) per pixel chunk of the temporal transformer on CPU.
# Its pixels are independent, and in chunks this size the wide feed-forward activations stay
# nearer the cores: transformer_in (width 512, 1280 pixels x 5 frames) ran 9% faster.
# Accelerators run all pixels at once.
_CPU_TOKEN_CHUNK = 1 << 19


class Attention(nnx.Module):
  """Multi-head attention projections around `attention` (diffusers `Attention`)."""

  def __init__(self, query_dim: int, *, heads: int, head_dim: int, kv_dim: int | None = None,
               qkv_bias: bool = False, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    dt = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    inner, kv_dim = heads * head_dim, kv_dim or query_dim
    self.heads = heads
    self.to_q = nnx.Linear(query_dim, inner, use_bias=qkv_bias, **dt)
    self.to_k = nnx.Linear(kv_dim, inner, use_bias=qkv_bias, **dt)
    self.to_v = nnx.Linear(kv_dim, inner, use_bias=qkv_bias, **dt)
    self.to_out = nnx.Linear(inner, query_dim, **dt)

  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    """x: (N, Lq, query_dim); context: (N, Lk, kv_dim), or (N / F, Lk, kv_dim) shared by
    each run of F consecutive rows of x (a clip's frames); None for self-attention."""
    context = x if context is None else context
    q, k, v = (split_heads(proj(y), self.heads)
               for proj, y in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
    repeats, rest = divmod(x.shape[0], context.shape[0])
    if rest:
      raise ValueError(f"context batch {context.shape[0]} does not divide query batch "
                       f"{x.shape[0]}")
    # Projected after, not before, the repeat: once per clip rather than once per frame.
    k, v = (jnp.repeat(t, repeats, axis=0) for t in (k, v))
    return self.to_out(merge_heads(attention(q, k, v)))


class GEGLU(nnx.Module):
  """Linear to 2 * dim_out, then value * gelu(gate) with the exact (erf) GELU."""

  def __init__(self, dim_in: int, dim_out: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.proj = nnx.Linear(dim_in, 2 * dim_out, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    value, gate = jnp.split(self.proj(x), 2, axis=-1)
    return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
  """GEGLU(dim -> 4 dim) then Linear(4 dim -> dim)."""

  def __init__(self, dim: int, *, mult: int = 4, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    dt = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.geglu = GEGLU(dim, mult * dim, **dt)
    self.proj_out = nnx.Linear(mult * dim, dim, **dt)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.proj_out(self.geglu(x))


class BasicTransformerBlock(nnx.Module):
  """Pre-LN self-attention, second attention (cross, or self when `cross_attention_dim` is
  None: diffusers' double_self_attention) and GEGLU feed-forward, each residual."""

  def __init__(self, dim: int, *, heads: int, head_dim: int, cross_attention_dim: int | None,
               rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    dt = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm = lambda: nnx.LayerNorm(dim, epsilon=1e-5, use_fast_variance=False, **dt)
    self.norm1, self.norm2, self.norm3 = norm(), norm(), norm()
    self.attn1 = Attention(dim, heads=heads, head_dim=head_dim, **dt)
    self.attn2 = Attention(dim, heads=heads, head_dim=head_dim, kv_dim=cross_attention_dim, **dt)
    self.ff = FeedForward(dim, **dt)

  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    """x: (N, L, dim); context: (N or N / F, Lc, cross_attention_dim) (see Attention) or None."""
    x = self.attend(x, context)
    return x + self.ff(self.norm3(x))

  def attend(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    """The two residual attentions, without the feed-forward; shapes as __call__."""
    x = x + self.attn1(self.norm1(x))
    return x + self.attn2(self.norm2(x), context)


class _TransformerWrapper(nnx.Module):
  """GroupNorm(eps 1e-6) -> Linear in -> one BasicTransformerBlock -> Linear out."""

  def __init__(self, channels: int, *, heads: int, head_dim: int, groups: int,
               cross_attention_dim: int | None, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    dt = dict(dtype=dtype, param_dtype=param_dtype)
    inner = heads * head_dim
    self.norm = GroupNorm(groups, channels, epsilon=1e-6, **dt)
    self.proj_in = nnx.Linear(channels, inner, rngs=rngs, **dt)
    self.transformer_blocks = nnx.List([BasicTransformerBlock(
        inner, heads=heads, head_dim=head_dim, cross_attention_dim=cross_attention_dim,
        rngs=rngs, **dt)])
    self.proj_out = nnx.Linear(inner, channels, rngs=rngs, **dt)

  def _folded_output(self) -> tuple[jax.Array, jax.Array] | None:
    """(kernel, bias) of the last block's ff output layer followed by proj_out, or None.

    proj_out(h + ff(h)) = proj_out(h) + geglu(h) @ (W_ff_out @ W_out) + b_ff_out @ W_out: two
    linear layers in a row are one. Where proj_out narrows (transformer_in: 512 to the UNet's
    first width) the folded matrix is that much smaller than ff's second matmul.
    """
    if self.proj_out.out_features >= self.proj_out.in_features:
      return None
    ff_out, w_out = self.transformer_blocks[-1].ff.proj_out, self.proj_out.kernel[...]
    fold = lambda w: jnp.matmul(w, w_out, precision=jax.lax.Precision.HIGHEST)
    return fold(ff_out.kernel[...]), fold(ff_out.bias[...])

  def _tokens(self, tokens: jax.Array, context: jax.Array | None,
              folded: tuple[jax.Array, jax.Array] | None) -> jax.Array:
    """proj_in, the blocks, proj_out; `folded` from _folded_output (computed once per call)."""
    tokens = self.proj_in(tokens)
    *blocks, last = self.transformer_blocks
    for block in blocks:
      tokens = block(tokens, context)
    if folded is None:
      return self.proj_out(last(tokens, context))
    tokens = last.attend(tokens, context)
    hidden = last.ff.geglu(last.norm3(tokens))
    kernel, bias = (t.astype(hidden.dtype) for t in folded)
    return self.proj_out(tokens) + hidden @ kernel + bias


class Transformer2DModel(_TransformerWrapper):
  """Spatial transformer with linear projections; each frame attends over its own pixels."""

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """x: (N, H, W, C) frames; context: (N or N / F, L, D) (see Attention) -> (N, H, W, C)."""
    n, h, w, c = x.shape
    tokens = self._tokens(self.norm(x).reshape(n, h * w, c), context, self._folded_output())
    return x + tokens.reshape(n, h, w, c)


class TransformerTemporalModel(_TransformerWrapper):
  """Temporal transformer: GroupNorm over the whole clip, then each pixel attends over frames
  (both attentions are self-attention; no positional embedding)."""

  def __init__(self, channels: int, **kwargs):
    super().__init__(channels, cross_attention_dim=None, **kwargs)

  def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
    """x: (B*F, H, W, C), frames of a clip adjacent -> (B*F, H, W, C)."""
    bf, h, w, c = x.shape
    clip = self.norm(x.reshape(bf // num_frames, num_frames, h, w, c))
    tokens = clip.transpose(0, 2, 3, 1, 4).reshape(-1, num_frames, c)
    folded = self._folded_output()
    run = lambda t: self._tokens(t, None, folded)
    # Pixels are independent: on CPU, chunks of _CPU_TOKEN_CHUNK activation elements.
    chunk = max(1, _CPU_TOKEN_CHUNK // (num_frames * self.proj_in.out_features))
    if jax.default_backend() == "cpu" and tokens.shape[0] > chunk:
      tokens = map_in_chunks(run, tokens, chunk)
    else:
      tokens = run(tokens)
    out = tokens.reshape(-1, h, w, num_frames, c).transpose(0, 3, 1, 2, 4)
    return x + out.reshape(bf, h, w, c)
