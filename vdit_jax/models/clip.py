"""CLIP text and vision towers (ModelScope's text encoder, OpenCLIP ViT-H/14) in Flax NNX.

Attribute paths mirror the transformers 5.x state-dict names: `CLIPTextTransformer` is laid
out like `CLIPTextModel` (`embeddings.token_embedding`, `encoder.layers.0.self_attn.q_proj`,
`final_layer_norm`; older checkpoints add a `text_model.` prefix that the converter strips)
and `CLIPVisionModelWithProjection` like its namesake (`vision_model.*`,
`visual_projection`). `pre_layrnorm` keeps the upstream spelling for that reason.

Both towers run one encoder-layer class. Every attention goes through
`vdit_jax.models.attention.attention`. Parameters and compute have separate dtypes; in
bf16 the LayerNorm statistics and the attention softmax stay in fp32.
"""

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models.attention import attention, key_valid_mask, merge_heads, split_heads
from vdit_jax.models.config import TransformersConfig

# transformers `hidden_act` names -> functions (ACT2FN semantics).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation a transformers config names in `hidden_act`."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported hidden_act {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(TransformersConfig):
  """Defaults are transformers' CLIPTextConfig defaults."""
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407

  @classmethod
  def from_transformers(cls, config):
    """Accepts a CLIPTextConfig dict or a full CLIPConfig dict (its `text_config`)."""
    return super().from_transformers(config.get("text_config", config))


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(TransformersConfig):
  """Defaults are transformers' CLIPVisionConfig defaults."""
  hidden_size: int = 768
  intermediate_size: int = 3072
  projection_dim: int = 512
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  @classmethod
  def from_transformers(cls, config):
    """Accepts a CLIPVisionConfig dict or a full CLIPConfig dict (its `vision_config`).

    Like transformers, the nested `vision_config` wins; a CLIPConfig's top-level
    `projection_dim` fills it only where the nested dict lacks one.
    """
    if "vision_config" in config:
      nested = dict(config["vision_config"])
      if "projection_dim" in config:
        nested.setdefault("projection_dim", config["projection_dim"])
      config = nested
    return super().from_transformers(config)


@dataclasses.dataclass(frozen=True)
class Precision:
  """dtype: compute dtype (None follows the inputs); param_dtype: stored weights."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def linear(self, n_in: int, n_out: int, *, rngs: nnx.Rngs, use_bias: bool = True):
    return nnx.Linear(n_in, n_out, use_bias=use_bias, dtype=self.dtype,
                      param_dtype=self.param_dtype, rngs=rngs)

  def layer_norm(self, n: int, eps: float, *, rngs: nnx.Rngs):
    # Two-pass variance as in torch; nnx computes the statistics in at least fp32.
    return nnx.LayerNorm(n, epsilon=eps, use_fast_variance=False, dtype=self.dtype,
                         param_dtype=self.param_dtype, rngs=rngs)

  def embed(self, n: int, dim: int, *, rngs: nnx.Rngs):
    return nnx.Embed(n, dim, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)


def call_layer(layer: nnx.Module, remat: bool, x: jax.Array, *args) -> jax.Array:
  """layer(x, *args), recomputed in the backward pass when `remat`.

  The layer runs as a pure function of its state under `jax.checkpoint` rather than through
  `nnx.remat`, whose state write-back fails under plain `jax.grad` of a merged module.
  `args` are closed over, so they may be Python constants (e.g. is_causal). State updates
  inside the layer (RNG counts, e.g. Dropout) are discarded, which is why the UNet, whose
  temporal convs carry Dropout, uses nnx.remat instead (`unet3d._call_block`).
  """
  if not remat:
    return layer(x, *args)
  graphdef, state = nnx.split(layer)
  return jax.checkpoint(lambda st, h: nnx.merge(graphdef, st)(h, *args))(state, x)


class CLIPAttention(nnx.Module):
  """Multi-head self-attention with q/k/v/out projections (all with bias)."""

  def __init__(self, width: int, num_heads: int, precision: Precision, *, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.q_proj = precision.linear(width, width, rngs=rngs)
    self.k_proj = precision.linear(width, width, rngs=rngs)
    self.v_proj = precision.linear(width, width, rngs=rngs)
    self.out_proj = precision.linear(width, width, rngs=rngs)

  def __call__(self, x, *, mask=None, is_causal=False):
    """x (B, L, D), mask (B, 1, 1, L) bool or None -> (B, L, D)."""
    q, k, v = (split_heads(proj(x), self.num_heads)
               for proj in (self.q_proj, self.k_proj, self.v_proj))
    return self.out_proj(merge_heads(attention(q, k, v, mask=mask, is_causal=is_causal)))


class CLIPMLP(nnx.Module):

  def __init__(self, width: int, hidden: int, act: str, precision: Precision, *,
               rngs: nnx.Rngs):
    self.act = activation(act)
    self.fc1 = precision.linear(width, hidden, rngs=rngs)
    self.fc2 = precision.linear(hidden, width, rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
  """Pre-norm transformer block shared by the text and vision towers."""

  def __init__(self, config: CLIPTextConfig | CLIPVisionConfig, precision: Precision, *,
               rngs: nnx.Rngs):
    width, eps = config.hidden_size, config.layer_norm_eps
    self.self_attn = CLIPAttention(width, config.num_attention_heads, precision, rngs=rngs)
    self.layer_norm1 = precision.layer_norm(width, eps, rngs=rngs)
    self.mlp = CLIPMLP(width, config.intermediate_size, config.hidden_act, precision, rngs=rngs)
    self.layer_norm2 = precision.layer_norm(width, eps, rngs=rngs)

  def __call__(self, x, mask=None, is_causal=False):
    """x (B, L, D) -> (B, L, D)."""
    x = x + self.self_attn(self.layer_norm1(x), mask=mask, is_causal=is_causal)
    return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
  """`num_hidden_layers` encoder layers; `remat` recomputes each layer in the backward pass."""

  def __init__(self, config, precision: Precision, *, remat: bool = False, rngs: nnx.Rngs):
    self.remat = remat
    self.layers = nnx.List([CLIPEncoderLayer(config, precision, rngs=rngs)
                            for _ in range(config.num_hidden_layers)])

  def __call__(self, x, mask=None, is_causal=False):
    """x (B, L, D) -> (B, L, D)."""
    for layer in self.layers:
      x = call_layer(layer, self.remat, x, mask, is_causal)
    return x


class CLIPTextEmbeddings(nnx.Module):

  def __init__(self, config: CLIPTextConfig, precision: Precision, *, rngs: nnx.Rngs):
    self.token_embedding = precision.embed(config.vocab_size, config.hidden_size, rngs=rngs)
    self.position_embedding = precision.embed(config.max_position_embeddings,
                                              config.hidden_size, rngs=rngs)

  def __call__(self, input_ids):
    """input_ids (B, L) int -> (B, L, D)."""
    length, limit = input_ids.shape[-1], self.position_embedding.num_embeddings
    if length > limit:
      raise ValueError(f"CLIP text: sequence length {length} exceeds the {limit} positions")
    return self.token_embedding(input_ids) + self.position_embedding(jnp.arange(length))


class CLIPTextTransformer(nnx.Module):
  """CLIP text encoder (causal self-attention, final LayerNorm), as `CLIPTextModel`."""

  def __init__(self, config: CLIPTextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: bool = False, rngs: nnx.Rngs):
    self.config = config
    precision = Precision(dtype, param_dtype)
    self.embeddings = CLIPTextEmbeddings(config, precision, rngs=rngs)
    self.encoder = CLIPEncoder(config, precision, remat=remat, rngs=rngs)
    self.final_layer_norm = precision.layer_norm(config.hidden_size, config.layer_norm_eps,
                                                 rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, *, with_pooled: bool = False):
    """Encodes token ids.

    Args:
      input_ids: (B, L) int.
      attention_mask: (B, L), 1 for real tokens; None attends to every token (what
        ModelScope/VD-IT do: pad tokens are attended to, causally).
      with_pooled: also return the hidden state at the end-of-text token.

    Returns:
      last_hidden_state (B, L, D) after the final LayerNorm, and with `with_pooled` the
      pooled output (B, D) as well.
    """
    mask = None if attention_mask is None else key_valid_mask(attention_mask)
    x = self.encoder(self.embeddings(input_ids), mask, True)
    x = self.final_layer_norm(x)
    if not with_pooled:
      return x
    return x, x[jnp.arange(x.shape[0]), self._eos_position(input_ids)]

  def _eos_position(self, input_ids):
    """(B,) index of each sequence's end-of-text token, by transformers' rule."""
    if self.config.eos_token_id == 2:
      # Legacy configs (ModelScope's) carry eos_token_id 2: the EOT token has the largest id.
      return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)


class CLIPVisionEmbeddings(nnx.Module):
  """Patchify conv (no bias) + class token + learned positions."""

  def __init__(self, config: CLIPVisionConfig, precision: Precision, *, rngs: nnx.Rngs):
    self.image_size, width = config.image_size, config.hidden_size
    p = config.patch_size
    self.class_embedding = nnx.Param(
        jax.random.normal(rngs.params(), (width,), precision.param_dtype))
    self.patch_embedding = nnx.Conv(config.num_channels, width, (p, p), strides=(p, p),
                                    padding="VALID", use_bias=False, dtype=precision.dtype,
                                    param_dtype=precision.param_dtype, rngs=rngs)
    self.position_embedding = precision.embed((config.image_size // p) ** 2 + 1, width,
                                              rngs=rngs)

  def __call__(self, pixel_values):
    """pixel_values (N, S, S, C) with S = image_size -> (N, 1 + (S/patch)^2, D)."""
    n, h, w, _ = pixel_values.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(f"CLIP vision: expected {self.image_size}x{self.image_size} pixels, "
                       f"got {h}x{w} (input shape {pixel_values.shape}, channels last)")
    patches = self.patch_embedding(pixel_values)
    patches = patches.reshape(n, -1, patches.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype),
                           (n, 1, patches.shape[-1]))
    x = jnp.concatenate([cls, patches], axis=1)
    return x + self.position_embedding(jnp.arange(x.shape[1]))


class CLIPVisionTransformer(nnx.Module):
  """ViT without head, as transformers' `CLIPVisionModel`."""

  def __init__(self, config: CLIPVisionConfig, precision: Precision, *, remat: bool = False,
               rngs: nnx.Rngs):
    width, eps = config.hidden_size, config.layer_norm_eps
    self.embeddings = CLIPVisionEmbeddings(config, precision, rngs=rngs)
    self.pre_layrnorm = precision.layer_norm(width, eps, rngs=rngs)
    self.encoder = CLIPEncoder(config, precision, remat=remat, rngs=rngs)
    self.post_layernorm = precision.layer_norm(width, eps, rngs=rngs)

  def __call__(self, pixel_values):
    """pixel_values (N, S, S, C) -> (last_hidden_state (N, T, D), pooled (N, D)).

    last_hidden_state is the encoder output BEFORE post_layernorm (what VD-IT feeds its
    image-token projection); pooled is post_layernorm of the class token.
    """
    x = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
    return x, self.post_layernorm(x[:, 0])


class CLIPVisionModelWithProjection(nnx.Module):
  """CLIP image tower with its projection (ViT-H/14 of OpenCLIP for VD-IT)."""

  def __init__(self, config: CLIPVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: bool = False, rngs: nnx.Rngs):
    self.config = config
    precision = Precision(dtype, param_dtype)
    self.vision_model = CLIPVisionTransformer(config, precision, remat=remat, rngs=rngs)
    self.visual_projection = precision.linear(config.hidden_size, config.projection_dim,
                                              use_bias=False, rngs=rngs)

  def __call__(self, pixel_values):
    """pixel_values (N, S, S, C), CLIP-normalised, channels last.

    Returns:
      last_hidden_state (N, 1 + (S/patch)^2, D), before post_layernorm;
      image_embeds (N, projection_dim).
    """
    hidden, pooled = self.vision_model(pixel_values)
    return hidden, self.visual_projection(pooled)


def count_params(module: nnx.Module) -> int:
  """Number of scalar parameters (works on `nnx.eval_shape`-made abstract modules)."""
  return sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)))
