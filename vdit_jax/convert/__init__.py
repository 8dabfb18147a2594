"""PyTorch -> Flax NNX weight conversion for the frozen towers.

Each `*_from_*` function takes a live diffusers / transformers model or its
`save_pretrained` directory and returns the NNX module with the weights loaded;
`python -m vdit_jax.convert backbone ...` converts all five towers into one directory.
"""

from vdit_jax.convert.core import ConversionError, Rules
from vdit_jax.convert.diffusers import unet3d_from_diffusers, vae_encoder_from_diffusers
from vdit_jax.convert.transformers import (clip_text_from_transformers,
                                           clip_vision_from_transformers,
                                           roberta_from_transformers)

__all__ = [
    "ConversionError", "Rules", "unet3d_from_diffusers", "vae_encoder_from_diffusers",
    "clip_text_from_transformers", "clip_vision_from_transformers", "roberta_from_transformers",
]
