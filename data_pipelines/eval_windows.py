"""Evaluation: every (video, expression) cut into windows of frames, resized and padded.

A video is cut into windows of `window` frames (0: the whole video in one window), the last
one padded by repeating the video's last frame, marked invalid. An expression anchored on a
frame (A2D / JHMDB: meta "frame/<exp_id>") gets one window of `window` frames centred on
it, edge frames repeated, as the original's A2D evaluation (VD-IT datasets/a2d.py:114); a
single-frame record (RefCOCO) is anchored on its image.

Element, one window of one (video, expression), with a batch axis of 1 (N = frames in the
window, (H, W) the resized size padded to a multiple of size_divisor):
  frames (1, N, H, W, 3) uint8; pad_mask (1, H, W) bool, True on padding; frame_valid
  (1, N) bool (False on the repeated last frame that pads the final window); annotated
  (1, N) bool (the anchor frame of anchored expressions; frames with masks otherwise);
  frame_indices (1, N) int32; frame_names (1, N) str ("" on padding); window, num_windows
  (1,) int32; size, orig_size (1, 2) int32 (H, W); caption, video_id, exp_id (1,) str;
  anchored expressions and images also gt_mask (1, H0, W0) bool (the anchor frame's mask
  at the original size); plus what `tokenize(caption)` returns.
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


def window_frames(num_frames: int, window: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Frame indices (length,) of window `window` and their validity; the last window repeats
  the video's last frame, marked invalid."""
  indices = np.arange(window * length, (window + 1) * length)
  return np.minimum(indices, num_frames - 1), indices < num_frames


def centred_frames(anchor: int, length: int, num_frames: int) -> np.ndarray:
  """`length` frame indices centred on `anchor`, clamped to the video (the original's A2D
  evaluation clip: anchor - length // 2 ... anchor + (length + 1) // 2 - 1)."""
  return np.clip(np.arange(anchor - length // 2, anchor + (length + 1) // 2), 0, num_frames - 1)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How evaluation frames are cut and resized: config.eval.preprocessing.

  short_side, max_size: resize to shorter side `short_side`, longer at most `max_size`.
  size_divisor: pad the resized frames to a multiple of it.
  window: frames per window; 0 runs each video whole (anchored expressions need >= 1).
  """
  short_side: int
  max_size: int
  size_divisor: int
  window: int

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
      indices, valid = window_frames(num_frames, item.window, self.window or num_frames)
      annotated = valid & np.isin(np.asarray(record.frame_names)[indices], record.mask_frames)
    frames = transforms.eval_resize(decoding.load_frames(record, indices, where),
                                    self.short_side, self.max_size)
    size = frames.shape[1:3]
    shape = transforms.pad_multiple(size, self.size_divisor)
    return {
        "frames": transforms.pad_batch([frames], shape, (1, 2))[0],
        "pad_mask": transforms.padding_mask(size, shape),
        "frame_valid": valid,
        "annotated": annotated,
        "frame_indices": indices.astype(np.int32),
        "frame_names": np.where(valid, np.asarray(record.frame_names)[indices], ""),
        "window": np.int32(item.window),
        "num_windows": np.int32(item.num_windows),
        "size": np.array(size, np.int32),
        "orig_size": np.array([record.height, record.width], np.int32),
        "caption": decoding.clean_caption(expression.text),
        "video_id": record.video_id,
        "exp_id": expression.exp_id,
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
    example = self.preprocessing.example(item, where)
    if self.tokenize is not None:
      example.update(self.tokenize(example["caption"]))
    return {k: np.asarray(v)[None] for k, v in example.items()}
