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
    return self.project_out(self.to_q(x), self.to_k(context), self.to_v(context))

  def project_out(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Attention of already projected q (N, Lq, inner) over k, v (N / F, Lk, inner), then
    to_out -> (N, Lq, query_dim)."""
    n, lq, inner = q.shape
    frames, rest = divmod(n, k.shape[0])
    if rest:
      raise ValueError(f"context batch {k.shape[0]} does not divide query batch {n}")
    # Frames sharing a context attend as one longer query row per clip: the same result as
    # diffusers' repeat of the context over frames, with keys projected once per clip. (The
    # repeat, fused into the attention's matmuls by XLA's CPU YNNPACK path, gave NaNs.)
    q = q.reshape(k.shape[0], frames * lq, inner)
    out = attention(*(split_heads(t, self.heads) for t in (q, k, v)))
    return self.to_out(merge_heads(out).reshape(n, lq, inner))


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

  def attend(self, x: jax.Array, context: jax.Array | None = None,
             qkv1: tuple[jax.Array, jax.Array, jax.Array] | None = None) -> jax.Array:
    """The two residual attentions, without the feed-forward; shapes as __call__. qkv1:
    attn1's projections of norm1(x), when the caller has them (see _TransformerWrapper)."""
    if qkv1 is None:
      x = x + self.attn1(self.norm1(x))
    else:
      x = x + self.attn1.project_out(*qkv1)
    return x + self.attn2(self.norm2(x), context)


class _TransformerWrapper(nnx.Module):
  """GroupNorm(eps 1e-6) -> Linear in -> one BasicTransformerBlock -> Linear out (diffusers'
  num_layers=1, as everywhere in the UNet3D)."""

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
    """(kernel, bias) of the block's ff output layer followed by proj_out, or None.

    proj_out(h + ff(h)) = proj_out(h) + geglu(h) @ (W_ff_out @ W_out) + b_ff_out @ W_out: two
    linear layers in a row are one. Where proj_out narrows (transformer_in: 512 to the UNet's
    first width) the folded matrix is that much smaller than ff's second matmul.
    """
    if self.proj_out.out_features >= self.proj_out.in_features:
      return None
    ff_out, w_out = self.transformer_blocks[0].ff.proj_out, self.proj_out.kernel[...]
    return _exact_matmul(ff_out.kernel[...], w_out), _exact_matmul(ff_out.bias[...], w_out)

  def _folded_input(self) -> dict[str, jax.Array] | None:
    """proj_in folded into attn1's q, k, v projections of norm1's output, or None.

    With h = x W_in + b_in, LayerNorm(h) = (h - mean) / std * g + beta, and G = diag(g)
    [W_q W_k W_v], the projections are (x (W_in G) + b_in G - mean * sum_rows(G)) / std
    + beta [W_q W_k W_v] (attn1 has no q, k, v biases). Where proj_in widens (transformer_in:
    the UNet's first width to 512), W_in G is that much smaller than [W_q W_k W_v]; only
    the statistics still need h.
    """
    if self.proj_in.in_features >= self.proj_in.out_features:
      return None
    block = self.transformer_blocks[0]
    attn, norm = block.attn1, block.norm1
    qkv = jnp.concatenate([p.kernel[...] for p in (attn.to_q, attn.to_k, attn.to_v)], axis=1)
    scaled = norm.scale[...][:, None] * qkv
    return dict(kernel=_exact_matmul(self.proj_in.kernel[...], scaled),
                bias=_exact_matmul(self.proj_in.bias[...], scaled),
                row_sum=scaled.sum(0), shift=_exact_matmul(norm.bias[...], qkv))

  def _first_qkv(self, x: jax.Array, h: jax.Array, fold: dict[str, jax.Array]):
    """attn1's (q, k, v), each (N, L, inner), from proj_in's input x and output h."""
    stats = h.astype(jnp.float32)
    mean = stats.mean(-1, keepdims=True)
    var = jnp.square(stats - mean).mean(-1, keepdims=True)
    inv_std = jax.lax.rsqrt(var + self.transformer_blocks[0].norm1.epsilon)
    kernel, bias, row_sum, shift = (fold[k].astype(x.dtype)
                                    for k in ("kernel", "bias", "row_sum", "shift"))
    mean, inv_std = mean.astype(x.dtype), inv_std.astype(x.dtype)
    qkv = (x @ kernel + bias - mean * row_sum) * inv_std + shift
    return jnp.split(qkv, 3, axis=-1)

  def _tokens(self, tokens: jax.Array, context: jax.Array | None, folds: dict) -> jax.Array:
    """proj_in, the block, proj_out; `folds` from _folds (computed once per call, not per
    chunk)."""
    block, hidden = self.transformer_blocks[0], self.proj_in(tokens)
    qkv1 = None if folds["input"] is None else self._first_qkv(tokens, hidden, folds["input"])
    hidden = block.attend(hidden, context, qkv1)
    if folds["output"] is None:
      return self.proj_out(hidden + block.ff(block.norm3(hidden)))
    geglu = block.ff.geglu(block.norm3(hidden))
    kernel, bias = (t.astype(geglu.dtype) for t in folds["output"])
    return self.proj_out(hidden) + geglu @ kernel + bias

  def _folds(self) -> dict:
    return dict(input=self._folded_input(), output=self._folded_output())


def _exact_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


class Transformer2DModel(_TransformerWrapper):
  """Spatial transformer with linear projections; each frame attends over its own pixels."""

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """x: (N, H, W, C) frames; context: (N or N / F, L, D) (see Attention) -> (N, H, W, C)."""
    n, h, w, c = x.shape
    tokens = self._tokens(self.norm(x).reshape(n, h * w, c), context, self._folds())
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
    folds = self._folds()
    run = lambda t: self._tokens(t, None, folds)
    # Pixels are independent: on CPU, chunks of _CPU_TOKEN_CHUNK activation elements.
    chunk = max(1, _CPU_TOKEN_CHUNK // (num_frames * self.proj_in.out_features))
    if jax.default_backend() == "cpu" and tokens.shape[0] > chunk:
      tokens = map_in_chunks(run, tokens, chunk)
    else:
      tokens = run(tokens)
    out = tokens.reshape(-1, h, w, num_frames, c).transpose(0, 3, 1, 2, 4)
    return x + out.reshape(bf, h, w, c)
