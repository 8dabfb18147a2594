"""The model's per-window outputs gathered back into whole videos.

A window (data_pipelines.eval_windows) is one stretch of frames of one (video, expression);
its result keeps what the benchmarks need, with the padding removed: the valid frames' mask
probabilities at the resized, unpadded size (h, w) and the ground truth it carried. An
expression is complete when all its windows have come (`num_windows`), a video when all its
expressions have (`num_expressions`); all windows of a video come from one record, so from
one process. Windows may come in any order (evaluation batches them by shape).
"""

import dataclasses

import numpy as np

from vdit_jax.evaluation import original_size


@dataclasses.dataclass(frozen=True)
class WindowResult:
  """One window's outputs, padding removed.

  masks: queries "best": (T, h, w) mask probabilities of the T valid frames; "all": (Q, h, w)
    every query's at the annotated frame.
  scores: "best": (1,) the window's score; "all": (Q,).
  frame_names: (T,) the valid frames' names ("all": the annotated frame's, T = 1).
  annotated: (T,) bool, which of them have ground truth.
  gt: the ground truth at the original size: (T, H0, W0) bool (gt_masks), (H0, W0) (gt_mask
    of anchored windows), or None.
  """
  split: str
  video_id: str
  exp_id: str
  window: int
  num_windows: int
  num_expressions: int
  caption: str
  orig_size: tuple[int, int]
  masks: np.ndarray
  scores: np.ndarray
  frame_names: tuple[str, ...]
  annotated: np.ndarray
  gt: np.ndarray | None


def window_result(batch: dict[str, np.ndarray], row: int, outputs: dict[str, np.ndarray],
                  gt: dict[str, np.ndarray], queries: str) -> WindowResult:
  """Row `row` of a batch and of predict_fn's checked outputs (vdit_jax.evaluation.
  prediction); gt: the window's ground-truth fields (gt_mask / gt_masks, batch axis 1)."""
  valid = batch["frame_valid"][row]
  size = tuple(int(s) for s in batch["size"][row])
  if queries == "best":
    masks = original_size.crop(outputs["masks"][row][valid], size)
    scores = outputs["scores"][row].reshape(1)
    keep = valid
  else:
    keep = np.arange(len(valid)) == np.argmax(batch["annotated"][row])
    masks = original_size.crop(outputs["masks"][row][:, keep][:, 0], size)
    scores = outputs["scores"][row]
  if "gt_masks" in gt:
    truth = gt["gt_masks"][0][keep]
  else:
    truth = gt["gt_mask"][0] if "gt_mask" in gt else None
  return WindowResult(
      split=str(batch["split"][row]), video_id=str(batch["video_id"][row]),
      exp_id=str(batch["exp_id"][row]), window=int(batch["window"][row]),
      num_windows=int(batch["num_windows"][row]),
      num_expressions=int(batch["num_expressions"][row]), caption=str(batch["caption"][row]),
      orig_size=tuple(int(s) for s in batch["orig_size"][row]), masks=masks, scores=scores,
      frame_names=tuple(str(n) for n in batch["frame_names"][row][keep]),
      annotated=np.asarray(batch["annotated"][row][keep]), gt=truth)


@dataclasses.dataclass(frozen=True)
class Expression:
  """One (video, expression)'s windows joined in order (fields as WindowResult's, frames
  concatenated; scores (num_windows,) for "best")."""
  exp_id: str
  caption: str
  masks: np.ndarray
  scores: np.ndarray
  frame_names: tuple[str, ...]
  annotated: np.ndarray
  gt: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Video:
  """A video whose expressions are all complete, in exp_id order (numeric ids as numbers)."""
  split: str
  video_id: str
  orig_size: tuple[int, int]
  expressions: tuple[Expression, ...]

  @property
  def key(self) -> tuple[str, str]:
    return self.split, self.video_id


def _join(windows: list[WindowResult]) -> Expression:
  """One expression's windows, in window order, as one Expression."""
  windows = sorted(windows, key=lambda w: w.window)
  first = windows[0]

  def joined(name: str) -> np.ndarray:
    return np.concatenate([getattr(w, name) for w in windows])

  return Expression(exp_id=first.exp_id, caption=first.caption, masks=joined("masks"),
                    scores=joined("scores"),
                    frame_names=tuple(n for w in windows for n in w.frame_names),
                    annotated=joined("annotated"), gt=None if first.gt is None else joined("gt"))


def _exp_order(exp_id: str):
  return (0, int(exp_id), "") if exp_id.isdigit() else (1, 0, exp_id)


class VideoAssembler:
  """Collects WindowResults; `add` returns the videos they complete."""

  def __init__(self):
    self._windows: dict[tuple[str, str], dict[str, dict[int, WindowResult]]] = {}
    self._done: set[tuple[str, str]] = set()

  def add(self, result: WindowResult) -> list[Video]:
    """Adds one window; returns [the video] if this completes it, else []."""
    key = result.split, result.video_id
    if key in self._done:
      raise ValueError(f"a window of {key} came after the video was complete")
    expressions = self._windows.setdefault(key, {})
    windows = expressions.setdefault(result.exp_id, {})
    if result.window in windows:
      raise ValueError(f"window {result.window} of {key} expression {result.exp_id} came twice")
    windows[result.window] = result
    complete = (len(expressions) == result.num_expressions and all(
        len(w) == next(iter(w.values())).num_windows for w in expressions.values()))
    if not complete:
      return []
    del self._windows[key]
    self._done.add(key)
    joined = [_join(list(w.values())) for _, w in sorted(expressions.items(),
                                                         key=lambda item: _exp_order(item[0]))]
    return [Video(result.split, result.video_id, result.orig_size, tuple(joined))]

  def incomplete(self) -> list[tuple[str, str]]:
    """(split, video_id) of the videos some windows of which never came."""
    return sorted(self._windows)
