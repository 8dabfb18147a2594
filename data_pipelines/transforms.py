"""Clip augmentation, normalisation and padding on numpy arrays (vdit-original.md §5.1, §5.3).

A `Clip` holds T frames of one video with the referred object's masks and boxes. Boxes are
xyxy in pixel-edge coordinates: a mask covering columns c0..c1 has x0 = c0, x1 = c1 + 1, so
that a horizontal flip maps a box exactly as it maps its mask (the original uses the last
pixel index as x1, off by one).

Training (Ref-YTVOS / A2D / RefCOCO, the original's `make_coco_transforms`), `augment`:
- `random_geometry`: RandomSelect(p=.5) of RandomResize(TRAIN_SCALES, max_size=640), or
  RandomResize([400, 500, 600]) -> RandomSizeCrop(384, 600) -> RandomResize(TRAIN_SCALES, 640),
  drawn before decoding (so JPEGs can be decoded at a reduced DCT scale, `draft_size`) and
  applied in one PIL resample of a source region (`resample`), then `check` marks frames
  whose box or mask vanished as invalid. As in the original, a cropped box is the box
  clipped to the crop, not the tight box of the cropped mask.
- `random_hflip` (p .5): mirrors frames, masks and boxes, swaps "left" <-> "right".
- `photometric_distort`, independently per frame.
Then `normalize` (ImageNet), `boxes_cxcywh` (normalised by the unpadded size) and `pad` to the
smallest of a few static (H, W) buckets (`choose_bucket`). The original's order is
flip/photometric after the resize for Ref-YTVOS and before it for A2D and RefCOCO; here it is
always after (cheaper); both commute with resizing up to interpolation.

RefCOCO pseudo-videos (`pseudo_video`, the original's imgaug `ImageToSeqAugmenter`):
frame 0 is the image, each other frame a re-augmentation of it (brightness / hue+saturation,
perspective 0.08, rotation ±20°, translation ±10%, motion blur p .25), then the order is
shuffled.

Evaluation: `eval_resize` (shorter side 360, longer at most 640), `normalize`, `pad`.

Every random choice is drawn from the `np.random.Generator` passed in.
"""

import dataclasses
import math
import re

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
TRAIN_SCALES = (288, 320, 352, 392, 416, 448, 480, 512)
TRAIN_MAX_SIZE = 640
CROP_RESIZE_SCALES = (400, 500, 600)
CROP_SIZE_RANGE = (384, 600)
EVAL_SIZE = 360
EVAL_MAX_SIZE = 640

_CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


@dataclasses.dataclass(frozen=True)
class Clip:
  """T frames of a video and the referred object in each.

  frames: (T, h, w, 3) uint8 RGB; before the first `resample` (h, w) may be a reduced
    version of (H, W) (JPEG draft decoding, see `draft_size`), covering the same view.
  masks: (T, H, W) bool; (H, W) is the clip's `size`, the frame of reference of boxes.
  boxes: (T, 4) float32 xyxy pixel edges; zeros where not valid.
  valid: (T,) bool, the object is visible (box and mask non-empty).
  caption: the expression.
  """
  frames: np.ndarray
  masks: np.ndarray
  boxes: np.ndarray
  valid: np.ndarray
  caption: str

  @property
  def size(self) -> tuple[int, int]:
    """(H, W)."""
    return self.masks.shape[1], self.masks.shape[2]


def mask_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Tight xyxy pixel-edge boxes of (T, H, W) bool masks: ((T, 4) float32, (T,) bool valid)."""
  rows, cols = masks.any(axis=2), masks.any(axis=1)
  valid = rows.any(axis=1)
  first = lambda a: np.argmax(a, axis=1)  # noqa: E731
  last = lambda a: a.shape[1] - np.argmax(a[:, ::-1], axis=1)  # noqa: E731
  boxes = np.stack([first(cols), first(rows), last(cols), last(rows)], axis=1)
  return np.where(valid[:, None], boxes, 0).astype(np.float32), valid


def clip_from_masks(frames: np.ndarray, masks: np.ndarray, caption: str) -> Clip:
  """A Clip whose boxes and validity come from its masks."""
  boxes, valid = mask_boxes(masks)
  return Clip(frames, masks, boxes, valid, caption)


def resized_shape(height: int, width: int, size: int, max_size: int | None = None
                  ) -> tuple[int, int]:
  """The original's `get_size_with_aspect_ratio`: shorter side `size`, longer <= max_size.

  Returns (H, W), truncated to ints as the original does; the longer side is also clamped to
  max_size, which the original's rounding can exceed by a pixel (e.g. 101x997 -> 65x641).
  """
  if max_size is not None:
    short, long = min(height, width), max(height, width)
    if long / short * size > max_size:
      size = int(round(max_size * short / long))
  if (width <= height and width == size) or (height <= width and height == size):
    return height, width
  cap = max_size if max_size is not None else float("inf")
  if width < height:
    return min(int(size * height / width), cap), size
  return size, min(int(size * width / height), cap)


def _scaled(region, sx: float, sy: float):
  x0, y0, x1, y1 = region
  return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def resample(clip: Clip, region: tuple[float, float, float, float], shape: tuple[int, int]
             ) -> Clip:
  """Resizes the `region` (x0, y0, x1, y1) of every frame to `shape` (H, W).

  `region` is in mask (`clip.size`) coordinates. Frames use PIL bilinear (antialiased, as
  torchvision's PIL resize), masks PIL nearest; boxes are shifted, clipped to the region and
  scaled. Validity is left to `check`.
  """
  out_h, out_w = shape
  (h, w), (fh, fw) = clip.size, clip.frames.shape[1:3]
  frame_region = _scaled(region, fw / w, fh / h)
  frames = np.stack([np.asarray(Image.fromarray(f).resize((out_w, out_h), Image.BILINEAR,
                                                          box=frame_region))
                     for f in clip.frames])
  masks = np.stack([np.asarray(Image.fromarray(m.view(np.uint8)).resize(
      (out_w, out_h), Image.NEAREST, box=region)) for m in clip.masks]).astype(bool)
  x0, y0, x1, y1 = region
  scale = np.array([out_w / (x1 - x0), out_h / (y1 - y0)] * 2, np.float32)
  limit = np.array([x1 - x0, y1 - y0] * 2, np.float32)
  boxes = np.clip(clip.boxes - np.array([x0, y0, x0, y0], np.float32), 0, limit) * scale
  boxes = np.where(clip.valid[:, None], boxes, 0).astype(np.float32)
  return dataclasses.replace(clip, frames=frames, masks=masks, boxes=boxes)


def check(clip: Clip) -> Clip:
  """The original's Check(): frames whose box or mask vanished become invalid (box zeroed)."""
  keep = (clip.valid & (clip.boxes[:, 2] > clip.boxes[:, 0]) & (clip.boxes[:, 3] > clip.boxes[:, 1])
          & clip.masks.any(axis=(1, 2)))
  return dataclasses.replace(clip, valid=keep, boxes=np.where(keep[:, None], clip.boxes, 0))


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


@dataclasses.dataclass(frozen=True)
class Geometry:
  """A crop-and-resize: `region` (x0, y0, x1, y1) of the source frame becomes `shape` (H, W)."""
  region: tuple[float, float, float, float]
  shape: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """The training augmentation's ranges; the defaults are the original's (§5.3)."""
  scales: tuple[int, ...] = TRAIN_SCALES
  max_size: int = TRAIN_MAX_SIZE
  crop_resize_scales: tuple[int, ...] = CROP_RESIZE_SCALES
  crop_min_size: int = CROP_SIZE_RANGE[0]
  crop_max_size: int = CROP_SIZE_RANGE[1]
  select_prob: float = 0.5
  flip_prob: float = 0.5


def random_geometry(rng: np.random.Generator, height: int, width: int,
                    aug: Augmentation = Augmentation()) -> Geometry:
  """The original's RandomSelect for a `height` x `width` frame: with probability
  select_prob RandomResize(scales, max_size), else RandomResize(crop_resize_scales) ->
  RandomSizeCrop(crop_min_size, crop_max_size) -> RandomResize(scales, max_size), the crop
  mapped back to source pixels."""
  h, w = height, width
  if rng.random() < aug.select_prob:
    return Geometry((0, 0, w, h), resized_shape(h, w, _pick(rng, aug.scales), aug.max_size))
  mid_h, mid_w = resized_shape(h, w, _pick(rng, aug.crop_resize_scales))
  crop_w = int(rng.integers(min(aug.crop_min_size, mid_w), min(mid_w, aug.crop_max_size) + 1))
  crop_h = int(rng.integers(min(aug.crop_min_size, mid_h), min(mid_h, aug.crop_max_size) + 1))
  top = int(rng.integers(0, mid_h - crop_h + 1))
  left = int(rng.integers(0, mid_w - crop_w + 1))
  region = _scaled((left, top, left + crop_w, top + crop_h), w / mid_w, h / mid_h)
  return Geometry(region, resized_shape(crop_h, crop_w, _pick(rng, aug.scales), aug.max_size))


def draft_size(geometry: Geometry, height: int, width: int) -> tuple[int, int]:
  """The smallest (H, W) a `height` x `width` frame can be decoded at (JPEG draft) without
  the geometry's region falling below its output resolution."""
  x0, y0, x1, y1 = geometry.region
  scale = min(1.0, max(geometry.shape[0] / (y1 - y0), geometry.shape[1] / (x1 - x0)))
  return math.ceil(height * scale), math.ceil(width * scale)


_LEFT_RIGHT = re.compile(r"\b(left|right)")


def swap_left_right(caption: str) -> str:
  """Swaps words starting with "left" / "right" ("leftmost" -> "rightmost"; "bright" stays,
  unlike the original's plain substring replace)."""
  return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", caption)


def hflip(clip: Clip) -> Clip:
  """Mirrors frames, masks and boxes left-right and swaps left/right in the caption."""
  w = clip.size[1]
  boxes = np.stack([w - clip.boxes[:, 2], clip.boxes[:, 1], w - clip.boxes[:, 0],
                    clip.boxes[:, 3]], axis=1)
  return Clip(frames=clip.frames[:, :, ::-1].copy(), masks=clip.masks[:, :, ::-1].copy(),
              boxes=np.where(clip.valid[:, None], boxes, 0).astype(np.float32),
              valid=clip.valid, caption=swap_left_right(clip.caption))


def random_hflip(clip: Clip, rng: np.random.Generator, p: float = 0.5) -> Clip:
  return hflip(clip) if rng.random() < p else clip


def scale_saturation(x: np.ndarray, factor: float) -> np.ndarray:
  """Scales the HSV saturation of (..., 3) float RGB, keeping hue and value.

  With V = max(R, G, B), each channel c becomes V - factor (V - c): the original's
  RGB -> HSV -> S *= factor -> RGB round trip in closed form.
  """
  value = np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])[..., None]
  return factor * x + (1 - factor) * value


def photometric_distort(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The original's PhotometricDistort on one (H, W, 3) uint8 frame.

  Brightness ±32 (p .5, clipped); contrast 0.8-1.2 (p .5) and saturation 0.8-1.2 (p .5),
  which the original applies in a random order, but which commute (both are linear and
  the original does not clip between them); hue off; channel permutation (p .2), which
  commutes with the rest. The result is clipped to [0, 255] (the original casts
  out-of-range floats to uint8 unclipped).
  """
  x = frame.astype(np.float32)
  if rng.integers(2):
    x += rng.uniform(-32, 32)
    np.clip(x, 0, 255, out=x)
  contrast = rng.uniform(0.8, 1.2) if rng.integers(2) else 1.0
  saturation = rng.uniform(0.8, 1.2) if rng.integers(2) else 1.0
  if saturation != 1.0:
    x = scale_saturation(x, saturation)
  x *= contrast
  np.clip(x, 0, 255, out=x)
  out = x.astype(np.uint8)
  if rng.random() < 0.2:
    out = out[..., _pick(rng, _CHANNEL_ORDERS)]
  return out


def random_photometric(clip: Clip, rng: np.random.Generator) -> Clip:
  frames = np.stack([photometric_distort(f, rng) for f in clip.frames])
  return dataclasses.replace(clip, frames=frames)


def augment(clip: Clip, rng: np.random.Generator, geometry: Geometry,
            aug: Augmentation = Augmentation()) -> Clip:
  """The training augmentation after `random_geometry`: resample + check -> random_hflip ->
  photometric per frame."""
  clip = check(resample(clip, geometry.region, geometry.shape))
  return random_photometric(random_hflip(clip, rng, aug.flip_prob), rng)


def eval_resize(frames: np.ndarray, size: int = EVAL_SIZE, max_size: int = EVAL_MAX_SIZE
                ) -> np.ndarray:
  """Resizes (T, H, W, 3) uint8 frames to shorter side `size`, longer <= max_size (bilinear)."""
  h, w = resized_shape(frames.shape[1], frames.shape[2], size, max_size)
  return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
                   for f in frames])


def normalize(frames: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              shape: tuple[int, int] | None = None) -> np.ndarray:
  """(T, H, W, 3) uint8 RGB -> float32 (x / 255 - mean) / std (ImageNet statistics by
  default), zero-padded at the bottom/right to `shape` (H', W') if given."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  t, h, w, c = frames.shape
  out_h, out_w = shape or (h, w)
  if out_h < h or out_w < w:
    raise ValueError(f"cannot pad {h}x{w} frames to {out_h}x{out_w}")
  out = np.zeros((t, out_h, out_w, c), np.float32)
  view = out[:, :h, :w]
  np.multiply(frames, 1 / (255 * std), out=view)
  view -= mean / std
  return out


def boxes_cxcywh(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(T, 4) xyxy pixels -> (T, 4) cxcywh normalised by the image size (H, W)."""
  h, w = size
  x0, y0, x1, y1 = np.moveaxis(boxes, -1, 0)
  out = np.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], -1)
  return out.astype(np.float32)


def choose_bucket(sizes, buckets) -> tuple[int, int]:
  """The smallest (by area) bucket (H, W) that holds every (h, w) in `sizes`.

  Buckets are orientation-aware: list (512, 640) and (640, 512) to serve both.
  """
  max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
  fitting = [tuple(b) for b in buckets if b[0] >= max_h and b[1] >= max_w]
  if not fitting:
    raise ValueError(f"no bucket holds {max_h}x{max_w} (H x W); buckets: {list(buckets)}")
  return min(fitting, key=lambda b: (b[0] * b[1], b))


def pad_multiple(size: tuple[int, int], multiple: int) -> tuple[int, int]:
  """(H, W) rounded up to a multiple."""
  return tuple(-(-s // multiple) * multiple for s in size)


def pad(array: np.ndarray, shape: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
  """Zero-pads `array` at the bottom/right of `axes` to `shape`."""
  out_shape = list(array.shape)
  for axis, target in zip(axes, shape):
    if target < array.shape[axis]:
      raise ValueError(f"cannot pad axis {axis} of size {array.shape[axis]} to {target}")
    out_shape[axis] = target
  out = np.zeros(out_shape, array.dtype)
  out[tuple(slice(0, n) for n in array.shape)] = array
  return out


def padding_mask(size: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
  """(H, W) bool of a `size` image padded to `shape`: True on padding (DETR's convention)."""
  mask = np.ones(shape, bool)
  mask[:size[0], :size[1]] = False
  return mask


@dataclasses.dataclass(frozen=True)
class PseudoVideo:
  """RefCOCO pseudo-video ranges: the original's ImageToSeqAugmenter arguments
  (refexp2seq.py)."""
  perspective: float = 0.08
  rotate_degrees: float = 20.0
  translate: float = 0.1
  brightness: int = 40
  hue_saturation: int = 5
  motion_blur_prob: float = 0.25
  motion_blur_kernels: tuple[int, ...] = (9, 11)
  shuffle_frames: bool = True


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The 3x3 projective map sending 4 points `src` (4, 2) to `dst` (4, 2)."""
  rows, rhs = [], []
  for (x, y), (u, v) in zip(src, dst):
    rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
    rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    rhs += [u, v]
  return np.append(np.linalg.solve(np.array(rows, float), np.array(rhs, float)), 1).reshape(3, 3)


def _random_warp(rng: np.random.Generator, height: int, width: int, params: PseudoVideo
                 ) -> np.ndarray:
  """The output->input 3x3 map of perspective then affine (rotation about the centre,
  translation); the perspective, like imgaug's PerspectiveTransform with keep_size, maps a
  quadrilateral with corners jittered inwards by |N(0, perspective)| of the size to the full
  frame."""
  jitter = np.minimum(np.abs(rng.normal(0, params.perspective, size=(4, 2))), 0.45)
  corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
  quad = np.abs(corners - jitter) * [width, height]
  output_to_quad = _homography(corners * [width, height], quad)
  angle = math.radians(rng.uniform(-params.rotate_degrees, params.rotate_degrees))
  tx, ty = rng.uniform(-params.translate, params.translate, size=2) * [width, height]
  cx, cy = width / 2, height / 2
  cos, sin = math.cos(angle), math.sin(angle)
  # Inverse of: rotate by `angle` about the centre, then translate by (tx, ty).
  affine_inverse = np.array([
      [cos, sin, -cos * (cx + tx) - sin * (cy + ty) + cx],
      [-sin, cos, sin * (cx + tx) - cos * (cy + ty) + cy],
      [0, 0, 1]])
  return output_to_quad @ affine_inverse


def _motion_blur(image: np.ndarray, rng: np.random.Generator, kernels: tuple[int, ...]
                 ) -> np.ndarray:
  """Averages the image along a line of k pixels (k from `kernels`) at a random angle."""
  k = _pick(rng, kernels)
  angle = rng.uniform(0, 2 * math.pi)
  steps = np.arange(k) - (k - 1) / 2
  offsets = {(int(round(s * math.sin(angle))), int(round(s * math.cos(angle)))) for s in steps}
  r = k // 2
  padded = np.pad(image.astype(np.float32), ((r, r), (r, r), (0, 0)), mode="edge")
  h, w = image.shape[:2]
  total = sum(padded[r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offsets)
  return np.clip(np.round(total / len(offsets)), 0, 255).astype(np.uint8)


def _color_jitter(image: np.ndarray, rng: np.random.Generator, params: PseudoVideo
                  ) -> np.ndarray:
  """imgaug SomeOf((1, None), [Add(±brightness), AddToHueAndSaturation(±hue_saturation)]):
  one or both, in that order."""
  chosen = sorted(rng.choice(2, size=int(rng.integers(1, 3)), replace=False))
  out = image
  if 0 in chosen:
    delta = int(rng.integers(-params.brightness, params.brightness + 1))
    out = np.clip(out.astype(np.int16) + delta, 0, 255).astype(np.uint8)
  if 1 in chosen:
    delta = int(rng.integers(-params.hue_saturation, params.hue_saturation + 1))
    hsv = np.asarray(Image.fromarray(out).convert("HSV")).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + delta) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] + delta, 0, 255)
    out = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))
  return out


def warp_projective(image: np.ndarray, matrix: np.ndarray, resample: int) -> np.ndarray:
  """Warps an (H, W[, C]) uint8 array by the output->input 3x3 `matrix` (PIL, zero fill)."""
  h, w = image.shape[:2]
  coefficients = tuple((matrix / matrix[2, 2]).reshape(-1)[:8])
  return np.asarray(Image.fromarray(image).transform((w, h), Image.PERSPECTIVE, coefficients,
                                                     resample))


def pseudo_video(image: np.ndarray, mask: np.ndarray, caption: str, rng: np.random.Generator,
                 num_frames: int, params: PseudoVideo = PseudoVideo()) -> Clip:
  """Turns one image (H, W, 3) uint8 and its object mask (H, W) bool into a Clip of
  `num_frames` frames: the image and num_frames - 1 re-augmentations of it, shuffled."""
  frames, masks = [image], [mask]
  h, w = mask.shape
  for _ in range(num_frames - 1):
    matrix = _random_warp(rng, h, w, params)
    frame = warp_projective(_color_jitter(image, rng, params), matrix, Image.BILINEAR)
    if rng.random() < params.motion_blur_prob:
      frame = _motion_blur(frame, rng, params.motion_blur_kernels)
    frames.append(frame)
    masks.append(warp_projective(mask.view(np.uint8), matrix, Image.NEAREST).astype(bool))
  order = rng.permutation(num_frames) if params.shuffle_frames else np.arange(num_frames)
  return clip_from_masks(np.stack(frames)[order], np.stack(masks)[order], caption)
