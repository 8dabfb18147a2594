"""Evaluation: every (video, expression) cut into windows of frames, resized and padded.

A video is cut into windows of `window` frames (0: the whole video in one window). An
expression anchored on a frame (A2D / JHMDB: meta "frame/<exp_id>") gets one window of
`window` frames centred on it, edge frames repeated, as the original's A2D evaluation (VD-IT
datasets/a2d.py:114); a single-frame record (RefCOCO) is anchored on its image.

Shapes. Compiling a model per video shape would dominate an evaluation, so windows come in a
bounded set of shapes (N, H, W): the last window of a video is padded to `window` frames
(whole videos, window 0: to the smallest of `frame_buckets` that holds them) by repeating
the video's last frame, marked invalid, and the resized frames are padded to a multiple of
`size_divisor` and then to the smallest of `size_buckets` that holds them (frames 0 and
pad_mask True there). A window that no bucket holds keeps its own shape. The temporal layers
of a video model see the padded frames, so bucketing changes its outputs on the valid frames
a little; `exact_shapes` gives every window the original's shape instead (VD-IT
inference_ytvos.py / inference_davis.py: the window's true frame count, padded only to
`size_divisor`), one shape per distinct video length and size.

Element, one window of one (video, expression), with a batch axis of 1 (N = frames in the
window, (H, W) its padded size):
  frames (1, N, H, W, 3) uint8; pad_mask (1, H, W) bool, True on padding; frame_valid
  (1, N) bool (False on the repeated last frame that pads a window); annotated (1, N) bool
  (the anchor frame of anchored expressions; frames with masks otherwise); frame_indices
  (1, N) int32; frame_names (1, N) str ("" on padding); window, num_windows,
  num_expressions (1,) int32 (the expression's windows, the video's expressions); size,
  orig_size (1, 2) int32 (H, W) of the resized and the original frames; caption, video_id,
  exp_id, split (1,) str (split: the record's, e.g. "refcoco+/val"); plus what
  `tokenize(caption)` returns. Ground truth at the original size (H0, W0): anchored
  expressions and images gt_mask (1, H0, W0) bool (the anchor frame's mask); other windows,
  with `ground_truth` and a video with masks, gt_masks (1, N, H0, W0) bool (empty where
  not annotated).
"""

import dataclasses

import numpy as np

from data_pipelines import bad_input
from data_pipelines import decoding
from data_pipelines import raw
from data_pipelines import sampling
from data_pipelines import transforms
from vdit_jax import errors


@dataclasses.dataclass(frozen=True)
class Window:
  """Window `window` of `num_windows` of an expression; `anchor` >= 0 for anchored ones."""
  record: raw.VideoRecord
  exp_index: int
  window: int
  num_windows: int
  anchor: int = -1


def window_frames(num_frames: int, window: int, length: int, padded: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Frame indices (padded,) of window `window` of `length` frames and their validity; frames
  past the video or the window repeat its last frame, marked invalid."""
  start = window * length
  stop = min(start + length, num_frames)
  indices = np.arange(start, start + padded)
  return np.minimum(indices, stop - 1), indices < stop


def centred_frames(anchor: int, length: int, num_frames: int) -> np.ndarray:
  """`length` frame indices centred on `anchor`, clamped to the video (the original's A2D
  evaluation clip: anchor - length // 2 ... anchor + (length + 1) // 2 - 1)."""
  return np.clip(np.arange(anchor - length // 2, anchor + (length + 1) // 2), 0, num_frames - 1)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How evaluation frames are cut, resized and padded: config.eval.preprocessing.

  short_side, max_size: resize to shorter side `short_side`, longer at most `max_size`.
  size_divisor: pad the resized frames to a multiple of it.
  window: frames per window; 0 runs each video whole (anchored expressions need >= 1).
  frame_buckets: the frame counts whole videos (window 0) are padded to.
  size_buckets: the (H, W) sizes, multiples of size_divisor, frames are padded to.
  exact_shapes: no buckets: each window at its own length and size (module docstring).
  ground_truth: add gt_masks to the windows of videos with masks (offline scoring).
  """
  short_side: int
  max_size: int
  size_divisor: int
  window: int
  frame_buckets: tuple[int, ...]
  size_buckets: tuple[tuple[int, int], ...]
  exact_shapes: bool
  ground_truth: bool

  def __post_init__(self):
    if any(int(n) < 1 for n in self.frame_buckets):
      raise errors.ConfigError(f"config.eval.preprocessing.frame_buckets must be positive "
                               f"frame counts, got {tuple(self.frame_buckets)}")
    off = [tuple(b) for b in self.size_buckets if len(b) != 2
           or any(int(s) < 1 or int(s) % self.size_divisor for s in b)]
    if off:
      raise errors.ConfigError(f"config.eval.preprocessing.size_buckets {off} are not "
                               f"(H, W) multiples of size_divisor {self.size_divisor}")

  def windows(self, record: raw.VideoRecord) -> list[Window]:
    """The windows of every expression of a video."""
    windows = []
    for e, expression in enumerate(record.expressions):
      if sampling.anchored(record, expression) or len(record.frame_names) == 1:
        if self.window < 1:
          raise errors.ConfigError(
              f"{record.dataset}/{record.video_id}: anchored expressions (A2D / JHMDB) and "
              f"images (RefCOCO) need config.eval.preprocessing.window >= 1, not {self.window}")
        anchor = sampling.expression_anchors(record, e, 1)[0]
        windows.append(Window(record, e, 0, 1, anchor))
      else:
        length = self.window or len(record.frame_names)
        count = -(-len(record.frame_names) // length)
        windows.extend(Window(record, e, w, count) for w in range(count))
    return windows

  def num_frames(self, length: int, video_frames: int) -> int:
    """N of a window of `length` valid frames (module docstring)."""
    if self.exact_shapes:
      return length
    if self.window:
      return self.window
    return min((int(n) for n in self.frame_buckets if n >= video_frames), default=video_frames)

  def padded_size(self, size: tuple[int, int]) -> tuple[int, int]:
    """The padded (H, W) of frames resized to `size` (module docstring)."""
    shape = transforms.pad_multiple(size, self.size_divisor)
    fitting = [tuple(b) for b in self.size_buckets if b[0] >= shape[0] and b[1] >= shape[1]]
    if self.exact_shapes or not fitting:
      return shape
    return transforms.choose_bucket([shape], fitting)

  def example(self, item: Window, where: str) -> dict[str, np.ndarray]:
    """The window's element (module docstring) before tokens and the batch axis."""
    record = item.record
    num_frames = len(record.frame_names)
    expression = record.expressions[item.exp_index]
    extra = {}
    if item.anchor >= 0:
      indices = centred_frames(item.anchor, self.window, num_frames)
      valid = np.ones(len(indices), bool)
      annotated = np.arange(len(indices)) == np.argmax(indices == item.anchor)
      extra["gt_mask"] = decoding.decode_mask(record, item.anchor, expression.obj_ids, where)
    else:
      length = self.window or num_frames
      valid_frames = min(length, num_frames - item.window * length)
      indices, valid = window_frames(num_frames, item.window, length,
                                     self.num_frames(valid_frames, num_frames))
      annotated = valid & np.isin(np.asarray(record.frame_names)[indices], record.mask_frames)
      if self.ground_truth and record.mask_frames:
        extra["gt_masks"] = np.zeros((len(indices), record.height, record.width), bool)
        for t in np.flatnonzero(annotated):
          decoding.decode_mask(record, indices[t], expression.obj_ids, where,
                               out=extra["gt_masks"][t])
    # Repeated frames (padding, clamped edges) are decoded once.
    unique, inverse = np.unique(indices, return_inverse=True)
    frames = transforms.eval_resize(decoding.load_frames(record, unique, where),
                                    self.short_side, self.max_size)[inverse]
    size = frames.shape[1:3]
    shape = self.padded_size(size)
    return {
        "frames": transforms.pad_batch([frames], shape, (1, 2))[0],
        "pad_mask": transforms.padding_mask(size, shape),
        "frame_valid": valid,
        "annotated": annotated,
        "frame_indices": indices.astype(np.int32),
        "frame_names": np.where(valid, np.asarray(record.frame_names)[indices], ""),
        "window": np.int32(item.window),
        "num_windows": np.int32(item.num_windows),
        "num_expressions": np.int32(len(record.expressions)),
        "size": np.array(size, np.int32),
        "orig_size": np.array([record.height, record.width], np.int32),
        "caption": decoding.clean_caption(expression.text),
        "video_id": record.video_id,
        "exp_id": expression.exp_id,
        "split": record.split,
        **extra,
    }


@dataclasses.dataclass(frozen=True)
class EvalWindow:
  """(Window, where) -> the window's element with its batch axis (module docstring), or
  None if (skip_bad) its frames or mask do not decode."""
  preprocessing: Preprocessing
  skip_bad: bool
  tokenize: decoding.Tokenize | None

  def __call__(self, element) -> dict[str, np.ndarray] | None:
    item, where = element
    return bad_input.call_or_skip("clips", self.skip_bad, self._element, item, where)

  def _element(self, item: Window, where: str) -> dict[str, np.ndarray]:
    return self._batched(self.preprocessing.example(item, where))

  def filler(self, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """An element of shape (N, H, W) that is no window, for the rows a batch of windows of
    that shape has no window for: a black unpadded video of valid frames (nothing a model
    could divide by zero on), caption "", num_windows 0, no ground truth."""
    n, h, w = shape
    return self._batched({
        "frames": np.zeros((n, h, w, 3), np.uint8),
        "pad_mask": np.zeros((h, w), bool),
        "frame_valid": np.ones(n, bool),
        "annotated": np.zeros(n, bool),
        "frame_indices": np.zeros(n, np.int32),
        "frame_names": np.full(n, ""),
        "window": np.int32(0),
        "num_windows": np.int32(0),
        "num_expressions": np.int32(0),
        "size": np.array([h, w], np.int32),
        "orig_size": np.array([h, w], np.int32),
        "caption": "",
        "video_id": "",
        "exp_id": "",
        "split": "",
    })

  def _batched(self, example: dict) -> dict[str, np.ndarray]:
    """Adds the caption's tokens and the batch axis."""
    if self.tokenize is not None:
      example.update(self.tokenize(example["caption"]))
    return {k: np.asarray(v)[None] for k, v in example.items()}
