"""diffusers PyTorch weights -> the NNX UNet3D and VAE encoder.

`src` is either a live diffusers model (torch.nn.Module with a `.config`) or a directory
written by `save_pretrained` (config.json plus weights, streamed one tensor at a time).
The NNX model is only traced, never initialised: the random initialisation of the 1.4 B
UNet parameters is never computed, only the converted weights are materialised.
"""

import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdit_jax.convert import core
from vdit_jax.convert import io as weight_io
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


def _source(src) -> tuple[dict[str, Any], Iterable[tuple[str, np.ndarray]]]:
  """(config dict, (key, array) stream) of a torch diffusers model or a model directory."""
  if isinstance(src, (str, os.PathLike)):
    return weight_io.read_config(src), weight_io.iter_tensors(src)
  if not hasattr(src, "state_dict") or not hasattr(src, "config"):
    raise TypeError(f"expected a diffusers torch model or a directory, got {type(src).__name__}")
  import torch  # pylint: disable=import-outside-toplevel
  items = ((k, v.detach().to(torch.float32).cpu().numpy()) for k, v in src.state_dict().items())
  return dict(src.config), items


def host_rngs(seed: int = 0) -> nnx.Rngs:
  """nnx.Rngs with `params` and `dropout` streams whose counters are numpy scalars.

  Each `rngs.params()` stores count + 1. Under tracing (nnx.eval_shape, jit) a jax-array
  counter becomes a tracer, and flax's store then reads `tracer.sharding`, whose error
  message walks the whole trace: building the UNet abstractly becomes quadratic (26 s for
  a tiny config). A host counter stays concrete, so abstract builds stay linear.
  """
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  for _, stream in nnx.iter_children(rngs):
    stream.count.set_value(np.zeros(stream.count.shape, np.uint32))
  return rngs


def build_with_weights(make: Callable[[], nnx.Module], items, rules: core.Rules,
                       what: str) -> nnx.Module:
  """The module `make()` builds, with every nnx.Param taken from the converted `items`.

  `make` is traced once under jit: its parameter shapes are recorded and only the
  non-parameter state (dropout RNG streams) is returned, so XLA drops the random
  parameter initialisers and no initial weights are ever computed.
  """
  traced = {}

  def build_rest():
    graphdef, params, rest = nnx.split(make(), nnx.Param, ...)
    traced["graphdef"] = graphdef
    traced["params"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return rest

  rest = jax.jit(build_rest)()
  flat = nnx.to_flat_state(traced["params"])
  arrays = core.convert_tensors(items, {tuple(p): v.get_value() for p, v in flat}, rules,
                                what=what)
  params = [(path, var.replace(jnp.asarray(arrays.pop(tuple(path))))) for path, var in flat]
  return nnx.merge(traced["graphdef"], nnx.from_flat_state(params), rest)


def unet3d_from_diffusers(src, *, dtype=jnp.float32, param_dtype=jnp.float32, seed: int = 0,
                          **config_overrides) -> UNet3DConditionModel:
  """A diffusers UNet3DConditionModel (module or directory) as the NNX model, eval mode.

  config_overrides: the port's switches (remat, skip_temporal_if_single_frame, ...).
  """
  config_dict, items = _source(src)
  config = UNet3DConfig.from_diffusers(config_dict, **config_overrides)
  make = lambda: UNet3DConditionModel(config, rngs=host_rngs(seed), dtype=dtype,
                                      param_dtype=param_dtype)
  return build_with_weights(make, items, UNET3D_RULES, "UNet3DConditionModel")


def vae_encoder_from_diffusers(src, *, dtype=jnp.float32, param_dtype=jnp.float32,
                               **config_overrides) -> VAEEncoder:
  """The encoder + quant_conv of a diffusers AutoencoderKL (module or directory)."""
  config_dict, items = _source(src)
  config = VAEEncoderConfig.from_diffusers(config_dict, **config_overrides)
  make = lambda: VAEEncoder(config, rngs=host_rngs(0), dtype=dtype, param_dtype=param_dtype)
  return build_with_weights(make, items, VAE_ENCODER_RULES, "AutoencoderKL encoder")
