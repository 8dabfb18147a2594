"""The ModelScope text-to-video UNet (diffusers UNet3DConditionModel) in Flax NNX, channels-last.

Sample layout is (B, F, H, W, C). `__call__` is the noise prediction and reproduces diffusers
exactly, including the up-path resize to each skip's size when the latent is not a multiple of
2**num_upsamplers (for multiples, "resize to the skip's size" is the same as "x2").
`features` returns VD-IT's six intermediate feature maps and runs only the blocks they need.
Two VD-IT behaviours are switches: per-frame context (pass context as (B, F, L, D)) and
skipping every temporal layer for single-frame inputs (`skip_temporal_if_single_frame`).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models.config import DiffusersConfig
from vdit_jax.models.group_norm import GroupNorm
from vdit_jax.models.resnet import conv2d
from vdit_jax.models.transformer_blocks import TransformerTemporalModel
from vdit_jax.models.unet3d_layers import BlockSpec, DownBlock3D, UNetMidBlock3DCrossAttn, UpBlock3D

# Tap names: the outputs of these down / up blocks (after their resamplers).
TAP_DOWN_BLOCKS = (0, 1)
TAP_UP_BLOCKS = (0, 1, 2)
TAP_NAMES = ("transformer_in",) + tuple(f"down{i}" for i in TAP_DOWN_BLOCKS) + tuple(
    f"up{i}" for i in TAP_UP_BLOCKS)

# unet/config.json of damo-vilab/text-to-video-ms-1.7b: the full-size UNet VD-IT freezes
# (1,480 tensors, 1,411,233,860 parameters). For shape-only work without the weights.
MODELSCOPE_CONFIG = {
    "_class_name": "UNet3DConditionModel", "_diffusers_version": "0.17.0.dev0",
    "act_fn": "silu", "attention_head_dim": 64, "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
    "downsample_padding": 1, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "sample_size": 32, "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
}

_DOWN_TYPES = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}
_UP_TYPES = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}


@dataclasses.dataclass(frozen=True)
class UNet3DConfig(DiffusersConfig):
  """The architecture, in diffusers' field names.

  attention_head_dim is the head *dimension* (diffusers' naming quirk): heads = C / it.
  transformer_in_heads is hard-wired to 8 in diffusers.
  """
  in_channels: int = 4
  out_channels: int = 4
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
  up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  cross_attention_dim: int = 1024
  attention_head_dim: int = 64
  transformer_in_heads: int = 8
  # diffusers config.json keys that do not change the network, and keys that must keep the
  # one value this implementation reproduces exactly.
  diffusers_ignored = frozenset({"_class_name", "_diffusers_version", "_name_or_path",
                                 "_use_default_values", "sample_size"})
  diffusers_required = {"act_fn": "silu", "num_attention_heads": None,
                        "time_cond_proj_dim": None}

  def __post_init__(self):
    if self.norm_num_groups is None:
      raise ValueError("UNet3DConfig: norm_num_groups=None is not supported")
    for name in ("down_block_types", "up_block_types", "block_out_channels"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    n = len(self.block_out_channels)
    if not (len(self.down_block_types) == len(self.up_block_types) == n):
      raise ValueError(f"UNet3DConfig: {len(self.down_block_types)} down blocks, "
                       f"{len(self.up_block_types)} up blocks and {n} block_out_channels differ")
    for kind, types, known in (("down", self.down_block_types, _DOWN_TYPES),
                               ("up", self.up_block_types, _UP_TYPES)):
      unknown = [t for t in types if t not in known]
      if unknown:
        raise ValueError(f"UNet3DConfig: unsupported {kind} block types {unknown}")
    if not isinstance(self.attention_head_dim, int):
      raise ValueError("UNet3DConfig: attention_head_dim must be one int (diffusers' UNet3D "
                       f"accepts no per-block tuple), got {self.attention_head_dim!r}")


def tap_channels(config: UNet3DConfig) -> dict[str, int]:
  """The channels of each tap of `UNet3DConditionModel.features`, by name: transformer_in keeps
  conv_in's width, down block i ends at block_out_channels[i] and up block i at the same list
  reversed."""
  chans = config.block_out_channels
  return {"transformer_in": chans[0], **{f"down{i}": chans[i] for i in TAP_DOWN_BLOCKS},
          **{f"up{i}": chans[::-1][i] for i in TAP_UP_BLOCKS}}


def timestep_features(timesteps: jax.Array, dim: int) -> jax.Array:
  """diffusers Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0): (B,) -> (B, dim)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimestepEmbedding(nnx.Module):
  """Linear, SiLU, Linear."""

  def __init__(self, in_dim: int, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    dt = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_1 = nnx.Linear(in_dim, dim, **dt)
    self.linear_2 = nnx.Linear(dim, dim, **dt)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(nnx.silu(self.linear_1(x)))


def per_frame_context(context: jax.Array, batch: int, frames: int) -> jax.Array:
  """(B, L, D) shared by a clip's frames, kept as is, or (B, F, L, D) -> (B*F, L, D).

  A shared context stays one row per clip: cross-attention projects its keys and values once
  per clip instead of once per frame (diffusers repeats it over frames first).
  """
  if context.ndim == 3 and context.shape[0] == batch:
    return context
  if context.ndim != 4 or context.shape[:2] != (batch, frames):
    raise ValueError(f"UNet3D context must be (B, L, D) or (B, F, L, D) with B={batch}, "
                     f"F={frames}; got {context.shape}")
  return context.reshape((batch * frames,) + context.shape[2:])


def _call_block(block: nnx.Module, remat: bool, *args, **static):
  """block(*args, **static); with remat, under nnx.remat (static values are closed over).

  nnx.remat rather than `clip.call_layer`: TemporalConvLayer's Dropout advances its RNG
  state, which must survive the remat. Differentiate through a remat model with nnx.grad /
  nnx.value_and_grad taking the module as an argument: flax refuses state updates in modules
  merged inside jax.grad.
  """
  if not remat:
    return block(*args, **static)
  return nnx.remat(lambda b, *a: b(*a, **static))(block, *args)


class UNet3DConditionModel(nnx.Module):
  """diffusers UNet3DConditionModel: `__call__` predicts the noise, `features` gives the taps.

  Run-time settings (not part of the architecture, so not stored with converted weights):
    remat: recompute every block in the backward pass (nnx.remat).
    skip_temporal_if_single_frame: skip transformer_in, the temporal convs and the temporal
      attentions when F == 1, as VD-IT does (`mymodels/unet_3d_blocks.py`); diffusers runs them.
    temporal_dropout: the Dropout rate inside the temporal convs (diffusers' 0.1), active in
      train mode only.
  """

  def __init__(self, config: UNet3DConfig, *, remat: bool = False,
               skip_temporal_if_single_frame: bool = False, temporal_dropout: float = 0.1,
               rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    self.config, self.dtype = config, dtype
    self.remat, self.skip_temporal_if_single_frame = remat, skip_temporal_if_single_frame
    dt = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    chans, head_dim = config.block_out_channels, config.attention_head_dim
    temb = 4 * chans[0]
    spec = BlockSpec(
        temb_channels=temb, groups=config.norm_num_groups, eps=config.norm_eps,
        head_dim=head_dim, cross_attention_dim=config.cross_attention_dim,
        temporal_dropout=temporal_dropout)
    self.conv_in = conv2d(config.in_channels, chans[0], 3, **dt)
    self.time_embedding = TimestepEmbedding(chans[0], temb, **dt)
    self.transformer_in = TransformerTemporalModel(
        chans[0], heads=config.transformer_in_heads, head_dim=head_dim,
        groups=config.norm_num_groups, **dt)
    self.down_blocks = nnx.List([
        DownBlock3D(chans[max(i - 1, 0)], chans[i], num_layers=config.layers_per_block,
                    spec=spec, cross_attention=_DOWN_TYPES[kind],
                    add_downsample=i < len(chans) - 1,
                    downsample_padding=config.downsample_padding, **dt)
        for i, kind in enumerate(config.down_block_types)])
    self.mid_block = UNetMidBlock3DCrossAttn(
        chans[-1],
        spec=dataclasses.replace(spec, output_scale_factor=config.mid_block_scale_factor), **dt)
    rev = chans[::-1]
    self.up_blocks = nnx.List([
        UpBlock3D(rev[min(i + 1, len(rev) - 1)], rev[max(i - 1, 0)], rev[i],
                  num_layers=config.layers_per_block + 1,
                  spec=spec, cross_attention=_UP_TYPES[kind],
                  add_upsample=i < len(rev) - 1, **dt)
        for i, kind in enumerate(config.up_block_types)])
    self.conv_norm_out = GroupNorm(config.norm_num_groups, chans[0], epsilon=config.norm_eps,
                                   dtype=dtype, param_dtype=param_dtype)
    self.conv_out = conv2d(chans[0], config.out_channels, 3, **dt)

  def __call__(self, sample: jax.Array, timesteps: jax.Array | float, context: jax.Array
               ) -> jax.Array:
    """The noise prediction.

    Args:
      sample: (B, F, H, W, in_channels) latents.
      timesteps: a scalar or (B,).
      context: (B, L, D), shared by all frames of a clip (diffusers), or (B, F, L, D), one
        per frame (VD-IT).

    Returns:
      (B, F, H, W, out_channels).
    """
    x, _ = self._run(sample, timesteps, context, num_up_blocks=len(self.up_blocks))
    out = self.conv_out(nnx.silu(self.conv_norm_out(x)))
    return out.reshape(sample.shape[:2] + out.shape[1:])

  def features(self, sample: jax.Array, timesteps: jax.Array | float, context: jax.Array
               ) -> dict[str, jax.Array]:
    """VD-IT's six taps (`mymodels/unet_3d_condition_it.py:420-502` in VD-IT's
    Text-To-Video-Finetuning): name -> (B, F, h, w, c) for the names in TAP_NAMES.

    Runs only the blocks the taps need: up_blocks after the last tapped one, conv_norm_out
    and conv_out are skipped (their outputs are unused in VD-IT). Arguments as `__call__`.
    """
    if len(self.up_blocks) <= max(TAP_UP_BLOCKS):
      raise ValueError(f"the taps need at least {max(TAP_UP_BLOCKS) + 1} up blocks, this "
                       f"UNet has {len(self.up_blocks)}")
    _, taps = self._run(sample, timesteps, context, num_up_blocks=max(TAP_UP_BLOCKS) + 1)
    return {k: v.reshape(sample.shape[:1] + (-1,) + v.shape[1:]) for k, v in taps.items()}

  def _run(self, sample: jax.Array, timesteps: jax.Array | float, context: jax.Array, *,
           num_up_blocks: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Up to and including up_blocks[num_up_blocks - 1]: (B*F, h, w, c) output and the taps
    reached, frames folded into the batch."""
    cfg = self.config
    b, f, h, w, _ = sample.shape
    temporal = not (self.skip_temporal_if_single_frame and f == 1)
    steps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
    emb = self.time_embedding(timestep_features(steps, cfg.block_out_channels[0])
                              .astype(self.dtype))
    emb = jnp.repeat(emb, f, axis=0)
    context = per_frame_context(context, b, f)
    static = dict(num_frames=f, temporal=temporal)

    x = self.conv_in(sample.reshape((b * f, h, w, sample.shape[-1])).astype(self.dtype))
    if temporal:
      x = _call_block(self.transformer_in, self.remat, x, num_frames=f)
    taps = {"transformer_in": x}
    skips = [x]
    for i, block in enumerate(self.down_blocks):
      x, block_skips = _call_block(block, self.remat, x, emb, context, **static)
      skips += block_skips
      if i in TAP_DOWN_BLOCKS:
        taps[f"down{i}"] = x
    x = _call_block(self.mid_block, self.remat, x, emb, context, **static)
    for i, block in enumerate(self.up_blocks[:num_up_blocks]):
      n = len(block.resnets)
      block_skips, skips = skips[-n:], skips[:-n]
      size = tuple(skips[-1].shape[1:3]) if skips else None
      x = _call_block(block, self.remat, x, block_skips, emb, context, upsample_size=size,
                      **static)
      if i in TAP_UP_BLOCKS:
        taps[f"up{i}"] = x
    return x, taps
