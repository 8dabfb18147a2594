"""Training samples of a video and the original's sparse clip sampling (VD-IT
datasets/ytvos.py:111-140).

A `VideoRecord` expands into one `Sample` per (expression, anchor frame); a sample becomes a
clip of `num_frames` frame indices around its anchor (`ClipSampling`, whose fields are
config.data.sampling):

- the anchor, one frame U{1..local_window} before it and one U{1..local_window} after it
  (clamped to the video);
- `num_frames - 3` "global" frames drawn without replacement from outside that window
  [before, after] (from the whole video when too few frames lie outside; with replacement
  when the video is shorter than that): the original's count, `num_frames` minus the three
  frames already drawn;
- the indices sorted, and reversed with probability `reverse_prob`, except for expressions
  anchored on one annotated frame (A2D / JHMDB), whose clips keep their order.

The original (SgMg/VD-IT `datasets/ytvos.py`) draws the globals from `frames[:lo] +
frames[hi:]`, which lets the window's last frame come twice; here "outside the window" is
strict. Frame indices are positions in `record.frame_names`.

Anchors:
- Ref-YTVOS / Ref-DAVIS (and any dataset without per-expression anchors): every
  `stride`-th annotated frame, `range(0, len(annotated), stride)` with stride = the clip
  length (5) as in the original; for Ref-YTVOS train the annotated frames are all frames.
- A2D-Sentences: the expression's own annotated frame, which the reader stores in
  `record.meta[raw.anchor_key(exp_id)]` ("frame/<exp_id>") as a frame name.
- RefCOCO: the single image (anchor 0); its pseudo-video is made by transforms.

An expression's anchors are every stride-th of its `anchor_frames` (stride 1), so how many
samples a split holds at any stride follows from how many anchor frames each expression has
(`AnchorCounts`, which the build records).

All randomness comes from the `np.random.Generator` the caller passes (the pipeline's grain
`random_map` seeds it from (seed, element index)), so a clip is a pure function of the
generator state: deterministic and checkpointable.
"""

import collections
import dataclasses
from typing import Mapping

import numpy as np

from data_pipelines import raw
from vdit_jax import errors


class SampleError(errors.UserError, ValueError):
  """A record whose samples cannot be formed (an anchor frame the video does not have), or
  recorded AnchorCounts that cannot be read."""


@dataclasses.dataclass(frozen=True)
class Sample:
  """One training sample: an expression of a video, anchored on a frame.

  record: the video.
  exp_index: the expression's position in `record.expressions`.
  anchor: the anchor's index in `record.frame_names`.
  candidates: the anchors this expression may be resampled at (indices in frame_names).
  """
  record: raw.VideoRecord
  exp_index: int
  anchor: int
  candidates: tuple[int, ...]

  @property
  def expression(self) -> raw.Expression:
    return self.record.expressions[self.exp_index]

  @property
  def anchored(self) -> bool:
    return anchored(self.record, self.expression)


def anchored(record: raw.VideoRecord, expression: raw.Expression) -> bool:
  """Whether the expression names its own anchor frame (A2D / JHMDB: meta "frame/<exp_id>")."""
  return raw.anchor_key(expression.exp_id) in record.meta


def annotated_indices(record: raw.VideoRecord) -> tuple[int, ...]:
  """The indices, in frame_names, of the frames that carry a mask (each once, in order)."""
  annotated = set(record.mask_frames)
  return tuple(i for i, name in enumerate(record.frame_names) if name in annotated)


def anchor_frames(record: raw.VideoRecord, exp_index: int) -> tuple[int, ...]:
  """The frames (indices in frame_names) one expression may be anchored on: its named frame
  (A2D / JHMDB), else every annotated frame (every frame when none is annotated)."""
  expression = record.expressions[exp_index]
  named = record.meta.get(raw.anchor_key(expression.exp_id))
  if named is not None:
    if named not in record.frame_names:
      raise SampleError(f"{record.dataset}/{record.video_id}: expression "
                        f"{expression.exp_id!r} is anchored on frame {named!r}, which the "
                        f"video does not have")
    return (record.frame_names.index(named),)
  return annotated_indices(record) or tuple(range(len(record.frame_names)))


def expression_anchors(record: raw.VideoRecord, exp_index: int, stride: int) -> tuple[int, ...]:
  """The anchor frames (indices in frame_names) of one expression: every `stride`-th of its
  anchor_frames (so a named frame is the one anchor at any stride)."""
  return anchor_frames(record, exp_index)[::stride]


def expand(record: raw.VideoRecord, stride: int) -> list[Sample]:
  """All training samples of a video: one per (expression, anchor), expression-major."""
  samples = []
  for e in range(len(record.expressions)):
    anchors = expression_anchors(record, e, stride)
    samples.extend(Sample(record, e, a, anchors) for a in anchors)
  return samples


@dataclasses.dataclass(frozen=True)
class AnchorCounts:
  """How many expressions of some videos have how many anchor_frames: all a count of their
  training samples needs, at any stride, without the videos (an expression with n anchor
  frames has ceil(n / stride) anchors, `expression_anchors`). The build records a split's
  in its dataset_info.json / TFDS metadata (`to_json`).

  expressions: {number of anchor frames: how many expressions have that many}.
  """
  expressions: Mapping[int, int] = dataclasses.field(default_factory=dict)

  @classmethod
  def of(cls, record: raw.VideoRecord) -> "AnchorCounts":
    """The counts of one video; a named anchor frame it lacks raises SampleError."""
    return cls(dict(collections.Counter(
        len(anchor_frames(record, e)) for e in range(len(record.expressions)))))

  def __add__(self, other: "AnchorCounts") -> "AnchorCounts":
    total = collections.Counter(self.expressions)
    total.update(other.expressions)
    return AnchorCounts(dict(total))

  def samples(self, stride: int) -> int:
    """How many samples `expand(record, stride)` gives over all the videos counted."""
    return sum(count * -(-frames // stride) for frames, count in self.expressions.items())

  def to_json(self) -> list[list[int]]:
    """[[anchor frames, expressions], ...] in increasing anchor frames."""
    return [[frames, count] for frames, count in sorted(self.expressions.items())]

  @classmethod
  def from_json(cls, value, where: str) -> "AnchorCounts":
    """Reads `to_json`'s form; anything else raises SampleError naming `where`."""
    well_formed = isinstance(value, list) and all(
        isinstance(pair, list) and len(pair) == 2
        and all(type(n) is int and n >= 0 for n in pair) for pair in value)
    if not well_formed:
      raise SampleError(f"{where}: expected [[anchor frames, expressions], ...] of "
                        f"non-negative integers, got {value!r:.200}")
    if len({frames for frames, _ in value}) != len(value):
      raise SampleError(f"{where}: anchor frame counts listed twice in {value!r:.200}")
    return cls({frames: count for frames, count in value})


def clip_indices(rng: np.random.Generator, anchor: int, num_frames: int, video_length: int,
                 reverse_p: float, local_window: int) -> np.ndarray:
  """Samples the frame indices of one clip.

  Args:
    rng: the only source of randomness.
    anchor: the anchor frame index, in [0, video_length).
    num_frames: T, the clip length: 1 (the anchor alone) or >= 3.
    video_length: the number of frames to draw from.
    reverse_p: the probability of reversing the sorted indices (0 for no reversal).
    local_window: the local frames lie U{1..local_window} before / after the anchor.

  Returns:
    (T,) int64 indices in [0, video_length), sorted ascending or (with probability
    reverse_p) descending.
  """
  if not 0 <= anchor < video_length:
    raise ValueError(f"anchor {anchor} outside a video of {video_length} frames")
  if num_frames == 1:
    return np.array([anchor], np.int64)
  if num_frames == 2:
    raise ValueError("a clip has 1 frame or at least 3 (anchor, one before, one after)")
  before, after = rng.integers(1, local_window + 1, size=2)
  lo, hi = max(0, anchor - before), min(video_length - 1, anchor + after)
  num_global = num_frames - 3
  outside = np.concatenate([np.arange(lo), np.arange(hi + 1, video_length)])
  if len(outside) >= num_global:
    extra = rng.choice(outside, num_global, replace=False)
  elif video_length >= num_global:
    extra = rng.choice(video_length, num_global, replace=False)
  else:
    extra = np.concatenate([np.arange(video_length),
                            rng.choice(video_length, num_global - video_length)])
  indices = np.sort(np.concatenate([[anchor, lo, hi], extra]).astype(np.int64))
  if rng.random() < reverse_p:
    indices = indices[::-1].copy()
  return indices


def resample(rng: np.random.Generator, sample: Sample) -> Sample:
  """The same expression at a random one of its anchors: the retry for a clip without a
  valid frame (the original retries at a random dataset index, which a streamed dataset
  cannot reach)."""
  anchor = int(sample.candidates[rng.integers(len(sample.candidates))])
  return dataclasses.replace(sample, anchor=anchor)


@dataclasses.dataclass(frozen=True)
class ClipSampling:
  """How a training sample becomes frame indices (module docstring); config.data.sampling.

  num_frames: T, the clip length: 1 or >= 3; also the stride of the anchors (`expand`).
  local_window: the two local frames lie U{1..local_window} before / after the anchor.
  reverse_prob: the probability of reversing a clip's order (never for anchored ones).
  """
  num_frames: int
  local_window: int
  reverse_prob: float

  def __post_init__(self):
    problem = None
    if self.num_frames < 1 or self.num_frames == 2:
      problem = (f"num_frames {self.num_frames}: a clip has 1 frame or at least 3 (anchor, "
                 f"one before, one after)")
    elif self.local_window < 1:
      problem = f"local_window {self.local_window} must be >= 1"
    elif not 0 <= self.reverse_prob <= 1:
      problem = f"reverse_prob {self.reverse_prob} is not a probability"
    if problem:
      raise errors.ConfigError(f"config.data.sampling.{problem}")

  def samples(self, record: raw.VideoRecord) -> list[Sample]:
    """The video's training samples, anchors every num_frames-th annotated frame."""
    return expand(record, self.num_frames)

  def sample_count(self, counts: AnchorCounts) -> int:
    """len(self.samples(record)) summed over the videos `counts` counts."""
    return counts.samples(self.num_frames)

  def indices(self, rng: np.random.Generator, sample: Sample) -> np.ndarray:
    """(T,) frame indices of one clip of `sample` (clip_indices)."""
    return clip_indices(rng, sample.anchor, self.num_frames, len(sample.record.frame_names),
                        0.0 if sample.anchored else self.reverse_prob, self.local_window)
