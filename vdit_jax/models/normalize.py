"""The model's input frames from the data pipelines' uint8 frames, on the device.

The train and eval pipelines (data_pipelines/pipeline.py) hand over frames as uint8 with
zero padding and a `pad_mask`: a quarter of the bytes of float32 frames to make on the host
and to copy to the device. The original's loader fed its model ToTensor (x / 255) then
Normalize ((x - mean) / std) in float32, padded afterwards with zeros in normalised space by
its collate (so padded pixels are 0 there, not (0 - mean) / std). Its backbone then undid
the normalisation and mapped the frames to [-1, 1] for the VAE and CLIP, the only consumers
of the frames: `backbone_frames` reproduces those floats bit for bit.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check(what: str, frames: jax.Array, pad_mask: jax.Array, mean, std) -> None:
  """Raises ValueError naming `what` unless frames (B, T, H, W, C) uint8, pad_mask (B, H, W)
  and mean, std (C,) agree."""
  if frames.ndim != 5 or frames.dtype != jnp.uint8:
    raise ValueError(f"{what}: frames must be (B, T, H, W, C) uint8, got "
                     f"{frames.dtype} {frames.shape}")
  b, _, h, w, c = frames.shape
  if pad_mask.shape != (b, h, w):
    raise ValueError(f"{what}: pad_mask shape {pad_mask.shape} does not match "
                     f"frames {frames.shape}: expected {(b, h, w)}")
  mean_shape, std_shape = jnp.shape(jnp.asarray(mean)), jnp.shape(jnp.asarray(std))
  if mean_shape != (c,) or std_shape != (c,):
    raise ValueError(f"{what}: mean {mean_shape} and std {std_shape} must have one value per "
                     f"channel ({c})")


@functools.lru_cache(maxsize=None)
def _backbone_values(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  """(257, C) float32: row p the [-1, 1] value of 8-bit value p per channel, row 256 that of
  a padded pixel, by the original's float32 operations in its order, each rounded as IEEE
  arithmetic (numpy, and torch's elementwise kernels) rounds it."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  normalized = (np.arange(256, dtype=np.float32)[:, None] / np.float32(255) - mean) / std
  normalized = np.concatenate([normalized, np.zeros((1, len(mean)), np.float32)])
  return (normalized * std + mean) * np.float32(2) - np.float32(1)


def backbone_frames(frames: jax.Array, pad_mask: jax.Array, mean: Sequence[float],
                    std: Sequence[float]) -> jax.Array:
  """The original's [-1, 1] frames, the input of the VAE and (truncated) of CLIP; jit-able.

  The original de-normalises its ImageNet-normalised frames and maps them to [-1, 1] (VD-IT
  `models/itcross_video_swin_transformer.py:717-719`): padded pixels become the mean colour.
  CLIP's input truncates (x + 1) * 127.5 to an int, so the last bit of these floats decides
  whole 8-bit levels, and XLA evaluates the formula with other roundings (a division by a
  constant becomes a multiplication by its reciprocal): 76 of the 768 (value, channel) pairs
  landed one level below the original's. Each uint8 value therefore looks up its float,
  computed on the host by the original's operations, which is exact on every backend.

  Args:
    frames: (B, T, H, W, C) uint8, as the pipelines emit them.
    pad_mask: (B, H, W) bool, True on padding.
    mean, std: (C,) statistics of [0, 1] pixels (config.data.mean / std).

  Returns:
    (B, T, H, W, C) float32.
  """
  _check("backbone_frames", frames, pad_mask, mean, std)
  table = jnp.asarray(_backbone_values(tuple(mean), tuple(std)))
  rows = jnp.where(pad_mask[:, None, :, :, None], 256, frames.astype(jnp.int32))
  return table[rows, jnp.arange(frames.shape[-1])]
