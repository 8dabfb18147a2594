"""Clip augmentation and padding on numpy arrays (VD-IT datasets/transforms_video.py).

A `Clip` holds T frames of one video with the referred object's masks and boxes. Boxes are
xyxy in pixel-edge coordinates: a mask covering columns c0..c1 has x0 = c0, x1 = c1 + 1, so
that a horizontal flip maps a box exactly as it maps its mask (the original uses the last
pixel index as x1, off by one).

Training (Ref-YTVOS / A2D / RefCOCO, the original's `make_coco_transforms`, VD-IT
datasets/ytvos.py:201), `augment`, with the ranges of `Augmentation` (config.data.augmentation):
- `random_geometry`: RandomSelect(p=.5) of RandomResize(scales, max_size=640), or
  RandomResize([400, 500, 600]) -> RandomSizeCrop(384, 600) -> RandomResize(scales, 640),
  drawn before decoding (so JPEGs can be decoded at a reduced DCT scale, `draft_size`) and
  applied in one PIL resample of a source region (`resample`), then `check` marks frames
  whose box or mask vanished as invalid. As in the original, a cropped box is the box
  clipped to the crop, not the tight box of the cropped mask. `visible_in` tells from the
  boxes alone, before decoding frames, whether a clip can keep any valid frame.
- RandomHorizontalFlip (p .5), in the same `resample`: mirrors frames, masks and boxes,
  swaps "left" <-> "right" in the caption.
- `photometric_distort`, independently per frame.
Then `boxes_cxcywh` (normalised by the unpadded size) and, per batch, `pad_batch` to the
smallest of a few static (H, W) buckets (`choose_bucket`). Frames stay uint8: the ImageNet
normalisation runs on the device (vdit_jax/models/normalize.py). The original's order is
flip/photometric after the resize for Ref-YTVOS and before it for A2D and RefCOCO; here it is
always after (cheaper); both commute with resizing up to interpolation.

RefCOCO pseudo-videos (`pseudo_video`, the original's imgaug `ImageToSeqAugmenter`, with the
ranges of `PseudoVideo`, config.data.pseudo_video): frame 0 is the image, each other frame a
re-augmentation of it (brightness / hue+saturation, perspective 0.08, rotation ±20°,
translation ±10%, motion blur p .25), then the order is shuffled.

Evaluation: `eval_resize` (config.eval.preprocessing: shorter side 360, longer at most 640),
`pad_batch`.

Every random choice is drawn from the `np.random.Generator` passed in.
"""

import dataclasses
import math
import re

import numpy as np
from PIL import Image

_CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


@dataclasses.dataclass(frozen=True)
class Clip:
  """T frames of a video and the referred object in each.

  frames: (T, h, w, 3) uint8 RGB. Before the first `resample`, (h, w) may be a reduced
    version of (H, W) (JPEG draft decoding, see `draft_size`), covering the same view, and
    the frames may be a list of T decoded RGB PIL images, which `resample` reads without a
    copy into numpy and back (a few ms per 720p frame).
  masks: (T, H, W) bool; (H, W) is the clip's `size`, the frame of reference of boxes.
  boxes: (T, 4) float32 xyxy pixel edges; zeros where not valid.
  valid: (T,) bool, the object is visible (box and mask non-empty).
  caption: the expression.
  """
  frames: np.ndarray | list[Image.Image]
  masks: np.ndarray
  boxes: np.ndarray
  valid: np.ndarray
  caption: str

  @property
  def size(self) -> tuple[int, int]:
    """(H, W)."""
    return self.masks.shape[1], self.masks.shape[2]


def _image(frame: np.ndarray | Image.Image) -> Image.Image:
  """A frame as a PIL image: an (h, w, 3) uint8 array is wrapped, an image passes."""
  return frame if isinstance(frame, Image.Image) else Image.fromarray(frame)


def _frame_size(frames: np.ndarray | list[Image.Image]) -> tuple[int, int]:
  """(h, w) of frames given as a (T, h, w, 3) array or as T PIL images."""
  first = frames[0]
  return (first.height, first.width) if isinstance(first, Image.Image) else first.shape[:2]


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


def _boxes_in_region(boxes: np.ndarray, region) -> np.ndarray:
  """(T, 4) xyxy boxes shifted to `region` (x0, y0, x1, y1) and clipped to it."""
  x0, y0, x1, y1 = region
  limit = np.array([x1 - x0, y1 - y0] * 2, np.float32)
  return np.clip(boxes - np.array([x0, y0, x0, y0], np.float32), 0, limit)


def visible_in(boxes: np.ndarray, valid: np.ndarray, region) -> np.ndarray:
  """(T,) bool: valid frames whose (T, 4) xyxy box keeps an area inside `region`, as `check`
  requires after `resample`; known before the frames are decoded, it spares decoding clips
  that the crop leaves without a valid frame."""
  boxes = _boxes_in_region(boxes, region)
  return valid & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def resample(clip: Clip, region: tuple[float, float, float, float], shape: tuple[int, int],
             mirror: bool = False) -> Clip:
  """Resizes the `region` (x0, y0, x1, y1) of every frame to `shape` (H, W), mirrored
  left-right if `mirror`.

  `region` is in mask (`clip.size`) coordinates. Frames use PIL bilinear (antialiased, as
  torchvision's PIL resize), masks PIL nearest; boxes are shifted, clipped to the region and
  scaled. Validity is left to `check`. Mirroring (the original's hflip) also mirrors the
  boxes and swaps "left" <-> "right" in the caption; PIL mirrors the images, which numpy
  does several times slower on (H, W, 3) arrays.
  """
  out_h, out_w = shape
  (h, w), (fh, fw) = clip.size, _frame_size(clip.frames)

  def resize(frame: np.ndarray | Image.Image, box, method: int) -> np.ndarray:
    image = _image(frame).resize((out_w, out_h), method, box=box)
    return np.asarray(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else image)

  frame_region = _scaled(region, fw / w, fh / h)
  frames = np.stack([resize(f, frame_region, Image.BILINEAR) for f in clip.frames])
  masks = np.stack([resize(m.view(np.uint8), region, Image.NEAREST)
                    for m in clip.masks]).view(bool)
  x0, y0, x1, y1 = region
  boxes = _boxes_in_region(clip.boxes, region) * np.array(
      [out_w / (x1 - x0), out_h / (y1 - y0)] * 2, np.float32)
  caption = clip.caption
  if mirror:
    boxes = np.stack([out_w - boxes[:, 2], boxes[:, 1], out_w - boxes[:, 0], boxes[:, 3]], 1)
    caption = swap_left_right(caption)
  boxes = np.where(clip.valid[:, None], boxes, 0).astype(np.float32)
  return Clip(frames, masks, boxes, clip.valid, caption)


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
  """The training augmentation's ranges: config.data.augmentation (configs/common.py).

  scales: shorter sides a clip is resized to; max_size: the longer side's limit;
  crop_resize_scales, crop_min_size, crop_max_size: the resize-then-crop branch;
  select_prob: probability of the plain resize branch; flip_prob: of the mirror.
  """
  scales: tuple[int, ...]
  max_size: int
  crop_resize_scales: tuple[int, ...]
  crop_min_size: int
  crop_max_size: int
  select_prob: float
  flip_prob: float


def random_geometry(rng: np.random.Generator, height: int, width: int,
                    aug: Augmentation) -> Geometry:
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


def channel_max(rgb: np.ndarray) -> np.ndarray:
  """max(R, G, B) of (..., 3) RGB: (...) the HSV value."""
  return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def scale_saturation(x: np.ndarray, factor: float, value: np.ndarray | None = None,
                     out: np.ndarray | None = None) -> np.ndarray:
  """Scales the HSV saturation of (..., 3) float RGB, keeping hue and value.

  With V = max(R, G, B) (`value`, (...), if already known), each channel c becomes
  V - factor (V - c): the original's RGB -> HSV -> S *= factor -> RGB round trip in closed
  form. `out` may be `x`.
  """
  grey = (1 - factor) * (channel_max(x) if value is None else value)
  out = np.multiply(x, factor, out=out)
  for c in range(3):  # Faster than broadcasting grey over a length-3 axis.
    out[..., c] += grey
  return out


def _brighten(x: np.ndarray, delta: float) -> np.ndarray:
  """x + delta clipped to [0, 255], in place."""
  if delta:
    x += delta
    np.clip(x, 0, 255, out=x)
  return x


def photometric_distort(frame: np.ndarray, rng: np.random.Generator,
                        out: np.ndarray | None = None) -> np.ndarray:
  """The original's PhotometricDistort on one (H, W, 3) uint8 frame, into `out` if given.

  Brightness ±32 (p .5, clipped); contrast 0.8-1.2 (p .5) and saturation 0.8-1.2 (p .5),
  which the original applies in a random order, but which commute (both are linear and
  the original does not clip between them); hue off; channel permutation (p .2), which
  commutes with the rest. The result is clipped to [0, 255] (the original casts
  out-of-range floats to uint8 unclipped).
  """
  brightness = rng.uniform(-32, 32) if rng.integers(2) else 0.0
  contrast = rng.uniform(0.8, 1.2) if rng.integers(2) else 1.0
  saturation = rng.uniform(0.8, 1.2) if rng.integers(2) else 1.0
  x = _brighten(frame.astype(np.float32), brightness)
  if saturation != 1.0:
    # Brightening is monotone, so it commutes with the channel max, cheaper on uint8.
    value = _brighten(channel_max(frame).astype(np.float32), brightness)
    scale_saturation(x, saturation, value, out=x)
  if contrast != 1.0:
    x *= contrast
  np.clip(x, 0, 255, out=x)
  if rng.random() < 0.2:
    x = x[..., _pick(rng, _CHANNEL_ORDERS)]
  out = np.empty(frame.shape, np.uint8) if out is None else out
  out[...] = x  # Truncates, as astype(uint8).
  return out


def random_photometric(clip: Clip, rng: np.random.Generator) -> Clip:
  frames = np.empty(clip.frames.shape, np.uint8)
  for frame, out in zip(clip.frames, frames):
    photometric_distort(frame, rng, out)
  return dataclasses.replace(clip, frames=frames)


def augment(clip: Clip, rng: np.random.Generator, geometry: Geometry,
            aug: Augmentation) -> Clip:
  """The training augmentation after `random_geometry`: resample, mirrored with probability
  flip_prob (drawn first), + check -> photometric per frame."""
  mirror = bool(rng.random() < aug.flip_prob)
  clip = check(resample(clip, geometry.region, geometry.shape, mirror))
  return random_photometric(clip, rng)


def eval_resize(frames: np.ndarray | list[Image.Image], size: int, max_size: int
                ) -> np.ndarray:
  """Resizes (T, H, W, 3) uint8 frames (or T RGB PIL images) to shorter side `size`, longer
  <= max_size (bilinear): (T, h, w, 3) uint8."""
  h, w = resized_shape(*_frame_size(frames), size, max_size)
  return np.stack([np.asarray(_image(f).resize((w, h), Image.BILINEAR)) for f in frames])


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


def pad_batch(arrays, shape: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
  """Stacks arrays of one dtype, each zero-padded at the bottom/right of `axes` to `shape`.

  Each array is copied once, into its corner of one zeroed (N, ...) result; `axes` count
  the arrays' own axes (e.g. (1, 2) for (T, h, w, 3) frames padded to (T, H, W, 3)).
  """
  out_shape = list(arrays[0].shape)
  for axis, target in zip(axes, shape):
    out_shape[axis] = target
  out = np.zeros([len(arrays)] + out_shape, arrays[0].dtype)
  for i, array in enumerate(arrays):
    for axis, target in zip(axes, shape):
      if target < array.shape[axis]:
        raise ValueError(f"cannot pad axis {axis} of size {array.shape[axis]} to {target}")
    out[(i,) + tuple(slice(0, n) for n in array.shape)] = array
  return out


def padding_mask(size: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
  """(H, W) bool of a `size` image padded to `shape`: True on padding (DETR's convention)."""
  mask = np.ones(shape, bool)
  mask[:size[0], :size[1]] = False
  return mask


@dataclasses.dataclass(frozen=True)
class PseudoVideo:
  """RefCOCO pseudo-video ranges: config.data.pseudo_video (configs/common.py), the
  original's ImageToSeqAugmenter arguments (VD-IT datasets/refexp2seq.py:32)."""
  perspective: float
  rotate_degrees: float
  translate: float
  brightness: int
  hue_saturation: int
  motion_blur_prob: float
  motion_blur_kernels: tuple[int, ...]
  shuffle_frames: bool


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
                 num_frames: int, params: PseudoVideo) -> Clip:
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
