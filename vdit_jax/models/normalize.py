"""ImageNet normalisation of the data pipelines' uint8 frames, on the device.

The train and eval pipelines (data_pipelines/pipeline.py) hand over frames as uint8 with
zero padding and a `pad_mask`: a quarter of the bytes of float32 frames to make on the host
and to copy to the device. The model input is what the original's loader fed it: ToTensor
(x / 255) then Normalize ((x - mean) / std) in float32, padded afterwards with zeros in
normalised space by its collate (so padded pixels are 0 here, not (0 - mean) / std).
"""

import jax
import jax.numpy as jnp


def normalize_frames(frames: jax.Array, pad_mask: jax.Array, mean, std) -> jax.Array:
  """The model's input frames from the pipelines' uint8 frames; jit-able.

  Args:
    frames: (B, T, H, W, C) uint8 RGB, as the pipelines emit them.
    pad_mask: (B, H, W) bool, True on padding.
    mean, std: (C,) per-channel statistics of [0, 1] pixels (config.data.mean / std).

  Returns:
    (B, T, H, W, C) float32 (frames / 255 - mean) / std, 0 where pad_mask is True.
  """
  if frames.ndim != 5 or frames.dtype != jnp.uint8:
    raise ValueError(f"normalize_frames: frames must be (B, T, H, W, C) uint8, got "
                     f"{frames.dtype} {frames.shape}")
  b, _, h, w, c = frames.shape
  if pad_mask.shape != (b, h, w):
    raise ValueError(f"normalize_frames: pad_mask shape {pad_mask.shape} does not match "
                     f"frames {frames.shape}: expected {(b, h, w)}")
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  if mean.shape != (c,) or std.shape != (c,):
    raise ValueError(f"normalize_frames: mean {mean.shape} and std {std.shape} must have "
                     f"one value per channel ({c})")
  x = (frames.astype(jnp.float32) / 255.0 - mean) / std
  return jnp.where(pad_mask[:, None, :, :, None], 0.0, x)
