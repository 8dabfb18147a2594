"""The ModelScope UNet3D's temporal convolution and its down / mid / up blocks.

Hidden states travel as (B*F, H, W, C): the frames of a clip are adjacent in the leading
axis, as in diffusers, so spatial layers see plain frames and temporal layers reshape (for
free) to (B, F, H, W, C).

`temporal=False` skips the temporal layers (temp_convs, temp_attentions), which VD-IT does
for single-frame inputs; diffusers always runs them.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models.group_norm import GroupNorm
from vdit_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from vdit_jax.models.transformer_blocks import Transformer2DModel, TransformerTemporalModel


class TemporalConv(nnx.Module):
  """torch Conv3d(C, C, (3, 1, 1), padding=(1, 0, 0)) on (B, F, H, W, C); kernel (3, Cin, Cout)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    self.kernel = nnx.Param(init(rngs.params(), (3, channels, channels), param_dtype))
    self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    # One matmul gives every tap for every frame: (..., 3, C); output frame t then sums
    # tap 0 of frame t-1, tap 1 of frame t and tap 2 of frame t+1 (zero padding at the ends).
    x = x.astype(self.dtype)
    taps = jnp.einsum("bfhwi,kio->bfhwko", x, self.kernel[...].astype(self.dtype))
    zero = jnp.zeros_like(taps[:, :1, ..., 0, :])
    prev = jnp.concatenate([zero, taps[:, :-1, ..., 0, :]], axis=1)
    nxt = jnp.concatenate([taps[:, 1:, ..., 2, :], zero], axis=1)
    return prev + taps[..., 1, :] + nxt + self.bias[...].astype(self.dtype)


class TemporalConvLayer(nnx.Module):
  """Four (GroupNorm over the clip, SiLU, [Dropout], TemporalConv) stages plus identity.

  Dropout(rate) sits before convs 2..4 and is active in training mode (`model.train()`).
  """

  def __init__(self, channels: int, *, groups: int, dropout: float, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    dt = dict(dtype=dtype, param_dtype=param_dtype)
    for i in range(1, 5):
      setattr(self, f"norm{i}", GroupNorm(groups, channels, epsilon=1e-5, **dt))
      setattr(self, f"conv{i}", TemporalConv(channels, rngs=rngs, **dt))
    self.dropout = nnx.Dropout(dropout, deterministic=True, rngs=rngs)

  def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
    """x: (B*F, H, W, C) -> (B*F, H, W, C)."""
    clip = x.reshape((-1, num_frames) + x.shape[1:])
    h = clip
    for i in range(1, 5):
      h = nnx.silu(getattr(self, f"norm{i}")(h))
      if i > 1:
        h = self.dropout(h)
      h = getattr(self, f"conv{i}")(h)
    return (clip + h).reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """What every layer of a 3-D block shares (built once by the UNet)."""
  temb_channels: int
  groups: int
  eps: float
  head_dim: int
  cross_attention_dim: int
  temporal_dropout: float
  output_scale_factor: float = 1.0


class _SpatioTemporalLayers(nnx.Module):
  """The per-layer lists shared by all 3-D blocks: resnets, temp_convs and, with cross
  attention, attentions and temp_attentions."""

  def _build_layers(self, resnet_channels: list[tuple[int, int]], spec: BlockSpec,
                    cross_attention: bool, rngs: nnx.Rngs, dtype, param_dtype,
                    num_attention_layers: int | None = None):
    dt = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.resnets = nnx.List([
        ResnetBlock2D(cin, cout, temb_channels=spec.temb_channels, groups=spec.groups,
                      eps=spec.eps, output_scale_factor=spec.output_scale_factor, **dt)
        for cin, cout in resnet_channels])
    self.temp_convs = nnx.List([
        TemporalConvLayer(cout, groups=spec.groups, dropout=spec.temporal_dropout, **dt)
        for _, cout in resnet_channels])
    if not cross_attention:
      return
    outs = [cout for _, cout in resnet_channels][:num_attention_layers]
    heads = lambda c: dict(heads=c // spec.head_dim, head_dim=spec.head_dim,
                           groups=spec.groups, **dt)
    self.attentions = nnx.List([
        Transformer2DModel(c, cross_attention_dim=spec.cross_attention_dim, **heads(c))
        for c in outs])
    self.temp_attentions = nnx.List([TransformerTemporalModel(c, **heads(c)) for c in outs])

  def _resnet_step(self, i: int, x, temb, num_frames: int, temporal: bool):
    x = self.resnets[i](x, temb)
    return self.temp_convs[i](x, num_frames) if temporal else x

  def _attention_step(self, i: int, x, context, num_frames: int, temporal: bool):
    x = self.attentions[i](x, context)
    return self.temp_attentions[i](x, num_frames) if temporal else x

  def _layer(self, i: int, x, temb, context, num_frames: int, temporal: bool):
    x = self._resnet_step(i, x, temb, num_frames, temporal)
    if hasattr(self, "attentions"):
      x = self._attention_step(i, x, context, num_frames, temporal)
    return x


class DownBlock3D(_SpatioTemporalLayers):
  """CrossAttnDownBlock3D (cross_attention=True) or DownBlock3D, then an optional stride-2 conv."""

  def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, spec: BlockSpec,
               cross_attention: bool, add_downsample: bool, downsample_padding: int,
               rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    channels = [(in_channels if i == 0 else out_channels, out_channels)
                for i in range(num_layers)]
    self._build_layers(channels, spec, cross_attention, rngs, dtype, param_dtype)
    self.downsamplers = nnx.data(None if not add_downsample else nnx.List([Downsample2D(
        out_channels, padding=downsample_padding, rngs=rngs, dtype=dtype,
        param_dtype=param_dtype)]))

  def __call__(self, x, temb, context, *, num_frames: int, temporal: bool):
    """x: (B*F, H, W, Cin) -> (output, skip tensors for the up path)."""
    skips = []
    for i in range(len(self.resnets)):
      x = self._layer(i, x, temb, context, num_frames, temporal)
      skips.append(x)
    if self.downsamplers is not None:
      x = self.downsamplers[0](x)
      skips.append(x)
    return x, skips


class UNetMidBlock3DCrossAttn(_SpatioTemporalLayers):
  """resnet, temp_conv, then per extra layer: attention, temp_attention, resnet, temp_conv."""

  def __init__(self, channels: int, *, spec: BlockSpec, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self._build_layers([(channels, channels)] * 2, spec, True, rngs, dtype, param_dtype,
                       num_attention_layers=1)

  def __call__(self, x, temb, context, *, num_frames: int, temporal: bool):
    x = self._resnet_step(0, x, temb, num_frames, temporal)
    x = self._attention_step(0, x, context, num_frames, temporal)
    return self._resnet_step(1, x, temb, num_frames, temporal)


class UpBlock3D(_SpatioTemporalLayers):
  """CrossAttnUpBlock3D (cross_attention=True) or UpBlock3D: each layer first concatenates a
  skip tensor; then an optional nearest upsample (to the next skip's size) and conv."""

  def __init__(self, in_channels: int, prev_output_channels: int, out_channels: int, *,
               num_layers: int, spec: BlockSpec, cross_attention: bool, add_upsample: bool,
               rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    channels = []
    for i in range(num_layers):
      skip = in_channels if i == num_layers - 1 else out_channels
      channels.append(((prev_output_channels if i == 0 else out_channels) + skip, out_channels))
    self._build_layers(channels, spec, cross_attention, rngs, dtype, param_dtype)
    self.upsamplers = nnx.data(None if not add_upsample else nnx.List([Upsample2D(
        out_channels, rngs=rngs, dtype=dtype, param_dtype=param_dtype)]))

  def __call__(self, x, skips, temb, context, *, num_frames: int, temporal: bool,
               upsample_size: tuple[int, int] | None):
    """x: (B*F, H, W, C); skips: the block's skip tensors, consumed last first."""
    for i in range(len(self.resnets)):
      x = jnp.concatenate([x, skips[-1 - i].astype(x.dtype)], axis=-1)
      x = self._layer(i, x, temb, context, num_frames, temporal)
    if self.upsamplers is not None:
      x = self.upsamplers[0](x, upsample_size)
    return x
