"""Tests of data_pipelines.transforms against PIL, colorsys and hand-computed references."""

import colorsys
import dataclasses
import io
import itertools

import numpy as np
from PIL import Image
import pytest

from configs import common
from data_pipelines import transforms

# The original's ranges, as the configs declare them.
AUGMENTATION = transforms.Augmentation(**common.train_augmentation())
PSEUDO_VIDEO = transforms.PseudoVideo(**common.pseudo_video())


def _smooth_frames(t, h, w, seed=0):
  """Smooth random frames (bilinear-upsampled noise): interpolation differences stay small."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, size=(t, h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
  return np.stack([np.asarray(Image.fromarray(s).resize((w, h), Image.BILINEAR))
                   for s in small])


def _clip(t=3, h=60, w=80, caption="the dog on the left of the bright cat"):
  frames = _smooth_frames(t, h, w)
  masks = np.zeros((t, h, w), bool)
  masks[0, 5:20, 6:30] = True          # top-left object
  masks[1, 30:55, 50:78] = True        # bottom-right object
  masks[1, 40:45, 10:12] = True        # a second blob on the left
  return transforms.clip_from_masks(frames, masks, caption)               # frame 2: absent


def _reference_boxes(masks):
  boxes = []
  for m in masks:
    ys, xs = np.nonzero(m)
    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0] * 4)
  return np.array(boxes, np.float32)


def test_mask_boxes():
  clip = _clip()
  np.testing.assert_array_equal(clip.boxes, _reference_boxes(clip.masks))
  np.testing.assert_array_equal(clip.valid, [True, True, False])


def test_mirrored_resample_flips_consistently():
  clip = _clip()
  flipped = transforms.resample(clip, (0, 0, 80, 60), clip.size, mirror=True)
  np.testing.assert_array_equal(flipped.frames, clip.frames[:, :, ::-1])
  np.testing.assert_array_equal(flipped.masks, clip.masks[:, :, ::-1])
  # Boxes recomputed from the flipped masks equal the flipped boxes.
  np.testing.assert_array_equal(flipped.boxes, _reference_boxes(flipped.masks))
  np.testing.assert_array_equal(flipped.valid, clip.valid)
  assert flipped.caption == "the dog on the right of the bright cat"
  twice = transforms.resample(flipped, (0, 0, 80, 60), clip.size, mirror=True)
  assert twice.caption == clip.caption
  np.testing.assert_array_equal(twice.boxes, clip.boxes)
  # With a crop and a resize: the mirror image of the unmirrored resample.
  region, (out_h, out_w) = (10, 5, 70, 50), (36, 48)
  plain = transforms.resample(clip, region, (out_h, out_w))
  mirrored = transforms.resample(clip, region, (out_h, out_w), mirror=True)
  np.testing.assert_array_equal(mirrored.frames, plain.frames[:, :, ::-1])
  np.testing.assert_array_equal(mirrored.masks, plain.masks[:, :, ::-1])
  x0, y0, x1, y1 = plain.boxes.T
  expected = np.stack([out_w - x1, y0, out_w - x0, y1], 1) * plain.valid[:, None]
  np.testing.assert_allclose(mirrored.boxes, expected, atol=1e-5)


@pytest.mark.parametrize("caption,expected", [
    ("left", "right"), ("the leftmost man", "the rightmost man"),
    ("right hand on the left", "left hand on the right"), ("a bright light", "a bright light")])
def test_swap_left_right(caption, expected):
  assert transforms.swap_left_right(caption) == expected


@pytest.mark.parametrize("h,w,size,max_size", [
    (720, 1280, 360, 640), (720, 1280, 512, 640), (1280, 720, 288, 640), (480, 640, 480, 640),
    (600, 400, 416, None), (333, 500, 400, None), (101, 997, 320, 640)])
def test_resized_shape(h, w, size, max_size):
  out_h, out_w = transforms.resized_shape(h, w, size, max_size)
  short, long = min(out_h, out_w), max(out_h, out_w)
  assert (out_h < out_w) == (h < w) or h == w
  if max_size is not None:
    assert long <= max_size
  capped = max_size is not None and max(h, w) / min(h, w) * size > max_size
  if capped:
    assert short == int(round(max_size * min(h, w) / max(h, w)))
  else:
    assert short == size
  # The longer side follows the aspect ratio, truncated (and clamped to max_size).
  expected_long = int(short * max(h, w) / min(h, w))
  if max_size is not None:
    expected_long = min(expected_long, max_size)
  assert long == expected_long or (short, long) == (min(h, w), max(h, w))


def test_resize_matches_pil():
  clip = _clip()
  out = transforms.resample(clip, (0, 0, 80, 60), transforms.resized_shape(60, 80, 48, 64))
  assert out.size == (48, 64)
  for f_in, f_out, m_in, m_out in zip(clip.frames, out.frames, clip.masks, out.masks):
    np.testing.assert_array_equal(
        f_out, np.asarray(Image.fromarray(f_in).resize((64, 48), Image.BILINEAR)))
    np.testing.assert_array_equal(
        m_out, np.asarray(Image.fromarray(m_in.astype(np.uint8)).resize((64, 48),
                                                                        Image.NEAREST)) > 0)
  np.testing.assert_allclose(out.boxes, clip.boxes * 0.8, atol=1e-5)


def test_region_resample_matches_resize_then_crop():
  """A crop region mapped to the source equals resizing, cropping then resizing (PIL)."""
  clip = _clip(h=120, w=160)
  mid_w, mid_h, left, top, crop_w, crop_h, out_w, out_h = 200, 150, 30, 20, 120, 100, 96, 80
  sx, sy = 160 / mid_w, 120 / mid_h
  region = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
  out = transforms.resample(clip, region, (out_h, out_w))
  for f_in, f_out in zip(clip.frames, out.frames):
    mid = Image.fromarray(f_in).resize((mid_w, mid_h), Image.BILINEAR)
    ref = mid.crop((left, top, left + crop_w, top + crop_h)).resize((out_w, out_h),
                                                                     Image.BILINEAR)
    diff = np.abs(f_out.astype(int) - np.asarray(ref).astype(int))
    assert diff.mean() < 2.0, diff.mean()
  # Boxes: the original's crop (shift, clip to the crop) then scale.
  scale = np.array([out_w / crop_w, out_h / crop_h] * 2)
  mid_boxes = clip.boxes * np.array([1 / sx, 1 / sy] * 2)
  ref_boxes = np.clip(mid_boxes - [left, top, left, top], 0, [crop_w, crop_h] * 2) * scale
  ref_boxes[~clip.valid] = 0
  np.testing.assert_allclose(out.boxes, ref_boxes, atol=1e-3)


def test_crop_marks_vanished_objects_invalid():
  clip = _clip()
  # The bottom-right quarter: frame 0's object (top-left) is outside.
  out = transforms.check(transforms.resample(clip, (40, 30, 80, 60), (30, 40)))
  np.testing.assert_array_equal(out.valid, [False, True, False])
  np.testing.assert_array_equal(out.boxes[0], 0)
  assert not out.masks[0].any()
  # As in the original, a box is cropped as a box: frame 1's box spans both its blobs, so the
  # cropped box starts at the crop's edge although the left blob is gone.
  np.testing.assert_allclose(out.boxes[1], [0, 0, 38, 25], atol=1e-5)
  # The boxes alone tell which frames can stay valid, before resampling.
  np.testing.assert_array_equal(transforms.visible_in(clip.boxes, clip.valid, (40, 30, 80, 60)),
                                [False, True, False])


def test_visible_in_is_necessary_for_validity():
  """Over random crops, a frame that `check` keeps after `resample` is `visible_in` the crop;
  a box that lies outside the crop never is."""
  clip = _clip(t=3, h=72, w=128)
  outside = 0
  for seed in range(40):
    geometry = transforms.random_geometry(np.random.default_rng(seed), *clip.size,
                                          AUGMENTATION)
    out = transforms.check(transforms.resample(clip, geometry.region, geometry.shape))
    visible = transforms.visible_in(clip.boxes, clip.valid, geometry.region)
    assert np.all(visible >= out.valid)
    x0, y0, x1, y1 = geometry.region
    for box, v, valid in zip(clip.boxes, visible, clip.valid):
      apart = box[0] >= x1 or box[2] <= x0 or box[1] >= y1 or box[3] <= y0
      outside += valid and apart
      assert not v or not apart
  assert outside > 0


def test_random_geometry_sizes_within_scales():
  clip = _clip(t=2, h=72, w=128)
  shapes = set()
  for seed in range(60):
    geometry = transforms.random_geometry(np.random.default_rng(seed), *clip.size,
                                          AUGMENTATION)
    out = transforms.check(transforms.resample(clip, geometry.region, geometry.shape))
    h, w = out.size
    shapes.add((h, w))
    assert max(h, w) <= 640
    assert min(h, w) in (288, 320, 352, 392, 416, 448, 480, 512) or max(h, w) >= 640 - 1
    assert out.frames.shape == (2, h, w, 3) and out.masks.shape == (2, h, w)
    # The crop, at least 384 pixels high in a frame resized to a shorter side <= 600, lies
    # inside the source frame.
    x0, y0, x1, y1 = geometry.region
    assert 0 <= x0 < x1 <= 128 + 1e-6 and 0 <= y0 < y1 <= 72 + 1e-6
    assert y1 - y0 >= 384 * 72 / 600 - 1e-6
    # Valid frames keep a box inside the image and a non-empty mask.
    for b, m, v in zip(out.boxes, out.masks, out.valid):
      assert v == (m.any() and b[2] > b[0] and b[3] > b[1])
      assert 0 <= b[0] <= b[2] <= w and 0 <= b[1] <= b[3] <= h
  # Both branches ran: crops change the aspect ratio, plain resizes keep it (16:9).
  ratios = {round(w / h, 2) for h, w in shapes}
  assert len(ratios) > 2 and 1.78 in ratios


def test_draft_decoding_keeps_the_view():
  """A JPEG decoded at the reduced scale `draft_size` allows, then resampled, matches the
  full-size decode resampled (same region, same output)."""
  frames = _smooth_frames(1, 720, 1280)
  buffer = io.BytesIO()
  Image.fromarray(frames[0]).save(buffer, format="JPEG", quality=95)
  full = transforms.clip_from_masks(np.asarray(Image.open(buffer))[None],
                                    np.ones((1, 720, 1280), bool), "x")
  geometry = transforms.Geometry((100.0, 50.0, 1100.0, 650.0), (288, 480))
  draft_h, draft_w = transforms.draft_size(geometry, 720, 1280)
  assert (draft_h, draft_w) == (346, 615)  # the region (1000 x 600) must keep 480 x 288
  image = Image.open(io.BytesIO(buffer.getvalue()))
  image.draft("RGB", (draft_w, draft_h))
  small = np.asarray(image)
  assert small.shape == (360, 640, 3)  # JPEG scales by 1/2: the smallest no smaller than asked
  drafted = dataclasses.replace(full, frames=small[None])
  a = transforms.resample(full, geometry.region, geometry.shape).frames.astype(int)
  b = transforms.resample(drafted, geometry.region, geometry.shape).frames.astype(int)
  assert np.abs(a - b).mean() < 2.0
  # The decoded image itself (as the pipeline passes it) resamples exactly as its array.
  as_image = dataclasses.replace(full, frames=[image])
  for mirror in (False, True):
    np.testing.assert_array_equal(
        transforms.resample(as_image, geometry.region, geometry.shape, mirror).frames,
        transforms.resample(drafted, geometry.region, geometry.shape, mirror).frames)


def test_scale_saturation_matches_hsv_round_trip():
  rng = np.random.default_rng(0)
  pixels = rng.uniform(0, 255, size=(50, 3)).astype(np.float32)
  for factor in (0.8, 0.93, 1.0):
    out = transforms.scale_saturation(pixels, factor)
    for p, o in zip(pixels, out):
      h, s, v = colorsys.rgb_to_hsv(*(p / 255))
      ref = np.array(colorsys.hsv_to_rgb(h, s * factor, v)) * 255
      np.testing.assert_allclose(o, ref, atol=1e-3)


def test_photometric_keeps_geometry():
  clip = _clip()
  changed = 0
  for seed in range(10):
    out = transforms.random_photometric(clip, np.random.default_rng(seed))
    assert out.frames.dtype == np.uint8 and out.frames.shape == clip.frames.shape
    np.testing.assert_array_equal(out.masks, clip.masks)
    np.testing.assert_array_equal(out.boxes, clip.boxes)
    changed += int(np.any(out.frames != clip.frames))
  assert changed >= 8


def _photometric_float64(frame, rng):
  """PhotometricDistort in float64, drawing as photometric_distort does: brightness (clipped),
  contrast, saturation (V - s (V - c), checked against colorsys above), channel order."""
  x = frame.astype(float)
  if rng.integers(2):
    x = np.clip(x + rng.uniform(-32, 32), 0, 255)
  contrast = rng.uniform(0.8, 1.2) if rng.integers(2) else 1.0
  saturation = rng.uniform(0.8, 1.2) if rng.integers(2) else 1.0
  value = x.max(axis=-1, keepdims=True)
  x = np.clip(contrast * (value - saturation * (value - x)), 0, 255)
  if rng.random() < 0.2:
    x = x[..., list(itertools.permutations(range(3)))[rng.integers(6)]]
  return np.floor(x)


def test_photometric_matches_float64_reference():
  frames = _smooth_frames(40, 24, 32, seed=5)
  off_by_one = 0
  for seed, frame in enumerate(frames):
    out = transforms.photometric_distort(frame, np.random.default_rng(seed))
    diff = np.abs(out - _photometric_float64(frame, np.random.default_rng(seed)))
    assert diff.max() <= 1, seed  # float32 vs float64 at a truncation boundary
    off_by_one += np.count_nonzero(diff)
  assert off_by_one <= 1e-3 * frames.size, off_by_one


def test_photometric_on_gray_is_one_brightness_and_contrast():
  """On a gray frame saturation and channel swaps do nothing: what is left is
  out = contrast * (in + brightness), contrast in [0.8, 1.2], |brightness| <= 32."""
  gray = np.repeat(np.linspace(40, 215, 64 * 48).reshape(1, 48, 64, 1), 3, -1).astype(np.uint8)
  slopes = []
  for seed in range(30):
    out = transforms.photometric_distort(gray[0], np.random.default_rng(seed)).astype(float)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    x, y = gray[0, ..., 0].astype(float).ravel(), out[..., 0].ravel()
    inside = (y > 0) & (y < 255)
    slope, intercept = np.polyfit(x[inside], y[inside], 1)
    assert 0.8 - 0.01 <= slope <= 1.2 + 0.01
    assert abs(intercept / slope) <= 32 + 1
    slopes.append(slope)
  assert len({round(s, 2) for s in slopes}) > 5


def test_boxes_cxcywh():
  boxes = np.array([[10, 20, 30, 60]], np.float32)
  np.testing.assert_allclose(transforms.boxes_cxcywh(boxes, (100, 200)),
                             [[20 / 200, 40 / 100, 20 / 200, 40 / 100]])


def test_buckets_and_padding():
  buckets = [(512, 640), (640, 512), (640, 640)]
  assert transforms.choose_bucket([(400, 600)], buckets) == (512, 640)
  assert transforms.choose_bucket([(600, 400)], buckets) == (640, 512)
  assert transforms.choose_bucket([(400, 600), (600, 400)], buckets) == (640, 640)
  with pytest.raises(ValueError, match="no bucket holds 700x600"):
    transforms.choose_bucket([(700, 600)], buckets)
  frames = [np.full((2, 3, 5, 3), 7, np.uint8), np.full((2, 4, 2, 3), 9, np.uint8)]
  padded = transforms.pad_batch(frames, (4, 7), (1, 2))
  assert padded.shape == (2, 2, 4, 7, 3) and padded.dtype == np.uint8
  for out, array in zip(padded, frames):
    _, h, w, _ = array.shape
    np.testing.assert_array_equal(out[:, :h, :w], array)
    assert not out[:, h:].any() and not out[:, :, w:].any()
  mask = transforms.padding_mask((3, 5), (4, 7))
  np.testing.assert_array_equal(mask, padded[0, 0, :, :, 0] == 0)
  with pytest.raises(ValueError, match="cannot pad axis 2 of size 5 to 4"):
    transforms.pad_batch(frames, (4, 4), (1, 2))
  assert transforms.pad_multiple((360, 481), 16) == (368, 496)


def test_eval_resize_matches_pil():
  frames = _smooth_frames(2, 72, 128)
  out = transforms.eval_resize(frames, 360, 640)
  assert out.shape == (2, 360, 640, 3)
  np.testing.assert_array_equal(
      out[1], np.asarray(Image.fromarray(frames[1]).resize((640, 360), Image.BILINEAR)))
  np.testing.assert_array_equal(
      transforms.eval_resize([Image.fromarray(f) for f in frames], 360, 640), out)


def test_warp_projective_translation_and_identity():
  image = _smooth_frames(1, 40, 50)[0]
  identity = np.eye(3)
  np.testing.assert_array_equal(transforms.warp_projective(image, identity, Image.NEAREST), image)
  # Output pixel (x, y) reads input (x - 5, y - 3): the image moves right 5, down 3.
  shift = np.array([[1, 0, -5], [0, 1, -3], [0, 0, 1]], float)
  out = transforms.warp_projective(image, shift, Image.NEAREST)
  np.testing.assert_array_equal(out[3:, 5:], image[:-3, :-5])
  assert not out[:3].any() and not out[:, :5].any()


def test_pseudo_video():
  h, w = 60, 80
  image = _smooth_frames(1, h, w, seed=3)[0]
  mask = np.zeros((h, w), bool)
  mask[20:40, 30:55] = True
  originals = 0
  for seed in range(8):
    clip = transforms.pseudo_video(image, mask, "a cat", np.random.default_rng(seed), 5,
                                   PSEUDO_VIDEO)
    assert clip.frames.shape == (5, h, w, 3) and clip.masks.shape == (5, h, w)
    # The source image appears once, unaugmented, at a shuffled position.
    same = [t for t in range(5) if np.array_equal(clip.frames[t], image)]
    assert len(same) == 1
    np.testing.assert_array_equal(clip.masks[same[0]], mask)
    originals += same[0] != 0
    np.testing.assert_array_equal(clip.boxes, _reference_boxes(clip.masks))
    for t in range(5):
      # Rotation <= 20°, translation <= 10%, mild perspective: the object keeps a similar area.
      assert 0.5 < clip.masks[t].sum() / mask.sum() < 2.0
  assert originals > 0  # the order is shuffled
