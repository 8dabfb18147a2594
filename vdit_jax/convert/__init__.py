"""PyTorch -> Flax NNX weight conversion for the frozen towers."""

from vdit_jax.convert.core import ConversionError, Rules, convert_tensors, load_params, target_shapes
