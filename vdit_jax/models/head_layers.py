"""The segmentation head's plain layers, with PyTorch's initialisation: FeatureResizer and MLP.

The head is trained from scratch, so where the original keeps torch's default
initialisation (nn.Linear / nn.ConvNd `reset_parameters`), so do these layers; flax's own
defaults (LeCun normal kernels, zero biases) have a different scale.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models import torch_init


class FeatureResizer(nnx.Module):
  """VD-IT `models/text_encoder/text_encoder.py:16-29`: Linear, LayerNorm, then Dropout.

  Projects the text encoder's token features to the head's width. Dropout is active in
  training mode only (`module.train()`).
  """

  def __init__(self, input_dim: int, output_dim: int, *, dropout: float, ln_eps: float,
               rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    dt = dict(dtype=dtype, param_dtype=param_dtype)
    self.fc = nnx.Linear(input_dim, output_dim, **torch_init.defaults(input_dim), rngs=rngs, **dt)
    self.layer_norm = nnx.LayerNorm(output_dim, epsilon=ln_eps, rngs=rngs, **dt)
    self.dropout = nnx.Dropout(dropout, deterministic=True, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., input_dim) -> (..., output_dim)."""
    return self.dropout(self.layer_norm(self.fc(x)))


class MLP(nnx.Module):
  """VD-IT `models/diffvos_cross.py:595-607`: `num_layers` Linears with ReLU between them.

  Used for the box head (MLP(C, C, 4, 3)) and the dynamic-conv controller. kernel_init /
  bias_init apply to every layer; None keeps torch's default for that layer (the controller
  passes xavier-uniform kernels and zero biases, `diffvos_cross.py:189-192`).
  """

  def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, *,
               rngs: nnx.Rngs, kernel_init=None, bias_init=None, dtype=jnp.float32,
               param_dtype=jnp.float32):
    dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
    layers = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
      init = torch_init.defaults(fan_in)
      layers.append(nnx.Linear(fan_in, fan_out, kernel_init=kernel_init or init["kernel_init"],
                               bias_init=bias_init or init["bias_init"], dtype=dtype,
                               param_dtype=param_dtype, rngs=rngs))
    self.layers = nnx.List(layers)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., input_dim) -> (..., output_dim)."""
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)
