"""The encoder half of diffusers' AutoencoderKL (SD VAE) in Flax NNX, channels-last, with
VD-IT's stride-4 feature tap.

`VAEEncoder(images)` returns the posterior (a DiagonalGaussian over latents) and the tap,
the output of `encoder.down_blocks[tap_block].resnets[tap_layer]` (512 channels at H/4 in
the real config). Scaling latents by `config.scaling_factor` is left to the caller.
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx, struct

from vdit_jax.models.config import DiffusersConfig
from vdit_jax.models.group_norm import GroupNorm
from vdit_jax.models.resnet import Downsample2D, ResnetBlock2D, conv2d
from vdit_jax.models.transformer_blocks import Attention

_VAE_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VAEEncoderConfig(DiffusersConfig):
  """Encoder architecture (diffusers field names) and the tap position."""
  in_channels: int = 3
  latent_channels: int = 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  use_quant_conv: bool = True
  mid_block_add_attention: bool = True
  scaling_factor: float = 0.18215
  tap_block: int = 2
  tap_layer: int = 1
  # AutoencoderKL config.json keys that only concern the decoder or the pipeline.
  diffusers_ignored = frozenset({
      "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values",
      "out_channels", "up_block_types", "sample_size", "force_upcast", "use_post_quant_conv",
      "shift_factor", "latents_mean", "latents_std"})
  diffusers_required = {"act_fn": "silu"}

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
    if not (0 <= self.tap_block < len(self.block_out_channels)
            and 0 <= self.tap_layer < self.layers_per_block):
      raise ValueError(f"VAEEncoderConfig: tap down_blocks[{self.tap_block}].resnets"
                       f"[{self.tap_layer}] does not exist")

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any], **overrides) -> "VAEEncoderConfig":
    """From a diffusers AutoencoderKL config.json dict."""
    blocks = config.get("down_block_types", ())
    if any(t != "DownEncoderBlock2D" for t in blocks):
      raise ValueError(f"VAEEncoderConfig.from_diffusers: unsupported down blocks {blocks}")
    return super().from_diffusers(
        {k: v for k, v in config.items() if k != "down_block_types"}, **overrides)



@struct.dataclass
class DiagonalGaussian:
  """The encoder posterior; moments (N, h, w, 2 * latent) = [mean, logvar] on channels."""
  moments: jax.Array

  @property
  def mean(self) -> jax.Array:
    return jnp.split(self.moments, 2, axis=-1)[0]

  @property
  def logvar(self) -> jax.Array:
    return jnp.clip(jnp.split(self.moments, 2, axis=-1)[1], -30.0, 20.0)

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def mode(self) -> jax.Array:
    return self.mean

  def sample(self, rng: jax.Array) -> jax.Array:
    """mean + std * eps, eps ~ N(0, 1): (N, h, w, latent).

    rng: one key drawing all of eps, or (G,) typed keys (jax.random.key), G dividing N, key
      g drawing the eps of rows [g N / G, (g + 1) N / G): one key per video of N / G frames,
      so that a video's sample does not depend on the batch it is in.
    """
    mean = self.mean
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.ndim == 1:
      groups = rng.shape[0]
      if mean.shape[0] % groups:
        raise ValueError(f"DiagonalGaussian.sample: {groups} keys for {mean.shape[0]} rows")
      rows = (mean.shape[0] // groups,) + mean.shape[1:]
      eps = jax.vmap(lambda key: jax.random.normal(key, rows, mean.dtype))(rng)
      return mean + self.std * eps.reshape(mean.shape)
    return mean + self.std * jax.random.normal(rng, mean.shape, mean.dtype)


class DownEncoderBlock2D(nnx.Module):
  """Resnets without time embedding, then an optional stride-2 conv padded bottom/right."""

  def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, groups: int,
               add_downsample: bool, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    dt = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.resnets = nnx.List([
        ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None,
                      groups=groups, eps=_VAE_EPS, **dt) for i in range(num_layers)])
    self.downsamplers = nnx.data(
        nnx.List([Downsample2D(out_channels, padding=0, **dt)]) if add_downsample else None)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """(N, H, W, Cin) -> (block output, the output of each resnet)."""
    outs = []
    for resnet in self.resnets:
      x = resnet(x)
      outs.append(x)
    if self.downsamplers is not None:
      x = self.downsamplers[0](x)
    return x, outs


class MidBlockAttention(Attention):
  """Single-head self-attention over pixels with a GroupNorm in front and a residual."""

  def __init__(self, channels: int, *, groups: int, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    super().__init__(channels, heads=1, head_dim=channels, qkv_bias=True, rngs=rngs,
                     dtype=dtype, param_dtype=param_dtype)
    self.group_norm = GroupNorm(groups, channels, epsilon=_VAE_EPS, dtype=dtype,
                                param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H, W, C)."""
    n, h, w, c = x.shape
    return x + super().__call__(self.group_norm(x).reshape(n, h * w, c)).reshape(x.shape)


class UNetMidBlock2D(nnx.Module):
  """resnet, [attention], resnet."""

  def __init__(self, channels: int, *, groups: int, add_attention: bool, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    dt = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.resnets = nnx.List([ResnetBlock2D(channels, channels, temb_channels=None, groups=groups,
                                           eps=_VAE_EPS, **dt) for _ in range(2)])
    self.attentions = nnx.data(
        nnx.List([MidBlockAttention(channels, groups=groups, **dt)]) if add_attention else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.resnets[0](x)
    if self.attentions is not None:
      x = self.attentions[0](x)
    return self.resnets[1](x)


class Encoder(nnx.Module):
  """conv_in, down blocks, mid block, GN + SiLU, conv_out to 2 * latent channels."""

  def __init__(self, config: VAEEncoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    dt = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    chans, groups = config.block_out_channels, config.norm_num_groups
    self.tap = (config.tap_block, config.tap_layer)
    self.conv_in = conv2d(config.in_channels, chans[0], 3, **dt)
    self.down_blocks = nnx.List([
        DownEncoderBlock2D(chans[max(i - 1, 0)], c, num_layers=config.layers_per_block,
                           groups=groups, add_downsample=i < len(chans) - 1, **dt)
        for i, c in enumerate(chans)])
    self.mid_block = UNetMidBlock2D(chans[-1], groups=groups,
                                    add_attention=config.mid_block_add_attention, **dt)
    self.conv_norm_out = GroupNorm(groups, chans[-1], epsilon=_VAE_EPS, dtype=dtype,
                                   param_dtype=param_dtype)
    self.conv_out = conv2d(chans[-1], 2 * config.latent_channels, 3, **dt)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(N, H, W, in_channels) -> (features (N, h, w, 2 * latent), tap)."""
    x = self.conv_in(x)
    tap = None
    for i, block in enumerate(self.down_blocks):
      x, resnet_outs = block(x)
      if i == self.tap[0]:
        tap = resnet_outs[self.tap[1]]
    x = self.mid_block(x)
    return self.conv_out(nnx.silu(self.conv_norm_out(x))), tap


class VAEEncoder(nnx.Module):
  """AutoencoderKL.encode: encoder then the 1x1 quant_conv."""

  def __init__(self, config: VAEEncoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.config, self.dtype = config, dtype
    self.encoder = Encoder(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    moments = 2 * config.latent_channels
    self.quant_conv = nnx.data(
        conv2d(moments, moments, 1, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        if config.use_quant_conv else None)

  def __call__(self, images: jax.Array) -> tuple[DiagonalGaussian, jax.Array]:
    """images: (N, H, W, C) in [-1, 1] -> (posterior over (N, H/8, W/8, latent), tap)."""
    h, tap = self.encoder(images.astype(self.dtype))
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    return DiagonalGaussian(h), tap
