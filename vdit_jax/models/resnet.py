"""diffusers' 2-D convolutional building blocks, channels-last: ResnetBlock2D and the resamplers.

Attribute names follow the diffusers state dict (norm1, conv1, time_emb_proj, ...), so the
weights convert with no renames.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax.models.group_norm import GroupNorm
from vdit_jax.models.resize import resize_nearest


def conv2d(in_channels: int, out_channels: int, kernel_size: int, *, rngs: nnx.Rngs,
           stride: int = 1, padding=None, dtype=jnp.float32, param_dtype=jnp.float32) -> nnx.Conv:
  """A torch-style Conv2d: symmetric `kernel_size // 2` padding unless `padding` is given."""
  if padding is None:
    padding = ((kernel_size // 2,) * 2,) * 2
  return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=stride,
                  padding=padding, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class ResnetBlock2D(nnx.Module):
  """Pre-norm residual block: GN, SiLU, conv3x3, (+ time embedding), GN, SiLU, conv3x3."""

  def __init__(self, in_channels: int, out_channels: int, *, temb_channels: int | None,
               groups: int, eps: float, output_scale_factor: float = 1.0, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    dt = dict(dtype=dtype, param_dtype=param_dtype)
    self.output_scale_factor = output_scale_factor
    self.norm1 = GroupNorm(groups, in_channels, epsilon=eps, **dt)
    self.conv1 = conv2d(in_channels, out_channels, 3, rngs=rngs, **dt)
    self.time_emb_proj = nnx.data(
        None if temb_channels is None else nnx.Linear(temb_channels, out_channels, rngs=rngs, **dt))
    self.norm2 = GroupNorm(groups, out_channels, epsilon=eps, **dt)
    self.conv2 = conv2d(out_channels, out_channels, 3, rngs=rngs, **dt)
    self.conv_shortcut = nnx.data(
        None if in_channels == out_channels else conv2d(in_channels, out_channels, 1, rngs=rngs,
                                                        **dt))

  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    """x: (N, H, W, Cin); temb: (N, T) or None -> (N, H, W, Cout)."""
    h = self.conv1(nnx.silu(self.norm1(x)))
    if self.time_emb_proj is not None:
      h = h + self.time_emb_proj(nnx.silu(temb))[:, None, None, :]
    h = self.conv2(nnx.silu(self.norm2(h)))
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
    out = shortcut + h
    return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class Downsample2D(nnx.Module):
  """Conv3x3 with stride 2; `padding=0` pads one row/column at the bottom/right (VAE)."""

  def __init__(self, channels: int, *, padding: int, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    pads = ((0, 1), (0, 1)) if padding == 0 else ((padding, padding),) * 2
    self.conv = conv2d(channels, channels, 3, stride=2, padding=pads, rngs=rngs, dtype=dtype,
                       param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C) (for padding 1)."""
    return self.conv(x)


class Upsample2D(nnx.Module):
  """Nearest resize (x2, or to a given size) followed by a conv3x3."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.conv = conv2d(channels, channels, 3, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
    """(N, H, W, C) -> (N, 2H, 2W, C), or (N, *output_size, C)."""
    if output_size is None:
      output_size = (2 * x.shape[1], 2 * x.shape[2])
    return self.conv(resize_nearest(x, tuple(output_size)))
