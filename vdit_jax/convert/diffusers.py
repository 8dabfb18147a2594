"""diffusers PyTorch weights -> the NNX UNet3D and VAE encoder.

`src` is either a live diffusers model (torch.nn.Module with a `.config`) or a directory
written by `save_pretrained` (config.json plus weights, streamed one tensor at a time).
The NNX model is only traced, never initialised: the random initialisation of the 1.4 B
UNet parameters is never computed, only the converted weights are materialised.
"""

import jax.numpy as jnp

from vdit_jax import abstract_build
from vdit_jax.convert import core, io
from vdit_jax.models.unet3d import UNet3DConditionModel, UNet3DConfig
from vdit_jax.models.vae import VAEEncoder, VAEEncoderConfig

# Shared by the UNet and VAE attention blocks: torch's Sequential(Linear, Dropout) output.
_TO_OUT = (r"\.to_out\.0\.", ".to_out.")

UNET3D_RULES = core.Rules(renames=(
    _TO_OUT,
    (r"\.ff\.net\.0\.", ".ff.geglu."),
    (r"\.ff\.net\.2\.", ".ff.proj_out."),
    # TemporalConvLayer.convK = Sequential(GroupNorm, SiLU, [Dropout], Conv3d).
    # (Only TemporalConvLayer has indexed convK children.)
    (r"(^|\.)conv(\d)\.0\.", r"\1norm\2."),
    (r"(^|\.)conv(\d)\.[23]\.", r"\1conv\2."),
))

VAE_ENCODER_RULES = core.Rules(
    renames=(
        _TO_OUT,
        # Checkpoints older than diffusers 0.14 name the mid-block attention differently.
        (r"\.attentions\.(\d+)\.query\.", r".attentions.\1.to_q."),
        (r"\.attentions\.(\d+)\.key\.", r".attentions.\1.to_k."),
        (r"\.attentions\.(\d+)\.value\.", r".attentions.\1.to_v."),
        (r"\.attentions\.(\d+)\.proj_attn\.", r".attentions.\1.to_out."),
    ),
    ignore=(r"decoder\..*", r"post_quant_conv\..*"),
)


def unet3d_from_diffusers(src, *, dtype=jnp.float32, param_dtype=jnp.float32, seed: int = 0,
                          **settings) -> UNet3DConditionModel:
  """A diffusers UNet3DConditionModel (module or directory) as the NNX model, eval mode.

  settings: the model's run-time keyword arguments (remat, skip_temporal_if_single_frame,
    temporal_dropout).
  """
  config_dict, items, name = io.read_model(src)
  config = UNet3DConfig.from_diffusers(config_dict)
  make = lambda: UNet3DConditionModel(config, rngs=abstract_build.host_rngs(seed), dtype=dtype,
                                      param_dtype=param_dtype, **settings)
  return core.build_with_weights(make, items, UNET3D_RULES, f"UNet3DConditionModel ({name})")


def vae_encoder_from_diffusers(src, *, dtype=jnp.float32, param_dtype=jnp.float32,
                               **config_overrides) -> VAEEncoder:
  """The encoder + quant_conv of a diffusers AutoencoderKL (module or directory)."""
  config_dict, items, name = io.read_model(src)
  config = VAEEncoderConfig.from_diffusers(config_dict, **config_overrides)
  make = lambda: VAEEncoder(config, rngs=abstract_build.host_rngs(0), dtype=dtype,
                            param_dtype=param_dtype)
  return core.build_with_weights(make, items, VAE_ENCODER_RULES, f"AutoencoderKL encoder ({name})")
