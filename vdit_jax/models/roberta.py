"""RoBERTa encoder (roberta-base, the text branch of VD-IT's head) in Flax NNX.

Attribute paths mirror transformers' `RobertaModel` state dict (`embeddings.word_embeddings`,
`encoder.layer.0.attention.self.query`, `pooler.dense`, ...), so the hub checkpoint's
`roberta.` prefix is all the converter strips. Post-norm blocks, bidirectional attention
with a key-padding mask, positions counted from `pad_token_id + 1` over non-pad tokens.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from vdit_jax.models.attention import attention, key_valid_mask, merge_heads, split_heads
from vdit_jax.models.clip import Precision, activation, call_layer
from vdit_jax.models.config import TransformersConfig


@dataclasses.dataclass(frozen=True)
class RobertaConfig(TransformersConfig):
  """Defaults are roberta-base's."""
  vocab_size: int = 50265
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 514
  type_vocab_size: int = 1
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1


class RobertaEmbeddings(nnx.Module):

  def __init__(self, config: RobertaConfig, precision: Precision, *, rngs: nnx.Rngs):
    width = config.hidden_size
    self.pad_token_id = config.pad_token_id
    self.word_embeddings = precision.embed(config.vocab_size, width, rngs=rngs)
    self.position_embeddings = precision.embed(config.max_position_embeddings, width, rngs=rngs)
    self.token_type_embeddings = precision.embed(config.type_vocab_size, width, rngs=rngs)
    self.LayerNorm = precision.layer_norm(width, config.layer_norm_eps, rngs=rngs)

  def __call__(self, input_ids, token_type_ids=None):
    """input_ids (B, L) int, token_type_ids (B, L) int or None (zeros) -> (B, L, D)."""
    limit = self.position_embeddings.num_embeddings - self.pad_token_id - 1
    if input_ids.shape[-1] > limit:
      raise ValueError(f"RoBERTa: sequence length {input_ids.shape[-1]} exceeds the {limit} "
                       "positions the model has")
    # Pad tokens keep position pad_token_id; real tokens count up from pad_token_id + 1.
    real = (input_ids != self.pad_token_id).astype(jnp.int32)
    positions = jnp.cumsum(real, axis=-1) * real + self.pad_token_id
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
         + self.position_embeddings(positions))
    return self.LayerNorm(x)


class RobertaSelfAttention(nnx.Module):

  def __init__(self, width: int, num_heads: int, precision: Precision, *, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.query = precision.linear(width, width, rngs=rngs)
    self.key = precision.linear(width, width, rngs=rngs)
    self.value = precision.linear(width, width, rngs=rngs)

  def __call__(self, x, mask=None):
    """x (B, L, D), mask (B, 1, 1, L) bool or None -> (B, L, D) before the output dense."""
    q, k, v = (split_heads(proj(x), self.num_heads)
               for proj in (self.query, self.key, self.value))
    return merge_heads(attention(q, k, v, mask=mask))


class RobertaResidualOutput(nnx.Module):
  """dense -> + residual -> LayerNorm (transformers' RobertaSelfOutput / RobertaOutput)."""

  def __init__(self, n_in: int, width: int, eps: float, precision: Precision, *,
               rngs: nnx.Rngs):
    self.dense = precision.linear(n_in, width, rngs=rngs)
    self.LayerNorm = precision.layer_norm(width, eps, rngs=rngs)

  def __call__(self, x, residual):
    return self.LayerNorm(self.dense(x) + residual)


class RobertaAttention(nnx.Module):

  def __init__(self, config: RobertaConfig, precision: Precision, *, rngs: nnx.Rngs):
    width = config.hidden_size
    self.self = RobertaSelfAttention(width, config.num_attention_heads, precision, rngs=rngs)
    self.output = RobertaResidualOutput(width, width, config.layer_norm_eps, precision,
                                        rngs=rngs)

  def __call__(self, x, mask=None):
    return self.output(self.self(x, mask), x)


class RobertaIntermediate(nnx.Module):

  def __init__(self, config: RobertaConfig, precision: Precision, *, rngs: nnx.Rngs):
    self.act = activation(config.hidden_act)
    self.dense = precision.linear(config.hidden_size, config.intermediate_size, rngs=rngs)

  def __call__(self, x):
    return self.act(self.dense(x))


class RobertaLayer(nnx.Module):
  """Post-norm block: attention, then feed-forward, each with residual + LayerNorm."""

  def __init__(self, config: RobertaConfig, precision: Precision, *, rngs: nnx.Rngs):
    self.attention = RobertaAttention(config, precision, rngs=rngs)
    self.intermediate = RobertaIntermediate(config, precision, rngs=rngs)
    self.output = RobertaResidualOutput(config.intermediate_size, config.hidden_size,
                                        config.layer_norm_eps, precision, rngs=rngs)

  def __call__(self, x, mask=None):
    """x (B, L, D) -> (B, L, D)."""
    x = self.attention(x, mask)
    return self.output(self.intermediate(x), x)


class RobertaEncoder(nnx.Module):

  def __init__(self, config: RobertaConfig, precision: Precision, *, remat: bool = False,
               rngs: nnx.Rngs):
    self.remat = remat
    self.layer = nnx.List([RobertaLayer(config, precision, rngs=rngs)
                           for _ in range(config.num_hidden_layers)])

  def __call__(self, x, mask=None):
    for layer in self.layer:
      x = call_layer(layer, self.remat, x, mask)
    return x


class RobertaPooler(nnx.Module):

  def __init__(self, width: int, precision: Precision, *, rngs: nnx.Rngs):
    self.dense = precision.linear(width, width, rngs=rngs)

  def __call__(self, x):
    """x (B, L, D) -> tanh(dense(x[:, 0])) (B, D)."""
    return jnp.tanh(self.dense(x[:, 0]))


class RobertaModel(nnx.Module):
  """RoBERTa encoder with an optional pooler.

  The hub's roberta-base checkpoint is a masked-LM one; build with `add_pooling_layer=False`
  when the source has no `pooler.dense` weights (VD-IT computes the pooler but never uses it).
  """

  def __init__(self, config: RobertaConfig, *, add_pooling_layer: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False,
               rngs: nnx.Rngs):
    self.config = config
    precision = Precision(dtype, param_dtype)
    self.embeddings = RobertaEmbeddings(config, precision, rngs=rngs)
    self.encoder = RobertaEncoder(config, precision, remat=remat, rngs=rngs)
    self.pooler = (RobertaPooler(config.hidden_size, precision, rngs=rngs)
                   if add_pooling_layer else None)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
    """Encodes token ids.

    Args:
      input_ids: (B, L) int, padded with `pad_token_id`.
      attention_mask: (B, L), 1 for real tokens; None attends to every token.
      token_type_ids: (B, L) int or None (all zeros).

    Returns:
      (last_hidden_state (B, L, D), pooler_output (B, D) or None without a pooler).
    """
    mask = None if attention_mask is None else key_valid_mask(attention_mask)
    x = self.encoder(self.embeddings(input_ids, token_type_ids), mask)
    return x, (None if self.pooler is None else self.pooler(x))
