"""CLIP image preprocessing on the device, emulating VD-IT's host-side HF/PIL pipeline.

VD-IT hands each [-1, 1] frame to `CLIPImageProcessor` as `int((x + 1) * 127.5)`. The
processor makes an 8-bit PIL image, resizes its shortest edge to 224 with PIL's bicubic
filter (Keys a=-0.5, widened by the scale factor when shrinking, i.e. antialiased;
horizontal pass first, each pass rounded and clipped to 8 bits), centre-crops 224 x 224
(top-left at floor((size - 224) / 2)), rescales by 1/255 and normalises with the CLIP
mean/std.

Here the two separable passes run with `jax.image.scale_and_translate` (the same Keys cubic,
antialiased, with weights renormalised at the borders like PIL), each followed by PIL's
round-half-up and clip to [0, 255]. Only the cropped window is computed: the crop offset is
the translation of the resize. What still differs from PIL is its 22-bit fixed-point filter
coefficients versus float32 here: a few values in ten thousand land one 8-bit level apart
(one level = 1/255/std, about 0.015 after normalisation), rarely two next to sharp edges;
tests/test_clip_preprocess.py gives the measured figures.

Input frames outside [-1, 1] saturate at 0 / 255 here where the HF path wraps around
(`astype(uint8)`); VD-IT's frames never leave the range by more than rounding error.
"""

import dataclasses

import jax
import jax.numpy as jnp

# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (also laion ViT-H/14's processor config).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPPreprocessConfig:
  """The `preprocessor_config.json` fields VD-IT's processor uses."""
  shortest_edge: int = 224
  crop_size: int = 224
  mean: tuple[float, float, float] = CLIP_MEAN
  std: tuple[float, float, float] = CLIP_STD


def resized_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
  """transformers' shortest-edge rule: the long side is int(edge * long / short)."""
  if height <= width:
    return shortest_edge, int(shortest_edge * width / height)
  return int(shortest_edge * height / width), shortest_edge


def crop_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
  """(top, left) of transformers' centre crop of a (height, width) image."""
  if crop > min(height, width):
    raise ValueError(f"centre crop {crop} is larger than the resized frame {height}x{width}")
  return (height - crop) // 2, (width - crop) // 2


def _resize_axis(x: jax.Array, axis: int, size_in: int, size_resized: int, offset: int,
                 size_out: int) -> jax.Array:
  """One PIL bicubic pass along `axis`, keeping output pixels [offset, offset + size_out).

  Output pixel o samples the input at (o + offset + 0.5) * size_in / size_resized - 0.5.
  """
  if size_in == size_resized:  # PIL skips the pass; the cubic kernel would be exact anyway.
    return jax.lax.slice_in_dim(x, offset, offset + size_out, axis=axis)
  shape = list(x.shape)
  shape[axis] = size_out
  y = jax.image.scale_and_translate(
      x, shape, (axis,), jnp.array([size_resized / size_in], jnp.float32),
      jnp.array([-offset], jnp.float32), method="cubic", antialias=True)
  # PIL's 8-bit passes round half up and clip.
  return jnp.clip(jnp.floor(y + 0.5), 0, 255)


def clip_pixels(frames: jax.Array, config: CLIPPreprocessConfig = CLIPPreprocessConfig()
                ) -> jax.Array:
  """VD-IT's CLIP image input from its [-1, 1] frames, jit-able.

  Args:
    frames: (N, H, W, 3) float, in [-1, 1] (VD-IT's de-normalised, padded frames `x*2-1`;
      padded pixels therefore carry the ImageNet mean colour).
    config: resize / crop / normalisation settings; static (hashable): bind it with
      functools.partial or mark it static when jitting with a non-default one.

  Returns:
    (N, crop, crop, 3) float32, CLIP-normalised, for `CLIPVisionModelWithProjection`.
  """
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"clip_pixels expects (N, H, W, 3) frames, got shape {frames.shape}")
  _, h, w, _ = frames.shape
  new_h, new_w = resized_size(h, w, config.shortest_edge)
  top, left = crop_offsets(new_h, new_w, config.crop_size)
  # VD-IT's `((x + 1) * 127.5).to(int)` truncates; PIL then holds 8-bit values.
  x = jnp.clip(jnp.trunc((frames.astype(jnp.float32) + 1.0) * 127.5), 0, 255)
  x = _resize_axis(x, 2, w, new_w, left, config.crop_size)
  x = _resize_axis(x, 1, h, new_h, top, config.crop_size)
  mean = jnp.asarray(config.mean, jnp.float32)
  std = jnp.asarray(config.std, jnp.float32)
  return (x / 255.0 - mean) / std
