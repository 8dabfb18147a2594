"""On-device CLIP preprocessing vs transformers' PIL CLIPImageProcessor (VD-IT's path)."""

import jax
import numpy as np
import pytest
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from vdit_jax.models import clip_preprocess as cp

# One 8-bit level after normalisation, for the channel with the smallest std.
ONE_LEVEL = 1.0 / 255.0 / min(cp.CLIP_STD)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)


@pytest.fixture(scope="module")
def preprocess():
  return jax.jit(cp.clip_pixels)


def _hf(frames: np.ndarray) -> np.ndarray:
  """VD-IT: int((x + 1) * 127.5) per frame through the PIL processor; channels last."""
  ints = ((frames + 1.0) * 127.5).astype(np.int64)
  out = CLIPImageProcessorPil()(list(ints), return_tensors="np")["pixel_values"]
  return out.transpose(0, 2, 3, 1)


def _frames(rng, n, h, w, pad_to=None):
  """Smooth content plus noise in [-1, 1]; optional bottom/right padding with the ImageNet
  mean colour (what VD-IT's zero-padded normalised frames become)."""
  coarse = rng.uniform(-1, 1, (n, h // 6 + 2, w // 6 + 2, 3))
  x = np.asarray(jax.image.resize(coarse, (n, h, w, 3), "linear"), np.float32)
  x = np.clip(x + rng.normal(0, 0.15, x.shape), -1, 1).astype(np.float32)
  if pad_to is not None:
    padded = np.broadcast_to(IMAGENET_MEAN * 2 - 1, (n, *pad_to, 3)).copy()
    padded[:, :h, :w] = x
    x = padded
  return x


@pytest.mark.parametrize("shape,pad_to", [((2, 180, 320), None), ((2, 320, 181), None),
                                          ((1, 150, 200), (160, 224)), ((1, 97, 130), None)],
                         ids=["wide_down", "tall_down_odd", "padded", "small_up"])
def test_matches_pil_processor(preprocess, shape, pad_to):
  """PIL works in 22-bit fixed point, this port in float32: a value may land one 8-bit level
  off where a filter sum sits near x.5, and a first-pass difference next to a sharp edge
  (the padding border) can grow to two after the second pass's overshooting cubic taps.
  Measured on these inputs: 0.008-0.07 % of values differ, all by one level except a single
  value by two (padded case), mean abs error <= 1.1e-5. Asserted: max <= 2 levels, < 0.5 %
  of values off by more than half a level, < 0.01 % by more than 1.5 levels, mean < 1e-4
  (a half-pixel shift, a wrong crop or a missing antialias fails them all)."""
  frames = _frames(np.random.default_rng(sum(shape)), *shape, pad_to=pad_to)
  ref = _hf(frames)
  out = np.asarray(preprocess(frames))
  assert out.shape == ref.shape == (shape[0], 224, 224, 3)
  err = np.abs(out - ref)
  assert err.max() <= 2 * ONE_LEVEL + 1e-5
  assert (err > ONE_LEVEL / 2).mean() < 5e-3
  assert (err > 1.5 * ONE_LEVEL).mean() < 1e-4
  assert err.mean() < 1e-4


@pytest.mark.parametrize("h,w", [(224, 303), (307, 224)])
def test_centre_crop_geometry_is_exact(preprocess, h, w):
  """No resize when the short side is already 224: the output must be the pixels
  [(long - 224) // 2, +224) of a stripe image, exactly (79 and 83 spare pixels: rounding
  the half offset instead of flooring it would shift by one)."""
  long_side = max(h, w)
  levels = (np.arange(long_side) * 37) % 256
  # Half a level up so that VD-IT's truncation lands on `levels` exactly.
  stripe = ((levels + 0.5) / 127.5 - 1.0).astype(np.float32)
  frame = np.empty((1, h, w, 3), np.float32)
  frame[...] = stripe[None, None, :, None] if w > h else stripe[None, :, None, None]
  start = (long_side - 224) // 2
  kept = levels[start:start + 224] / 255.0
  expected = (kept[:, None] - np.array(cp.CLIP_MEAN)) / np.array(cp.CLIP_STD)
  out = np.asarray(preprocess(frame))[0]
  along = out if w < h else out.transpose(1, 0, 2)  # (position along the long side, ...)
  np.testing.assert_allclose(along, np.broadcast_to(expected[:, None], along.shape),
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(out, _hf(frame)[0], rtol=0, atol=1e-5)


def test_sizes_follow_transformers_rule():
  assert cp.resized_size(360, 640, 224) == (224, 398)
  assert cp.resized_size(641, 360, 224) == (398, 224)
  assert cp.crop_offsets(224, 398, 224) == (0, 87)
  with pytest.raises(ValueError, match="larger than the resized frame"):
    cp.crop_offsets(200, 398, 224)
  with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
    cp.clip_pixels(np.zeros((4, 32, 32), np.float32))
