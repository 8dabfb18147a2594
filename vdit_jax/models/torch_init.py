"""PyTorch's default initialisers, for modules whose original leaves them in place."""

import jax
import jax.numpy as jnp


def linear_default(fan_in: int):
  """torch.nn.Linear's default for a weight or bias with `fan_in` inputs:
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5) for the weight)."""
  bound = fan_in**-0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def defaults(fan_in: int) -> dict:
  """`kernel_init` / `bias_init` of torch's nn.Linear and nn.ConvNd: both `linear_default`.
  fan_in is in_features for a Linear, in_channels * kh * kw for a Conv2d."""
  return dict(kernel_init=linear_default(fan_in), bias_init=linear_default(fan_in))
